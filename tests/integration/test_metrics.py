"""The optional Prometheus endpoint of a running gateway: the figures `status` shows."""

from __future__ import annotations

import asyncio
import re
import urllib.request
from typing import Any

from edge_gateway_sim.brokers import MosquittoBroker, RabbitMQNode, free_port
from harness import report


def scrape(port: int) -> str:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as response:
        return str(response.read().decode())


def value(text: str, sample: str) -> float:
    found = re.search(rf"^{re.escape(sample)} (\S+)$", text, re.MULTILINE)
    assert found, f"{sample} not in:\n{text}"
    return float(found[1])


async def test_metrics_endpoint_on_loopback_shows_buffer_uplink_and_drivers(
    make_site: Any, rabbitmq: RabbitMQNode, mosquitto: MosquittoBroker
) -> None:
    port = free_port()
    site = make_site(rabbitmq, mosquitto)
    config = site.gateway.config
    config.write_text(config.read_text() + f"metrics:\n  enabled: true\n  port: {port}\n")
    async with site.collector() as collector:
        site.gateway.start()
        sent = await asyncio.to_thread(site.fleet(sensors=2, rate=200).run, 300)
        await collector.wait_until(lambda got: got.unique >= 300, timeout=30)
        # The consumer may see a message before the gateway has its confirm: wait for that.
        text = await asyncio.to_thread(scrape, port)
        for _ in range(100):
            if value(text, "edge_gateway_uplink_published_readings_total") >= 300:
                break
            await asyncio.sleep(0.1)
            text = await asyncio.to_thread(scrape, port)
    report("metrics", collector.received)
    assert collector.received.missing(sent.last_seq) == {}
    assert value(text, "edge_gateway_buffer_accepted_readings_total") == 300
    assert value(text, "edge_gateway_uplink_published_readings_total") == 300
    assert value(text, "edge_gateway_uplink_connected") == 1
    assert value(text, "edge_gateway_uplink_max_unconfirmed_messages") == 64
    driver = 'driver="sim-sensors",type="mqtt"'
    assert value(text, f"edge_gateway_driver_readings_total{{{driver}}}") == 300
    state = 'driver="sim-sensors",state="connected",type="mqtt"'  # labels print sorted
    assert value(text, f"edge_gateway_driver_state{{{state}}}") == 1
    assert site.gateway.terminate() == 0
    assert '"prometheus metrics served"' in site.gateway.log.read_text()


async def test_metrics_are_off_by_default(
    make_site: Any, rabbitmq: RabbitMQNode, mosquitto: MosquittoBroker
) -> None:
    site = make_site(rabbitmq, mosquitto)
    site.gateway.start()
    assert site.gateway.terminate() == 0
    assert "prometheus" not in site.gateway.log.read_text()
