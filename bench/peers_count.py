"""Counting what a system sends, for `bench.peers`.

- Postgres: `PgCounter`, a TCP proxy that reads the frontend protocol and counts statements
  (each simple-protocol Query 'Q' but the empty one, each extended-protocol Execute 'E', function
  calls 'F'; BEGIN and COMMIT are statements), and round trips (Query and Sync 'S').
  pg_stat_statements would need a server restart (shared_preload_libraries), and
  pg_stat_database counts transactions, not statements.
- Redis: `commandstats_total()`, the sum of `INFO commandstats` calls (scripts' inner
  `redis.call`s included; INFO itself left out), server-wide; and `Monitor`, a MONITOR
  connection that counts only the commands run on our database number, scripts' included,
  so other clients of the same server (tests on another database) cannot inflate it.
"""

from __future__ import annotations

import asyncio
import contextlib
import struct
import threading
import time
import uuid
from typing import Any

import redis

SSL_REQUEST, GSSENC_REQUEST, CANCEL_REQUEST = 80877103, 80877104, 80877102
STATEMENT_TYPES = frozenset(b"QEF")
ROUND_TRIP_TYPES = frozenset(b"QS")
EMPTY_QUERY_KIND = ord("Q")


class PgCounter:
    """Listens on 127.0.0.1:<port>, forwards to the real server, counts client messages. It
    answers SSL and GSS encryption requests with 'N' itself, so the stream stays readable."""

    def __init__(self, host: str, port: int) -> None:
        self.host, self.port = host, port
        self.statements = 0
        self.round_trips = 0
        self.connections = 0
        self._server: asyncio.Server | None = None
        self._tasks: set[asyncio.Task[None]] = set()

    async def start(self) -> int:
        self._server = await asyncio.start_server(self._handle, "127.0.0.1", 0)
        return int(self._server.sockets[0].getsockname()[1])

    async def stop(self) -> None:
        if self._server is not None:
            self._server.close()
        for t in list(self._tasks):
            t.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)

    def snapshot(self) -> dict[str, int]:
        return {"statements": self.statements, "round_trips": self.round_trips, "connections": self.connections}

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._tasks.add(task)
        up_w: asyncio.StreamWriter | None = None
        try:
            while True:  # startup: [length][code]...; SSL/GSS requests come first and get 'N'
                head = await reader.readexactly(8)
                length, code = struct.unpack("!ii", head)
                if code in (SSL_REQUEST, GSSENC_REQUEST):
                    writer.write(b"N")
                    await writer.drain()
                    continue
                first = head + await reader.readexactly(length - 8)
                break
            up_r, up_w = await asyncio.open_connection(self.host, self.port)
            up_w.write(first)
            if code != CANCEL_REQUEST:
                self.connections += 1
            await asyncio.gather(self._count(reader, up_w), self._copy(up_r, writer))
        except (asyncio.IncompleteReadError, ConnectionError, OSError, asyncio.CancelledError):
            pass  # the end of a connection, or stop(); ending normally keeps asyncio from logging it
        finally:
            for w in (writer, up_w):
                if w is not None:
                    with contextlib.suppress(Exception):
                        w.close()
            self._tasks.discard(task)

    async def _copy(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while chunk := await reader.read(1 << 16):
                writer.write(chunk)
                await writer.drain()
        finally:
            writer.close()

    async def _count(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        need = 0  # bytes of the current message's body still to come
        head = b""  # a message header split across reads
        try:
            while chunk := await reader.read(1 << 16):
                writer.write(chunk)
                i, n = 0, len(chunk)
                while i < n:
                    if need:
                        step = min(need, n - i)
                        need -= step
                        i += step
                        continue
                    take = 5 - len(head)
                    head += chunk[i : i + take]
                    i += take
                    if len(head) < 5:
                        break
                    kind = head[0]
                    need = int.from_bytes(head[1:5], "big") - 4
                    head = b""
                    if kind == EMPTY_QUERY_KIND and need == 1:
                        self.round_trips += 1  # Query "" (psycopg_pool's connection check): no statement
                        continue
                    if kind in STATEMENT_TYPES:
                        self.statements += 1
                    if kind in ROUND_TRIP_TYPES:
                        self.round_trips += 1
                await writer.drain()
        finally:
            writer.close()


def commandstats_total(url: str) -> int:
    """Commands the whole server has run, scripts' inner calls included; INFO and ECHO, which the
    counters themselves send, left out."""
    r = redis.Redis.from_url(url)
    try:
        stats: dict[str, Any] = r.info("commandstats")
    finally:
        r.close()
    return sum(int(v["calls"]) for k, v in stats.items() if k not in ("cmdstat_info", "cmdstat_echo"))


class Monitor:
    """Counts the commands MONITOR reports on database `db` (INFO left out, as above). `sync()`
    sends a marker from another database and waits until the stream has reached it, so a count
    read after it includes every command that ran before."""

    def __init__(self, url: str, db: int) -> None:
        self.url, self.db = url, db
        self.count = 0
        self.commands: dict[str, int] = {}
        self._seen: set[str] = set()
        self._cv = threading.Condition()
        self._client = redis.Redis.from_url(url, db=0)
        self._conn: Any = None
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._error: BaseException | None = None

    def start(self) -> None:
        self._conn = self._client.connection_pool.get_connection()
        self._conn.send_command("MONITOR")
        if self._conn.read_response() not in (b"OK", "OK"):
            raise RuntimeError("MONITOR was refused")
        self._thread.start()

    def _run(self) -> None:
        db_tag = f"[{self.db} ".encode()
        try:
            while True:
                line = self._conn.read_response()
                if isinstance(line, str):
                    line = line.encode()
                at = line.find(b"[")
                if b"peers-marker-" in line:
                    token = line[line.find(b"peers-marker-") :].split(b'"')[0].decode()
                    with self._cv:
                        self._seen.add(token)
                        self._cv.notify_all()
                    continue
                if line[at : at + len(db_tag)] != db_tag:
                    continue
                q = line.find(b'"', line.find(b"]", at))
                name = line[q + 1 : line.find(b'"', q + 1)].decode(errors="replace").lower()
                if name == "info":
                    continue
                with self._cv:
                    self.count += 1
                    self.commands[name] = self.commands.get(name, 0) + 1
        except BaseException as e:
            self._error = e

    def sync(self, timeout_s: float = 60.0) -> int:
        token = f"peers-marker-{uuid.uuid4().hex}"
        self._client.echo(token)
        deadline = time.monotonic() + timeout_s
        with self._cv:
            while token not in self._seen:
                if self._error is not None or not self._cv.wait(timeout=max(0.0, deadline - time.monotonic())):
                    raise RuntimeError(f"MONITOR fell behind or stopped: {self._error!r}")
            self._seen.discard(token)
            return self.count

    def snapshot(self) -> dict[str, int]:
        with self._cv:
            return dict(self.commands)

    def stop(self) -> None:
        with contextlib.suppress(Exception):
            self._conn.disconnect()
        self._thread.join(timeout=5)
        self._client.close()
