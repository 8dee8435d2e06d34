"""Shared pieces of the end-to-end tests: a simulated site around one gateway process."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import jsonschema
from edge_gateway_sim.consumer import ReadingCollector
from edge_gateway_sim.gateway_process import GatewayProcess
from edge_gateway_sim.mqtt_sensors import FleetConfig, MqttSensorFleet

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


def report(name: str, received: Any, extra: str = "") -> None:
    print(
        f"\n[{name}] unique={received.unique} messages={received.messages} "
        f"duplicates={received.duplicates} {extra}"
    )
