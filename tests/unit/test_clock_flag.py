"""Readings accepted while the clock is unsynchronised carry `clock_unsynchronized: true`."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from pathlib import Path

import jsonschema

from gateway.buffer import Buffer
from gateway.model import Encoded, Reading

SCHEMA = json.loads(
    (Path(__file__).parents[2] / "gateway" / "schemas" / "message.schema.json").read_text()
)


def reading(i: int) -> Reading:
    return Reading(f"dev-{i}", datetime(2026, 1, 1, tzinfo=UTC), {"t": i}, "src")


async def test_only_readings_put_while_unsynchronised_are_flagged(tmp_path: Path) -> None:
    answers = iter([False, False, True])  # the clock is asked once per put
    async with Buffer(
        tmp_path / "b.db",
        max_bytes=2**26,
        commit_interval=0,
        clock_synchronized=lambda: next(answers),
    ) as buffer:
        await buffer.put([reading(1), reading(2)])
        await buffer.put(Encoded.of([reading(3)]))  # as the MQTT source puts them
        await buffer.put([reading(4)])
        chunks = await buffer.fetch(0, 10)
    docs = [json.loads(r.body) for chunk in chunks for r in chunk.readings]
    assert [d.get("clock_unsynchronized") for d in docs] == [True, True, True, None]
    assert list(docs[2]) == ["device", "ts", "values", "source", "clock_unsynchronized"]
    message = {
        "v": 1,
        "gateway": "g",
        "site": "s",
        "readings": [{"id": f"0123456789ab-{i}", **doc} for i, doc in enumerate(docs, 1)],
    }
    jsonschema.Draft202012Validator(SCHEMA).validate(message)


def test_a_synchronised_reading_has_no_flag_key_at_all() -> None:
    assert b"clock_unsynchronized" not in reading(1).to_json()
