"""Uplink faults: nacks, broker alarms, lost confirms, cut connections, failover, full buffer.

As in test_pipeline, every test counts what a consumer received against what the
simulated sensors handed to Mosquitto: no accepted reading may be missing.
"""

from __future__ import annotations

import asyncio
import json
import secrets
import time
from collections.abc import Awaitable, Callable
from datetime import datetime
from functools import partial
from pathlib import Path
from typing import Any

import aio_pika
import paho.mqtt.client as mqtt
from edge_gateway_sim.brokers import MosquittoBroker, RabbitMQNode, free_port
from harness import delivered, proxied_site, publisher_of, report, report_after_now, until

from gateway.status import format_status


async def test_nacked_messages_are_retried_until_the_broker_takes_them(
    make_site: Any, rabbitmq: RabbitMQNode, mosquitto: MosquittoBroker
) -> None:
    site = make_site(rabbitmq, mosquitto, extra_amqp="retry_max_s: 1")
    async with site.collector() as collector:
        connection = await aio_pika.connect(rabbitmq.url)
        channel = await connection.channel()
        exchange = await channel.get_exchange(site.name)
        limited = await channel.declare_queue(
            f"{site.name}-limited",
            arguments={"x-max-length": 5, "x-overflow": "reject-publish"},
        )
        await limited.bind(exchange, "#")
        site.gateway.start()
        sent = await asyncio.to_thread(site.fleet(sensors=4, rate=200).run, 400)
        await until(
            "the broker nacks",
            lambda: publisher_of(site).get("nacked", 0) > 0,
        )
        await limited.delete(if_unused=False, if_empty=False)
        await connection.close()
        await collector.wait_until(lambda got: got.unique >= 400, timeout=30)
    report("nack", collector.received)
    assert collector.received.missing(sent.last_seq) == {}
    assert "broker refused the message (nack)" in site.gateway.log.read_text()
    assert site.gateway.terminate() == 0


async def test_broker_memory_alarm_pauses_publishing_until_it_clears(
    make_site: Any, rabbitmq_node: RabbitMQNode, mosquitto: MosquittoBroker
) -> None:
    site = make_site(rabbitmq_node, mosquitto)
    async with site.collector() as collector:
        await asyncio.to_thread(rabbitmq_node.ctl, "set_vm_memory_high_watermark", "0")
        site.gateway.start()
        sent = await asyncio.to_thread(site.fleet(sensors=3, rate=150).run, 300)
        await until("every reading accepted", lambda: site.status()["buffer"]["depth"] == 300)
        status = await report_after_now(site.state_dir)
        assert status["publisher"]["blocked"] is True
        assert status["publisher"]["published_readings"] == 0
        assert collector.received.unique == 0
        await asyncio.to_thread(rabbitmq_node.ctl, "set_vm_memory_high_watermark", "0.4")
        await collector.wait_until(lambda got: got.unique >= 300, timeout=30)
    report("blocked", collector.received)
    assert collector.received.missing(sent.last_seq) == {}
    assert "broker blocked publishing (resource alarm)" in site.gateway.log.read_text()
    assert site.gateway.terminate() == 0


async def test_an_alarm_raised_mid_stream_holds_publishes_without_reconnecting(
    make_site: Any, rabbitmq_node: RabbitMQNode, mosquitto: MosquittoBroker
) -> None:
    # RabbitMQ stops reading a connection that publishes during an alarm, so the publishes
    # in flight get no confirm until it ends. Timing them out reconnected the uplink every
    # timeout_s for as long as the alarm lasted, and sent each of those batches twice.
    site = make_site(rabbitmq_node, mosquitto, extra_amqp="timeout_s: 2")
    async with site.streaming(sensors=3, rate=150, duration=14) as (collector, fleet):
        await collector.wait_until(lambda got: got.unique >= 300, timeout=20)
        await asyncio.to_thread(rabbitmq_node.ctl, "set_vm_memory_high_watermark", "0")
        await until("publishing blocked", lambda: publisher_of(site).get("blocked") is True)
        await asyncio.sleep(3 * 2)  # three times timeout_s
        await asyncio.to_thread(rabbitmq_node.ctl, "set_vm_memory_high_watermark", "0.4")
        sent, total = await delivered(fleet, collector, within_s=60)
    report("alarm-mid-stream", collector.received, f"sent={total}")
    assert collector.received.missing(sent.last_seq) == {}
    status = await report_after_now(site.state_dir)
    assert status["publisher"]["connection_failures"] == 0
    assert collector.received.duplicates == 0
    assert site.gateway.terminate() == 0


async def test_the_broker_going_as_the_backlog_starts_leaves_no_unread_task_error(
    make_site: Any, rabbitmq_node: RabbitMQNode, mosquitto: MosquittoBroker
) -> None:
    # Publishes in flight when the connection broke, cancelled as they failed, logged
    # asyncio's "Task exception was never retrieved" with a traceback (seen in a chaos soak).
    site = make_site(rabbitmq_node, mosquitto, extra_amqp="retry_max_s: 1")
    log = site.gateway.log
    async with site.streaming(sensors=10, rate=1000, duration=16) as (collector, fleet):
        for _ in range(2):
            await asyncio.sleep(1)
            await asyncio.to_thread(rabbitmq_node.stop)
            await asyncio.sleep(3)  # a backlog of ~3,000 readings
            connects = log.read_text().count('"connected to broker"')
            await asyncio.to_thread(rabbitmq_node.start)
            await until("reconnected", partial(more_connects, log, connects))
            await asyncio.sleep(0.05)  # the backlog's publishes in flight
            await asyncio.to_thread(rabbitmq_node.stop)
            await asyncio.sleep(1)
            await asyncio.to_thread(rabbitmq_node.start)
        sent, total = await delivered(fleet, collector, within_s=90)
    report("gone-at-backlog", collector.received, f"sent={total}")
    assert collector.received.missing(sent.last_seq) == {}
    assert "never retrieved" not in log.read_text()
    assert site.gateway.terminate() == 0


def more_connects(log: Path, than: int) -> bool:
    return log.read_text().count('"connected to broker"') > than


async def test_an_outage_is_logged_once_a_minute_and_the_reconnect_says_how_long_it_was(
    make_site: Any, rabbitmq_node: RabbitMQNode, mosquitto: MosquittoBroker
) -> None:
    """Every failed connect was a warning: 5,800 lines a day of an uplink outage at
    retry_max_s 15 (operator review). Now the first failure of an outage is logged at once,
    the same trouble again at most once a minute, and the reconnect says how long the
    broker was away and what it left to send."""
    site = make_site(rabbitmq_node, mosquitto, extra_amqp="retry_initial_s: 0.1\nretry_max_s: 0.3")
    log = site.gateway.log
    async with site.streaming(sensors=2, rate=100, duration=14) as (collector, fleet):
        for _ in range(2):  # the second outage follows a delivering session: logged at once
            await asyncio.sleep(1)
            await asyncio.to_thread(rabbitmq_node.stop)
            await asyncio.sleep(4)  # 10 or more failed connects
            connects = log.read_text().count('"connected to broker"')
            await asyncio.to_thread(rabbitmq_node.start)
            await until("reconnected", partial(more_connects, log, connects))
        sent, _ = await delivered(fleet, collector, within_s=60)
        failures = publisher_of(site)["connection_failures"]
    assert collector.received.missing(sent.last_seq) == {}
    assert site.gateway.terminate() == 0
    lines = [json.loads(line) for line in log.read_text().splitlines()]
    unreachable = [e for e in lines if e["event"].startswith("broker unreachable")]
    assert failures >= 20
    assert len(unreachable) == 2, [e["event"] for e in lines if e["level"] == "warning"]
    assert all(e["level"] == "warning" for e in unreachable)
    back = [e for e in lines if e["event"] == "connected to broker" and "down_for_s" in e]
    assert len(back) == 2
    assert all(e["down_for_s"] >= 4 and e["buffered"] > 0 for e in back)


async def test_lost_confirms_and_a_cut_uplink_cost_duplicates_not_readings(
    make_site: Any, rabbitmq: RabbitMQNode, mosquitto: MosquittoBroker
) -> None:
    extra_amqp = "timeout_s: 2\nretry_max_s: 1"
    async with proxied_site(make_site, rabbitmq, mosquitto, extra_amqp=extra_amqp) as (
        site,
        proxy,
    ):
        async with site.streaming(sensors=5, rate=200, duration=12) as (collector, fleet):
            await asyncio.sleep(3)
            proxy.swallow_replies = True  # the broker's confirms never reach the gateway
            await asyncio.sleep(4)
            proxy.swallow_replies = False
            proxy.cut()  # and the connections that were left hanging drop
            await asyncio.sleep(3)
            proxy.cut()
            sent, total = await delivered(fleet, collector, within_s=60)
    report("lost-confirms", collector.received, f"sent={total}")
    assert collector.received.missing(sent.last_seq) == {}
    assert collector.received.duplicates > 0  # what was confirmed but unheard went twice
    assert site.gateway.terminate() == 0


async def test_publisher_fails_over_to_the_next_broker_url(
    make_site: Any, rabbitmq: RabbitMQNode, mosquitto: MosquittoBroker
) -> None:
    dead = f"amqp://guest:guest@127.0.0.1:{free_port()}/"
    site = make_site(rabbitmq, mosquitto, gateway_url=dead, extra_amqp="retry_max_s: 1")
    config = site.gateway.config
    config.write_text(
        config.read_text().replace(f'url: "{dead}"', f'url: ["{dead}", "{rabbitmq.url}"]')
    )
    async with site.collector() as collector:
        site.gateway.start()
        sent = await asyncio.to_thread(site.fleet(sensors=2, rate=100).run, 100)
        await collector.wait_until(lambda got: got.unique >= 100, timeout=30)
    assert collector.received.missing(sent.last_seq) == {}
    log = site.gateway.log.read_text()
    assert "broker unreachable or connection lost" in log
    assert f'"url": "amqp://guest:***@127.0.0.1:{rabbitmq.port}/", "exchange"' in log
    assert site.gateway.terminate() == 0


async def test_refused_logins_say_why_and_readings_flow_once_the_user_may_publish(
    make_site: Any, rabbitmq: RabbitMQNode, mosquitto: MosquittoBroker, tmp_path: Path
) -> None:
    user = f"gw-{secrets.token_hex(4)}"
    password = tmp_path / "amqp-password"
    password.write_text("s3cret\n")
    site = make_site(
        rabbitmq,
        mosquitto,
        extra_amqp=f"username: {user}\npassword_file: {password}\nretry_max_s: 1",
    )
    async with site.collector() as collector:
        site.gateway.start()
        sent = await asyncio.to_thread(site.fleet(sensors=2, rate=100).run, 100)
        await until(
            "the refused login is logged",
            lambda: "broker refused the login" in site.gateway.log.read_text(),
        )
        await until("every reading accepted", lambda: site.status()["buffer"]["depth"] == 100)
        assert collector.received.unique == 0  # accepted, and waiting for the broker
        await asyncio.to_thread(rabbitmq.ctl, "add_user", user, "s3cret")
        await until(
            "the refused vhost is logged",
            lambda: "broker refused access to the virtual host" in site.gateway.log.read_text(),
        )
        await asyncio.to_thread(rabbitmq.ctl, "set_permissions", "-p", "/", user, "^$", ".*", ".*")
        await until(  # it may write, but not declare (configure) the exchange
            "the refused exchange is logged",
            lambda: "broker refused access to the exchange" in site.gateway.log.read_text(),
        )
        await asyncio.to_thread(rabbitmq.ctl, "set_permissions", "-p", "/", user, ".*", ".*", ".*")
        await collector.wait_until(lambda got: got.unique >= 100, timeout=30)
    assert collector.received.missing(sent.last_seq) == {}
    log = site.gateway.log.read_text()
    assert "check amqp.username and amqp.password_file" in log
    assert f'"url": "amqp://{user}:***@127.0.0.1:{rabbitmq.port}/"' in log  # who logs in
    assert "broker unreachable" not in log  # the broker was there: it said no
    refusals = [json.loads(line) for line in log.splitlines() if "broker refused" in line]
    assert {e["level"] for e in refusals} == {"error"}  # lasting: `journalctl -p err` shows it
    assert site.gateway.terminate() == 0


async def test_publishes_refused_after_a_good_connect_back_off_more_and_more(
    make_site: Any, rabbitmq: RabbitMQNode, mosquitto: MosquittoBroker, tmp_path: Path
) -> None:
    """A user who may declare but not write: every connect succeeds and every publish closes
    the channel. The reconnects slow down as for a broker that is away (they went on every
    `retry_initial_s`: a connection and a warning 5 times a second)."""
    user = f"gw-{secrets.token_hex(4)}"
    password = tmp_path / "amqp-password"
    password.write_text("s3cret\n")
    await asyncio.to_thread(rabbitmq.ctl, "add_user", user, "s3cret")
    await asyncio.to_thread(rabbitmq.ctl, "set_permissions", "-p", "/", user, ".*", "^$", ".*")
    site = make_site(
        rabbitmq,
        mosquitto,
        extra_amqp=f"username: {user}\npassword_file: {password}\n"
        "retry_initial_s: 0.1\nretry_max_s: 2",
    )

    def connects() -> list[float]:  # each refused session connects first
        lines = [json.loads(line) for line in site.gateway.log.read_text().splitlines()]
        return [
            datetime.fromisoformat(line["timestamp"]).timestamp()
            for line in lines
            if line["event"] == "connected to broker"
        ]

    async with site.collector() as collector:
        site.gateway.start()
        sent = await asyncio.to_thread(site.fleet(sensors=2, rate=100).run, 100)
        await until("seven refused sessions", lambda: len(connects()) >= 7)
        at = connects()
        assert at[6] - at[5] >= 1.0  # 0.1 s doubled five times, capped at 2 s, jittered 0.5-1
        lines = [json.loads(line) for line in site.gateway.log.read_text().splitlines()]
        connected = [e for e in lines if e["event"] == "connected to broker"]
        down = [e["down_for_s"] for e in connected if "down_for_s" in e]
        assert down == sorted(down) and down[-1] > 3  # a connect alone is no recovery
        await asyncio.to_thread(rabbitmq.ctl, "set_permissions", "-p", "/", user, ".*", ".*", ".*")
        await collector.wait_until(lambda got: got.unique >= 100, timeout=30)
    assert collector.received.missing(sent.last_seq) == {}
    assert site.gateway.terminate() == 0


async def test_messages_too_large_for_the_broker_are_made_smaller_and_a_big_reading_waits(
    make_site: Any, mosquitto: MosquittoBroker, tmp_path: Path
) -> None:
    """RabbitMQ refuses a message larger than its max_message_size and closes the channel.
    The gateway sent the same batches again for ever (up to 256 KiB each by default) and
    blamed the exchange's type: nothing flowed any more. Now it builds its batches anew
    within the limit; one reading larger than the limit on its own waits in the buffer,
    counted, while the rest flows."""
    with RabbitMQNode(tmp_path / "rmq", "small", extra_config=["max_message_size = 8192"]) as rmq:
        site = make_site(rmq, mosquitto, extra_amqp="retry_max_s: 2")
        async with site.streaming(sensors=4, rate=400, duration=4) as (collector, fleet):
            await asyncio.sleep(1)
            big = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=f"{site.name}-big")
            big.connect("127.0.0.1", mosquitto.port)
            big.loop_start()
            payload = json.dumps({"seq": 1, "note": "x" * 10_000})
            big.publish(f"{site.name}/big/state", payload, qos=1).wait_for_publish(10)
            big.disconnect()
            big.loop_stop()
            sent, total = await delivered(fleet, collector)
            await until("the big reading is counted", lambda: publisher_of(site)["too_large"] > 0)
            held = site.status()["buffer"]["depth"]
            shown = format_status(site.status())  # what `edge-gateway status` prints
        assert site.gateway.terminate() == 0
    text = site.gateway.log.read_text()
    connects = text.count('"connected to broker"')
    report("too-large", collector.received, f"sent={total} held={held} connects={connects}")
    assert collector.received.missing(sent.last_seq) == {}
    assert "big" not in collector.received.seqs
    assert held >= 1  # the big one, kept
    assert "TOO LARGE for the broker" in shown
    assert "the broker refuses messages larger than its max_message_size" in text
    assert "a reading is larger than the broker's max_message_size" in text
    assert "broker unreachable" not in text  # each reconnect says why
    assert connects < 15  # the big one is tried with backoff, not in a reconnect storm


async def refused_then_flowing(
    site: Any, problem: str, fix: Callable[[], Awaitable[None]], hint: str
) -> None:
    """Readings are accepted while the broker refuses (`problem` logged, with `hint`); once
    `fix` has run and a consumer's queue is bound, every one of them arrives."""
    site.gateway.start()
    sent = await asyncio.to_thread(site.fleet(sensors=2, rate=100).run, 100)
    await until(f"{problem!r} logged", lambda: problem in site.gateway.log.read_text())
    await fix()
    async with site.collector() as collector:  # declares the exchange and binds a queue
        await collector.wait_until(lambda got: got.unique >= 100, timeout=30)
    assert collector.received.missing(sent.last_seq) == {}
    assert hint in site.gateway.log.read_text()
    assert site.gateway.terminate() == 0


async def test_a_missing_exchange_is_named_and_readings_flow_once_it_exists(
    make_site: Any, rabbitmq: RabbitMQNode, mosquitto: MosquittoBroker
) -> None:
    site = make_site(rabbitmq, mosquitto, extra_amqp="declare_exchange: false\nretry_max_s: 1")

    async def nothing() -> None:  # the consumer declares it
        pass

    await refused_then_flowing(
        site,
        "the exchange does not exist on the broker",
        nothing,
        "set amqp.declare_exchange: true",
    )


async def test_an_exchange_of_another_type_is_named_and_readings_flow_once_it_is_gone(
    make_site: Any, rabbitmq: RabbitMQNode, mosquitto: MosquittoBroker
) -> None:
    site = make_site(rabbitmq, mosquitto, extra_amqp="retry_max_s: 1")
    connection = await aio_pika.connect(rabbitmq.url)
    channel = await connection.channel()
    squatter = await channel.declare_exchange(site.name, aio_pika.ExchangeType.FANOUT)

    async def remove_it() -> None:
        await squatter.delete()
        await connection.close()

    await refused_then_flowing(  # the gateway declares a durable topic exchange of that name
        site,
        "the exchange exists on the broker with other settings",
        remove_it,
        "set amqp.exchange_type to the type it has",
    )


async def test_sigterm_mid_stream_exits_0_and_the_restart_delivers_the_rest(
    make_site: Any, rabbitmq: RabbitMQNode, mosquitto: MosquittoBroker
) -> None:
    site = make_site(rabbitmq, mosquitto)
    async with site.streaming(sensors=5, rate=300, duration=5) as (collector, fleet):
        await asyncio.sleep(1.5)
        started = time.monotonic()
        assert await asyncio.to_thread(site.gateway.terminate) == 0
        stopped_in = time.monotonic() - started
        await asyncio.to_thread(site.gateway.start)
        sent, total = await delivered(fleet, collector)
    report("sigterm", collector.received, f"sent={total} stopped_in={stopped_in:.2f}s")
    assert stopped_in < 6  # amqp.shutdown_grace_s is 5 s, and little was in flight
    assert collector.received.missing(sent.last_seq) == {}
    assert '"gateway stopped"' in site.gateway.log.read_text()
    # How long it may take, for whoever waits: MQTT driver 10 s, grace 5, close 2, commit 5.
    assert '"at_most_s": 22, "grace_s": 5.0' in site.gateway.log.read_text()
    assert site.gateway.terminate() == 0


async def test_full_buffer_with_reject_new_holds_mqtt_acks_until_there_is_room(
    make_site: Any, rabbitmq_node: RabbitMQNode, tmp_path: Path
) -> None:
    with MosquittoBroker(tmp_path / "mosquitto", ["max_queued_messages 100000"]) as mosquitto:
        site = make_site(
            rabbitmq_node,
            mosquitto,
            max_bytes="48KB",
            extra_buffer="when_full: reject_new",
            extra_amqp="retry_max_s: 1",
        )
        async with site.collector() as collector:
            await asyncio.to_thread(rabbitmq_node.stop)
            site.gateway.start()
            sent = await asyncio.to_thread(site.fleet(sensors=5, rate=1_000).run, 3_000)
            await asyncio.sleep(3)
            status = site.status()
            assert status["gateway"]["buffer"]["rejected"] > 0
            assert status["buffer"]["depth"] < 3_000  # the rest waits, unacknowledged, in MQTT
            await asyncio.to_thread(rabbitmq_node.start)
            await collector.wait_until(lambda got: got.unique >= 3_000, timeout=90)
    report("reject-new", collector.received)
    assert collector.received.missing(sent.last_seq) == {}
    assert "buffer did not accept readings; holding them unacknowledged" in (
        site.gateway.log.read_text()
    )
    assert site.gateway.terminate() == 0
