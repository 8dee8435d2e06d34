"""End to end: simulated MQTT sensors -> Mosquitto -> the gateway process -> RabbitMQ -> consumer.

Every test counts what the consumer received by (device, seq) against what the
simulator says it handed to Mosquitto: nothing accepted may be missing; duplicates
(allowed: at-least-once) are counted and printed.
"""

from __future__ import annotations

import asyncio
import os
from pathlib import Path
from typing import Any

from edge_gateway_sim.brokers import MosquittoBroker, RabbitMQNode
from harness import Site, delivered, publisher_of, report, report_after_now, until


async def test_ten_thousand_readings_arrive_once_each_and_match_the_schema(
    make_site: Any, rabbitmq: RabbitMQNode, mosquitto: MosquittoBroker
) -> None:
    site = make_site(rabbitmq, mosquitto)
    async with site.collector() as collector:
        site.gateway.start()
        fleet = site.fleet(sensors=20, rate=2_000)
        sent = await asyncio.to_thread(fleet.run, 10_000)
        assert sent.acked == 10_000
        await collector.wait_until(lambda got: got.unique >= 10_000, timeout=60)
    got = collector.received
    report("10k", got)
    assert got.invalid == []
    assert got.missing(sent.last_seq) == {}
    assert got.unique == 10_000
    assert site.gateway.terminate() == 0
    status = site.status()
    assert status["gateway"]["publisher"]["published_readings"] >= 10_000
    assert status["gateway"]["running"] is False


async def test_rabbitmq_down_for_20_seconds_loses_nothing(
    make_site: Any, rabbitmq_node: RabbitMQNode, mosquitto: MosquittoBroker
) -> None:
    site = make_site(rabbitmq_node, mosquitto, extra_amqp="retry_max_s: 2")
    async with site.streaming(sensors=5, rate=100, duration=32) as (collector, fleet):
        await asyncio.sleep(4)
        await asyncio.to_thread(rabbitmq_node.stop)
        await asyncio.sleep(20)
        during = site.status()
        assert during["gateway"]["publisher"]["connected_url"] is None
        assert during["buffer"]["depth"] > 1_000  # 20 s at 100/s waited on disk
        await asyncio.to_thread(rabbitmq_node.start)
        sent, total = await delivered(fleet, collector, within_s=90)
    got = collector.received
    report("rabbitmq-outage", got, f"sent={total}")
    assert sent.dropped == 0
    assert got.invalid == []
    assert got.missing(sent.last_seq) == {}
    assert site.gateway.terminate() == 0


async def test_gateway_killed_with_sigkill_and_restarted_loses_nothing(
    make_site: Any, rabbitmq: RabbitMQNode, tmp_path: Path
) -> None:
    # While the gateway is down, Mosquitto queues for its session; its default of 1,000
    # messages would drop some during a slow restart, which is Mosquitto's loss, not ours.
    with MosquittoBroker(tmp_path / "mosquitto", ["max_queued_messages 100000"]) as mosquitto:
        await _kill_and_restart_twice(make_site(rabbitmq, mosquitto))


async def _kill_and_restart_twice(site: Site) -> None:
    async with site.streaming(sensors=10, rate=300, duration=10) as (collector, fleet):
        for _ in range(2):
            await asyncio.sleep(3)
            await asyncio.to_thread(site.gateway.kill)
            await asyncio.sleep(1)
            await asyncio.to_thread(site.gateway.start)
        sent, total = await delivered(fleet, collector, within_s=60)
    got = collector.received
    report("sigkill", got, f"sent={total}")
    assert sent.acked == sent.published
    assert got.invalid == []
    assert got.missing(sent.last_seq) == {}
    assert site.gateway.terminate() == 0


async def test_unroutable_readings_stay_buffered_until_a_queue_is_bound(
    make_site: Any, rabbitmq: RabbitMQNode, mosquitto: MosquittoBroker
) -> None:
    site = make_site(
        rabbitmq, mosquitto, extra_amqp='retry_max_s: 1\nrouting_key: "{site}.{device}"'
    )
    only_first = f"{site.name}.sim-0001"
    async with site.collector("first", binding=only_first) as first:
        site.gateway.start()
        sent = await asyncio.to_thread(site.fleet(sensors=3, rate=300).run, 300)
        await first.wait_until(lambda got: got.unique >= 100, timeout=30)
        await asyncio.sleep(2)  # returns happen and are retried meanwhile
        status = site.status()
        assert status["gateway"]["publisher"]["returned"] > 0
        assert status["gateway"]["buffer"]["depth"] >= 200
        async with site.collector("rest", binding=f"{site.name}.*") as rest:
            await rest.wait_until(lambda got: got.unique >= 200, timeout=30)
    log = site.gateway.log.read_text()
    assert "no queue is bound for its routing key" in log
    assert f'"routing_key": "{site.name}.sim-0002"' in log
    arrived = first.received.seqs | rest.received.seqs
    missing = {
        device: [s for s in range(1, last + 1) if s not in arrived.get(device, set())]
        for device, last in sent.last_seq.items()
    }
    assert all(not gaps for gaps in missing.values()), missing
    assert site.gateway.terminate() == 0


async def test_a_returned_reading_on_a_quiet_gateway_is_retried_without_new_readings(
    make_site: Any, rabbitmq: RabbitMQNode, mosquitto: MosquittoBroker
) -> None:
    """One reading and no queue: the broker returns it and it waits for its retry. Nothing
    new arrives, and it still goes once a queue is bound (it used to wait for a new reading)."""
    site = make_site(rabbitmq, mosquitto, extra_amqp="retry_max_s: 1")
    site.gateway.start()
    sent = await asyncio.to_thread(site.fleet(sensors=1, rate=10).run, 1)
    await until("the broker returns the reading", lambda: publisher_of(site).get("returned", 0) > 0)
    async with site.collector() as collector:
        await collector.wait_until(lambda got: got.unique >= 1, timeout=10)
    assert collector.received.missing(sent.last_seq) == {}
    assert site.gateway.terminate() == 0


async def test_malformed_payloads_are_counted_and_good_ones_next_to_them_arrive(
    make_site: Any, rabbitmq: RabbitMQNode, mosquitto: MosquittoBroker
) -> None:
    site = make_site(rabbitmq, mosquitto)
    async with site.collector() as collector:
        site.gateway.start()
        sent = await asyncio.to_thread(
            site.fleet(sensors=4, rate=500, malformed_fraction=0.2).run, 1_000
        )
        good = sum(sent.last_seq.values())
        await collector.wait_until(lambda got: got.unique >= good, timeout=30)
        driver = (await report_after_now(site.state_dir))["drivers"]["sim-sensors"]
    assert sent.malformed > 100
    assert driver["malformed"] == sent.malformed
    assert collector.received.missing(sent.last_seq) == {}
    assert "malformed MQTT payload; skipped" in site.gateway.log.read_text()
    assert site.gateway.terminate() == 0


async def test_an_idle_gateway_restarted_on_a_drained_buffer_does_not_spin(
    make_site: Any, rabbitmq: RabbitMQNode, mosquitto: MosquittoBroker
) -> None:
    site = make_site(rabbitmq, mosquitto)
    async with site.collector() as collector:
        site.gateway.start()
        await asyncio.to_thread(site.fleet(sensors=2, rate=100).run, 50)
        assert await collector.wait_until(lambda got: got.unique >= 50, timeout=20)
        await asyncio.sleep(1.5)  # the deletes are applied within a second
        assert site.gateway.terminate() == 0
        site.gateway.start()  # next_seq is past 50, the table is empty
        await asyncio.sleep(1)
        before = _cpu_seconds(site.gateway.pid)
        await asyncio.sleep(3)
        used = _cpu_seconds(site.gateway.pid) - before
    assert used < 0.3, f"an idle gateway used {used:.2f} s of CPU in 3 s"
    assert site.gateway.terminate() == 0


def _cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
