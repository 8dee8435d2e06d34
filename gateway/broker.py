"""The AMQP broker as the gateway meets it: opening a connection, what a refusal means and
what to do about it, and a broker URL as logs show it.

The publisher, `edge-gateway tail` and the simulator's consumer share these.
"""

from __future__ import annotations

import re
from typing import Any

import aio_pika
import aiormq
from aio_pika.connection import make_url
from yarl import URL

# What a broken connection or channel raises; anything else is a bug and propagates.
CONNECTION_ERRORS = (
    aiormq.exceptions.AMQPError,
    aiormq.exceptions.ChannelInvalidStateError,
    ConnectionError,
    OSError,
    TimeoutError,
)
_BROKER_MAX_SIZE = re.compile(r"larger than configured max size (\d+)")
"""RabbitMQ's words when a message exceeds its `max_message_size` (it closes the channel)."""


class ConnectionLost(Exception):
    """The channel or connection broke while batches were in flight."""


def connection_lost(cause: BaseException) -> ConnectionLost:
    """The error that ends a session, keeping what broke it (for `explain`)."""
    if isinstance(cause, ConnectionLost):
        return cause
    lost = ConnectionLost(f"{type(cause).__name__}: {cause}")
    lost.__cause__ = cause
    return lost


UNREACHABLE = (
    "broker unreachable or connection lost",
    "check that the broker runs and that the host and port of amqp.url are right",
)
TOO_LARGE = (
    "the broker refused a message larger than its max_message_size",
    "the gateway makes its messages smaller; a single reading larger than the limit "
    "stays buffered until the broker's max_message_size is raised",
)
FORCED = (
    "the broker closed the connection (CONNECTION_FORCED)",
    "the broker is shutting down, or an administrator closed the connection or "
    "deleted the user or the vhost of amqp.url: check them on the broker",
)
PASSING = (UNREACHABLE, FORCED)
"""Trouble that usually passes by itself (a broker restarting, an uplink down): warnings.
The other explanations are refusals that last until a setting changes: errors."""


def _broker_error(error: BaseException) -> BaseException:
    """What the broker or the socket raised, under the `ConnectionLost` that ended a session."""
    if isinstance(error, ConnectionLost) and error.__cause__ is not None:
        return error.__cause__
    return error


def broker_max_size(error: BaseException) -> int | None:
    """The broker's `max_message_size`, if `error` is its refusal of a larger message."""
    found = _BROKER_MAX_SIZE.search(str(_broker_error(error)))
    return int(found[1]) if found else None


def explain(error: BaseException) -> tuple[str, str] | None:
    """What a broker's refusal means, and what to do (a refusal is fixed by settings, not
    time); None for anything else, such as an unreachable broker or a lost connection."""
    error = _broker_error(error)
    errors = aiormq.exceptions
    if broker_max_size(error) is not None:
        return TOO_LARGE
    if "CONNECTION_FORCED" in str(error):
        return FORCED
    if isinstance(error, errors.AuthenticationError | errors.ProbableAuthenticationError):
        return (
            "broker refused the login",
            "check amqp.username and amqp.password_file (or user:password in amqp.url)",
        )
    # RabbitMQ answers a refused vhost with Connection.Close where aiormq waits for OpenOk.
    opening_refused = isinstance(error, errors.InvalidFrameError) and all(
        word in str(error) for word in ("Connection.OpenOk", "Connection.Close")
    )
    if opening_refused or isinstance(error, errors.ConnectionNotAllowed):
        return (
            "broker refused access to the virtual host",
            "check the vhost at the end of amqp.url and the user's permissions on it",
        )
    if "WRONG_VERSION_NUMBER" in str(error):  # OpenSSL's words; aiormq may wrap the SSLError
        return (
            "the broker's port does not speak TLS",
            "amqps:// needs the broker's TLS port (RabbitMQ: 5671); 5672 is for amqp://",
        )
    if isinstance(error, errors.ChannelAccessRefused):
        return (
            "broker refused access to the exchange",
            "give the user configure and write permission on amqp.exchange",
        )
    if isinstance(error, errors.ChannelNotFoundEntity):
        return (
            "the exchange does not exist on the broker",
            "create amqp.exchange on the broker, or set amqp.declare_exchange: true (if it is "
            "set, the exchange was deleted meanwhile: the next connect declares it again)",
        )
    if isinstance(error, errors.ChannelPreconditionFailed):
        return (
            "the exchange exists on the broker with other settings",
            "set amqp.exchange_type to the type it has, or amqp.declare_exchange: false to "
            "use it as it is (an alternate-exchange argument, say), or name another "
            "amqp.exchange",
        )
    return None


async def open_connection(
    url: str | URL, deadline_s: float, **options: Any
) -> aio_pika.abc.AbstractConnection:
    """`aio_pika.connect`, except that a connection which fails to open is closed: aio-pika
    leaves it to its `__del__`, which warns "coroutine 'Connection.close' was never awaited"
    after every failed attempt while a broker is away."""
    connection = aio_pika.Connection(make_url(url), **options)
    try:
        await connection.connect(timeout=deadline_s)
    except BaseException:
        await connection.close()
        raise
    return connection


def shown_url(url: str, username: str | None) -> str:
    """`url` for logs, status and `check`: with the user that logs in (`amqp.username`
    replaces the URL's), the password masked."""
    if username is None:
        return redact(url)
    return redact(str(URL(url).with_user(username)))


def redact(url: str) -> str:
    """A broker URL safe to log: the password replaced."""
    parsed = URL(url)
    return str(parsed.with_password("***")) if parsed.password else url
