"""paho-mqtt driven by the asyncio event loop, with batched socket reads and writes.

paho's socket callbacks register its socket with the loop, as aiomqtt does: messages,
decoding and acks then share one thread with no hand-offs.

paho reads every packet with three or more small `recv()` calls and writes every packet
with its own `send()`. On loopback a `send()` costs tens of microseconds of kernel time,
and a gateway acknowledging 1,000 messages a second sends 1,000 PUBACKs: `LoopClient`
reads up to 16 KiB at once and serves paho from that, and gathers the packets paho writes
in one pass (the PUBACKs of one commit) into one `send()`. It overrides paho's private
`_sock_recv`, `_sock_send`, `_packet_write` and `_sock_close`; should they be renamed,
paho simply reads and writes unbatched again.
"""

from __future__ import annotations

import asyncio
import contextlib
import threading
from collections.abc import Callable
from typing import Any

import paho.mqtt.client as mqtt
from paho.mqtt.enums import MQTTErrorCode


class LoopClient(mqtt.Client):
    _chunk = b""
    _pos = 0
    _unsent = b""
    """Bytes paho wrote that the socket has not taken yet, oldest first."""
    _gathering = False

    def _sock_recv(self, bufsize: int) -> bytes:
        if self._pos >= len(self._chunk):
            self._chunk, self._pos = super()._sock_recv(16384), 0  # BlockingIOError if none
        data = self._chunk[self._pos : self._pos + bufsize]
        self._pos += len(data)
        return data

    def _packet_write(self) -> MQTTErrorCode:
        """paho's pass over its queued packets, gathered, then one `send()` of them all."""
        self._gathering = True
        try:
            rc = super()._packet_write()
        finally:
            self._gathering = False
        flushed = self._flush()
        return rc if rc != MQTTErrorCode.MQTT_ERR_SUCCESS else flushed

    def _sock_send(self, buf: bytes | bytearray) -> int:
        if self._gathering and self._sock is not None:
            self._unsent += buf
            return len(buf)
        return super()._sock_send(buf)

    def _flush(self) -> MQTTErrorCode:
        while self._unsent:
            try:
                sent = super()._sock_send(self._unsent)  # registers for writable on EAGAIN
            except BlockingIOError:
                return MQTTErrorCode.MQTT_ERR_AGAIN
            except OSError:
                return MQTTErrorCode.MQTT_ERR_CONN_LOST
            self._unsent = self._unsent[sent:]
        return MQTTErrorCode.MQTT_ERR_SUCCESS

    def want_write(self) -> bool:
        return bool(self._unsent) or super().want_write()

    def _sock_close(self) -> None:
        # paho closes right after "writing" a DISCONNECT: let it reach the broker if it can.
        # What is left is dropped: a new connection must never carry the old one's acks.
        with contextlib.suppress(OSError, ConnectionError):
            self._flush()
        self._chunk, self._pos, self._unsent = b"", 0, b""
        super()._sock_close()

    def has_unread(self) -> bool:
        """Bytes read from the socket (or held by TLS) that paho has not parsed yet."""
        sock = self.socket()
        pending = getattr(sock, "pending", None)
        return self._pos < len(self._chunk) or bool(pending and pending())


def attach_to_loop(client: LoopClient, loop: asyncio.AbstractEventLoop) -> None:
    """Let the event loop drive paho's socket: read when readable, write when queued.

    paho calls these from the executor thread during connect, and from the loop
    otherwise; `in_loop` makes each change on the loop thread.
    """

    def in_loop(change: Callable[..., object], *args: Any) -> None:
        if threading.get_ident() == loop_thread:
            change(*args)
        else:
            loop.call_soon_threadsafe(change, *args)

    def read() -> None:
        # paho parses one packet per call: parse all that one recv() brought, then let the
        # other tasks (decode, put, ack, publish) have their turn; the socket fires again
        # while it holds more. The work per turn stays bounded, also in a flood.
        client.loop_read()
        while client.has_unread():
            client.loop_read()

    def on_open(_client: mqtt.Client, _userdata: Any, sock: Any) -> None:
        in_loop(loop.add_reader, sock, read)

    def on_close(_client: mqtt.Client, _userdata: Any, sock: Any) -> None:
        in_loop(loop.remove_reader, sock)
        in_loop(loop.remove_writer, sock)

    def on_want_write(client: mqtt.Client, _userdata: Any, sock: Any) -> None:
        in_loop(loop.add_writer, sock, client.loop_write)

    def on_wrote(_client: mqtt.Client, _userdata: Any, sock: Any) -> None:
        in_loop(loop.remove_writer, sock)

    loop_thread = threading.get_ident()
    client.on_socket_open = on_open
    client.on_socket_close = on_close
    client.on_socket_register_write = on_want_write
    client.on_socket_unregister_write = on_wrote


def detach_from_loop(client: mqtt.Client, loop: asyncio.AbstractEventLoop) -> None:
    sock = client.socket()
    if sock is not None:
        loop.remove_reader(sock)
        loop.remove_writer(sock)
