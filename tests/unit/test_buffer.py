"""The buffer's contract: durable, ordered, ids never reused, bounded, crash safe.

Every test uses its own database under `tmp_path`. `commit_interval=0` where a test puts
one batch after another (each put then commits at once); the group-commit test keeps
the real interval, because gathering puts into one commit is what it checks.
"""

from __future__ import annotations

import asyncio
import base64
import glob
import json
import os
import random
import re
import sqlite3
import subprocess
import sys
import tempfile
import textwrap
import time
from collections.abc import AsyncIterator
from contextlib import closing, suppress
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from structlog.testing import capture_logs

import gateway.buffer
from gateway.buffer import (
    Buffer,
    Chunk,
    StoredReading,
    WhenFull,
    decode_chunk,
    encode_chunk,
)
from gateway.errors import BufferFull, StorageError
from gateway.logs import RateLimitedLog
from gateway.model import Reading

T0 = datetime(2024, 3, 1, 12, 0, tzinfo=UTC)


def reading(i: int, *, pad_bytes: int = 0, device: str | None = None) -> Reading:
    """A distinct reading; `pad_bytes` of random (incompressible) data make it big."""
    values: dict[str, float | int | bool | str] = {"i": i, "temp": 20.0 + i / 10}
    if pad_bytes:
        values["pad"] = base64.b64encode(os.urandom(pad_bytes)).decode()
    return Reading(
        device=device or f"dev-{i % 3}",
        ts=T0 + timedelta(seconds=i),
        values=values,
        source="test-src",
        units={"temp": "Cel"},
    )


async def fetch_all(buffer: Buffer, after: int = 0, page: int = 500) -> list[StoredReading]:
    """Every reading after `after`, oldest first, as the publisher would page through them."""
    out: list[StoredReading] = []
    while chunks := await buffer.fetch(after, page):
        for chunk in chunks:
            out.extend(r for r in chunk.readings if r.seq > after)
        after = chunks[-1].readings[-1].seq
    return out


def write_file(path: Path, data: bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)


def chunk_rows(db: Path) -> list[tuple[int, int]]:
    """(first_seq, count) of every chunk row, read with plain sqlite3."""
    with closing(sqlite3.connect(db)) as conn:
        return conn.execute("SELECT first_seq, count FROM chunks ORDER BY first_seq").fetchall()


@pytest.fixture
def db(tmp_path: Path) -> Path:
    return tmp_path / "state" / "buffer.db"


@pytest.fixture
async def buffer(db: Path) -> AsyncIterator[Buffer]:
    async with Buffer(db, max_bytes=64 * 1024**2, commit_interval=0) as buf:
        yield buf


# --- put and fetch --------------------------------------------------------------------------


async def test_put_then_fetch_returns_readings_in_order_with_increasing_seqs(
    buffer: Buffer,
) -> None:
    batches = [[reading(0)], [reading(1), reading(2), reading(3)], [reading(4), reading(5)]]
    for batch in batches:
        await buffer.put(batch)
    put = [r for batch in batches for r in batch]

    stored = await fetch_all(buffer)

    assert [s.seq for s in stored] == [1, 2, 3, 4, 5, 6]
    assert [s.body for s in stored] == [r.to_json() for r in put]
    assert [(s.device, s.source) for s in stored] == [(r.device, r.source) for r in put]
    assert re.fullmatch(r"[0-9a-f]{12}", buffer.stream)
    assert (buffer.last_seq, buffer.depth, buffer.counters.accepted) == (6, 6, 6)


async def test_fetch_pages_by_chunk_after_a_seq(buffer: Buffer) -> None:
    for batch in ([reading(0)], [reading(1), reading(2), reading(3)], [reading(4), reading(5)]):
        await buffer.put(batch)  # one commit, so one chunk, each

    def shape(chunks: list[Chunk]) -> list[list[int]]:
        return [[r.seq for r in chunk.readings] for chunk in chunks]

    assert shape(await buffer.fetch(0, 100)) == [[1], [2, 3, 4], [5, 6]]
    assert shape(await buffer.fetch(0, 2)) == [[1]]  # the next chunk would exceed 2
    assert shape(await buffer.fetch(1, 2)) == [[2, 3, 4]]  # but one chunk always comes
    assert shape(await buffer.fetch(4, 100)) == [[5, 6]]  # after a chunk's last seq
    assert await buffer.fetch(6, 100) == []


async def test_put_of_nothing_commits_nothing(buffer: Buffer) -> None:
    await buffer.put([])
    assert buffer.counters.commits == 0
    assert await fetch_all(buffer) == []


async def test_wait_for_data_returns_after_a_put_is_committed(buffer: Buffer) -> None:
    waiter = asyncio.create_task(buffer.wait_for_data(buffer.last_seq))
    await asyncio.sleep(0)  # let the waiter start waiting
    assert not waiter.done()
    await buffer.put([reading(1)])
    await asyncio.wait_for(waiter, timeout=5)


async def test_wait_for_data_returns_at_once_for_data_already_committed(buffer: Buffer) -> None:
    await buffer.put([reading(1)])
    await asyncio.wait_for(buffer.wait_for_data(0), timeout=1)


async def test_put_after_close_is_refused(db: Path) -> None:
    async with Buffer(db, max_bytes=1024**2, commit_interval=0) as buf:
        await buf.put([reading(1)])
    with pytest.raises(StorageError, match="closing"):
        await buf.put([reading(2)])


async def test_readings_put_before_close_are_committed(db: Path) -> None:
    async with Buffer(db, max_bytes=1024**2, commit_interval=0.3) as buf:
        await buf.put([reading(1)])  # the first commit has no interval to wait for
        pending = asyncio.ensure_future(buf.put([reading(2), reading(3)]))
        await asyncio.sleep(0)  # the put queues its readings; the writer waits out the interval
    await pending  # settled by the commit that closing makes
    async with Buffer(db, max_bytes=1024**2) as buf:
        stored = await fetch_all(buf)
    assert [s.body for s in stored] == [reading(i).to_json() for i in (1, 2, 3)]


# --- ids ------------------------------------------------------------------------------------------


@pytest.mark.parametrize("ack_everything", [True, False], ids=["table-emptied", "table-kept"])
async def test_seqs_are_never_reused_after_reopening(db: Path, ack_everything: bool) -> None:
    async with Buffer(db, max_bytes=1024**2, commit_interval=0) as buf:
        for i in range(5):
            await buf.put([reading(i)])
        first = await fetch_all(buf)
        stream = buf.stream
        if ack_everything:
            buf.ack([s.seq for s in first])  # one reading per chunk: seq == first_seq
    if ack_everything:
        assert chunk_rows(db) == []

    async with Buffer(db, max_bytes=1024**2, commit_interval=0) as buf:
        assert buf.stream == stream
        assert buf.last_seq == 5
        await buf.put([reading(10), reading(11)])
        stored = await fetch_all(buf)

    new_bodies = {reading(10).to_json(), reading(11).to_json()}
    assert [s.seq for s in stored if s.body in new_bodies] == [6, 7]
    assert [s.seq for s in stored if s.body not in new_bodies] == (
        [] if ack_everything else [1, 2, 3, 4, 5]
    )


async def test_dropped_oldest_seqs_are_not_reused_after_reopening(db: Path) -> None:
    async with Buffer(db, max_bytes=24 * 1024, when_full="drop_oldest", commit_interval=0) as buf:
        for i in range(60):
            await buf.put([reading(i, pad_bytes=600)])
        last = buf.last_seq
        assert buf.counters.dropped > 0
    async with Buffer(db, max_bytes=24 * 1024, when_full="drop_oldest", commit_interval=0) as buf:
        await buf.put([reading(100)])
        assert (await fetch_all(buf))[-1].seq == last + 1


# --- group commit -------------------------------------------------------------------------------


async def test_concurrent_puts_share_few_commits(db: Path) -> None:
    async with Buffer(db, max_bytes=64 * 1024**2, commit_interval=0.04) as buf:
        await asyncio.gather(*(buf.put([reading(i)]) for i in range(1000)))
        commits = buf.counters.commits
        stored = await fetch_all(buf)

    assert commits < 50, f"{commits} commits for 1000 concurrent puts"
    assert buf.counters.accepted == 1000
    assert [s.seq for s in stored] == list(range(1, 1001))
    assert sorted(s.body for s in stored) == sorted(reading(i).to_json() for i in range(1000))


# --- when full ---------------------------------------------------------------------------------


async def fill_until_full(buf: Buffer, pad_bytes: int = 600, limit: int = 500) -> list[Reading]:
    """Put one big reading at a time until the buffer refuses one; return those accepted."""
    accepted: list[Reading] = []
    for i in range(limit):
        one = reading(i, pad_bytes=pad_bytes)
        try:
            await buf.put([one])
        except BufferFull:
            return accepted
        accepted.append(one)
    raise AssertionError(f"{limit} readings of {pad_bytes} bytes fit in {buf.max_bytes} bytes")


async def test_reject_new_raises_buffer_full_and_keeps_what_it_has(db: Path) -> None:
    async with Buffer(db, max_bytes=32 * 1024, when_full="reject_new", commit_interval=0) as buf:
        accepted = await fill_until_full(buf)
        assert buf.counters.rejected == 1
        with pytest.raises(BufferFull, match="max_bytes 32768"):
            await buf.put([reading(900, pad_bytes=600), reading(901, pad_bytes=600)])
        assert buf.counters.rejected == 3
        assert buf.counters.dropped == 0
        assert buf.last_seq == len(accepted)  # refused readings take no seq
        stored = await fetch_all(buf)
    assert len(accepted) > 5
    assert [s.body for s in stored] == [r.to_json() for r in accepted]
    assert [s.seq for s in stored] == list(range(1, len(accepted) + 1))


async def test_drop_oldest_drops_the_oldest_and_counts_them(db: Path) -> None:
    """And says so once per 10 s, with how many (it said so for every commit, 25 lines a
    second during an outage)."""
    puts = [reading(i, pad_bytes=600) for i in range(120)]
    with capture_logs() as logs:
        async with Buffer(
            db, max_bytes=32 * 1024, when_full="drop_oldest", commit_interval=0
        ) as buf:
            for one in puts:
                await buf.put([one])  # never refused
            stored = await fetch_all(buf)
            dropped = buf.counters.dropped
            depth = buf.depth
            said = [e for e in logs if e["event"].startswith("buffer full: dropped the oldest")]
            assert [(e["dropped"], e["dropped_total"]) for e in said] == [(1, 1)]

            buf._rate_limited = RateLimitedLog(gateway.buffer.log, interval=0)  # 10 s later
            await buf.put([reading(120, pad_bytes=600)])
            said = [e for e in logs if e["event"].startswith("buffer full: dropped the oldest")]
            assert said[-1]["dropped"] == buf.counters.dropped - 1  # all since the first line

    assert 0 < dropped < 120
    assert buf.counters.rejected == 0
    assert len(stored) == 120 - dropped == depth
    assert [s.body for s in stored] == [r.to_json() for r in puts[dropped:]]  # the newest
    assert [s.seq for s in stored] == list(range(dropped + 1, 121))


async def test_the_last_drops_of_a_burst_get_their_line_too(
    db: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Once drops stop, and at the latest at close: the rate-limited line alone left the
    last ones of a burst out of the journal (1,277 of 96,827 in a 5-minute outage)."""
    monkeypatch.setattr(gateway.buffer, "_DROPS_QUIET_S", 0.5)  # longer than a put takes

    def said() -> int:
        return sum(e["dropped"] for e in logs if e["event"] == gateway.buffer._DROPPED)

    with capture_logs() as logs:
        async with Buffer(
            db, max_bytes=32 * 1024, when_full="drop_oldest", commit_interval=0
        ) as buf:
            for i in range(120):
                await buf.put([reading(i, pad_bytes=600)])
            assert said() < buf.counters.dropped  # the rest was rate-limited away
            first = (await fetch_all(buf))[0]
            buf.ack([first.seq])  # a commit that drops nothing: the drops have stopped
            for _ in range(50):
                if said() == buf.counters.dropped:
                    break
                await asyncio.sleep(0.1)
            assert said() == buf.counters.dropped
            await buf.put([reading(120, pad_bytes=600)])  # drops again, within 10 s
        assert said() == buf.counters.dropped  # the close told the last one


async def test_the_last_drops_get_their_line_when_nothing_more_comes(
    db: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Sensors gone quiet during an outage: no put, no confirm, so no commit to notice that
    the drops have stopped; the idle writer tells them all the same."""
    monkeypatch.setattr(gateway.buffer, "_DROPS_QUIET_S", 0.2)

    def said() -> int:
        return sum(e["dropped"] for e in logs if e["event"] == gateway.buffer._DROPPED)

    with capture_logs() as logs:
        async with Buffer(
            db, max_bytes=32 * 1024, when_full="drop_oldest", commit_interval=0
        ) as buf:
            for i in range(120):
                await buf.put([reading(i, pad_bytes=600)])
            assert said() < buf.counters.dropped  # the rest was rate-limited away
            for _ in range(50):
                if said() == buf.counters.dropped:
                    break
                await asyncio.sleep(0.1)
            assert said() == buf.counters.dropped  # before the close


async def test_drops_are_counted_in_the_file_across_restarts(db: Path) -> None:
    """status showed the drops of the current run only: a crash or a restart hid the rest."""
    async with Buffer(db, max_bytes=32 * 1024, when_full="drop_oldest", commit_interval=0) as buf:
        for i in range(120):
            await buf.put([reading(i, pad_bytes=600)])
        first_run = buf.counters.dropped
    assert first_run > 0 and buf.counters.dropped_ever == first_run
    async with Buffer(db, max_bytes=32 * 1024, when_full="drop_oldest", commit_interval=0) as buf:
        assert (buf.counters.dropped, buf.counters.dropped_ever) == (0, first_run)
        for i in range(120, 130):
            await buf.put([reading(i, pad_bytes=600)])
        assert buf.counters.dropped_ever == first_run + buf.counters.dropped > first_run


async def test_the_latest_commits_come_from_memory_and_older_ones_from_disk(
    db: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A publisher that keeps up reads nothing from disk; one that is behind reads the disk
    until it reaches what memory holds. Either way it gets every reading once, in order."""
    monkeypatch.setattr(gateway.buffer, "_RECENT_READINGS", 10)
    disk_reads = 0
    async with Buffer(db, max_bytes=10**8, commit_interval=0) as buf:
        read_disk = buf._fetch

        def counting(after_seq: int, max_readings: int) -> list[Chunk]:
            nonlocal disk_reads
            disk_reads += 1
            return read_disk(after_seq, max_readings)

        monkeypatch.setattr(buf, "_fetch", counting)
        kept_up: list[StoredReading] = []
        for i in range(0, 30, 3):
            await buf.put([reading(i), reading(i + 1), reading(i + 2)])
            chunks = await buf.fetch(kept_up[-1].seq if kept_up else 0, 100)
            kept_up.extend(r for chunk in chunks for r in chunk.readings)
        assert disk_reads == 0
        assert [r.seq for r in kept_up] == list(range(1, 31))

        for i in range(30, 60, 3):  # nobody fetches: memory keeps the last 10 or so
            await buf.put([reading(i), reading(i + 1), reading(i + 2)])
        behind = await fetch_all(buf, after=30, page=4)
        assert disk_reads > 0
    assert [r.seq for r in behind] == list(range(31, 61))
    assert [r.body for r in behind] == [reading(i).to_json() for i in range(30, 60)]


@pytest.mark.parametrize("when_full", ["reject_new", "drop_oldest"])
async def test_confirmed_readings_make_room_before_a_full_buffer_drops_or_refuses(
    db: Path, when_full: WhenFull
) -> None:
    """Deletes of confirmed chunks wait up to a second to be batched; meanwhile a full buffer
    must neither count confirmed readings as dropped nor refuse new ones."""
    async with Buffer(db, max_bytes=32 * 1024, when_full=when_full, commit_interval=0) as buf:
        while buf.counters.dropped + buf.counters.rejected == 0:  # fill it up
            with suppress(BufferFull):
                await buf.put([reading(buf.last_seq, pad_bytes=600)])
        before = (buf.counters.dropped, buf.counters.rejected)
        chunks = await buf.fetch(0, 10_000)
        buf.ack([chunk.first_seq for chunk in chunks])  # the broker confirmed all of them
        await buf.put([reading(2000, pad_bytes=600), reading(2001, pad_bytes=600)])
        assert (buf.counters.dropped, buf.counters.rejected) == before
        assert buf.depth == 2
    assert len(chunks) > 5


async def test_acks_survive_a_rejected_put(db: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Deletes and a refused chunk in one commit: the readings are refused, the deletes kept."""
    monkeypatch.setattr(gateway.buffer, "_DELETE_INTERVAL_S", 0.0)  # acks due at every commit
    async with Buffer(db, max_bytes=64 * 1024, when_full="reject_new", commit_interval=0) as buf:
        await fill_until_full(buf)
        # The publisher acks all but the newest chunk while a source puts a reading too big
        # for the room that frees; a commit interval makes the writer take both into one commit.
        buf.commit_interval = 0.5
        *confirmed, newest = await buf.fetch(0, 10_000)
        buf.ack([chunk.first_seq for chunk in confirmed])
        with pytest.raises(BufferFull):
            await buf.put([reading(999, pad_bytes=100_000)])
        buf.commit_interval = 0
        await buf.put([reading(1000)])  # the acked readings' room is free again
        last = buf.last_seq
    assert chunk_rows(db) == [(newest.first_seq, 1), (last, 1)]  # the acked ones are gone


@pytest.mark.parametrize("when_full", ["reject_new", "drop_oldest"])
async def test_a_put_larger_than_the_whole_buffer_is_taken_when_the_buffer_is_empty(
    db: Path, when_full: WhenFull
) -> None:
    """A source that must not drop what it was handed (MQTT, unacked) would offer it again
    for ever: once nothing else is left to make room, it goes in, over max_bytes."""
    async with Buffer(db, max_bytes=32 * 1024, when_full=when_full, commit_interval=0) as buf:
        await buf.put([reading(1, pad_bytes=100_000)])
        assert (buf.depth, buf.counters.dropped, buf.counters.rejected) == (1, 0, 0)
        if when_full == "reject_new":
            with pytest.raises(BufferFull):
                await buf.put([reading(2)])  # until the broker takes the big one


# --- corruption -------------------------------------------------------------------------------


async def test_garbage_database_is_moved_aside_and_a_fresh_one_works(db: Path) -> None:
    garbage = b"this is not an SQLite database\n" * 512
    write_file(db, garbage)

    with capture_logs() as logs:
        async with Buffer(db, max_bytes=1024**2, commit_interval=0) as buf:
            await buf.put([reading(1), reading(2)])
            stored = await fetch_all(buf)

    assert [s.seq for s in stored] == [1, 2]
    [moved] = db.parent.glob("buffer.db.corrupt-*")
    [line] = [x for x in logs if x["log_level"] == "error"]
    assert line["event"] == "buffer database unreadable; moved aside, starting an empty one"
    assert (line["path"], line["moved_to"]) == (str(db), str(moved))
    assert "keep it for recovery" in line["hint"]
    assert re.fullmatch(r"buffer\.db\.corrupt-\d{8}T\d{6}Z", moved.name)
    assert moved.read_bytes() == garbage


async def test_damaged_database_is_moved_aside_with_a_new_stream(db: Path) -> None:
    async with Buffer(db, max_bytes=1024**2, commit_interval=0) as buf:
        for i in range(50):
            await buf.put([reading(i, pad_bytes=200)])
        old_stream = buf.stream
    with db.open("r+b") as f:  # overwrite pages 2.. (the schema and the tables)
        f.seek(1024)
        f.write(os.urandom(8 * 1024))

    async with Buffer(db, max_bytes=1024**2, commit_interval=0) as buf:
        await buf.put([reading(1)])
        assert [s.seq for s in await fetch_all(buf)] == [1]
        # seqs restart, but ids are `<stream>-<seq>`: a new stream keeps them unique
        assert buf.stream != old_stream
    assert len(list(db.parent.glob("buffer.db.corrupt-*"))) == 1


async def test_a_chunk_with_damaged_bytes_is_set_aside_and_the_rest_still_flows(
    db: Path,
) -> None:
    async with Buffer(db, max_bytes=1024**2, commit_interval=0) as buf:
        for i in range(3):
            await buf.put([reading(i)])
    with closing(sqlite3.connect(db)) as conn, conn:
        conn.execute("UPDATE chunks SET data = x'00ff00ff' WHERE first_seq = 2")

    with capture_logs() as logs:
        async with Buffer(db, max_bytes=1024**2, commit_interval=0) as buf:
            assert [s.seq for s in await fetch_all(buf)] == [1, 3]
            await buf.put([reading(9)])  # the writer moves the damaged chunk with its next commit
            assert buf.counters.damaged == 1
            assert buf.depth == 3
    [line] = [x for x in logs if x["log_level"] == "error"]
    assert line["event"].startswith("buffer chunk damaged; moved to the table 'damaged'")
    assert (line["first_seq"], line["readings"]) == (2, 1)
    with closing(sqlite3.connect(db)) as conn:
        assert conn.execute("SELECT first_seq, count FROM damaged").fetchall() == [(2, 1)]
    assert chunk_rows(db) == [(1, 1), (3, 1), (4, 1)]


async def test_a_set_aside_chunk_keeps_its_ids_from_being_reused(db: Path) -> None:
    async with Buffer(db, max_bytes=1024**2, commit_interval=0) as buf:
        await buf.put([reading(1), reading(2)])
    with closing(sqlite3.connect(db)) as conn, conn:
        conn.execute("UPDATE chunks SET data = x'00' WHERE first_seq = 1")
    async with Buffer(db, max_bytes=1024**2, commit_interval=0) as buf:
        assert await fetch_all(buf) == []
        await buf.put([reading(3)])  # the damaged chunk is set aside with this commit
    async with Buffer(db, max_bytes=1024**2, commit_interval=0) as buf:
        await buf.put([reading(4)])
        assert [s.seq for s in await fetch_all(buf)] == [3, 4]


async def test_pages_damaged_while_running_stop_the_gateway_and_go_aside_at_the_restart(
    db: Path,
) -> None:
    async with Buffer(db, max_bytes=1024**2, commit_interval=0) as buf:
        for i in range(50):
            await buf.put([reading(i, pad_bytes=2000)])

    with closing(sqlite3.connect(db)) as conn:
        root = conn.execute("SELECT rootpage FROM sqlite_master WHERE name='chunks'").fetchone()[0]

    def damage() -> None:  # a failing SD card, under the running gateway: the table's root page
        with db.open("r+b") as f:
            f.seek((root - 1) * 1024)
            f.write(os.urandom(1024))

    async with Buffer(db, max_bytes=1024**2, commit_interval=0) as buf:
        await asyncio.to_thread(damage)
        with pytest.raises(StorageError, match="SQLITE_CORRUPT"):
            await fetch_all(buf)  # none is in memory: the chunks are read from the file
        failure = await asyncio.wait_for(buf.wait_failed(), 5)  # the gateway stops on this
        assert "systemd restarts it" in str(failure)
        with pytest.raises(StorageError):
            await buf.put([reading(99)])  # nothing more is accepted into a damaged file
    assert glob.glob(f"{db}.corrupt-*") == []

    async with Buffer(db, max_bytes=1024**2, commit_interval=0) as buf:  # the restart
        await buf.put([reading(100)])
        assert [s.seq for s in await fetch_all(buf)] == [1]
    assert len(glob.glob(f"{db}.corrupt-*")) == 1  # checked (not closed cleanly), moved aside


@pytest.mark.filterwarnings("ignore::pytest.PytestUnhandledThreadExceptionWarning")
async def test_a_bug_in_the_writer_fails_the_waiting_puts_and_keeps_what_was_committed(
    db: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    async with Buffer(db, max_bytes=1024**2, commit_interval=0) as buf:
        await buf.put([reading(1)])

        def bug(*_args: object, **_kwargs: object) -> None:
            raise ZeroDivisionError("a bug")

        monkeypatch.setattr(buf, "_commit", bug)
        with pytest.raises(StorageError, match="writer stopped: ZeroDivisionError: a bug"):
            await asyncio.wait_for(buf.put([reading(2)]), 5)  # not left waiting for ever
        await asyncio.wait_for(buf.wait_failed(), 5)
    async with Buffer(db, max_bytes=1024**2, commit_interval=0) as buf:
        assert [json.loads(s.body)["values"]["i"] for s in await fetch_all(buf)] == [1]


async def test_an_unopenable_file_is_a_storage_error_and_is_not_moved_aside(db: Path) -> None:
    os.makedirs(db)  # "unable to open database file": not corruption
    with pytest.raises(StorageError, match="cannot open the buffer"):
        async with Buffer(db, max_bytes=1024**2, commit_interval=0):
            pass
    assert await asyncio.to_thread(os.path.isdir, db)
    assert glob.glob(f"{db}.corrupt-*") == []


async def test_two_corrupt_databases_in_one_second_are_both_kept(
    db: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    class FrozenClock(datetime):
        @classmethod
        def now(cls, tz: object = None) -> FrozenClock:
            return cls(2024, 3, 1, 12, 0, tzinfo=UTC)

    monkeypatch.setattr(gateway.buffer, "datetime", FrozenClock)
    for garbage in (b"first garbage " * 100, b"second garbage " * 100):
        write_file(db, garbage)
        async with Buffer(db, max_bytes=1024**2, commit_interval=0):
            pass
    kept = {p.read_bytes()[:6] for p in db.parent.glob("buffer.db.corrupt-*")}
    assert kept == {b"first ", b"second"}


# --- acks --------------------------------------------------------------------------------------


async def test_acked_chunks_are_gone_from_disk_after_close(db: Path) -> None:
    async with Buffer(db, max_bytes=1024**2, commit_interval=0) as buf:
        await buf.put([reading(0), reading(1)])
        await buf.put([reading(2)])
        await buf.put([reading(3), reading(4), reading(5)])
        chunks = await buf.fetch(0, 100)
        buf.ack([chunks[0].first_seq, chunks[1].first_seq])

    assert chunk_rows(db) == [(4, 3)]
    async with Buffer(db, max_bytes=1024**2, commit_interval=0) as buf:
        assert buf.depth == 3
        assert [s.seq for s in await fetch_all(buf)] == [4, 5, 6]


async def test_acking_an_unknown_chunk_changes_nothing(db: Path) -> None:
    async with Buffer(db, max_bytes=1024**2, commit_interval=0) as buf:
        await buf.put([reading(0)])
        buf.ack([12345])
    assert chunk_rows(db) == [(1, 1)]


# --- the chunk format ------------------------------------------------------------------------

_bodies = st.binary(max_size=200).map(lambda b: b.replace(b"\n", b" "))  # one JSON line each
_entries = st.lists(st.tuples(st.text(max_size=20), st.text(max_size=20), _bodies), max_size=30)


@given(
    entries=_entries,
    first_seq=st.integers(1, 2**62),
    accepted=st.floats(0, 2e9, allow_nan=False),
)
def test_chunk_encoding_round_trips(
    entries: list[tuple[str, str, bytes]], first_seq: int, accepted: float
) -> None:
    chunk = decode_chunk(first_seq, accepted, encode_chunk(entries))
    assert chunk == Chunk(
        first_seq,
        accepted,
        [StoredReading(first_seq + i, d, s, body) for i, (d, s, body) in enumerate(entries)],
    )


_values = st.dictionaries(
    st.text(min_size=1, max_size=8),
    st.integers(-(2**53), 2**53)
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.booleans()
    | st.text(max_size=20),
    min_size=1,
    max_size=4,
)
_readings = st.builds(
    Reading,
    device=st.text(min_size=1, max_size=12),
    ts=st.datetimes(timezones=st.just(UTC)),
    values=_values,
    source=st.text(min_size=1, max_size=8),
    units=st.dictionaries(st.text(max_size=4), st.text(max_size=4), max_size=2),
    tags=st.dictionaries(st.text(max_size=4), st.text(max_size=4), max_size=2),
)


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(batches=st.lists(st.lists(_readings, min_size=1, max_size=5), min_size=1, max_size=5))
def test_any_readings_come_back_exactly_as_put(batches: list[list[Reading]]) -> None:
    async def put_and_fetch(db: Path) -> list[StoredReading]:
        async with Buffer(db, max_bytes=64 * 1024**2, commit_interval=0) as buf:
            for batch in batches:
                await buf.put(batch)
            return await fetch_all(buf)

    with tempfile.TemporaryDirectory() as tmp:
        stored = asyncio.run(put_and_fetch(Path(tmp) / "buffer.db"))
    put = [r for batch in batches for r in batch]
    assert [(s.seq, s.device, s.source, s.body) for s in stored] == [
        (i + 1, r.device, r.source, r.to_json()) for i, r in enumerate(put)
    ]


# --- crash safety ------------------------------------------------------------------------------

CHILD = textwrap.dedent(
    """\
    import asyncio, sys
    from datetime import UTC, datetime
    from pathlib import Path

    from gateway.buffer import Buffer
    from gateway.model import Reading


    async def main(path, run):
        async with Buffer(Path(path), max_bytes=1 << 30, commit_interval=0.002) as buffer:
            print("open", buffer.stream, buffer.last_seq, flush=True)
            i = 0
            while True:
                batch = [
                    Reading(f"dev-{k}", datetime.now(UTC), {"run": run, "i": i, "k": k}, "crash")
                    for k in range(1 + i % 3)
                ]
                await buffer.put(batch)
                # one producer, so this commit held exactly this batch
                print("put", i, buffer.last_seq - len(batch) + 1, buffer.last_seq, flush=True)
                i += 1


    asyncio.run(main(sys.argv[1], int(sys.argv[2])))
    """
)


def run_child_until_killed(child: Path, db: Path, run: int, rng: random.Random) -> list[str]:
    """Start the child, let it put a random number of batches, kill -9 it at a random moment;
    return the complete lines it printed."""
    proc = subprocess.Popen(
        [sys.executable, str(child), str(db), str(run)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    lines: list[str] = []
    try:
        assert proc.stdout is not None
        for _ in range(1 + rng.randrange(40)):
            line = proc.stdout.readline()
            if not line:
                break
            lines.append(line)
        time.sleep(rng.uniform(0, 0.015))  # a random moment: between puts, in one, in an fsync
    finally:
        proc.kill()  # SIGKILL: no cleanup, no close, no final commit
        out, err = proc.communicate(timeout=30)
    lines.extend(out.splitlines(keepends=True))
    assert lines and lines[0].startswith("open "), f"child failed: {err}"
    return [line for line in lines if line.endswith("\n")]  # a cut-off line proves nothing


async def read_back(db: Path) -> tuple[str, dict[int, dict[str, object]]]:
    async with Buffer(db, max_bytes=1 << 30) as buf:
        return buf.stream, {s.seq: json.loads(s.body)["values"] for s in await fetch_all(buf)}


def test_every_reading_whose_put_returned_survives_kill_9(tmp_path: Path) -> None:
    seed = int(os.environ.get("BUFFER_CRASH_SEED", random.randrange(2**32)))
    print(f"BUFFER_CRASH_SEED={seed}")  # shown on failure; set it to replay the same kills
    rng = random.Random(seed)
    child = tmp_path / "child.py"
    child.write_text(CHILD)
    db = tmp_path / "buffer.db"
    confirmed: dict[int, dict[str, object]] = {}  # seq -> values, of every returned put
    stream = None

    for run in range(4):
        lines = run_child_until_killed(child, db, run, rng)
        _, child_stream, last_seq_at_open = lines[0].split()
        stream = stream or child_stream
        assert child_stream == stream, f"run {run}: database was not reopened cleanly ({seed=})"
        assert int(last_seq_at_open) >= max(confirmed, default=0), f"seqs went back ({seed=})"
        for line in lines[1:]:
            _, i, first, last = line.split()
            for k, seq in enumerate(range(int(first), int(last) + 1)):
                assert seq not in confirmed, f"seq {seq} given twice ({seed=})"
                confirmed[seq] = {"run": run, "i": int(i), "k": k}

        on_disk_stream, on_disk = asyncio.run(read_back(db))
        assert on_disk_stream == stream
        assert list(db.parent.glob("buffer.db.corrupt-*")) == [], f"quarantined ({seed=})"
        missing = {seq: v for seq, v in confirmed.items() if on_disk.get(seq) != v}
        assert not missing, f"run {run}: confirmed readings lost or changed: {missing} ({seed=})"

    assert len(confirmed) > 4


# --- a full disk ---------------------------------------------------------------------------

FULL_DISK_CHILD = textwrap.dedent(
    """\
    import asyncio, base64, json, os, sys
    from datetime import UTC, datetime
    from pathlib import Path

    import gateway.buffer
    from gateway.buffer import Buffer
    from gateway.errors import BufferFull, StorageError
    from gateway.model import Reading


    def reading(i, pad_bytes=2000):
        pad = base64.b64encode(os.urandom(pad_bytes)).decode()  # incompressible: fills the disk
        return Reading("dev", datetime.now(UTC), {"i": i, "pad": pad}, "full")


    async def fill(buffer, accepted, pad_bytes=2000):
        \"\"\"Put until the buffer refuses; what it said.\"\"\"
        for i in range(1000):
            try:
                await buffer.put([reading(i, pad_bytes)])
            except (BufferFull, StorageError) as exc:
                return f"{type(exc).__name__}: {exc}"
            accepted[buffer.last_seq] = i
        return None


    async def confirm_all(buffer):
        chunks = await buffer.fetch(0, 100_000)
        buffer.ack([chunk.first_seq for chunk in chunks])
        return {r.seq for chunk in chunks for r in chunk.readings}


    async def freed(disk, db, accepted):
        \"\"\"Someone else fills the disk; the gateway restarts; space is freed by hand.\"\"\"
        gateway.buffer._DISK_RESERVE = -(1 << 30)  # as if others took the reserve too
        ballast = disk / "ballast"
        ballast.write_bytes(os.urandom(96 * 1024))
        async with Buffer(db, max_bytes=1 << 30, commit_interval=0) as buffer:
            refusal = await fill(buffer, accepted)
            stopped = await failed(buffer)
        async with Buffer(db, max_bytes=1 << 30, commit_interval=0) as buffer:  # disk still full
            depth = buffer.depth
            ballast.unlink()  # space freed: readings are accepted again
            await buffer.put([reading(-1)])
            accepted[buffer.last_seq] = -1
            return {"refusal": refusal, "failed": stopped, "depth_at_restart": depth}


    async def confirmed(disk, db, accepted):
        \"\"\"The buffer itself fills its disk, up to the reserve; the broker confirms it all.\"\"\"
        gateway.buffer._DISK_RESERVE = 2 * 1024**2
        async with Buffer(db, max_bytes=1 << 30, commit_interval=0) as buffer:
            refusal = await fill(buffer, accepted, pad_bytes=20_000)
            for seq in await confirm_all(buffer):
                del accepted[seq]
            for i in range(100, 150):  # refused while the deletes wait to be batched
                try:
                    await buffer.put([reading(i)])
                    accepted[buffer.last_seq] = i
                except BufferFull:
                    await asyncio.sleep(0.1)
            return {"refusal": refusal, "failed": await failed(buffer), "depth": buffer.depth}


    async def deletes_first(disk, db, accepted):
        \"\"\"A commit that fails for a full disk still deletes what the broker confirmed.\"\"\"
        gateway.buffer._DISK_RESERVE = -(1 << 30)
        gateway.buffer._DELETE_INTERVAL_S = 0.0  # acks due at every commit
        ballast = disk / "ballast"
        ballast.write_bytes(os.urandom(24 * 1024))
        async with Buffer(db, max_bytes=1 << 30, commit_interval=0) as buffer:
            refusal = await fill(buffer, accepted)
            await confirm_all(buffer)
            ballast.unlink()  # a little room: enough to delete, not for what comes next
            try:  # too big for what is left: the commit fails, its deletes must not
                await buffer.put([reading(-1, pad_bytes=200_000)])
            except StorageError:
                pass
            depth = buffer.depth
            accepted.clear()
            await buffer.put([reading(-2)])  # in the room the deletes freed
            accepted[buffer.last_seq] = -2
            return {"refusal": refusal, "failed": await failed(buffer), "depth": depth}


    async def failed(buffer):
        try:  # a full disk is not a failure: the gateway goes on
            await asyncio.wait_for(buffer.wait_failed(), 0.2)
            return True
        except TimeoutError:
            return False


    async def main(scenario, disk):
        db = disk / "state" / "buffer.db"
        accepted = {}
        result = await globals()[scenario](disk, db, accepted)
        async with Buffer(db, max_bytes=1 << 30) as reopened:  # a restart on that disk
            on_disk = {}
            after = 0
            while chunks := await reopened.fetch(after, 100):
                for chunk in chunks:
                    for r in chunk.readings:
                        on_disk[r.seq] = json.loads(r.body)["values"]["i"]
                after = chunks[-1].readings[-1].seq
        result.update(accepted=accepted, on_disk=on_disk)
        print("RESULT " + json.dumps(result), flush=True)


    asyncio.run(main(sys.argv[1], Path(sys.argv[2])))
    """
)


def on_a_small_disk(tmp_path: Path, scenario: str, size: str) -> tuple[dict[str, Any], str]:
    """Run a scenario of FULL_DISK_CHILD on a real full disk: a tmpfs of `size`, mounted in
    a private mount namespace of the child. Its result, and all it printed."""
    if subprocess.run(["unshare", "-rm", "true"], capture_output=True).returncode != 0:
        pytest.skip("needs `unshare -rm` (user namespaces) to mount a small tmpfs")
    disk = tmp_path / "disk"
    disk.mkdir()
    child = tmp_path / "child.py"
    child.write_text(FULL_DISK_CHILD)
    mount_then_run = f'mount -t tmpfs -o size={size} tmpfs "$1" && exec "$2" "$3" "$4" "$1"'
    done = subprocess.run(
        ["unshare", "-rm", "sh", "-c", mount_then_run, "sh", disk, sys.executable, child, scenario],
        capture_output=True,
        text=True,
        timeout=120,
    )
    out = done.stdout + done.stderr
    result_line = next((x for x in done.stdout.splitlines() if x.startswith("RESULT ")), None)
    assert done.returncode == 0 and result_line, out
    result = json.loads(result_line.removeprefix("RESULT "))
    for key in ("accepted", "on_disk"):
        result[key] = {int(seq): i for seq, i in result[key].items()}
    return result, out


def test_a_full_disk_refuses_new_readings_keeps_the_accepted_and_recovers(tmp_path: Path) -> None:
    result, out = on_a_small_disk(tmp_path, "freed", "256k")
    accepted = result["accepted"]
    assert result["refusal"] is not None, "the disk never filled up"
    assert "StorageError: disk full" in result["refusal"] and "free space" in result["refusal"]
    assert "disk full: readings are not accepted until space is freed" in out
    assert result["failed"] is False
    assert result["depth_at_restart"] == len(accepted) - 1  # it started on the full disk
    assert len(accepted) > 10 and accepted[max(accepted)] == -1  # accepted again after freeing
    assert result["on_disk"] == accepted  # every accepted reading is there, nothing else is


def test_the_buffer_stops_short_of_filling_its_disk_and_empties_as_the_broker_confirms(
    tmp_path: Path,
) -> None:
    """Filled to the last byte, the disk would leave SQLite no room to delete even what the
    broker confirmed: the gateway would hold it all, and refuse everything, for ever."""
    result, out = on_a_small_disk(tmp_path, "confirmed", "8m")
    assert result["refusal"] is not None, "the disk never filled up"
    assert "BufferFull" in result["refusal"] and "KiB stay free" in result["refusal"], result
    assert "disk full" not in out  # it never came to that
    assert result["failed"] is False
    assert len(result["accepted"]) > 10  # taken again once the confirmed ones were deleted
    assert result["on_disk"] == result["accepted"]  # and only they are left


def test_a_commit_that_fails_for_a_full_disk_still_deletes_what_was_confirmed(
    tmp_path: Path,
) -> None:
    result, _ = on_a_small_disk(tmp_path, "deletes_first", "256k")
    assert result["refusal"] is not None and "disk full" in result["refusal"]
    assert result["depth"] == 0  # the confirmed readings were deleted by the failed commit
    assert result["on_disk"] == result["accepted"] == {max(result["on_disk"]): -2}
