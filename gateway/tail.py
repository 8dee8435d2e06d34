"""`edge-gateway tail`: watch readings arrive at an exchange, as `mosquitto_sub` does for MQTT."""

from __future__ import annotations

import asyncio
import json
import sys

import aio_pika
import aiormq

from gateway.publisher import redact


async def tail_readings(
    url: str, exchange: str, binding: str, count: int = 0, whole_messages: bool = False
) -> int:
    """Print each reading (or message) as one JSON line; return an exit code."""
    try:
        connection = await aio_pika.connect(url, timeout=10)
    except (OSError, aiormq.exceptions.AMQPError, TimeoutError) as exc:
        print(f"cannot connect to {redact(url)}: {exc}", file=sys.stderr)
        return 1
    printed = 0
    done = asyncio.Event()
    async with connection:
        channel = await connection.channel()
        try:
            target = await channel.get_exchange(exchange, ensure=True)
        except aiormq.exceptions.ChannelNotFoundEntity:
            print(
                f"exchange {exchange!r} does not exist on {redact(url)}; is the gateway "
                "connected (amqp.declare_exchange) and is the name right?",
                file=sys.stderr,
            )
            return 1
        queue = await channel.declare_queue(exclusive=True, auto_delete=True)
        await queue.bind(target, routing_key=binding)

        async def on_message(message: aio_pika.abc.AbstractIncomingMessage) -> None:
            nonlocal printed
            async with message.process():
                if whole_messages:
                    lines = [message.body.decode("utf-8", "replace")]
                else:
                    try:
                        lines = [json.dumps(r) for r in json.loads(message.body)["readings"]]
                    except (ValueError, KeyError, TypeError):
                        lines = [message.body.decode("utf-8", "replace")]
                for line in lines:
                    print(line, flush=True)
                    printed += 1
                    if count and printed >= count:
                        done.set()

        await queue.consume(on_message)
        print(
            f"listening on exchange {exchange!r} with binding {binding!r}; Ctrl-C to stop",
            file=sys.stderr,
        )
        await done.wait()
    return 0
