"""A TCP proxy on loopback for network faults between the gateway and RabbitMQ.

It can cut every connection (the uplink drops), reset them (the broker's host fails), or
swallow what the broker sends back (confirms lost in transit) while the gateway's bytes
still arrive.
"""

from __future__ import annotations

import asyncio
import socket
import struct
from contextlib import suppress


class TcpProxy:
    def __init__(self, target_port: int) -> None:
        self.target_port = target_port
        self.port = 0
        self.swallow_replies = False
        self._server: asyncio.Server | None = None
        self._writers: set[asyncio.StreamWriter] = set()
        self._clients: set[asyncio.StreamWriter] = set()
        self._tasks: set[asyncio.Task[None]] = set()

    async def __aenter__(self) -> TcpProxy:
        self._server = await asyncio.start_server(self._accept, "127.0.0.1", 0)
        self.port = self._server.sockets[0].getsockname()[1]
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        assert self._server is not None
        self._server.close()
        self.cut()
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)

    def cut(self) -> None:
        """Close every proxied connection, as a dropped uplink would."""
        for writer in list(self._writers):
            writer.transport.abort()
        self._writers.clear()

    def send_to_clients(self, data: bytes) -> None:
        """Bytes the broker did not send, for each client: the start of a packet, say."""
        for client in self._clients:
            client.write(data)

    def reset(self) -> None:
        """Reset every proxied connection: the clients get a TCP RST, not an orderly close."""
        for client in self._clients:
            linger_zero = struct.pack("ii", 1, 0)
            client.get_extra_info("socket").setsockopt(
                socket.SOL_SOCKET, socket.SO_LINGER, linger_zero
            )
        self.cut()

    async def _accept(
        self, client_reader: asyncio.StreamReader, client: asyncio.StreamWriter
    ) -> None:
        try:
            broker_reader, broker = await asyncio.open_connection("127.0.0.1", self.target_port)
        except OSError:
            client.transport.abort()
            return
        self._writers |= {client, broker}
        self._clients.add(client)
        up = asyncio.create_task(self._pipe(client_reader, broker, replies=False))
        down = asyncio.create_task(self._pipe(broker_reader, client, replies=True))
        self._tasks |= {up, down}
        await asyncio.wait({up, down}, return_when=asyncio.FIRST_COMPLETED)
        for task in (up, down):
            task.cancel()
        client.transport.abort()
        broker.transport.abort()
        self._tasks -= {up, down}
        self._writers -= {client, broker}
        self._clients.discard(client)

    async def _pipe(
        self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, replies: bool
    ) -> None:
        with suppress(OSError, asyncio.IncompleteReadError):
            while data := await reader.read(65536):
                if replies and self.swallow_replies:
                    continue
                writer.write(data)
                await writer.drain()
