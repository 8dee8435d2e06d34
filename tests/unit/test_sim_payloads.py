"""The simulated sensors' samples: what the gateway's tests rely on when they count and check."""

from __future__ import annotations

import itertools
import json
import time

import pytest
from edge_gateway_sim.mqtt_sensors import (
    MALFORMED_PAYLOADS,
    FleetConfig,
    MqttSensorFleet,
    SensorSample,
    SimulatedSensor,
    device_id,
    make_sensors,
    state_topic,
)
from hypothesis import given
from hypothesis import strategies as st

TS = 1_764_201_600.0


def test_device_ids_and_topics() -> None:
    assert [device_id(i) for i in (0, 1, 9999)] == ["sim-0001", "sim-0002", "sim-10000"]
    assert [s.device_id for s in make_sensors(3)] == ["sim-0001", "sim-0002", "sim-0003"]
    assert [s.device_id for s in make_sensors(2, first=7)] == ["sim-0007", "sim-0008"]
    assert state_topic("sensors", "sim-0001") == "sensors/sim-0001/state"


def test_seq_starts_at_one_and_increments_per_device() -> None:
    a, b = make_sensors(2)
    assert a.seq == 0
    seqs_a = [a.sample(TS).seq for _ in range(5)]
    seqs_b = [b.sample(TS).seq for _ in range(3)]
    assert seqs_a == [1, 2, 3, 4, 5]
    assert seqs_b == [1, 2, 3]
    assert (a.seq, b.seq) == (5, 3)


def test_values_stay_in_range_and_precision() -> None:
    sensor = SimulatedSensor("sim-0001", seed=3)
    base = sensor.base_temperature
    samples = [sensor.sample(TS + i) for i in range(20_000)]
    for s in samples:
        assert base - 5.0 <= s.temperature <= base + 5.0
        assert 20.0 <= s.humidity <= 90.0
        assert isinstance(s.battery, int) and 0 <= s.battery <= 100
        assert round(s.temperature, 2) == s.temperature
        assert round(s.humidity, 1) == s.humidity
    batteries = [s.battery for s in samples]
    assert batteries == sorted(batteries, reverse=True), "battery never recovers"
    # A random walk, not a constant: values move, but only a little from one sample to the next.
    assert len({s.temperature for s in samples}) > 50
    assert max(abs(x.humidity - y.humidity) for x, y in itertools.pairwise(samples)) < 2.5


def test_ts_is_the_sampling_time() -> None:
    assert SimulatedSensor("sim-0001").sample(TS + 0.1234567).ts == 1_764_201_600.123457
    before = time.time()
    ts = SimulatedSensor("sim-0001").sample().ts
    assert before - 0.001 <= ts <= time.time() + 0.001


def test_deterministic_given_a_seed() -> None:
    def stream(seed: int) -> list[SensorSample]:
        sensors = make_sensors(3, seed=seed)
        return [sensors[i % 3].sample(TS + i) for i in range(300)]

    assert stream(1) == stream(1)
    assert stream(1) != stream(2)


def test_a_devices_stream_does_not_depend_on_the_rest_of_the_fleet() -> None:
    """So a fleet split over processes (`first_device`) produces the same data as one fleet."""
    alone = make_sensors(1, seed=5, first=2)[0]
    in_fleet = make_sensors(4, seed=5)[1]
    assert [alone.sample(TS) for _ in range(50)] == [in_fleet.sample(TS) for _ in range(50)]


def test_payload_is_compact_json_of_the_documented_shape() -> None:
    sample = SimulatedSensor("sim-0001").sample(TS + 0.123)
    payload = sample.to_payload()
    doc = json.loads(payload)
    assert list(doc) == ["temperature", "humidity", "battery", "seq", "ts"]
    assert doc == sample.to_dict()
    assert doc["seq"] == 1 and doc["ts"] == pytest.approx(TS + 0.123, abs=1e-6)
    assert isinstance(doc["temperature"], float) and isinstance(doc["battery"], int)
    assert b" " not in payload
    assert "sim-0001" not in payload.decode(), "the device id is in the topic only"


@given(
    temperature=st.floats(-60, 120, allow_nan=False),
    humidity=st.floats(0, 100, allow_nan=False),
    battery=st.integers(0, 100),
    seq=st.integers(1, 2**53),
    ts=st.floats(0, 4e9, allow_nan=False),
)
def test_payload_round_trips_through_a_json_decoder(
    temperature: float, humidity: float, battery: int, seq: int, ts: float
) -> None:
    sample = SensorSample("sim-0001", seq, ts, temperature, humidity, battery)
    assert json.loads(sample.to_payload()) == sample.to_dict()


@pytest.mark.parametrize("payload", MALFORMED_PAYLOADS)
def test_malformed_payloads_are_not_json(payload: bytes) -> None:
    with pytest.raises(ValueError):  # JSONDecodeError and UnicodeDecodeError are ValueErrors
        json.loads(payload)


@pytest.mark.parametrize(
    "bad",
    [
        {"sensors": 0},
        {"first_device": 0},
        {"rate": 0},
        {"rate": float("inf")},
        {"qos": 2},
        {"malformed_fraction": 1.5},
        {"prefix": "sensors/#"},
        {"prefix": ""},
        {"max_inflight": 0},
    ],
)
def test_fleet_config_rejects_nonsense(bad: dict[str, object]) -> None:
    with pytest.raises(ValueError):
        FleetConfig(**bad)  # type: ignore[arg-type]


def test_fleet_stats_before_a_run() -> None:
    fleet = MqttSensorFleet(FleetConfig(sensors=3))
    stats = fleet.stats()
    assert (stats.published, stats.acked, stats.malformed, stats.dropped) == (0, 0, 0, 0)
    assert stats.last_seq == {"sim-0001": 0, "sim-0002": 0, "sim-0003": 0}
    assert not fleet.running
    with pytest.raises(ValueError):
        fleet.run(count=-1)
