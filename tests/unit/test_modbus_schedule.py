"""A unit's schedule: the phase is kept when others delay it; a silent unit is backed off."""

from __future__ import annotations

from typing import Any

from drivers.serial.modbus_config import ModbusUnit
from drivers.serial.modbus_schedule import UnitSchedule


def schedule(**fields: Any) -> UnitSchedule:
    return UnitSchedule(
        ModbusUnit.model_validate(
            {"unit_id": 1, "device": "m", "registers": [{"name": "v", "address": 0}], **fields}
        ),
        (),
    )


def test_a_unit_that_answers_keeps_its_phase_even_when_delayed() -> None:
    meter = schedule(poll_interval_s=1.0)
    meter.due = 10.0
    assert meter.answered(now=10.3) is False  # delayed 0.3 s by another unit's timeouts
    assert meter.due == 11.0
    meter.answered(now=12.5)  # more than an interval late: one catch-up poll now, no backlog
    assert meter.due == 12.5
    meter.answered(now=12.5)
    assert meter.due == 13.5


def test_a_unit_that_misses_is_backed_off_doubling_up_to_its_maximum() -> None:
    meter = schedule(poll_interval_s=1.0, max_backoff_s=5.0)
    delays = [meter.missed(now=0.0) for _ in range(5)]
    assert delays == [2.0, 4.0, 5.0, 5.0, 5.0]
    assert meter.due == 5.0
    assert meter.answered(now=5.0) is True  # it answers again: back on its interval
    assert meter.due == 6.0
