"""Shared pieces of the end-to-end tests: a simulated site around one gateway process."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import jsonschema
from edge_gateway_sim.brokers import MosquittoBroker, RabbitMQNode
from edge_gateway_sim.consumer import ReadingCollector
from edge_gateway_sim.gateway_process import GatewayProcess
from edge_gateway_sim.mqtt_sensors import FleetConfig, FleetStats, MqttSensorFleet
from tcp_proxy import TcpProxy

from gateway.status import read_status

SCHEMA = json.loads(
    (Path(__file__).parents[2] / "gateway" / "schemas" / "message.schema.json").read_text()
)
validate_message = jsonschema.Draft202012Validator(SCHEMA).validate


@dataclass
class Site:
    """One simulated site: its gateway process and where it publishes."""

    name: str
    state_dir: Path
    amqp_url: str
    mqtt_port: int
    gateway: GatewayProcess

    def fleet(self, **options: Any) -> MqttSensorFleet:
        return MqttSensorFleet(FleetConfig(port=self.mqtt_port, prefix=self.name, **options))

    def collector(self, queue: str = "all", binding: str = "#") -> ReadingCollector:
        return ReadingCollector(
            self.amqp_url,
            self.name,
            queue=f"{self.name}-{queue}",
            binding=binding,
            validate=validate_message,
        )

    def status(self) -> dict[str, Any]:
        return read_status(self.state_dir)

    @asynccontextmanager
    async def streaming(
        self, sensors: int, rate: float, duration: float
    ) -> AsyncIterator[tuple[ReadingCollector, MqttSensorFleet]]:
        """The consumer listening, the gateway started, then sensors publishing for `duration`
        seconds in the background: the opening of each test that breaks something mid-stream."""
        async with self.collector() as collector:
            self.gateway.start()
            fleet = self.fleet(sensors=sensors, rate=rate)
            fleet.start(duration=duration)
            yield collector, fleet


def publisher_of(site: Site) -> dict[str, Any]:
    """The publisher's counters in the running gateway's last status report ({} before one)."""
    return dict((site.status()["gateway"] or {}).get("publisher", {}))


def report(name: str, received: Any, extra: str = "") -> None:
    print(
        f"\n[{name}] unique={received.unique} messages={received.messages} "
        f"duplicates={received.duplicates} {extra}"
    )


@asynccontextmanager
async def proxied_site(
    make_site: Callable[..., Site], rabbit: RabbitMQNode, mosquitto: MosquittoBroker, **extra: str
) -> AsyncIterator[tuple[Site, TcpProxy]]:
    """A site whose gateway reaches `rabbit` through a TCP proxy that the test can mute or cut;
    the consumer (`site.collector()`) connects to `rabbit` directly."""
    async with TcpProxy(rabbit.port) as proxy:
        url = f"amqp://guest:guest@127.0.0.1:{proxy.port}/"
        yield make_site(rabbit, mosquitto, gateway_url=url, **extra), proxy


async def delivered(
    fleet: MqttSensorFleet, collector: ReadingCollector, within_s: float = 30
) -> tuple[FleetStats, int]:
    """Wait for a started fleet to finish, then for the consumer to hold as many unique
    readings as it sent; return what it sent and how many."""
    sent = await asyncio.to_thread(fleet.wait, within_s)
    total = sum(sent.last_seq.values())
    await collector.wait_until(lambda got: got.unique >= total, timeout=within_s)
    return sent, total


def write_gateway_yaml(
    tmp_path: Path, amqp_url: str, exchange: str, drivers: str, rest: str = ""
) -> Path:
    """`tmp_path/gateway.yaml` for a gateway `gw` whose site and exchange are both `exchange`,
    with its state under `tmp_path`; `drivers` is the YAML of the list's items."""
    config = tmp_path / "gateway.yaml"
    config.write_text(
        f"gateway: {{id: gw, site: {exchange}, state_dir: {tmp_path / 'state'}}}\n"
        f'amqp: {{url: "{amqp_url}", exchange: {exchange}}}\n'
        f"drivers:\n{drivers}{rest}"
    )
    return config


async def report_after_now(state_dir: Path, within_s: float = 10.0) -> dict[str, Any]:
    """The gateway's first status report written after this call: counters as of now."""
    now = time.time()
    await until(
        "a fresh status report",
        lambda: (read_status(state_dir)["gateway"] or {}).get("updated", 0) > now,
        within_s,
    )
    report: dict[str, Any] = read_status(state_dir)["gateway"]
    return report


async def until(what: str, condition: Callable[[], bool], within_s: float = 20.0) -> None:
    """Wait until `condition()` holds; a deadline, not a timing claim."""
    deadline = time.monotonic() + within_s
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"not reached in {within_s} s: {what}")
        await asyncio.sleep(0.05)
