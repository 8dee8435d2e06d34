"""`edge-gateway tail`: watch readings arrive at an exchange, as `mosquitto_sub` does for MQTT."""

from __future__ import annotations

import asyncio
import json
import os
import sys

import aio_pika
import aiormq

from gateway.broker import explain, open_connection, redact


async def tail_readings(
    url: str, exchange: str, binding: str, count: int = 0, whole_messages: bool = False
) -> int:
    """Print each reading (or message) as one JSON line; return an exit code."""
    try:
        connection = await open_connection(url, 10)
    except (OSError, aiormq.exceptions.AMQPError, TimeoutError, ValueError) as exc:
        refusal = explain(exc)
        print(
            f"cannot connect to {redact(url)}: "
            f"{refusal[0] if refusal else exc or type(exc).__name__}; check "
            "the URL (host, port, user, password, vhost) and that the broker runs",
            file=sys.stderr,
        )
        return 1
    printed = 0
    ended: asyncio.Future[str | None] = asyncio.get_running_loop().create_future()
    """None once `count` readings are printed; why, if the connection is lost first."""

    def end(why: str | None) -> None:
        if not ended.done():
            ended.set_result(why)

    def on_close(_sender: object, exc: BaseException | None = None) -> None:
        end(str(exc or "closed by the broker"))

    async with connection:
        try:
            channel = await connection.channel()
            target = await channel.get_exchange(exchange, ensure=True)
            queue = await channel.declare_queue(exclusive=True, auto_delete=True)
            await queue.bind(target, routing_key=binding)
        except aiormq.exceptions.ChannelNotFoundEntity:
            print(
                f"exchange {exchange!r} does not exist on {redact(url)}; is the gateway "
                "connected (amqp.declare_exchange) and is the name right?",
                file=sys.stderr,
            )
            return 1
        except aiormq.exceptions.AMQPError as exc:
            print(
                f"the broker at {redact(url)} refused: {exc}; the user needs read permission "
                f"on {exchange!r} and configure/write on its own queues",
                file=sys.stderr,
            )
            return 1

        async def on_message(message: aio_pika.abc.AbstractIncomingMessage) -> None:
            nonlocal printed
            async with message.process():
                lines = None if whole_messages else _readings(message.body)
                if lines is None:
                    lines = [message.body.decode("utf-8", "replace")]
                for line in lines:
                    if ended.done():
                        return  # --count reached, or the connection is gone
                    try:
                        print(line, flush=True)
                    except BrokenPipeError:  # `tail | head`: head has what it wanted
                        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
                        end(None)
                        return
                    printed += 1
                    if count and printed >= count:
                        end(None)

        await queue.consume(on_message)
        connection.close_callbacks.add(on_close)
        print(
            f"listening on exchange {exchange!r} with binding {binding!r}; Ctrl-C to stop",
            file=sys.stderr,
        )
        try:
            why = await ended
        finally:
            connection.close_callbacks.discard(on_close)
        if why is not None:
            print(
                f"connection to {redact(url)} lost ({why}); run tail again once the broker is back",
                file=sys.stderr,
            )
            return 1
    return 0


def _readings(body: bytes) -> list[str] | None:
    """One JSON line per reading of a gateway message; None for any other message."""
    try:
        readings = json.loads(body)["readings"]
    except (ValueError, KeyError, TypeError):
        return None
    if not isinstance(readings, list) or not all(isinstance(r, dict) for r in readings):
        return None
    return [json.dumps(r) for r in readings]
