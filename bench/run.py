"""The benchmark: simulated MQTT sensors -> Mosquitto -> gateway -> RabbitMQ -> a counting consumer.

    python -m bench.run              # full run, about 5 minutes on 2 cores
    python -m bench.run --quick      # the main table only, shorter windows (about 1.5 minutes)
    python -m bench.run --json out.json

The same run measures the gateway (its default settings) and a minimal direct bridge
(`bench/direct_bridge.py`: paho-mqtt -> aio-pika with confirms, one reading per message, no
buffer), each as a child process against fresh private brokers on 127.0.0.1, and prints one
table with both and their ratio, against the targets. Then, with the gateway only, it measures
Mosquitto settings (in-flight window, queue) and probes which of Mosquitto's limits applies.

Phases, per system under test (SUT):

1. 1,000 readings/s at QoS 1: end-to-end latency (consumer arrival minus the simulator's
   sampling time `ts`), the SUT's CPU time and bytes written (/proc/PID/stat and io) over a
   steady window; then a second window with `strace -f -c` attached to count fsyncs (strace
   slows the process, so CPU and latency come from the first window only).
2. Overload at QoS 1, then at QoS 0: simulator processes publish as fast as they can; the
   sustained rate is what the consumer receives over a steady window.
3. Peak RSS: VmHWM at the end, after the overload phases.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import math
import os
import platform
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field, replace
from datetime import UTC, datetime
from pathlib import Path
from typing import IO, Any

import aio_pika
from edge_gateway_sim.brokers import MosquittoBroker, RabbitMQNode
from edge_gateway_sim.consumer import ReadingCollector
from edge_gateway_sim.gateway_process import GatewayProcess, site_config
from edge_gateway_sim.mqtt_sensors import make_sensors

from bench import mosquitto_limits, procfs

EXCHANGE = "bench"
PREFIX = "bench"
SITE = "bench"
LATENCY_RATE = 1000


@dataclass(frozen=True, slots=True)
class Plan:
    """How long each phase runs (seconds) and what it offers."""

    warmup: float = 4.0
    latency_window: float = 15.0
    strace_window: float = 8.0
    step_settle: float = 2.5
    step_window: float = 4.0
    ramp_start: float = 2000.0
    ramp_factor: float = 1.6
    ramp_steps: int = 7
    drain_max: float = 30.0
    sensors: int = 10
    """Simulated devices. The gateway's default routing key is per device and a message holds
    one routing key, so at a fixed rate more devices mean fewer readings per AMQP message."""
    more_sensors: int = 100
    """Full run: the gateway's 1,000/s phase again with this many devices (0: skip)."""
    per_device_routing: bool = True
    """Full run: the 1,000/s phase with a gateway whose routing key names the device, so that
    each message holds one device's readings (the default `{site}` puts a commit in one)."""
    matrix: bool = True
    limits_probe: bool = True


FULL = Plan()
QUICK = Plan(
    warmup=2.0,
    latency_window=6.0,
    strace_window=8.0,  # as long as the full run's: a checkpoint's 2 fsyncs skew a short one
    step_settle=1.5,
    step_window=3.0,
    ramp_factor=2.0,
    ramp_steps=5,
    drain_max=20.0,
    more_sensors=0,
    per_device_routing=False,
    matrix=False,
    limits_probe=False,
)
ONE_FLEET_MAX = 5_000.0
"""Offered rates above this are split over two simulator processes."""


TARGETS: dict[str, tuple[str, float]] = {
    # key: (comparison, bound)
    "qos1_readings_per_s": (">=", 10_000),
    "latency_p99_ms": ("<=", 60),
    "fsyncs_per_s": ("<=", 25),
    "cpu_ms_per_1000": ("<=", 150),
    "bytes_written_per_payload_byte": ("<=", 3),
    "peak_rss_mb": ("<=", 50),
}


def say(text: str) -> None:
    print(f"bench: {text}", file=sys.stderr, flush=True)


# --------------------------------------------------------------------------------------------
# the systems under test


class BridgeProcess:
    """`python -m bench.direct_bridge ...` as a child process, its output in a log file."""

    def __init__(self, args: Sequence[str], log: Path) -> None:
        self.args = list(args)
        self.log = log
        self.process: subprocess.Popen[bytes] | None = None
        self._log_file: IO[bytes] | None = None

    def start(self, ready_timeout: float = 20.0) -> None:
        self._log_file = self.log.open("ab")
        self.process = subprocess.Popen(
            [sys.executable, "-m", "bench.direct_bridge", *self.args],
            stdout=self._log_file,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            start_new_session=True,
        )
        deadline = time.monotonic() + ready_timeout
        while b"bridge started" not in self.log.read_bytes():
            if self.process.poll() is not None or time.monotonic() > deadline:
                self.close()
                raise RuntimeError(f"direct bridge did not start:\n{self.log.read_text()[-2000:]}")
            time.sleep(0.05)

    @property
    def pid(self) -> int:
        assert self.process is not None
        return self.process.pid

    def terminate(self, timeout: float = 30.0) -> int:
        assert self.process is not None
        self.process.send_signal(signal.SIGTERM)
        try:
            return self.process.wait(timeout)
        finally:
            self.close()

    def close(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.kill()
            self.process.wait()
        if self._log_file is not None:
            self._log_file.close()
            self._log_file = None


@dataclass
class Sut:
    """A started system under test and how to read its own figures."""

    kind: str  # "gateway" | "bridge"
    process: GatewayProcess | BridgeProcess
    state_dir: Path | None = None

    @property
    def pid(self) -> int:
        return self.process.pid

    def commits(self) -> tuple[int, float] | None:
        """The gateway's own commit counter and when it was reported (status.json)."""
        if self.state_dir is None:
            return None
        try:
            live = json.loads((self.state_dir / "status.json").read_text())
        except (OSError, ValueError):
            return None
        return int(live["buffer"]["commits"]), float(live["updated"])


def start_gateway(
    base: Path,
    amqp_url: str,
    mqtt_port: int,
    extra_mqtt: str = "",
    name: str = "gateway",
    extra_amqp: str = "",
) -> Sut:
    state = base / f"{name}-state"
    config = base / f"{name}.yaml"
    config.write_text(
        site_config(
            state_dir=state,
            amqp_url=amqp_url,
            mqtt_port=mqtt_port,
            exchange=EXCHANGE,
            site=SITE,
            prefix=PREFIX,
            extra_mqtt=f"client_id: bench-{name}\n{extra_mqtt}",
            extra_amqp=extra_amqp,
        )
    )
    process = GatewayProcess(config, base / f"{name}.log")
    try:
        process.start()
    except BaseException:
        process.close()
        raise
    return Sut("gateway", process, state)


def start_bridge(base: Path, amqp_url: str, mqtt_port: int) -> Sut:
    process = BridgeProcess(
        [
            "--mqtt-port",
            str(mqtt_port),
            "--amqp-url",
            amqp_url,
            "--exchange",
            EXCHANGE,
            "--topic",
            f"{PREFIX}/+/state",
            "--site",
            SITE,
        ],
        base / "bridge.log",
    )
    process.start()
    return Sut("bridge", process)


def stop_sut(sut: Sut) -> None:
    try:
        sut.process.terminate(30)
    except subprocess.TimeoutExpired:
        say(f"{sut.kind} did not stop in 30 s; killed")
    finally:
        sut.process.close()


# --------------------------------------------------------------------------------------------
# load


class Fleets:
    """Simulator processes (`bench.fleet`), each publishing its own devices."""

    _next_device = 1

    def __init__(
        self,
        mqtt_port: int,
        *,
        rate: float,
        duration: float,
        qos: int,
        sensors: int,
        processes: int = 1,
    ) -> None:
        self.args = []
        sensors = max(1, sensors // processes)  # the same devices in all, split over processes
        for _ in range(processes):
            first = Fleets._next_device
            Fleets._next_device += sensors
            self.args.append(
                [
                    "--port",
                    str(mqtt_port),
                    "--rate",
                    str(rate / processes),
                    "--duration",
                    str(duration),
                    "--qos",
                    str(qos),
                    "--sensors",
                    str(sensors),
                    "--first-device",
                    str(first),
                    "--prefix",
                    PREFIX,
                ]
            )
        self.procs: list[asyncio.subprocess.Process] = []

    async def start(self) -> None:
        for args in self.args:
            proc = await asyncio.create_subprocess_exec(
                sys.executable,
                "-m",
                "bench.fleet",
                *args,
                stdout=asyncio.subprocess.PIPE,
                stderr=asyncio.subprocess.PIPE,
                stdin=asyncio.subprocess.DEVNULL,
            )
            self.procs.append(proc)
            OURS.add(proc.pid)

    async def wait(self) -> dict[str, float]:
        """Summed stats of all processes: published, acked, dropped, rate (acked per second)."""
        total = {"published": 0.0, "acked": 0.0, "dropped": 0.0, "rate": 0.0}
        for proc in self.procs:
            out, err = await proc.communicate()
            if proc.returncode != 0:
                raise RuntimeError(f"fleet failed ({proc.returncode}): {err.decode()[-1000:]}")
            stats = json.loads(out.decode().strip().splitlines()[-1])
            for key in ("published", "acked", "dropped"):
                total[key] += stats[key]
            total["rate"] += stats["acked"] / stats["elapsed"] if stats["elapsed"] else 0.0
        return total

    def kill(self) -> None:
        for proc in self.procs:
            if proc.returncode is None:
                with contextlib.suppress(ProcessLookupError):
                    proc.kill()


def mean_payload_bytes(sensors: int, count: int) -> float:
    """Mean size of the simulator's JSON payloads for `count` samples over `sensors` devices
    (seq grows, so later payloads are a digit longer)."""
    fleet = make_sensors(sensors)
    total = 0
    for i in range(count):
        total += len(fleet[i % sensors].sample().to_payload())
    return total / count


# --------------------------------------------------------------------------------------------
# measurement


async def drain(collector: ReadingCollector, quiet: float = 1.5, limit: float = 30.0) -> bool:
    """Wait until the consumer has received nothing new for `quiet` seconds (True), or `limit`
    seconds passed (False: a backlog is left for the next phase)."""
    deadline = time.monotonic() + limit
    last, since = collector.received.readings, time.monotonic()
    while time.monotonic() < deadline:
        await asyncio.sleep(0.1)
        now = collector.received.readings
        if now != last:
            last, since = now, time.monotonic()
        elif time.monotonic() - since >= quiet:
            return True
    return False


def percentile(values: Sequence[float], q: float) -> float:
    """Nearest-rank percentile (q in 0..100) of unsorted values."""
    if not values:
        return math.nan
    ordered = sorted(values)
    rank = max(1, math.ceil(q / 100 * len(ordered)))
    return ordered[rank - 1]


OURS: set[int] = {os.getpid()}
"""Processes this benchmark started (brokers, SUT, simulators) and itself: the rest of the
machine's CPU use is other load, reported so that a busy machine shows in the figures."""


def ours_cpu_s() -> float:
    total = 0.0
    for pid in list(OURS):
        try:
            total += procfs.sample(pid).cpu_s
        except (OSError, ValueError):
            OURS.discard(pid)
    return total


@dataclass(frozen=True, slots=True)
class Mark:
    """Everything read at one edge of a measurement window."""

    machine: procfs.MachineSample
    ours_cpu_s: float
    proc: procfs.ProcSample
    latencies: int
    readings: int
    messages: int
    commits: tuple[int, float] | None


def mark(sut: Sut, collector: ReadingCollector) -> Mark:
    got = collector.received
    return Mark(
        procfs.machine(),
        ours_cpu_s(),
        procfs.sample(sut.pid),
        len(got.latencies),
        got.unique,  # duplicates (redeliveries) are not throughput
        got.messages,
        sut.commits(),
    )


def other_load(a: Mark, b: Mark) -> dict[str, float]:
    """Machine CPU use over a window, in cores: all, ours, and everybody else's."""
    seconds = b.machine.at - a.machine.at
    busy = (b.machine.busy_s - a.machine.busy_s) / seconds
    ours = (b.ours_cpu_s - a.ours_cpu_s) / seconds
    return {
        "machine_busy_cores": round(busy, 2),
        "ours_cores": round(ours, 2),
        "others_cores": round(max(0.0, busy - ours), 2),
    }


async def latency_phase(
    sut: Sut, collector: ReadingCollector, mqtt_port: int, plan: Plan, *, strace: bool = True
) -> dict:
    """1,000 readings/s at QoS 1: latency, CPU, disk writes, then fsyncs with strace."""
    got = collector.received
    strace_s = plan.strace_window if strace and procfs.SyscallCounter.available() else 0.0
    duration = plan.warmup + plan.latency_window + strace_s + 1.0
    fleets = Fleets(
        mqtt_port, rate=LATENCY_RATE, duration=duration, qos=1, sensors=plan.sensors, processes=1
    )
    start_readings = got.unique
    await fleets.start()
    try:
        await asyncio.sleep(plan.warmup)
        a = mark(sut, collector)
        await asyncio.sleep(plan.latency_window)
        b = mark(sut, collector)
        traced: dict[str, Any] = {}
        if strace_s > 0:
            traced = await strace_window(sut, collector, strace_s)
        fleet = await fleets.wait()
    finally:
        fleets.kill()
    drained = await drain(collector, limit=plan.drain_max)
    readings = b.readings - a.readings
    window = b.proc.at - a.proc.at
    lat = got.latencies[a.latencies : b.latencies]
    payload = mean_payload_bytes(plan.sensors, int(duration * LATENCY_RATE))
    cpu = b.proc.cpu_s - a.proc.cpu_s
    written = b.proc.write_bytes - a.proc.write_bytes
    cancelled = b.proc.cancelled_write_bytes - a.proc.cancelled_write_bytes
    per_reading = written / readings if readings else math.nan
    messages = b.messages - a.messages
    commits_per_s = _rate(a.commits, b.commits)
    return {
        "sensors": plan.sensors,
        "offered_per_s": fleet["rate"],
        "delivered_per_s": readings / window,
        "window_s": round(window, 2),
        "readings_in_window": readings,
        "readings_per_message": readings / messages if messages else math.nan,
        "latency_samples": len(lat),
        "latency_p50_ms": 1e3 * percentile(lat, 50),
        "latency_p90_ms": 1e3 * percentile(lat, 90),
        "latency_p99_ms": 1e3 * percentile(lat, 99),
        "latency_max_ms": 1e3 * max(lat) if lat else math.nan,
        "cpu_ms_per_1000": 1e6 * cpu / readings if readings else math.nan,
        "cpu_percent": 100 * cpu / window,
        "write_bytes": written,
        "cancelled_write_bytes": cancelled,
        "bytes_written_per_reading": per_reading,
        "net_bytes_written_per_reading": (written - cancelled) / readings if readings else math.nan,
        "payload_bytes": payload,
        "bytes_written_per_payload_byte": per_reading / payload,
        "commits_per_s": commits_per_s,
        "fsyncs_per_s": _fsyncs(traced, commits_per_s),
        "load": other_load(a, b),
        "strace": traced,
        "not_delivered": fleet["acked"] - (got.unique - start_readings),
        "drained": drained,
        "memory_kib": procfs.memory_kib(sut.pid),
    }


async def strace_window(sut: Sut, collector: ReadingCollector, seconds: float) -> dict[str, Any]:
    """Count fsync-family calls with strace attached for `seconds`; also what it cost."""
    got = collector.received
    fd, name = tempfile.mkstemp(prefix="bench-strace-", suffix=".txt")
    os.close(fd)
    out = Path(name)
    try:
        counter = procfs.SyscallCounter(sut.pid, out)
        await asyncio.sleep(0.3)  # attached to every thread by then
        a = mark(sut, collector)
        await asyncio.sleep(seconds)
        b = mark(sut, collector)
        counts = await asyncio.to_thread(counter.stop)
    finally:
        os.unlink(out)
    readings = b.readings - a.readings
    return {
        "seconds": round(counter.elapsed, 2),
        "calls": counts,
        "fsyncs_per_s": sum(counts.values()) / counter.elapsed,
        "cpu_ms_per_1000": 1e6 * (b.proc.cpu_s - a.proc.cpu_s) / readings if readings else None,
        "latency_p99_ms": 1e3 * percentile(got.latencies[a.latencies : b.latencies], 99),
        "commits_per_s": _rate(a.commits, b.commits),
        "load": other_load(a, b),
    }


def _fsyncs(traced: dict[str, Any], commits_per_s: float | None) -> float | None:
    """fsyncs per second of the process undisturbed by strace.

    strace stops every thread at every system call, which slows the gateway's intake loop and
    so its group commits (a commit waits for the next put): counted while traced, fsyncs per
    second come out too low. fsyncs per commit do not depend on that, so: fsyncs per commit
    (traced window) x commits per second (the gateway's own counter, untraced window). A
    process without a commit counter (the bridge) gets the traced rate as it is."""
    if not traced:
        return None
    traced_commits = traced.get("commits_per_s")
    if commits_per_s is None or not traced_commits:
        return float(traced["fsyncs_per_s"])
    return float(traced["fsyncs_per_s"]) / traced_commits * commits_per_s


def _rate(a: tuple[int, float] | None, b: tuple[int, float] | None) -> float | None:
    if a is None or b is None or b[1] <= a[1]:
        return None
    return (b[0] - a[0]) / (b[1] - a[1])


async def ramp_phase(
    sut: Sut,
    collector: ReadingCollector,
    mqtt_port: int,
    plan: Plan,
    qos: int,
    start: float | None = None,
    factor: float | None = None,
    max_steps: int | None = None,
) -> dict:
    """Offer rising rates until the SUT falls behind twice in a row: its sustained throughput is
    the most the consumer received (distinct readings, not redeliveries) per second over a
    step's steady window. Offering just above what the system takes (not a flood) keeps the
    simulators from starving it of CPU on a small machine. Mosquitto drops what it cannot
    queue; that is counted, not retried."""
    got = collector.received
    rate = start or plan.ramp_start
    factor = factor or plan.ramp_factor
    start_readings = got.unique
    steps: list[dict[str, Any]] = []
    published = 0.0
    failures = 0
    limited = False
    for _ in range(max_steps or plan.ramp_steps):
        processes = 1 if rate <= ONE_FLEET_MAX else 2
        fleets = Fleets(
            mqtt_port,
            rate=rate,
            duration=plan.step_settle + plan.step_window,
            qos=qos,
            sensors=plan.sensors,
            processes=processes,
        )
        await fleets.start()
        try:
            await asyncio.sleep(plan.step_settle)
            a = mark(sut, collector)
            await asyncio.sleep(plan.step_window)
            b = mark(sut, collector)
            fleet = await fleets.wait()
        finally:
            fleets.kill()
        published += fleet["acked"]
        window = b.proc.at - a.proc.at
        step = {
            "target_per_s": rate,
            "offered_per_s": fleet["rate"],
            "delivered_per_s": (b.readings - a.readings) / window,
            "readings_per_message": (b.readings - a.readings) / max(1, b.messages - a.messages),
            "cpu_percent": 100 * (b.proc.cpu_s - a.proc.cpu_s) / window,
            "load": other_load(a, b),
        }
        behind = step["delivered_per_s"] < 0.9 * fleet["rate"]
        step["kept_up"] = not behind
        steps.append(step)
        say(
            f"  QoS {qos}: offered {step['offered_per_s']:,.0f}/s, "
            f"delivered {step['delivered_per_s']:,.0f}/s"
        )
        if fleet["rate"] < 0.8 * rate:
            limited = not behind  # the simulators cannot offer more on this machine
            break
        if behind:
            failures += 1
            if failures == 2:
                break  # behind twice in a row (once may be a neighbour's burst of CPU use)
        else:
            failures = 0
        rate *= factor
    drained = await drain(collector, limit=plan.drain_max)
    # A step that fell behind shows the most the SUT takes; with steps x1.6 apart, the best
    # one that kept up would understate it by up to that factor (each step says which it was).
    best = max(steps, key=lambda step: step["delivered_per_s"])
    result: dict[str, Any] = {
        "qos": qos,
        "delivered_per_s": best["delivered_per_s"],
        "best_step": best,
        "steps": steps,
        "published": int(published),
        "not_delivered": int(published - (got.unique - start_readings)),
        "drained": drained,
        "limited_by_simulators": limited,
    }
    return result


async def measure_system(kind: str, base: Path, plan: Plan) -> dict:
    """Fresh brokers, the SUT, the consumer; the latency phase then the overload phases."""
    os.makedirs(base)
    say(f"{kind}: starting RabbitMQ and Mosquitto (defaults)")
    node = RabbitMQNode(base / "rabbitmq", kind)
    mosquitto = MosquittoBroker(base / "mosquitto")
    try:
        await asyncio.to_thread(node.start)
        mosquitto.start()
        OURS.update(pid for pid in (node.pid, mosquitto.pid) if pid is not None)
        calibration = {}
        if kind == "bridge":
            say("bridge: aio-pika alone, persistent messages with confirms (calibration)")
            calibration["aio_pika_confirms_per_s"] = await aio_pika_confirm_rate(node.url)
        async with ReadingCollector(
            node.url, EXCHANGE, queue=f"bench-{kind}", measure_latency=True
        ) as collector:
            starter = start_gateway if kind == "gateway" else start_bridge
            sut = await asyncio.to_thread(starter, base, node.url, mosquitto.port)
            OURS.add(sut.pid)
            try:
                say(f"{kind}: {LATENCY_RATE} readings/s at QoS 1 ({plan.sensors} sensors)")
                result: dict[str, Any] = {"calibration": calibration}
                result["memory_at_start_kib"] = procfs.memory_kib(sut.pid)
                result["latency"] = await latency_phase(sut, collector, mosquitto.port, plan)
                for qos in (1, 0):
                    say(f"{kind}: throughput at QoS {qos}, rising offered rate")
                    result[f"qos{qos}"] = await ramp_phase(
                        sut, collector, mosquitto.port, plan, qos
                    )
                if kind == "gateway" and plan.more_sensors:
                    more = replace(plan, sensors=plan.more_sensors, latency_window=10.0)
                    say(f"{kind}: {LATENCY_RATE} readings/s with {more.sensors} sensors")
                    result["latency_more_sensors"] = await latency_phase(
                        sut, collector, mosquitto.port, more, strace=False
                    )
                result["memory_kib"] = procfs.memory_kib(sut.pid)
            finally:
                await asyncio.to_thread(stop_sut, sut)
            if kind == "gateway" and plan.per_device_routing:
                result["latency_per_device"] = await per_device_phase(
                    base, node.url, collector, mosquitto.port, plan
                )
            if kind == "gateway" and plan.matrix:
                rate = 1.5 * result["qos1"]["delivered_per_s"]
                say(f"settings: offering {rate:,.0f}/s at QoS 1 with other settings")
                result["mosquitto_settings"] = await settings_matrix(
                    base, node.url, collector, plan, rate
                )
    finally:
        await asyncio.to_thread(mosquitto.close)
        await asyncio.to_thread(node.close)
    return result


async def per_device_phase(
    base: Path, amqp_url: str, collector: ReadingCollector, mqtt_port: int, plan: Plan
) -> dict[str, Any]:
    say(f"gateway: {LATENCY_RATE} readings/s with routing key {{site}}.{{device}}")
    sut = await asyncio.to_thread(
        start_gateway,
        base,
        amqp_url,
        mqtt_port,
        name="gateway-per-device",
        extra_amqp='routing_key: "{site}.{device}"',
    )
    OURS.add(sut.pid)
    try:
        return await latency_phase(
            sut, collector, mqtt_port, replace(plan, latency_window=10.0), strace=False
        )
    finally:
        await asyncio.to_thread(stop_sut, sut)


MATRIX: tuple[tuple[str, tuple[str, ...], str], ...] = (
    # (label, mosquitto.conf lines, gateway MQTT settings)
    ("Mosquitto defaults; gateway MQTT 3.1.1", (), 'protocol: "3.1.1"'),
    ("Mosquitto defaults; gateway MQTT 5, receive_maximum 100", (), "receive_maximum: 100"),
    (
        "max_inflight_messages 0, max_queued_messages 100000; gateway MQTT 3.1.1",
        ("max_inflight_messages 0", "max_queued_messages 100000"),
        'protocol: "3.1.1"',
    ),
    (
        "max_queued_messages 100000; gateway MQTT 5, receive_maximum 2000 (default)",
        ("max_queued_messages 100000",),
        "",
    ),
)


async def settings_matrix(
    base: Path, amqp_url: str, collector: ReadingCollector, plan: Plan, rate: float
) -> list[dict]:
    """The gateway offered `rate` at QoS 1 (above what it takes) with other Mosquitto and MQTT
    settings: what it takes then, and what Mosquitto drops."""
    results = []
    for i, (label, broker_conf, mqtt_conf) in enumerate(MATRIX):
        say(f"settings: {label}")
        mosquitto = MosquittoBroker(base / f"mosquitto-{i}", list(broker_conf))
        try:
            mosquitto.start()
            sut = await asyncio.to_thread(
                start_gateway, base, amqp_url, mosquitto.port, mqtt_conf, f"gateway-{i}"
            )
            OURS.update(pid for pid in (mosquitto.pid, sut.pid) if pid is not None)
            try:
                ramp = await ramp_phase(sut, collector, mosquitto.port, plan, 1, rate, 1.0, 1)
            finally:
                await asyncio.to_thread(stop_sut, sut)
        finally:
            await asyncio.to_thread(mosquitto.close)
        results.append({"settings": label, **ramp})
    return results


# --------------------------------------------------------------------------------------------
# report


@dataclass
class Row:
    label: str
    key: str
    gateway: float | None
    bridge: float | None
    fmt: str = "{:,.0f}"
    higher_is_better: bool = False
    notes: list[str] = field(default_factory=list)


def rows(result: dict) -> list[Row]:
    gw, br = result.get("gateway"), result.get("bridge")

    def pick(system: dict | None, *path: str) -> float | None:
        value: Any = system
        for key in path:
            if not isinstance(value, dict) or key not in value:
                return None
            value = value[key]
        return None if value is None else float(value)

    def peak(system: dict | None) -> float | None:
        kib = pick(system, "memory_kib", "VmHWM")
        return kib / 1024 if kib is not None else None

    return [
        Row(
            "sustained throughput, QoS 1 (readings/s)",
            "qos1_readings_per_s",
            pick(gw, "qos1", "delivered_per_s"),
            pick(br, "qos1", "delivered_per_s"),
            higher_is_better=True,
        ),
        Row(
            "sustained throughput, QoS 0 (readings/s)",
            "qos0_readings_per_s",
            pick(gw, "qos0", "delivered_per_s"),
            pick(br, "qos0", "delivered_per_s"),
            higher_is_better=True,
        ),
        Row(
            "latency p50 at 1,000/s (ms)",
            "latency_p50_ms",
            pick(gw, "latency", "latency_p50_ms"),
            pick(br, "latency", "latency_p50_ms"),
            "{:,.1f}",
        ),
        Row(
            "latency p99 at 1,000/s (ms)",
            "latency_p99_ms",
            pick(gw, "latency", "latency_p99_ms"),
            pick(br, "latency", "latency_p99_ms"),
            "{:,.1f}",
        ),
        Row(
            "CPU per 1,000 readings at 1,000/s (ms)",
            "cpu_ms_per_1000",
            pick(gw, "latency", "cpu_ms_per_1000"),
            pick(br, "latency", "cpu_ms_per_1000"),
        ),
        Row(
            "peak RSS (MiB, VmHWM)",
            "peak_rss_mb",
            peak(gw),
            peak(br),
            "{:,.1f}",
        ),
        Row(
            "fsyncs per second at 1,000/s",
            "fsyncs_per_s",
            pick(gw, "latency", "fsyncs_per_s"),
            pick(br, "latency", "fsyncs_per_s"),
            "{:,.1f}",
        ),
        Row(
            "bytes written to disk per reading",
            "bytes_written_per_reading",
            pick(gw, "latency", "bytes_written_per_reading"),
            pick(br, "latency", "bytes_written_per_reading"),
            "{:,.1f}",
        ),
        Row(
            "bytes written per payload byte",
            "bytes_written_per_payload_byte",
            pick(gw, "latency", "bytes_written_per_payload_byte"),
            pick(br, "latency", "bytes_written_per_payload_byte"),
            "{:,.2f}",
        ),
    ]


def verdict(key: str, value: float | None) -> tuple[str, str]:
    if key not in TARGETS:
        return "", ""
    op, bound = TARGETS[key]
    target = f"{op} {bound:,g}"
    if value is None or math.isnan(value):
        return target, "n/a"
    ok = value >= bound if op == ">=" else value <= bound
    return target, "PASS" if ok else "FAIL"


def render(result: dict) -> str:
    def fmt(row: Row, value: float | None) -> str:
        return "-" if value is None or math.isnan(value) else row.fmt.format(value)

    header = ("", "gateway", "direct bridge", "gateway/bridge", "target (gateway)", "")
    table = [header]
    footnotes: list[str] = []
    for row in rows(result):
        if row.gateway is not None and row.bridge:
            ratio = f"{row.gateway / row.bridge:,.2f}x"
        else:
            ratio = "-"
        target, mark = verdict(row.key, row.gateway)
        qos = {"qos1_readings_per_s": "qos1", "qos0_readings_per_s": "qos0"}.get(row.key)
        ramp = result.get("gateway", {}).get(qos or "", {})
        if ramp.get("limited_by_simulators") and mark == "FAIL":
            mark = "n/a*"  # the gateway kept up with all that was offered
            footnotes.append(
                f"* {row.label}: the gateway delivered all the simulators could offer on this "
                f"machine ({ramp['steps'][-1]['offered_per_s']:,.0f}/s at the last step), so "
                "this is a lower bound, not its ceiling"
            )
        table.append((row.label, fmt(row, row.gateway), fmt(row, row.bridge), ratio, target, mark))
    widths = [max(len(line[i]) for line in table) for i in range(len(header))]
    lines = []
    for n, line in enumerate(table):
        cells = [line[0].ljust(widths[0])] + [
            c.rjust(w) for c, w in zip(line[1:], widths[1:], strict=True)
        ]
        lines.append("  ".join(cells).rstrip())
        if n == 0:
            lines.append("  ".join("-" * w for w in widths))
    out = ["\n".join(lines + footnotes)]
    confirms = result.get("bridge", {}).get("calibration", {}).get("aio_pika_confirms_per_s")
    if confirms:
        out.append(
            f"\ncalibration: aio-pika alone gets {confirms:,.0f} persistent messages/s confirmed "
            "(1,000 in flight): the ceiling of one reading per message"
        )
    for kind in ("gateway", "bridge"):
        system = result.get(kind)
        if not system:
            continue
        out.append("")
        lat = system["latency"]
        out.append(
            f"{kind} at 1,000/s, {lat['sensors']} sensors: {_f(lat['readings_per_message'])} "
            f"readings per AMQP message, p90 {_f(lat['latency_p90_ms'])} ms, max "
            f"{_f(lat['latency_max_ms'])} ms, CPU {_f(lat['cpu_percent'])}% of a core; "
            f"{_load(lat['load'])}"
        )
        start_mem = system.get("memory_at_start_kib", {}).get("VmRSS")
        if start_mem:
            out.append(
                f"  memory: {start_mem / 1024:.1f} MiB resident after start, "
                f"{lat['memory_kib']['VmHWM'] / 1024:.1f} MiB peak after the 1,000/s phase, "
                f"{system['memory_kib']['VmHWM'] / 1024:.1f} MiB peak after the overload steps"
            )
        if kind == "gateway":
            st = lat.get("strace") or {}
            out.append(
                f"  fsyncs: {_f(st.get('fsyncs_per_s'))}/s counted by strace -f in "
                f"{st.get('seconds')} s ({_calls(st.get('calls'))}) while the gateway's own "
                f"counter showed {_f(st.get('commits_per_s'))} commits/s; untraced it commits "
                f"{_f(lat.get('commits_per_s'))}/s, so {_f(lat.get('fsyncs_per_s'))} fsyncs/s. "
                f"strace's cost: CPU {_f(st.get('cpu_ms_per_1000'))} ms/1000 readings "
                f"(untraced {_f(lat['cpu_ms_per_1000'])}), p99 {_f(st.get('latency_p99_ms'))} ms"
            )
            out.append(
                f"  written: {lat['write_bytes']:,} B in {lat['window_s']} s "
                f"({_f(lat['bytes_written_per_reading'])} B/reading, "
                f"{_f(lat['net_bytes_written_per_reading'])} net of cancelled), payload "
                f"{lat['payload_bytes']:.1f} B/reading"
            )
        for key, label in (
            ("latency_more_sensors", "{sensors} sensors"),
            ("latency_per_device", "{sensors} sensors, routing key {{site}}.{{device}}"),
        ):
            more = system.get(key)
            if more:
                out.append(
                    f"{kind} at 1,000/s, {label.format(sensors=more['sensors'])}: "
                    f"{_f(more['readings_per_message'])} readings per AMQP message, p50 "
                    f"{_f(more['latency_p50_ms'])} ms, p99 {_f(more['latency_p99_ms'])} ms, CPU "
                    f"{_f(more['cpu_ms_per_1000'])} ms per 1,000 readings; {_load(more['load'])}"
                )
        for qos in (1, 0):
            ramp = system.get(f"qos{qos}")
            if not ramp:
                continue
            steps = ", ".join(
                f"{st['offered_per_s']:,.0f}->{st['delivered_per_s']:,.0f}" for st in ramp["steps"]
            )
            best = ramp["best_step"]
            out.append(
                f"{kind} QoS {qos} steps, offered->delivered per s: {steps}; never delivered "
                f"{ramp['not_delivered']:,} of {ramp['published']:,}"
            )
            out.append(
                f"  best step: {_f(best['readings_per_message'])} readings per AMQP message, "
                f"CPU {best['cpu_percent']:.0f}% of a core, {_load(best['load'])}"
            )
    matrix = result.get("gateway", {}).get("mosquitto_settings")
    if matrix:
        offered = matrix[0]["steps"][0]["target_per_s"]
        out.append(
            f"\ngateway offered {offered:,.0f}/s at QoS 1, by Mosquitto and gateway MQTT settings:"
        )
        for case in matrix:
            out.append(
                f"  {case['settings']:<76} {case['delivered_per_s']:>7,.0f}/s delivered, "
                f"{case['not_delivered']:>7,} of {case['published']:>7,} never delivered"
            )
    noisy = disturbed(result)
    if noisy:
        out.append(
            "\nWARNING: other processes used the CPU during: "
            + "; ".join(noisy)
            + ". Those figures are pessimistic; run again on a quiet machine."
        )
    probe = result.get("mosquitto_limits")
    if probe:
        out.append("\nMosquitto: QoS 1 messages sent to a subscriber that does not acknowledge")
        for o in probe:
            out.append(
                f"  {o['case']:<76} in flight {o['in_flight']:>5}, queued {o['queued']:>5}, "
                f"dropped {o['dropped']:>5}; acking every 45 ms: up to "
                f"{o['max_unacked_acking']:>5} unacknowledged"
            )
    return "\n".join(out)


DISTURBED_CORES = 0.25
"""A window in which other processes used more CPU than this is flagged as disturbed."""


def disturbed(result: dict) -> list[str]:
    """The measurement windows in which other processes competed for the CPU."""
    found = []
    for kind in ("gateway", "bridge"):
        system = result.get(kind) or {}
        windows = [("1,000/s", system.get("latency", {}).get("load"))]
        for qos in (1, 0):
            best = system.get(f"qos{qos}", {}).get("best_step", {})
            windows.append((f"QoS {qos} throughput", best.get("load")))
        for name, load in windows:
            if load and load["others_cores"] > DISTURBED_CORES:
                found.append(f"{kind} {name} ({load['others_cores']:.2f} cores)")
    return found


def _load(load: dict[str, float]) -> str:
    return (
        f"machine busy {load['machine_busy_cores']:.2f} of {os.cpu_count()} cores "
        f"({load['others_cores']:.2f} by other processes)"
    )


def _calls(calls: dict[str, int] | None) -> str:
    if not calls:
        return "-"
    return ", ".join(f"{name} {n}" for name, n in calls.items() if n) or "none"


def _f(value: float | None) -> str:
    return "-" if value is None or math.isnan(value) else f"{value:,.1f}"


def python_speed() -> float:
    """Seconds for 10 million iterations of a trivial Python loop: how fast this CPU runs
    Python, to compare machines (lower is faster)."""
    started = time.perf_counter()
    total = 0
    for i in range(10_000_000):
        total += i
    return round(time.perf_counter() - started, 2)


async def aio_pika_confirm_rate(url: str, seconds: float = 3.0, window: int = 1000) -> float:
    """Persistent messages per second that aio-pika alone gets confirmed, `window` at a time,
    into a durable queue: the ceiling of a bridge that publishes one reading per message."""
    connection = await aio_pika.connect(url, timeout=10)
    try:
        channel = await connection.channel(publisher_confirms=True)
        exchange = await channel.declare_exchange("calibrate", aio_pika.ExchangeType.TOPIC)
        queue = await channel.declare_queue("calibrate", durable=True)
        await queue.bind(exchange, "#")
        body = b'{"temperature":21.53,"humidity":40.1,"battery":99,"seq":1,"ts":1.5}' * 3
        slots = asyncio.Semaphore(window)
        confirmed = 0

        async def publish() -> None:
            nonlocal confirmed
            try:
                message = aio_pika.Message(body, delivery_mode=aio_pika.DeliveryMode.PERSISTENT)
                await exchange.publish(message, "calibrate.x", mandatory=True)
                confirmed += 1
            finally:
                slots.release()

        tasks = set()
        started = time.monotonic()
        while time.monotonic() - started < seconds:
            await slots.acquire()
            task = asyncio.ensure_future(publish())
            tasks.add(task)
            task.add_done_callback(tasks.discard)
        await asyncio.gather(*tasks)
        rate = confirmed / (time.monotonic() - started)
        await queue.delete(if_unused=False, if_empty=False)
        await exchange.delete()
        return rate
    finally:
        await connection.close()


def loadavg() -> list[str]:
    with open("/proc/loadavg") as f:
        return f.read().split()[:3]


def environment() -> dict[str, Any]:
    def version(cmd: list[str]) -> str:
        try:
            out = subprocess.run(cmd, capture_output=True, text=True, timeout=10, check=False)
        except OSError:
            return "?"
        return (
            (out.stdout or out.stderr).strip().splitlines()[0] if out.stdout or out.stderr else "?"
        )

    return {
        "date": datetime.now(UTC).isoformat(timespec="seconds"),
        "cpus": os.cpu_count(),
        "cpu_model": next(
            (
                line.split(":", 1)[1].strip()
                for line in Path("/proc/cpuinfo").read_text().splitlines()
                if line.startswith("model name")
            ),
            "?",
        ),
        "kernel": platform.release(),
        "python": platform.python_version(),
        "mosquitto": version(["mosquitto", "-h"]),
        "loadavg_at_start": loadavg(),
        "python_loop_10M_s": python_speed(),
        "command": " ".join(["python -m bench.run", *sys.argv[1:]]),
    }


# --------------------------------------------------------------------------------------------


async def main_async(args: argparse.Namespace) -> dict:
    plan = QUICK if args.quick else FULL
    overrides = {
        k: v
        for k, v in {
            "sensors": args.sensors,
            "ramp_start": args.ramp_start,
        }.items()
        if v is not None
    }
    if args.no_settings:
        overrides["matrix"] = False
        overrides["limits_probe"] = False
    plan = replace(plan, **overrides)
    result: dict[str, Any] = {"environment": environment(), "plan": asdict(plan)}
    base = Path(tempfile.mkdtemp(prefix="edge-gateway-bench-"))
    started = time.monotonic()
    try:
        for kind in args.systems:
            result[kind] = await measure_system(kind, base / kind, plan)
        if plan.limits_probe:
            say("probing Mosquitto's in-flight and queue limits")
            outcomes = await asyncio.to_thread(mosquitto_limits.run_all, base / "limits", 3000)
            result["mosquitto_limits"] = [asdict(o) for o in outcomes]
    finally:
        if args.keep:
            say(f"kept {base}")
        else:
            shutil.rmtree(base, ignore_errors=True)
    result["environment"]["loadavg_at_end"] = loadavg()
    result["environment"]["duration_s"] = round(time.monotonic() - started, 1)
    return result


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m bench.run",
        description="Benchmark the gateway against a minimal direct bridge; print one table.",
    )
    parser.add_argument("--quick", action="store_true", help="short windows, main table only")
    parser.add_argument("--json", type=Path, metavar="PATH", help="also write results as JSON")
    parser.add_argument(
        "--only",
        choices=("gateway", "bridge"),
        help="measure one system (no ratios)",
    )
    parser.add_argument("--sensors", type=int, help=f"simulated devices (default {FULL.sensors})")
    parser.add_argument(
        "--ramp-start",
        type=float,
        help=f"first offered rate of the throughput steps (default {FULL.ramp_start:g}/s)",
    )
    parser.add_argument(
        "--no-settings",
        action="store_true",
        help="skip the Mosquitto settings runs and the limits probe",
    )
    parser.add_argument("--keep", action="store_true", help="keep the temporary directory")
    args = parser.parse_args(argv)
    args.systems = [args.only] if args.only else ["gateway", "bridge"]
    result = asyncio.run(main_async(args))
    env = result["environment"]
    print(
        f"edge-gateway benchmark, {env['date']}, {env['cpus']} CPUs ({env['cpu_model']}), "
        f"Python {env['python']} (10M-iteration loop: {env['python_loop_10M_s']} s), load "
        f"average {' '.join(env['loadavg_at_start'])} at start; took {env['duration_s']} s"
    )
    print(render(result))
    if args.json:
        args.json.write_text(json.dumps(result, indent=2, default=str) + "\n")
        say(f"wrote {args.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
