"""Real HTTP receivers on loopback for webhook tests: asyncio servers started in the test.

`Receiver` speaks just enough HTTP/1.1 (keep-alive, Content-Length bodies) and records every
request and connection; `respond` decides each answer, so a test can make a receiver that trickles
bytes, sends a huge body or never answers.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field

Respond = Callable[[asyncio.StreamWriter, "Request"], Awaitable[None]]
OK = b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nContent-Type: text/plain\r\n\r\nok"


@dataclass
class Request:
    head: bytes
    body: bytes
    peer: str

    def header(self, name: str) -> str | None:
        for line in self.head.decode("latin-1").split("\r\n")[1:]:
            key, _, value = line.partition(":")
            if key.strip().lower() == name.lower():
                return value.strip()
        return None


async def answer_ok(writer: asyncio.StreamWriter, request: Request) -> None:
    writer.write(OK)
    await writer.drain()


@dataclass
class Receiver:
    respond: Respond = answer_ok
    host: str = "127.0.0.1"
    requests: list[Request] = field(default_factory=list)
    connections: int = 0
    open: int = 0
    max_open: int = 0
    bytes_sent: int = 0  # for respond functions that count what they managed to write
    server: asyncio.Server | None = None
    _tasks: set[asyncio.Task[None]] = field(default_factory=set)

    @property
    def port(self) -> int:
        assert self.server is not None
        return int(self.server.sockets[0].getsockname()[1])

    def url(self, path: str = "/hook", host: str | None = None) -> str:
        return f"http://{host or self.host}:{self.port}{path}"

    async def start(self, port: int = 0) -> Receiver:
        self.server = await asyncio.start_server(self._serve, self.host, port)
        return self

    async def stop(self) -> None:
        if self.server is not None:
            self.server.close()
        for task in list(self._tasks):  # handlers still waiting (a receiver that never answers)
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._tasks.add(task)
        self.connections += 1
        self.open += 1
        self.max_open = max(self.max_open, self.open)
        peer = str(writer.get_extra_info("sockname")[0])
        try:
            while True:
                head = await reader.readuntil(b"\r\n\r\n")
                request = Request(head, b"", peer)
                request.body = await reader.readexactly(int(request.header("content-length") or 0))
                self.requests.append(request)
                await self.respond(writer, request)
        except (asyncio.IncompleteReadError, asyncio.LimitOverrunError, ConnectionError):
            pass
        except asyncio.CancelledError:
            pass  # stop() cancels handlers that never finish; ending normally keeps asyncio quiet
        finally:
            self.open -= 1
            self._tasks.discard(task)
            writer.close()


class _FastOk(asyncio.Protocol):
    """The receiver of `python -m tests.helpers.receivers`: answers every request 200 at once."""

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self.transport = transport
        self.buf = b""

    def data_received(self, data: bytes) -> None:
        self.buf += data
        while True:
            end = self.buf.find(b"\r\n\r\n")
            if end < 0:
                return
            head = self.buf[:end].lower()
            at = head.find(b"content-length:")
            length = int(head[at + 15 :].split(b"\r\n", 1)[0]) if at >= 0 else 0
            if len(self.buf) < end + 4 + length:
                return
            self.buf = self.buf[end + 4 + length :]
            self.transport.write(OK)


async def _main() -> None:
    # A separate process, so the receiver's own work never shows in the sender's loop lag.
    server = await asyncio.get_running_loop().create_server(_FastOk, "127.0.0.1", 0)
    print(server.sockets[0].getsockname()[1], flush=True)
    await server.serve_forever()


if __name__ == "__main__":
    asyncio.run(_main())
