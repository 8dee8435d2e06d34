"""`edge-gateway tail` against a real RabbitMQ: readings printed, a lost broker and a wrong
URL each end it with a message saying what happened and exit 1."""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
from collections.abc import Callable, Iterator

import aio_pika
import pytest
from edge_gateway_sim.brokers import RabbitMQNode, free_port
from harness import until

EXCHANGE = "tail-test"


Tail = Callable[..., subprocess.Popen[str]]


@pytest.fixture
def tail() -> Iterator[Tail]:
    """Starts `edge-gateway tail URL OPTIONS...`; whatever still runs at the end is killed."""
    started: list[subprocess.Popen[str]] = []

    def start(url: str, *options: str) -> subprocess.Popen[str]:
        process = subprocess.Popen(
            [sys.executable, "-m", "gateway.cli", "tail", "--url", url, "--exchange", EXCHANGE,
             *options],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            stdin=subprocess.DEVNULL,
            text=True,
        )  # fmt: skip
        started.append(process)
        return process

    yield start
    for process in started:
        if process.poll() is None:
            process.kill()
        process.communicate()


async def _publish(url: str, readings: list[dict[str, object]]) -> None:
    body = json.dumps({"v": 1, "gateway": "gw", "site": "s", "readings": readings})
    await _send(url, body.encode())


async def _send(url: str, body: bytes) -> None:
    connection = await aio_pika.connect(url)
    async with connection:
        channel = await connection.channel()
        exchange = await channel.declare_exchange(
            EXCHANGE, aio_pika.ExchangeType.TOPIC, durable=True
        )
        await exchange.publish(aio_pika.Message(body), routing_key="s")


async def _listening(tail: subprocess.Popen[str], rabbit: RabbitMQNode) -> None:
    """Until tail's queue is bound: what is published before that is not tail's to see."""
    await until(
        "tail is listening",
        lambda: tail.poll() is not None or "amq.gen" in rabbit.ctl("list_queues", "name"),
    )


async def test_tail_prints_each_reading_and_says_when_the_broker_goes(
    rabbitmq_node: RabbitMQNode, tail: Tail
) -> None:
    await _publish(rabbitmq_node.url, [])  # the exchange exists, as the gateway makes it
    counted = tail(rabbitmq_node.url, "--count", "2")
    await _listening(counted, rabbitmq_node)
    await _publish(rabbitmq_node.url, [{"device": "a", "n": 1}, {"device": "b", "n": 2}])
    out, err = await asyncio.to_thread(counted.communicate, timeout=30)
    assert counted.returncode == 0, err
    assert [json.loads(line)["device"] for line in out.splitlines()] == ["a", "b"]

    watching = tail(rabbitmq_node.url)
    await _listening(watching, rabbitmq_node)
    await asyncio.to_thread(rabbitmq_node.stop)
    out, err = await asyncio.to_thread(watching.communicate, timeout=30)
    assert watching.returncode == 1
    assert f"connection to amqp://guest:***@127.0.0.1:{rabbitmq_node.port}/ lost" in err
    assert "run tail again once the broker is back" in err


async def test_tail_prints_no_more_than_its_count_and_other_messages_whole(
    rabbitmq_node: RabbitMQNode, tail: Tail
) -> None:
    await _publish(rabbitmq_node.url, [])
    counted = tail(rabbitmq_node.url, "--count", "2")
    await _listening(counted, rabbitmq_node)
    await _send(rabbitmq_node.url, b'{"readings": "abc"}')  # not the gateway's: shown whole
    await _publish(rabbitmq_node.url, [{"device": "a"}, {"device": "b"}, {"device": "c"}])
    out, err = await asyncio.to_thread(counted.communicate, timeout=30)
    assert counted.returncode == 0, err
    assert out.splitlines() == ['{"readings": "abc"}', '{"device": "a"}']


async def test_tail_into_a_pipe_whose_reader_ends_ends_too(rabbitmq_node: RabbitMQNode) -> None:
    """`edge-gateway tail ... | head -n 1`: once head has exited, tail's next line ends it,
    quietly (it went on for ever, logging a BrokenPipeError per message)."""
    await _publish(rabbitmq_node.url, [])
    reading, writing = os.pipe()
    piped = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "gateway.cli", "tail", "--url", rabbitmq_node.url,
        "--exchange", EXCHANGE, stdout=writing, stderr=asyncio.subprocess.PIPE,
    )  # fmt: skip
    head = await asyncio.create_subprocess_exec(
        "head", "-n", "1", stdin=reading, stdout=asyncio.subprocess.PIPE
    )
    os.close(reading)  # head alone reads the pipe, tail alone writes it
    os.close(writing)
    try:
        await until(
            "tail is listening", lambda: "amq.gen" in rabbitmq_node.ctl("list_queues", "name")
        )
        await _publish(rabbitmq_node.url, [{"device": "a"}, {"device": "b"}])
        first, _ = await asyncio.wait_for(head.communicate(), 30)
        await _publish(rabbitmq_node.url, [{"device": "c"}])  # into the closed pipe
        _, err = await asyncio.wait_for(piped.communicate(), 30)
    finally:
        for process in (piped, head):
            if process.returncode is None:
                process.kill()
                await process.wait()
    assert json.loads(first) == {"device": "a"}
    assert piped.returncode == 0
    assert b"Error" not in err


async def test_tail_with_nothing_at_the_url_says_what_to_check(tail: Tail) -> None:
    nothing = tail(f"amqp://guest:guest@127.0.0.1:{free_port()}/")
    _, err = await asyncio.to_thread(nothing.communicate, timeout=30)
    assert nothing.returncode == 1
    assert "cannot connect to amqp://guest:***@127.0.0.1:" in err
    assert "check the URL (host, port, user, password, vhost) and that the broker runs" in err


async def test_tail_with_a_url_it_cannot_read_says_so_without_a_traceback(tail: Tail) -> None:
    unreadable = tail("amqp://guest:guest@127.0.0.1:99999/")
    _, err = await asyncio.to_thread(unreadable.communicate, timeout=30)
    assert unreadable.returncode == 2
    assert err.startswith("edge-gateway tail: --url: cannot be read (Port out of range"), err
    assert "Traceback" not in err


async def test_tail_with_an_exchange_name_amqp_cannot_carry_says_so(tail: Tail) -> None:
    """pamqp refuses to send such a name: it was a traceback from inside the client."""
    wrong = tail(f"amqp://guest:guest@127.0.0.1:{free_port()}/", "--exchange", "Tür")
    _, err = await asyncio.to_thread(wrong.communicate, timeout=30)
    assert wrong.returncode == 2
    assert err.startswith("edge-gateway tail: --exchange: 'Tür' cannot be an AMQP exchange"), err


async def test_tail_refused_a_virtual_host_says_so(tail: Tail, rabbitmq: RabbitMQNode) -> None:
    refused = tail(f"amqp://guest:guest@127.0.0.1:{rabbitmq.port}/no-such-vhost")
    _, err = await asyncio.to_thread(refused.communicate, timeout=30)
    assert refused.returncode == 1
    assert "broker refused access to the virtual host" in err, err


async def test_tail_over_tls_to_a_plain_port_says_the_port_does_not_speak_tls(
    tail: Tail, rabbitmq: RabbitMQNode
) -> None:
    plain = tail(f"amqps://guest:guest@127.0.0.1:{rabbitmq.port}/")
    _, err = await asyncio.to_thread(plain.communicate, timeout=30)
    assert plain.returncode == 1
    assert "the broker's port does not speak TLS" in err, err
