"""Fixtures of the end-to-end tests."""

from __future__ import annotations

import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from edge_gateway_sim.brokers import MosquittoBroker, RabbitMQNode
from edge_gateway_sim.gateway_process import GatewayProcess, site_config
from harness import Site


@pytest.fixture
def make_site(tmp_path: Path, request: pytest.FixtureRequest) -> Iterator[Any]:
    sites: list[Site] = []

    def make(
        rabbit: RabbitMQNode, mosquitto: MosquittoBroker, gateway_url: str = "", **extra: str
    ) -> Site:
        """A gateway for this test; `gateway_url` points it elsewhere than `rabbit` (a proxy)."""
        name = re.sub(r"[^a-z0-9]+", "-", request.node.name.lower()).strip("-")[:40]
        config = tmp_path / "gateway.yaml"
        config.write_text(
            site_config(
                state_dir=tmp_path / "state",
                amqp_url=gateway_url or rabbit.url,
                mqtt_port=mosquitto.port,
                exchange=name,
                site=name,
                prefix=name,
                extra_mqtt=f"client_id: gw-{name}\n" + extra.pop("extra_mqtt", ""),
                **extra,
            )
        )
        site = Site(
            name,
            tmp_path / "state",
            rabbit.url,
            mosquitto.port,
            GatewayProcess(config, tmp_path / "gateway.log"),
        )
        sites.append(site)
        return site

    yield make
    for site in sites:
        site.gateway.close()
