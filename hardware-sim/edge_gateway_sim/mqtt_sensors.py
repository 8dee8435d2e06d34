"""Simulated MQTT environmental sensors and a rate-controlled fleet that publishes them.

The gateway's MQTT driver is tested and benchmarked against this fleet, so the fleet has to be
deterministic given a seed, hold its rate from 1 to 20,000+ messages/s in one process, say exactly
how many messages the broker accepted, and keep publishing across a broker restart.
"""

from __future__ import annotations

import math
import random
import secrets
import threading
import time
from collections.abc import Mapping
from dataclasses import dataclass
from types import TracebackType
from typing import Any, Final

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion, MQTTErrorCode, MQTTProtocolVersion
from paho.mqtt.exception import MalformedPacket
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties
from paho.mqtt.reasoncodes import ReasonCode

from drivers.mqtt.paho_loop import LoopClient

DEFAULT_PREFIX: Final = "sensors"

MALFORMED_PAYLOADS: Final[tuple[bytes, ...]] = (
    b"\xff\x00not json",
    b'{"temperature": 21.53, "humidity": 40.1, "batt',
)
"""Payloads no JSON decoder accepts (garbage bytes, truncated JSON): the gateway must drop them
without losing the good messages around them."""

# Random-walk tuning: small steps so consecutive samples look like one physical sensor.
_TEMP_BASE_RANGE: Final = (18.0, 26.0)
_TEMP_STEP: Final = 0.05
_TEMP_PULL: Final = 0.02  # fraction of the distance back to the base per sample
_TEMP_SPAN: Final = 5.0  # hard bound around the base, so tests can assert a range
_HUMIDITY_RANGE: Final = (20.0, 90.0)
_HUMIDITY_STEP: Final = 0.3
_BATTERY_DRAIN_MAX: Final = 0.0002  # % per sample: a fleet can run for hours before reaching 0

# Rate control: wake up at most every _MIN_TICK_S (each wake-up costs about as much CPU as a
# message), never publish more than _MAX_BURST_S worth of messages between two looks at the
# network, never fall more than _MAX_LAG_S behind (skip instead), never sleep longer than
# _MAX_WAIT_S at a time so stop() is honoured quickly.
_MIN_TICK_S: Final = 0.002
_MAX_BURST_S: Final = 0.05
_MAX_LAG_S: Final = 1.0
_MAX_WAIT_S: Final = 0.1
_RECONNECT_S: Final = 0.5
_PUBACK: Final = 0x40
_ACCEPTED: Final = ReasonCode(PacketTypes.PUBACK, identifier=0)
_NO_PROPERTIES: Final = Properties(PacketTypes.PUBACK)  # type: ignore[no-untyped-call]

# Float repr is what json.dumps writes, so this is compact JSON at a third of the cost.
_PAYLOAD_FORMAT: Final = b'{"temperature":%r,"humidity":%r,"battery":%d,"seq":%d,"ts":%r}'


def device_id(index: int) -> str:
    """The id of the index-th (0-based) simulated device: `sim-0001`, `sim-0002`, ..."""
    return f"sim-{index + 1:04d}"


def state_topic(prefix: str, device: str) -> str:
    """The topic a device publishes its samples on: `<prefix>/<device>/state`."""
    return f"{prefix}/{device}/state"


@dataclass(frozen=True, slots=True)
class SensorSample:
    """One reading of a simulated environmental sensor, exactly as it goes on the wire."""

    device_id: str
    seq: int
    ts: float
    temperature: float
    humidity: float
    battery: int

    def to_dict(self) -> dict[str, float | int]:
        """The payload's fields; the device id is not in it because it is in the topic."""
        return {
            "temperature": self.temperature,
            "humidity": self.humidity,
            "battery": self.battery,
            "seq": self.seq,
            "ts": self.ts,
        }

    def to_payload(self) -> bytes:
        """Compact JSON of `to_dict()`, as a constrained device would send it."""
        return _PAYLOAD_FORMAT % (self.temperature, self.humidity, self.battery, self.seq, self.ts)


class SimulatedSensor:
    """One device's state between samples (random walks need memory, hence mutable).

    Each sensor has its own RNG derived from the seed and its id, so its stream of values does
    not depend on how many other sensors exist, or in which process or order they are sampled.
    """

    def __init__(self, device: str, seed: int = 1) -> None:
        self.device_id = device
        self._rng = random.Random(f"{seed}:{device}")
        self.base_temperature = round(self._rng.uniform(*_TEMP_BASE_RANGE), 2)
        self._temperature = self.base_temperature
        self._humidity = self._rng.uniform(35.0, 60.0)
        self._battery = self._rng.uniform(95.0, 100.0)
        self.seq = 0
        """Sequence number of the last sample taken; 0 before the first."""

    def sample(self, ts: float | None = None) -> SensorSample:
        """Take the next sample at `ts` (default: now); seq goes up by exactly one."""
        rng = self._rng
        base = self.base_temperature
        temp = self._temperature + _TEMP_PULL * (base - self._temperature)
        temp += rng.gauss(0.0, _TEMP_STEP)
        self._temperature = min(max(temp, base - _TEMP_SPAN), base + _TEMP_SPAN)
        humidity = self._humidity + rng.gauss(0.0, _HUMIDITY_STEP)
        self._humidity = min(max(humidity, _HUMIDITY_RANGE[0]), _HUMIDITY_RANGE[1])
        self._battery = max(0.0, self._battery - rng.uniform(0.0, _BATTERY_DRAIN_MAX))
        self.seq += 1
        return SensorSample(
            device_id=self.device_id,
            seq=self.seq,
            ts=round(time.time() if ts is None else ts, 6),
            temperature=round(self._temperature, 2),
            humidity=round(self._humidity, 1),
            battery=round(self._battery),
        )


def make_sensors(count: int, seed: int = 1, first: int = 1) -> list[SimulatedSensor]:
    """`count` sensors numbered from `first` (`sim-0001`...), each with its own value stream."""
    return [SimulatedSensor(device_id(first - 1 + i), seed) for i in range(count)]


@dataclass(frozen=True, slots=True)
class FleetConfig:
    """Where and how a fleet publishes. `rate` is the total over all sensors, in messages/s."""

    host: str = "127.0.0.1"
    port: int = 1883
    sensors: int = 10
    rate: float = 10.0
    qos: int = 1
    prefix: str = DEFAULT_PREFIX
    malformed_fraction: float = 0.0
    seed: int = 1
    first_device: int = 1
    """Number of the first device, so several fleets (processes) can simulate disjoint devices."""
    protocol: MQTTProtocolVersion = MQTTProtocolVersion.MQTTv311
    client_id: str = ""
    """Empty: a unique id is generated, so two fleets never kick each other off the broker."""
    keepalive: int = 30
    connect_timeout: float = 10.0
    """How long to wait for the first CONNACK before giving up; later outages are retried."""
    drain_timeout: float = 30.0
    """How long to wait, after the last publish, for the broker to acknowledge everything."""
    max_inflight: int = 1000
    """Most messages published but not yet acknowledged; publishing waits while it is reached."""

    def __post_init__(self) -> None:
        if self.sensors < 1:
            raise ValueError(f"sensors must be >= 1, got {self.sensors}")
        if self.first_device < 1:
            raise ValueError(f"first_device must be >= 1, got {self.first_device}")
        if not (self.rate > 0 and math.isfinite(self.rate)):
            raise ValueError(f"rate must be a positive number of messages/s, got {self.rate}")
        if self.qos not in (0, 1):
            raise ValueError(f"qos must be 0 or 1, got {self.qos}")
        if not 0.0 <= self.malformed_fraction <= 1.0:
            raise ValueError(f"malformed_fraction must be in [0, 1], got {self.malformed_fraction}")
        if not self.prefix or any(c in self.prefix for c in "#+"):
            raise ValueError(f"prefix must be a non-empty topic without wildcards: {self.prefix!r}")
        if self.max_inflight < 1:
            raise ValueError(f"max_inflight must be >= 1, got {self.max_inflight}")


@dataclass(frozen=True, slots=True)
class FleetStats:
    """What a fleet has done so far.

    With `dropped == 0`, `sum(last_seq.values()) + malformed == published`: every good sample
    has a seq, and the seqs of each device are exactly 1..last_seq.
    """

    published: int
    """Messages handed to the MQTT client, good and malformed. At QoS 1 this includes messages
    queued while the broker was unreachable; the client sends them after reconnecting."""
    acked: int
    """QoS 1: PUBACKed by the broker as accepted. QoS 0: written to the socket."""
    malformed: int
    """How many of `published` were malformed payloads."""
    dropped: int
    """Messages the client refused (QoS 0 while disconnected). A dropped sample still used up
    its seq, as a real device's would: receivers see a gap."""
    rejected: int
    """QoS 1 messages the broker refused (MQTT 5 PUBACK with a failure reason code)."""
    lost: int
    """QoS 0 messages not yet written to the socket when a connection dropped."""
    connects: int
    """Successful connections: 1 plus one per reconnect after an outage."""
    disconnects: int
    """Connections lost or closed by the broker (not the fleet's own final disconnect)."""
    elapsed: float
    """Seconds spent publishing (excluding connect and drain)."""
    last_seq: Mapping[str, int]

    @property
    def rate(self) -> float:
        """Achieved publish rate in messages/s."""
        return self.published / self.elapsed if self.elapsed > 0 else 0.0

    def summary(self) -> str:
        """One human-readable line, for progress output."""
        return (
            f"published={self.published} acked={self.acked} malformed={self.malformed} "
            f"dropped={self.dropped} rejected={self.rejected} lost={self.lost} "
            f"connects={self.connects} disconnects={self.disconnects} "
            f"elapsed={self.elapsed:.1f}s rate={self.rate:.0f}/s"
        )


class _AckingClient(LoopClient):
    """A LoopClient that also reads the PUBACKs one read brought whole, itself.

    paho reads each PUBACK in three steps and decodes it into a new ReasonCode and
    Properties object: at QoS 1 that was half of a fleet process's CPU, and the benchmark's
    simulators ran out before the gateway did. What follows is paho's own `_do_on_publish`
    (forget the message, wake its MessageInfo, call `on_publish`), given shared objects.
    """

    def _reads_itself(self, header: int) -> bool:
        return header == _PUBACK or super()._reads_itself(header)

    def _handle_whole(self, header: int, packet: bytes, at: int, stop: int) -> None:
        if header != _PUBACK:
            super()._handle_whole(header, packet, at, stop)
            return
        if stop - at < 2:
            raise MalformedPacket("PUBACK shorter than its packet id")
        mid = int.from_bytes(packet[at : at + 2])
        code = packet[at + 2] if stop - at > 2 else 0  # MQTT 5 may add a reason code
        reason = _ACCEPTED if code == 0 else ReasonCode(PacketTypes.PUBACK, identifier=code)
        with self._out_message_mutex:
            if mid in self._out_messages:  # else not ours (any more): paho ignores it too
                self._do_on_publish(mid, reason, _NO_PROPERTIES)


class MqttSensorFleet:
    """Publishes samples of N simulated sensors round-robin at a total rate.

    Either call `run()` (blocks), or `start()` then `wait()`/`stop()` to publish from a
    background thread while other code (e.g. an asyncio gateway under test) runs. A fleet runs
    once; create a new one for another run.

    One thread does everything: it publishes a burst of due messages, then does paho's network
    work (`loop_write`, `loop_read`, `loop_misc`) until the next message is due. paho's own
    network thread (`loop_start`) would cost a wake-up and a GIL hand-over per message, and
    paho's in-flight limit scans all in-flight messages on every PUBACK; both halved the
    throughput, so the fleet runs the network loop itself and keeps its own `max_inflight`
    window instead.

    If the broker goes away the fleet reconnects every 0.5 s. At QoS 1 publishing goes on into
    paho's queue until the `max_inflight` window is full, then waits; after the reconnect paho
    resends them and the fleet resumes its schedule (catching up at most _MAX_LAG_S worth of
    messages). At QoS 0, messages published while disconnected are `dropped`.
    """

    def __init__(self, config: FleetConfig) -> None:
        self.config = config
        self._sensors = make_sensors(config.sensors, config.seed, config.first_device)
        self._topics = [state_topic(config.prefix, s.device_id) for s in self._sensors]
        self._rng = random.Random(f"{config.seed}:malformed")
        self._next = 0
        self._stop = threading.Event()
        self._claimed = False
        self._thread: threading.Thread | None = None
        self._error: BaseException | None = None
        self._connect_failure = ""
        self._next_connect_at = 0.0
        # Counters: written by the thread that runs the fleet only, read by stats() from any.
        self._published = 0
        self._malformed = 0
        self._dropped = 0
        self._acked = 0
        self._rejected = 0
        self._lost = 0
        self._connects = 0
        self._disconnects = 0
        self._started_at: float | None = None
        self._elapsed: float | None = None

    # -- public API ---------------------------------------------------------------------------

    def run(self, count: int | None = None, duration: float | None = None) -> FleetStats:
        """Publish until `count` messages, `duration` seconds or `stop()`, whichever is first.

        Returns once the broker has acknowledged every published message (or `drain_timeout`
        passed), so with a fixed count at QoS 1, `acked == count` means all were handed over.
        Raises ConnectionError if the broker cannot be reached within `connect_timeout`.
        """
        self._claim(count, duration)
        return self._run(count, duration)

    def start(self, count: int | None = None, duration: float | None = None) -> None:
        """Like `run()`, in a daemon thread; collect the result with `wait()` or `stop()`."""
        self._claim(count, duration)
        self._thread = threading.Thread(
            target=self._run_in_thread,
            args=(count, duration),
            name="mqtt-sensor-fleet",
            daemon=True,
        )
        self._thread.start()

    def wait(self, timeout: float | None = None) -> FleetStats:
        """Wait for a `start()`ed run to finish; re-raises its error. TimeoutError if still busy."""
        if self._thread is None:
            raise RuntimeError("wait() needs a fleet that was start()ed")
        self._thread.join(timeout)
        if self._thread.is_alive():
            raise TimeoutError(f"fleet still running after {timeout}s")
        if self._error is not None:
            raise self._error
        return self.stats()

    def request_stop(self) -> None:
        """Ask the run to finish (it still drains); safe from any thread and signal handlers."""
        self._stop.set()

    def stop(self, timeout: float | None = None) -> FleetStats:
        """Stop a `start()`ed run and return its final stats."""
        self.request_stop()
        return self.wait(timeout)

    @property
    def running(self) -> bool:
        return self._thread is not None and self._thread.is_alive()

    def stats(self) -> FleetStats:
        """A snapshot of the counters; callable at any time from any thread."""
        if self._elapsed is not None:
            elapsed = self._elapsed
        elif self._started_at is not None:
            elapsed = time.monotonic() - self._started_at
        else:
            elapsed = 0.0
        return FleetStats(
            published=self._published,
            acked=self._acked,
            malformed=self._malformed,
            dropped=self._dropped,
            rejected=self._rejected,
            lost=self._lost,
            connects=self._connects,
            disconnects=self._disconnects,
            elapsed=elapsed,
            last_seq={s.device_id: s.seq for s in self._sensors},
        )

    def __enter__(self) -> MqttSensorFleet:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if self._thread is not None:
            self.request_stop()
            self._thread.join()

    # -- the run ------------------------------------------------------------------------------

    def _claim(self, count: int | None, duration: float | None) -> None:
        if count is not None and count < 0:
            raise ValueError(f"count must be >= 0, got {count}")
        if duration is not None and not duration >= 0:
            raise ValueError(f"duration must be >= 0, got {duration}")
        if self._claimed:
            raise RuntimeError("a fleet runs once; create a new MqttSensorFleet")
        self._claimed = True

    def _run_in_thread(self, count: int | None, duration: float | None) -> None:
        try:
            self._run(count, duration)
        except BaseException as exc:  # handed to the thread calling wait()
            self._error = exc

    def _run(self, count: int | None, duration: float | None) -> FleetStats:
        cfg = self.config
        client_id = cfg.client_id or f"edge-gateway-sim-{secrets.token_hex(4)}"
        # The gateway's LoopClient: what one pass writes goes out in one send(), not one per
        # message (at 10,000 messages/s paho's own writes cost the fleet half a core).
        client = _AckingClient(
            CallbackAPIVersion.VERSION2, client_id=client_id, protocol=cfg.protocol
        )
        client.max_inflight_messages_set(0)  # no limit in paho: see the class docstring
        client.max_queued_messages_set(0)  # unlimited: never refuse a QoS 1 message locally
        client.on_connect = self._on_connect
        client.on_disconnect = self._on_disconnect
        client.on_publish = self._on_publish
        # Having this callback makes publish() queue packets instead of writing each at once;
        # _pump() writes them (client.want_write()) once per pass.
        client.on_socket_register_write = _ignore_socket
        client.connect_async(cfg.host, cfg.port, cfg.keepalive)  # connects in _pump()
        try:
            if self._wait_connected(client):
                self._publish_loop(client, count, duration)
                self._drain(client)
        finally:
            self._close(client)
        return self.stats()

    def _wait_connected(self, client: _AckingClient) -> bool:
        """True once connected; False if stopped first. Raises ConnectionError on timeout."""
        deadline = time.monotonic() + self.config.connect_timeout
        while self._connects == 0:
            if self._stop.is_set():
                return False
            if time.monotonic() >= deadline:
                cfg = self.config
                why = f" ({self._connect_failure})" if self._connect_failure else ""
                raise ConnectionError(
                    f"no MQTT connection to {cfg.host}:{cfg.port} within "
                    f"{cfg.connect_timeout:g}s{why}; is the broker running?"
                )
            self._pump(client, 0.01)
        return True

    def _publish_loop(
        self, client: _AckingClient, count: int | None, duration: float | None
    ) -> None:
        """Publish against a monotonic schedule: message k is due at start + k/rate.

        Each pass publishes every message that is due (at most _MAX_BURST_S worth and what the
        in-flight window allows), then does network work until the next message is due. So the
        rate stays exact without a sleep per message. After an outage or a stall the fleet
        catches up at most _MAX_LAG_S worth of messages and skips the rest of the missed slots.
        """
        rate = self.config.rate
        window = self.config.max_inflight
        burst_cap = max(1, math.ceil(rate * _MAX_BURST_S))
        start = self._started_at = time.monotonic()
        deadline = math.inf if duration is None else start + duration
        limit = math.inf if count is None else count
        sent = 0
        try:
            while sent < limit and not self._stop.is_set():
                now = time.monotonic()
                if (now - start) * rate - sent > rate * _MAX_LAG_S:
                    start = now - sent / rate - _MAX_LAG_S
                if now < deadline:
                    due = min(math.floor((now - start) * rate) + 1, limit)
                else:  # the slots before the deadline, then stop
                    due = min(math.ceil((deadline - start) * rate - 1e-9), limit)
                burst = max(0, min(int(due) - sent, burst_cap, window - self._outstanding()))
                for _ in range(burst):
                    self._publish_one(client)
                sent += burst
                if sent >= limit or now >= deadline:
                    break
                if sent < due and self._outstanding() < window:
                    wait = 0.0  # behind schedule
                else:  # until the next message is due (or the window has room)
                    wait = max(start + sent / rate - time.monotonic(), _MIN_TICK_S)
                    wait = min(wait, deadline - time.monotonic(), _MAX_WAIT_S)
                self._pump(client, wait)
        finally:
            self._elapsed = time.monotonic() - self._started_at

    def _publish_one(self, client: mqtt.Client) -> None:
        index = self._next
        self._next = (index + 1) % len(self._sensors)
        fraction = self.config.malformed_fraction
        malformed = fraction > 0 and self._rng.random() < fraction
        if malformed:
            payload = self._rng.choice(MALFORMED_PAYLOADS)
        else:
            payload = self._sensors[index].sample().to_payload()
        qos = self.config.qos
        rc = client.publish(self._topics[index], payload, qos).rc
        # At QoS 1 a NO_CONN message stays in paho's queue and is sent after the reconnect.
        if rc == MQTTErrorCode.MQTT_ERR_SUCCESS or (rc == MQTTErrorCode.MQTT_ERR_NO_CONN and qos):
            self._published += 1
            if malformed:
                self._malformed += 1
        else:
            self._dropped += 1

    def _outstanding(self) -> int:
        """Messages handed to paho whose fate is not known yet."""
        return self._published - self._acked - self._rejected - self._lost

    def _drain(self, client: _AckingClient) -> None:
        """Wait until the broker has acknowledged everything published, or drain_timeout."""
        deadline = time.monotonic() + self.config.drain_timeout
        while self._outstanding() > 0 and time.monotonic() < deadline:
            self._pump(client, 0.01)

    def _close(self, client: mqtt.Client) -> None:
        """Disconnect cleanly: paho writes DISCONNECT, then closes the socket."""
        client.disconnect()
        deadline = time.monotonic() + 1.0
        while client.socket() is not None and time.monotonic() < deadline:
            client.loop_write()
            time.sleep(0.001)

    # -- network work -------------------------------------------------------------------------

    def _pump(self, client: _AckingClient, wait: float) -> None:
        """Write what is queued, sleep `wait` seconds, then handle what arrived meanwhile.

        Sleeping instead of waking up in select() for each PUBACK handles the acks of a whole
        tick in one pass; the socket buffers them meanwhile.
        """
        wait = max(wait, 0.0)
        if client.socket() is None:
            self._try_connect(client)
        if client.socket() is None:
            time.sleep(wait)
            return
        ok = MQTTErrorCode.MQTT_ERR_SUCCESS
        rc = client.loop_write() if client.want_write() else ok
        time.sleep(wait)
        if rc == ok:
            rc = client.loop_read()  # returns at once if nothing has arrived
        while rc == ok and client.has_unread():  # one packet a call: all that one read brought
            rc = client.loop_read()
        if rc == ok and client.want_write():
            rc = client.loop_write()
        if rc == ok:
            client.loop_misc()  # keepalive pings

    def _try_connect(self, client: mqtt.Client) -> None:
        now = time.monotonic()
        if now < self._next_connect_at:
            return
        self._next_connect_at = now + _RECONNECT_S
        try:
            client.reconnect()  # sends CONNECT; _on_connect sees the CONNACK
        except OSError as exc:
            self._connect_failure = str(exc)

    # -- paho callbacks -----------------------------------------------------------------------

    def _on_connect(
        self,
        client: mqtt.Client,
        userdata: Any,
        flags: mqtt.ConnectFlags,
        reason_code: ReasonCode,
        properties: Properties | None,
    ) -> None:
        if reason_code.is_failure:
            self._connect_failure = f"broker refused: {reason_code}"
        else:
            self._connects += 1

    def _on_disconnect(
        self,
        client: mqtt.Client,
        userdata: Any,
        flags: mqtt.DisconnectFlags,
        reason_code: ReasonCode,
        properties: Properties | None,
    ) -> None:
        if reason_code.is_failure:  # not our own disconnect() at the end of a run
            self._disconnects += 1
        if self.config.qos == 0:
            # paho discards unwritten QoS 0 messages with the connection, without on_publish.
            self._lost = self._published - self._acked - self._rejected

    def _on_publish(
        self,
        client: mqtt.Client,
        userdata: Any,
        mid: int,
        reason_code: ReasonCode,
        properties: Properties,
    ) -> None:
        if reason_code.is_failure:
            self._rejected += 1
        else:
            self._acked += 1


def _ignore_socket(client: mqtt.Client, userdata: Any, sock: mqtt.SocketLike) -> None:
    """paho's socket-registration hook; the fleet polls `want_write()` itself."""
