"""The serial simulator's scenario files and device models (no ptys here)."""

from __future__ import annotations

import random
from pathlib import Path

import pytest
from edge_gateway_sim.serial_sim.models import ModelError
from edge_gateway_sim.serial_sim.registry import model_class
from edge_gateway_sim.serial_sim.scenario import ScenarioError, load_scenario, parse_scenario

from drivers.serial.lines import decode_line
from drivers.serial.lines_config import SerialLinesConfig
from drivers.serial.nmea import ChecksumError, decode_nmea


def test_a_scenario_names_devices_by_path_relative_to_its_file_and_sorts_faults() -> None:
    scenario = parse_scenario(
        {
            "devices": [{"name": "t", "path": "dev/t", "model": "json-sensor"}],
            "faults": [
                {"at_s": 5, "device": "t", "fault": "noise", "bytes": 10},
                {"at_s": 1, "device": "t", "fault": "unplug", "duration_s": 2},
            ],
        },
        Path("/srv/sim"),
    )
    assert scenario.devices[0].path == Path("/srv/sim/dev/t")
    assert [f.fault for f in scenario.faults] == ["unplug", "noise"]


@pytest.mark.parametrize(
    ("data", "problem"),
    [
        ({"devices": []}, "give at least one"),
        ({"devices": [{"name": "t", "path": "p"}]}, "devices[0].model: required"),
        ({"devices": [{"name": "t", "path": "p", "model": "m", "colour": 1}]}, "colour: unknown"),
        (
            {"devices": [{"name": "t", "path": "p", "model": "m"}],
             "faults": [{"at_s": 1, "device": "x", "fault": "noise"}]},
            "faults[0].device: 'x' is not",
        ),
        (
            {"devices": [{"name": "t", "path": "p", "model": "m"}],
             "faults": [{"at_s": 1, "device": "t", "fault": "fire"}]},
            "faults[0].fault: one of",
        ),
    ],
)  # fmt: skip
def test_a_wrong_scenario_says_where(data: object, problem: str) -> None:
    with pytest.raises(ScenarioError) as caught:
        parse_scenario(data, Path("."))
    assert problem in str(caught.value)


def test_unknown_models_and_options_are_named() -> None:
    with pytest.raises(ModelError, match="unknown model 'modem'; known: "):
        model_class("modem")
    with pytest.raises(ModelError, match="unknown option 'speed'"):
        model_class("nmea-gps")({"speed": 1}, random.Random(1))


def test_the_gps_model_speaks_nmea_the_decoder_accepts_and_its_damage_is_a_bad_checksum() -> None:
    gps = model_class("nmea-gps")({"start": "2026-05-01T10:00:00Z"}, random.Random(1))
    frame = gps.frame()
    gga, rmc = frame.split(b"\r\n")[:2]
    received = gps.fix(1)[0].timestamp()
    fix = decode_nmea(gga, received, "gps", "p")
    course = decode_nmea(rmc, received, "gps", "p")
    assert fix is not None and course is not None
    assert fix.ts == course.ts == gps.fix(1)[0]
    assert course.values["speed"] == pytest.approx(12.0, abs=0.05)
    with pytest.raises(ChecksumError):
        decode_nmea(gps.corrupt(frame).rstrip(), received, "gps", "p")


def test_the_kv_model_answers_each_query_with_one_line() -> None:
    meter = model_class("kv-sensor")({"query": "READ\r\n"}, random.Random(1))
    assert meter.interval_s is None
    reply = meter.answer(b"RE") + meter.answer(b"AD\r\nREAD\r\n")
    lines = reply.split(b"\r\n")[:-1]
    config = SerialLinesConfig(
        type="serial", name="m", protocol="lines", port="/dev/x", format="kv"
    )
    assert [decode_line(config, line, 0.0, "m").values["seq"] for line in lines] == [1, 2]


def test_the_shipped_scenario_loads() -> None:
    scenario = load_scenario(Path(__file__).parents[2] / "hardware-sim/scenarios/serial.yaml")
    assert {d.model for d in scenario.devices} == {"json-sensor", "kv-sensor", "nmea-gps"}
    for device in scenario.devices:
        model_class(device.model)(device.options, random.Random(1))
