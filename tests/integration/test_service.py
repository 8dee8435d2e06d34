"""The gateway as systemd runs it: the notify protocol, the watchdog, reload, stop.

The gateway is a real child process with NOTIFY_SOCKET pointing at a real datagram
socket of the test (systemd's side of the protocol), and WATCHDOG_USEC set as
systemd sets it. Stalls are real: a second SQLite connection holding the buffer's
write lock (what an operator's `sqlite3` shell in a transaction does), and a TCP
proxy that swallows the broker's confirms.
"""

from __future__ import annotations

import asyncio
import json
import os
import re
import signal
import socket
import sqlite3
import subprocess
import sys
import time
from collections.abc import Awaitable, Callable, Iterator
from contextlib import AbstractContextManager, closing, contextmanager
from pathlib import Path
from typing import Any

from edge_gateway_sim.brokers import MosquittoBroker, RabbitMQNode, free_port
from edge_gateway_sim.consumer import ReadingCollector
from edge_gateway_sim.mqtt_sensors import FleetConfig, MqttSensorFleet
from harness import (
    Site,
    delivered,
    proxied_site,
    publisher_of,
    report,
    until,
    validate_message,
)
from notify_listener import NotifyListener

WATCHDOG_S = 1.5  # a stall is declared after this long; the gateway checks every 0.5 s


def log_events(site: Site, event: str) -> list[dict[str, Any]]:
    lines = site.gateway.log.read_text().splitlines()
    return [doc for doc in map(_json, lines) if doc.get("event") == event]


def _json(line: str) -> dict[str, Any]:
    try:
        doc = json.loads(line)
    except ValueError:
        return {}
    return doc if isinstance(doc, dict) else {}


def edge_gateway_status(site: Site) -> subprocess.CompletedProcess[str]:
    command = [sys.executable, "-m", "gateway.cli", "status", "--config", str(site.gateway.config)]
    return subprocess.run(command, capture_output=True, text=True, check=False)


def is_ping(fields: dict[str, str]) -> bool:
    return fields.get("WATCHDOG") == "1"


async def test_ready_status_pings_and_stopping_reach_the_notify_socket(
    make_site: Any, rabbitmq: RabbitMQNode, mosquitto: MosquittoBroker
) -> None:
    site = make_site(rabbitmq, mosquitto)
    with NotifyListener() as systemd:
        site.gateway.env = systemd.env(watchdog_s=WATCHDOG_S)
        async with site.collector() as collector:
            site.gateway.start()
            ready = await asyncio.to_thread(systemd.wait_for, lambda f: "READY" in f, 10)
            sent = await asyncio.to_thread(site.fleet(sensors=4, rate=200).run, 400)
            await collector.wait_until(lambda got: got.unique >= 400, timeout=30)
            status = await asyncio.to_thread(
                systemd.wait_for, lambda f: "STATUS" in f, 10, time.monotonic()
            )
            shown = await asyncio.to_thread(edge_gateway_status, site)
        pings = len(systemd.since(ready.at, "WATCHDOG"))
        assert site.gateway.terminate() == 0
        stopping = systemd.wait_for(lambda f: "STOPPING" in f, 5)
    print(f"\n[notify] READY {ready.fields}\n  STATUS {status.fields['STATUS']!r}, pings {pings}")
    assert ready.fields["MAINPID"] == str(site.gateway.pid)
    assert "buffered" in ready.fields["STATUS"]
    assert "uplink amqp://guest:***@" in status.fields["STATUS"]
    assert pings >= 2
    assert shown.returncode == 0, shown.stderr  # `edge-gateway status`: running
    assert f"uplink     amqp://guest:***@127.0.0.1:{rabbitmq.port}/" in shown.stdout
    assert re.search(r"unconfirmed \d+ of 64, .*last confirm \d+ s ago", shown.stdout)
    assert "clock      " in shown.stdout
    assert re.search(
        r"driver     sim-sensors \(mqtt\): connected, \d+ readings, last", shown.stdout
    )
    assert stopping.at > ready.at
    assert collector.received.missing(sent.last_seq) == {}


async def watch_a_stall(
    site: Site, stall: Callable[[], AbstractContextManager[None]], stalled_within_s: float
) -> str:
    """Stream readings; hold `stall` until systemd hears STALLED (within `stalled_within_s`,
    or fail); return that STATUS.

    What every stall must show: no ping while it lasts, pings again once it is over,
    and no reading missing at the consumer.
    """
    with NotifyListener() as systemd:
        site.gateway.env = systemd.env(watchdog_s=WATCHDOG_S)
        async with site.streaming(sensors=4, rate=100, duration=10) as (collector, fleet):
            await asyncio.to_thread(systemd.wait_for, is_ping, 5)
            with stall():
                began = time.monotonic()
                stalled = await asyncio.to_thread(
                    systemd.wait_for,
                    lambda f: "STALLED" in f.get("STATUS", ""),
                    stalled_within_s,
                    began,
                )
            released = time.monotonic()
            resumed = await asyncio.to_thread(systemd.wait_for, is_ping, 10, released)
            sent, total = await delivered(fleet, collector)
        pings_while_stalled = [n for n in systemd.since(stalled.at, "WATCHDOG") if n.at < released]
    report("stall", collector.received, f"sent={total} status={stalled.fields['STATUS']!r}")
    assert pings_while_stalled == []
    assert resumed.at > released
    assert collector.received.missing(sent.last_seq) == {}
    return stalled.fields["STATUS"]


async def test_watchdog_pings_stop_while_the_buffer_writer_is_stalled(
    make_site: Any, rabbitmq: RabbitMQNode, mosquitto: MosquittoBroker
) -> None:
    site = make_site(rabbitmq, mosquitto)

    @contextmanager
    def writer_locked() -> Iterator[None]:
        """What an operator's `sqlite3` shell in a transaction does to the buffer's writer."""
        with closing(sqlite3.connect(site.state_dir / "buffer.db", timeout=10)) as other:
            other.isolation_level = None
            other.execute("BEGIN IMMEDIATE")  # the writer's next commit waits for this
            yield
            other.execute("ROLLBACK")  # before SQLite's 5 s busy timeout fails the writer

    # 3.4 s: STALLED must come before SQLite's 5 s busy timeout fails the waiting writer
    assert "buffer writer stalled" in await watch_a_stall(site, writer_locked, 3.4)
    assert log_events(
        site, "pipeline stalled: not pinging the watchdog, systemd will restart the gateway"
    )
    assert site.gateway.terminate() == 0


async def test_watchdog_pings_stop_while_confirms_are_overdue_and_resume_after(
    make_site: Any, rabbitmq: RabbitMQNode, mosquitto: MosquittoBroker
) -> None:
    # timeout_s above the watchdog period: the publisher itself would wait 30 s for a
    # confirm; the watchdog calls it stalled after 1.5 s (and the gateway warns at start).
    extra_amqp = "timeout_s: 30\nretry_max_s: 1"
    async with proxied_site(make_site, rabbitmq, mosquitto, extra_amqp=extra_amqp) as (
        site,
        proxy,
    ):

        @contextmanager
        def confirms_swallowed() -> Iterator[None]:
            proxy.swallow_replies = True
            yield
            proxy.swallow_replies = False
            proxy.cut()  # the connection has lost bytes: it must be a new one

        assert "publisher stalled" in await watch_a_stall(site, confirms_swallowed, 5)
    assert log_events(
        site, "amqp.timeout_s is not below the watchdog period: a slow confirm may cause a restart"
    )
    assert site.gateway.terminate() == 0


async def test_a_broker_alarm_longer_than_the_watchdog_period_is_a_wait_not_a_stall(
    make_site: Any, rabbitmq_node: RabbitMQNode, mosquitto: MosquittoBroker
) -> None:
    # The publishes a blocked broker holds back have work in hand and nothing settling,
    # but the broker has said why, and a restart would not help: the pings go on.
    site = make_site(rabbitmq_node, mosquitto, extra_amqp="timeout_s: 0.5")
    with NotifyListener() as systemd:
        site.gateway.env = systemd.env(watchdog_s=WATCHDOG_S)
        async with site.streaming(sensors=4, rate=100, duration=12) as (collector, fleet):
            await asyncio.to_thread(systemd.wait_for, is_ping, 5)
            await asyncio.to_thread(rabbitmq_node.ctl, "set_vm_memory_high_watermark", "0")
            blocked = await asyncio.to_thread(
                systemd.wait_for, lambda f: "(BLOCKED)" in f.get("STATUS", ""), 10
            )
            await asyncio.sleep(4 * WATCHDOG_S)
            lifted = time.monotonic()
            await asyncio.to_thread(rabbitmq_node.ctl, "set_vm_memory_high_watermark", "0.4")
            sent, total = await delivered(fleet, collector)
        during = [n for n in systemd.since(blocked.at) if n.at < lifted]
    report("alarm", collector.received, f"sent={total}")
    assert [n.fields["STATUS"] for n in during if "STALLED" in n.fields.get("STATUS", "")] == []
    assert sum(is_ping(n.fields) for n in during) >= 6  # one every 0.5 s
    assert collector.received.missing(sent.last_seq) == {}
    assert site.gateway.terminate() == 0


STOPPING = "stopping: drivers first, then in-flight publishes"
UNCONFIRMED = "confirms still missing at shutdown; those readings stay buffered"


async def stopped_with_confirms_missing(
    make_site: Any,
    rabbitmq: RabbitMQNode,
    mosquitto: MosquittoBroker,
    grace_s: float,
    stop: Callable[[Site], Awaitable[None]],
) -> tuple[Site, float]:
    """Stream; from 1.5 s on swallow the broker's confirms; `stop` the gateway (timed),
    start it again with confirms flowing, and check that every reading arrived."""
    extra_amqp = f"shutdown_grace_s: {grace_s}\nretry_max_s: 1"
    async with proxied_site(make_site, rabbitmq, mosquitto, extra_amqp=extra_amqp) as (
        site,
        proxy,
    ):
        # 100/s: while the gateway is down Mosquitto queues at most 1,000 messages for it
        async with site.streaming(sensors=5, rate=100, duration=6) as (collector, fleet):
            await asyncio.sleep(1.5)
            proxy.swallow_replies = True  # what is published from now on stays unconfirmed
            await asyncio.sleep(1)
            started = time.monotonic()
            await stop(site)
            stopped_in = time.monotonic() - started
            proxy.swallow_replies = False
            proxy.cut()
            await asyncio.to_thread(site.gateway.start)
            sent, total = await delivered(fleet, collector)
    report("unconfirmed-at-stop", collector.received, f"sent={total} in={stopped_in:.2f}s")
    assert collector.received.missing(sent.last_seq) == {}
    assert site.gateway.terminate() == 0
    return site, stopped_in


async def test_sigterm_with_confirms_missing_exits_0_and_loses_nothing(
    make_site: Any, rabbitmq: RabbitMQNode, mosquitto: MosquittoBroker
) -> None:
    """Readings published but unconfirmed at SIGTERM stay buffered and go after the restart."""

    async def sigterm(site: Site) -> None:
        assert await asyncio.to_thread(site.gateway.terminate) == 0

    site, stopped_in = await stopped_with_confirms_missing(
        make_site, rabbitmq, mosquitto, 2, sigterm
    )
    missing = log_events(site, UNCONFIRMED)
    assert missing and missing[0]["in_flight"] > 0
    assert stopped_in < 30  # TimeoutStopSec in the unit


async def test_a_second_sigterm_ends_the_wait_for_confirms_and_loses_nothing(
    make_site: Any, rabbitmq: RabbitMQNode, mosquitto: MosquittoBroker
) -> None:
    """Ctrl-C twice, as users do when a stop seems slow: the gateway exits at once instead
    of waiting out shutdown_grace_s; what was unconfirmed stays buffered for the restart."""

    async def ctrl_c_twice(site: Site) -> None:
        process = site.gateway.process
        assert process is not None
        process.send_signal(signal.SIGINT)
        await until("the stop begins", lambda: log_events(site, STOPPING))
        await asyncio.sleep(0.5)
        assert process.poll() is None  # waiting for the confirms that do not come
        process.send_signal(signal.SIGINT)
        assert await asyncio.to_thread(site.gateway.terminate) == 0

    site, stopped_in = await stopped_with_confirms_missing(
        make_site, rabbitmq, mosquitto, 25, ctrl_c_twice
    )
    [missing, *_] = log_events(site, UNCONFIRMED)
    assert missing["in_flight"] > 0 and missing["cut_short"] is True
    assert log_events(site, STOPPING)[0]["hint"].startswith("a second Ctrl-C or SIGTERM")
    assert stopped_in < 6  # 0.5 s before the second Ctrl-C; not the 25 s of the grace


def second_driver(site: Site) -> str:
    """YAML of another MQTT driver, on its own topics, for the reload tests."""
    return f"""\
  - type: mqtt
    name: kept
    host: 127.0.0.1
    port: {site.mqtt_port}
    client_id: gw-{site.name}-b
    subscriptions:
      - topic: "{site.name}-b/+/state"
        device: "{site.name}-b/{{device}}/state"
"""


def reload(site: Site, systemd: NotifyListener, config: str) -> float:
    """Write the file, send SIGHUP as `systemctl reload` does, wait for READY after RELOADING."""
    site.gateway.config.write_text(config)
    sent = time.monotonic()
    os.kill(site.gateway.pid, signal.SIGHUP)
    reloading = systemd.wait_for(lambda f: "RELOADING" in f, 10, sent)
    systemd.wait_for(lambda f: "READY" in f, 10, reloading.at)
    return sent


async def test_reload_restarts_only_the_driver_whose_configuration_changed(
    make_site: Any, rabbitmq: RabbitMQNode, mosquitto: MosquittoBroker
) -> None:
    site = make_site(rabbitmq, mosquitto)
    before = site.gateway.config.read_text().replace("logging:", second_driver(site) + "logging:")
    site.gateway.config.write_text(before)
    # The changed driver gets a tag: the readings show which configuration read them.
    after = before.replace(
        'units: {temperature: Cel, humidity: "%RH", battery: "%"}',
        'units: {temperature: Cel, humidity: "%RH", battery: "%"}\n        tags: {generation: "2"}',
    )
    assert after != before
    fleets = [
        site.fleet(sensors=3, rate=60),
        MqttSensorFleet(
            FleetConfig(
                port=site.mqtt_port, prefix=f"{site.name}-b", sensors=3, rate=60, first_device=101
            )
        ),
    ]
    with NotifyListener() as systemd:
        site.gateway.env = systemd.env(watchdog_s=WATCHDOG_S)
        collector = ReadingCollector(
            rabbitmq.url,
            site.name,
            queue=f"{site.name}-all",
            validate=validate_message,
            keep_readings=True,
        )
        async with collector:
            site.gateway.start()
            for fleet in fleets:
                fleet.start(duration=8)
            await asyncio.sleep(3)
            reloaded = await asyncio.to_thread(reload, site, systemd, after)
            sent = [await asyncio.to_thread(fleet.wait, 30) for fleet in fleets]
            total = sum(sum(s.last_seq.values()) for s in sent)
            await collector.wait_until(lambda got: got.unique >= total, timeout=30)
            pings_after = systemd.since(reloaded, "WATCHDOG")
    got = collector.received
    report("reload", got, f"sent={total}")
    changes = log_events(site, "configuration reloaded")
    assert len(changes) == 1
    assert changes[0]["drivers_restarted"] == ["sim-sensors"]
    assert changes[0]["drivers_kept"] == ["kept"]
    connects = [e["driver"] for e in log_events(site, "connected to MQTT broker")]
    assert connects.count("sim-sensors") == 2  # stopped and started with the new file
    assert connects.count("kept") == 1  # its connection and session went on untouched
    tagged = [r for r in got.kept if r.get("tags") == {"generation": "2"}]
    assert tagged and all(r["source"] == "sim-sensors" for r in tagged)
    assert pings_after
    for fleet_sent in sent:
        assert got.missing(fleet_sent.last_seq) == {}
    assert site.gateway.terminate() == 0


async def test_reload_of_an_invalid_file_keeps_the_running_configuration(
    make_site: Any, rabbitmq: RabbitMQNode, mosquitto: MosquittoBroker
) -> None:
    site = make_site(rabbitmq, mosquitto)
    good = site.gateway.config.read_text()
    with NotifyListener() as systemd:
        site.gateway.env = systemd.env(watchdog_s=WATCHDOG_S)
        async with site.collector() as collector:
            site.gateway.start()
            fleet = site.fleet(sensors=3, rate=60)
            fleet.start(duration=8)
            await asyncio.sleep(2)
            broken = good.replace("port: ", "port: not-a-port  # ", 1)
            rejected_at = await asyncio.to_thread(reload, site, systemd, broken)
            amqp_changed = good.replace("amqp:\n", "amqp:\n  max_in_flight: 8\n", 1)
            await asyncio.to_thread(reload, site, systemd, amqp_changed)
            sent, total = await delivered(fleet, collector)
            pings_after = systemd.since(rejected_at, "WATCHDOG")
    report("reload-invalid", collector.received, f"sent={total}")
    rejected = log_events(
        site, "configuration rejected on reload; the running configuration stays in force"
    )
    assert len(rejected) == 1
    assert f"{site.gateway.config}:" in rejected[0]["error"]  # file:line of the bad value
    assert "drivers[0].port" in rejected[0]["error"]
    pending = log_events(site, "configuration changes that take effect only after a restart")
    assert [e["sections"] for e in pending] == [["amqp"]]
    assert log_events(site, "configuration reloaded")[0]["drivers_kept"] == ["sim-sensors"]
    assert len(pings_after) >= 2
    assert collector.received.missing(sent.last_seq) == {}
    assert site.gateway.terminate() == 0


async def test_status_names_the_uplinks_last_error_and_tells_a_hung_gateway_from_a_stopped_one(
    make_site: Any, rabbitmq: RabbitMQNode, mosquitto: MosquittoBroker
) -> None:
    dead = f"amqp://guest:guest@127.0.0.1:{free_port()}/"
    site = make_site(rabbitmq, mosquitto, gateway_url=dead, extra_amqp="retry_max_s: 1")
    site.gateway.start()
    await until("a failed connect", lambda: publisher_of(site).get("connection_failures", 0) > 0)
    shown = await asyncio.to_thread(edge_gateway_status, site)
    assert shown.returncode == 0, shown.stderr
    assert re.search(
        r"uplink     DISCONNECTED \(last error: broker unreachable or connection lost "
        r"\(\w+: .*Connect",
        shown.stdout,
    ), shown.stdout
    os.kill(site.gateway.pid, signal.SIGSTOP)  # hung: alive, and writes no report
    try:
        await asyncio.sleep(7)  # reports are stale after 6 s
        hung = await asyncio.to_thread(edge_gateway_status, site)
    finally:
        os.kill(site.gateway.pid, signal.SIGCONT)
    assert hung.returncode == 3
    assert f"gateway    NOT RESPONDING: pid {site.gateway.pid} runs" in hung.stdout, hung.stdout
    assert site.gateway.terminate() == 0
    gone = await asyncio.to_thread(edge_gateway_status, site)
    assert gone.returncode == 3
    assert "gateway    NOT RUNNING" in gone.stdout, gone.stdout


async def test_a_second_gateway_on_the_same_state_dir_exits_2_and_the_first_runs_on(
    make_site: Any, rabbitmq: RabbitMQNode, mosquitto: MosquittoBroker
) -> None:
    # Both would number readings from one sequence: two readings, one id. The by-hand
    # `edge-gateway run` of the README beside the running service is how a user does it.
    site = make_site(rabbitmq, mosquitto)
    async with site.collector() as collector:
        site.gateway.start()
        await until("the gateway runs", lambda: site.status()["gateway"] is not None)
        second = await asyncio.to_thread(
            subprocess.run,
            [sys.executable, "-m", "gateway.cli", "run", "--config", str(site.gateway.config)],
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )
        sent = await asyncio.to_thread(site.fleet(sensors=2, rate=100).run, 200)
        await collector.wait_until(lambda got: got.unique >= 200, timeout=30)
    assert second.returncode == 2, second.stdout + second.stderr
    [error] = [
        doc["error"]
        for doc in map(_json, second.stdout.splitlines())
        if doc.get("event") == "configuration error: not restarting until it is fixed"
    ]
    assert f"another edge-gateway (pid {site.gateway.pid}) runs with gateway.state_dir" in error
    assert collector.received.missing(sent.last_seq) == {}
    assert collector.received.duplicates == 0
    assert site.gateway.terminate() == 0


def test_metrics_port_in_use_exits_2_before_ready_so_systemd_does_not_restart_it(
    tmp_path: Path,
) -> None:
    """A taken port is a configuration error: exit 2 (RestartPreventExitStatus=2), not 1."""
    config = tmp_path / "gateway.yaml"
    with closing(socket.socket()) as taken, NotifyListener() as systemd:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        config.write_text(
            f"""\
gateway: {{id: gw, state_dir: {tmp_path / "state"}}}
amqp: {{url: "amqp://guest:guest@127.0.0.1:{free_port()}/"}}
metrics: {{enabled: true, port: {port}}}
logging: {{format: json}}
"""
        )
        ran = subprocess.run(
            [sys.executable, "-m", "gateway.cli", "run", "--config", str(config)],
            env={**os.environ, **systemd.env(watchdog_s=WATCHDOG_S)},
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )
    assert ran.returncode == 2, ran.stdout + ran.stderr
    errors = [
        doc
        for doc in map(_json, ran.stdout.splitlines())
        if doc.get("event") == "configuration error: not restarting until it is fixed"
    ]
    assert errors, ran.stdout + ran.stderr
    assert f"cannot listen on 127.0.0.1:{port}" in errors[0]["error"]
    assert "choose another metrics.port" in errors[0]["error"]
    assert not [n for n in systemd.notices if "READY" in n.fields]
