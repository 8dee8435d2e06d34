"""paho-mqtt driven by the asyncio event loop, with batched socket reads and writes.

paho's socket callbacks register its socket with the loop, as aiomqtt does: messages,
decoding and acks then share one thread with no hand-offs.

paho reads every packet with three or more small `recv()` calls and writes every packet
with its own `send()`. On loopback a `send()` costs tens of microseconds of kernel time,
and a gateway acknowledging 1,000 messages a second sends 1,000 PUBACKs: `LoopClient`
reads up to 16 KiB at once and serves paho from that, gathers the packets paho writes in
one pass into one `send()`, and sends the PUBACKs of one commit in one write (`ack_all`).

paho also builds an `MQTTMessage` and, with MQTT 5, a `Properties` object for every PUBLISH
it receives, and keeps its parsing state in a dict: together about half of the CPU the
gateway spent per reading. `LoopClient` parses a QoS 0 or 1 PUBLISH that one read holds
whole itself, hands it to `on_arrival` as (topic, payload, qos, mid), and skips its
properties (the gateway asks for none: no topic aliases). paho still reads every other
packet, and a PUBLISH that straddles two reads.

It overrides paho's private `_sock_recv`, `_sock_send`, `_packet_write`, `_handle_publish`,
`_sock_close`, `_check_keepalive` and `_easy_log`, and uses `_in_packet`, `_msgtime_mutex`,
`_last_bytes_received`, `_loop_rc_handle` and `_call_socket_register_write`;
tests/integration/test_mqtt_publish_packets.py and test_mqtt_flood.py fail should paho change
them.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
import ssl
import threading
from collections.abc import Callable, Iterable
from typing import Any

import paho.mqtt.client as mqtt
from paho.mqtt.enums import MQTTErrorCode, MQTTProtocolVersion
from paho.mqtt.exception import MalformedPacket

_PACKETS_PER_TURN = 256
"""Packets parsed per turn of the event loop: about as many as one 16 KiB read holds."""

_SOCKET_FAILURES = ("failed to receive on socket: %s", "timeout on socket: %s")
"""paho's error lines about a failed socket read: `socket_error` keeps them instead."""


class LoopClient(mqtt.Client):
    _chunk = b""
    _pos = 0
    _unsent = b""
    """Bytes paho wrote that the socket has not taken yet, oldest first."""
    _gathering = False
    on_arrival: Callable[[bytes, bytes, int, int], None] | None = None
    """Receives (topic, payload, qos, mid) of each QoS 0 and 1 PUBLISH, in order."""
    reading_paused = False
    """Set while `LoopBinding` leaves the socket unread on purpose."""
    socket_error: str | None = None
    """What ended the last connection's socket, if the socket said: paho's reason for a lost
    connection is only "Unspecified error". The driver's own warning about the loss carries
    it, so paho's error-level line about the same event ("connection reset by peer" on
    every broker restart) is not logged as well."""

    def _check_keepalive(self) -> None:
        """paho closes a connection whose broker sent nothing for a keepalive interval. While
        reading is paused the broker's packets, its PINGRESP among them, wait unread in the
        socket: that is no dead broker. PINGREQs still go out, so the broker keeps us too."""
        if self.reading_paused:
            with self._msgtime_mutex:
                self._last_bytes_received = mqtt.time_func()
        super()._check_keepalive()

    def loop_read(self, max_packets: int = 1) -> MQTTErrorCode:
        """Read one packet: one that `_reads_itself` takes, wholly inside the last read, here;
        others by paho.

        paho reads a packet in three or more steps (type, length, body) and keeps its state
        in a dict; a PUBLISH that one read brought whole needs none of that.
        """
        if self._in_packet["command"] or self._sock is None:
            return super().loop_read(max_packets)  # paho is inside a packet: let it finish
        if self._pos >= len(self._chunk):
            try:
                self._refill()
            except BlockingIOError:
                return MQTTErrorCode.MQTT_ERR_SUCCESS  # nothing yet
            except OSError:
                return super().loop_read(max_packets)  # paho reads again and reports it
        chunk, start = self._chunk, self._pos
        if start >= len(chunk) or not self._reads_itself(chunk[start]):  # closed; or paho's
            return super().loop_read(max_packets)
        try:
            length = _remaining_length(chunk, start + 1)
            if length is None or length[1] + length[0] > len(chunk):
                return super().loop_read(max_packets)  # straddles two reads
            body, stop = length[1], length[1] + length[0]
            self._pos = stop
            with self._msgtime_mutex:
                self._last_bytes_received = mqtt.time_func()
            self._handle_whole(chunk[start], chunk, body, stop)
        except MalformedPacket as exc:
            self._easy_log(mqtt.MQTT_LOG_ERR, "Received malformed packet: %s", exc)
            return self._loop_rc_handle(MQTTErrorCode.MQTT_ERR_PROTOCOL)
        return MQTTErrorCode.MQTT_ERR_SUCCESS

    def _reads_itself(self, header: int) -> bool:
        """Whether a packet starting with `header` is parsed here: a QoS 0/1 PUBLISH, for
        `on_arrival`. A subclass may take more (the simulator's fleet: PUBACKs)."""
        return self.on_arrival is not None and header & 0xF4 == 0x30

    def _handle_whole(self, header: int, packet: bytes, at: int, stop: int) -> None:
        """Handle a packet `_reads_itself` takes, its body `packet[at:stop]` read whole."""
        self._deliver(header, packet, at, stop)

    def _handle_publish(self) -> MQTTErrorCode:
        header = self._in_packet["command"]
        if self.on_arrival is None or header & 0x04:  # QoS 2: paho's PUBREC/PUBREL dance
            return super()._handle_publish()
        packet = self._in_packet["packet"]
        self._deliver(header, packet, 0, len(packet))
        return MQTTErrorCode.MQTT_ERR_SUCCESS

    def _deliver(self, header: int, packet: bytes | bytearray, at: int, stop: int) -> None:
        """Hand the PUBLISH whose body is `packet[at:stop]` to `on_arrival`."""
        assert self.on_arrival is not None
        qos = (header & 0x06) >> 1
        end = at + 2 + int.from_bytes(packet[at : at + 2])
        topic = bytes(packet[at + 2 : end])
        mid = 0
        if qos:
            mid = int.from_bytes(packet[end : end + 2])
            end += 2
        if self._protocol == MQTTProtocolVersion.MQTTv5:
            properties = _remaining_length(packet, end, stop)
            if properties is None:
                raise MalformedPacket("PUBLISH properties cut short")
            end = properties[1] + properties[0]
        if end > stop:
            raise MalformedPacket("PUBLISH packet shorter than its topic and packet id")
        self.on_arrival(topic, bytes(packet[end:stop]), qos, mid)

    def ack_all(self, mids: Iterable[int]) -> None:
        """PUBACK these QoS 1 messages (paho's `ack` queues a packet for each).

        They are sent when the socket is next writable, with every other ack of this turn
        of the event loop (one commit settles several puts): one `send()` for them all.
        """
        if self._sock is None:
            return  # the connection is gone: the broker sends them again
        self._unsent += b"".join([b"\x40\x02" + mid.to_bytes(2) for mid in mids])
        self._call_socket_register_write()

    def _refill(self) -> None:
        """Read up to 16 KiB from the socket; BlockingIOError if nothing has arrived."""
        try:
            self._chunk, self._pos = super()._sock_recv(16384), 0
        except BlockingIOError:
            raise
        except OSError as exc:
            self.socket_error = str(exc)
            raise
        if not self._chunk:
            self.socket_error = "the broker closed the connection"

    def _easy_log(self, level: Any, fmt: str, *args: Any) -> None:
        if fmt not in _SOCKET_FAILURES:
            super()._easy_log(level, fmt, *args)

    def _sock_recv(self, bufsize: int) -> bytes:
        if self._pos >= len(self._chunk):
            self._refill()
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
            except OSError as exc:
                self.socket_error = str(exc)
                return MQTTErrorCode.MQTT_ERR_CONN_LOST
            self._unsent = self._unsent[sent:]
        return MQTTErrorCode.MQTT_ERR_SUCCESS

    def queue_disconnect(self) -> None:
        """A DISCONNECT (normal disconnection; the session stays), behind what is queued."""
        self._unsent += b"\xe0\x00"

    def flush_unsent(self) -> MQTTErrorCode:
        """Write what is queued: MQTT_ERR_AGAIN while the socket takes no more."""
        return self._flush()

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


def _remaining_length(
    data: bytes | bytearray, at: int, stop: int | None = None
) -> tuple[int, int] | None:
    """MQTT's variable byte integer at `data[at]`: (value, where what follows begins).

    None when `data` ends (or `stop` comes) before it does; MalformedPacket when it is
    longer than the 4 bytes MQTT allows.
    """
    stop = len(data) if stop is None else stop
    value = shift = 0
    while at < stop:
        byte = data[at]
        at += 1
        value |= (byte & 0x7F) << shift
        if byte < 0x80:
            return value, at
        shift += 7
        if shift > 21:
            raise MalformedPacket("variable byte integer longer than 4 bytes")
    return None


class LoopBinding:
    """Lets the event loop drive paho's socket: read when readable, write when queued.

    Reading can be paused: a source whose intake is behind leaves messages in the
    socket (and, beyond it, with the MQTT broker) instead of parsing them only to
    hold them in memory. paho calls the socket callbacks from the executor thread
    during connect, and from the loop otherwise; `_in_loop` makes each change on the
    loop thread.
    """

    def __init__(self, client: LoopClient, loop: asyncio.AbstractEventLoop) -> None:
        self._client = client
        self._loop = loop
        self._thread = threading.get_ident()
        self._paused = False
        client.on_socket_open = self._on_open
        client.on_socket_close = self._on_close
        client.on_socket_register_write = self._on_want_write
        client.on_socket_unregister_write = self._on_wrote

    def pause_reading(self) -> None:
        if not self._paused:
            self._paused = self._client.reading_paused = True
            sock = self._client.socket()
            if sock is not None:
                self._loop.remove_reader(sock)

    def resume_reading(self) -> None:
        if self._paused:
            self._paused = self._client.reading_paused = False
            sock = self._client.socket()
            if sock is not None:
                self._loop.add_reader(sock, self._read)
                self._loop.call_soon(self._read)  # what was read before the pause

    def detach(self) -> None:
        """The binding's end (a stop): the socket leaves the loop, and what paho does with it
        from now on is not the loop's business. paho closes the socket again when the client
        is freed, at some later garbage collection, perhaps after the loop has closed; its
        callback could only fail then ("Invalid file descriptor: -1", "Event loop is closed"),
        and paho logged that as an error."""
        client = self._client
        client.on_socket_open = client.on_socket_close = None
        client.on_socket_register_write = client.on_socket_unregister_write = None
        sock = client.socket()
        if sock is not None and sock.fileno() >= 0:  # -1: closed already (`disconnect`)
            self._loop.remove_reader(sock)
            self._loop.remove_writer(sock)

    async def disconnect(self, within_s: float) -> None:
        """Send DISCONNECT after what is queued (the stop's PUBACKs), then close the socket
        only once the broker has read it all, or after `within_s`.

        paho closes right after writing a DISCONNECT. A close with bytes unread in the
        socket (the broker was still sending) resets the connection, and the kernel drops
        what the broker had not read yet: the last PUBACKs and the DISCONNECT, so the broker
        sent those messages again as new readings. So: send, shut our side, read what still
        comes until the broker closes (a DISCONNECT makes it), then close.
        """
        client, sock = self._client, self._client.socket()
        if not isinstance(sock, socket.socket):  # ssl.SSLSocket too; paho's WebSockets not
            return
        self.detach()
        client.queue_disconnect()
        with contextlib.suppress(TimeoutError, OSError):
            async with asyncio.timeout(within_s):
                while client.flush_unsent() == MQTTErrorCode.MQTT_ERR_AGAIN:
                    await self._until_ready(sock, writing=True)
                sock.shutdown(socket.SHUT_WR)
                while _read_some(sock):
                    await self._until_ready(sock, writing=False)
        sock.close()

    async def _until_ready(self, sock: Any, writing: bool) -> None:
        """Wait until `sock` is writable (`writing`) or readable."""
        ready = asyncio.Event()
        if writing:
            self._loop.add_writer(sock, ready.set)
        else:
            self._loop.add_reader(sock, ready.set)
        try:
            await ready.wait()
        finally:
            (self._loop.remove_writer if writing else self._loop.remove_reader)(sock)

    def _read(self) -> None:
        # paho parses one packet per call. Parse at most a turn's worth, then let the other
        # tasks (decode, put, ack, publish) have theirs. "All that was read" is no bound: a
        # packet that straddles two reads makes paho read again, so in a flood the buffer
        # never empties and this would run for ever, starving everything else.
        for _ in range(_PACKETS_PER_TURN):
            if self._paused:
                return
            self._client.loop_read()
            if not self._client.has_unread():
                return  # the socket fires again when more arrives
        self._loop.call_soon(self._read)  # bytes already read wait here, where epoll cannot see

    def _in_loop(self, change: Callable[..., object], *args: Any) -> None:
        if threading.get_ident() == self._thread:
            change(*args)
        else:
            self._loop.call_soon_threadsafe(change, *args)

    def _on_open(self, _client: mqtt.Client, _userdata: Any, sock: Any) -> None:
        self._in_loop(self._opened, sock)

    def _opened(self, sock: Any) -> None:
        """A new connection is read even while intake is behind: its CONNACK comes first, and
        unread it would make paho close the connection again; a message pauses it anew."""
        if sock.fileno() < 0:
            return  # closed before the loop came to it (a stop during a connect)
        self._client.socket_error = None
        self._paused = self._client.reading_paused = False
        self._loop.add_reader(sock, self._read)

    def _on_close(self, _client: mqtt.Client, _userdata: Any, sock: Any) -> None:
        # By number: paho closes the socket right after this call, in the executor thread
        # during a connect, before the loop comes to the removal. A closed socket has no
        # number: the removal failed ("Invalid file descriptor: -1") and left the
        # registration behind, in the way of the next socket given that number.
        fd = sock.fileno()
        self._in_loop(self._loop.remove_reader, fd)
        self._in_loop(self._loop.remove_writer, fd)

    def _on_want_write(self, client: mqtt.Client, _userdata: Any, sock: Any) -> None:
        self._in_loop(self._watch_writable, sock, client.loop_write)

    def _watch_writable(self, sock: Any, write: Callable[[], object]) -> None:
        if sock.fileno() >= 0:  # not closed meanwhile
            self._loop.add_writer(sock, write)

    def _on_wrote(self, _client: mqtt.Client, _userdata: Any, sock: Any) -> None:
        self._in_loop(self._loop.remove_writer, sock)


def _read_some(sock: Any) -> bool:
    """Read and drop what has arrived; False once the peer has closed its side."""
    try:
        while data := sock.recv(65536):
            del data
    except (BlockingIOError, ssl.SSLWantReadError):
        return True
    return False
