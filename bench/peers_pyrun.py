"""The Python peers of `bench.peers`: pgqueuer, procrastinate and RQ, each with the same no-op job.

Run by `bench.peers` with the scratch venv's interpreter (`python -m bench.peers_pyrun`, the
repository root as working directory); parameters come in BENCH_PEERS_PARAMS (see peers_child).
"""

from __future__ import annotations

import json
from contextlib import AsyncExitStack
from typing import Any

from bench import peers_child
from bench.peers_child import main

NOOP = "bench.peers_pyrun.noop"


def noop(i: int) -> int:
    """RQ's job, enqueued by name as a worker elsewhere would import it; it counts in peers_child,
    a module that exists once whether this file runs as __main__ or is imported by RQ."""
    peers_child.RAN[0] += 1
    return i


class PgQueuer:
    """`Queries.enqueue` (scalar, then lists of 1000); a `QueueManager` in drain mode: it exits
    once the queue is empty and its in-flight jobs are done."""

    def __init__(self, p: dict[str, Any]) -> None:
        self.p = p
        self.batch = int(p.get("pgqueuer_batch", 100))
        self.ran = 0

    async def setup(self) -> None:
        import asyncpg
        from pgqueuer import AsyncpgDriver, Queries

        self.conn = await asyncpg.connect(self.p["pg"])
        self.queries = Queries(AsyncpgDriver(self.conn))
        await self.queries.install()
        self.worker_conn = await asyncpg.connect(self.p["pg"])

    async def enqueue_one(self, i: int) -> None:
        await self.queries.enqueue("noop", json.dumps({"i": i}).encode())

    async def enqueue_bulk(self, ids: list[int]) -> None:
        n = len(ids)
        await self.queries.enqueue(["noop"] * n, [json.dumps({"i": i}).encode() for i in ids], [0] * n)

    async def drain(self, total: int) -> int:
        from pgqueuer import AsyncpgDriver, Queries, QueueManager
        from pgqueuer.domain.types import QueueExecutionMode

        qm = QueueManager(Queries(AsyncpgDriver(self.worker_conn)))

        @qm.entrypoint("noop")
        async def _noop(job: Any) -> None:
            self.ran += 1

        await qm.run(mode=QueueExecutionMode.drain, batch_size=self.batch)
        return self.ran

    async def close(self) -> None:
        await self.worker_conn.close()
        await self.conn.close()


class Procrastinate:
    """`defer_async` and `batch_defer_async`; `run_worker_async(wait=False)`, which returns once
    the worker has caught up with the queue."""

    def __init__(self, p: dict[str, Any]) -> None:
        self.p = p
        self.concurrency = int(p.get("procrastinate_concurrency", 10))
        self.ran = 0
        self.stack = AsyncExitStack()

    async def setup(self) -> None:
        import procrastinate

        self.app = procrastinate.App(connector=procrastinate.PsycopgConnector(conninfo=self.p["pg"]))

        @self.app.task(name="noop")
        async def _noop(i: int) -> int:
            self.ran += 1
            return i

        self.task = _noop
        await self.stack.enter_async_context(self.app.open_async())
        await self.app.schema_manager.apply_schema_async()

    async def enqueue_one(self, i: int) -> None:
        await self.task.defer_async(i=i)

    async def enqueue_bulk(self, ids: list[int]) -> None:
        await self.task.batch_defer_async(*({"i": i} for i in ids))

    async def drain(self, total: int) -> int:
        await self.app.run_worker_async(wait=False, concurrency=self.concurrency, install_signal_handlers=False)
        return self.ran

    async def close(self) -> None:
        await self.stack.aclose()


class RQ:
    """`Queue.enqueue` and `Queue.enqueue_many` (one pipeline per call); a `SimpleWorker` in burst
    mode (no fork per job), logging at WARNING so that two log lines per job are not measured.
    RQ is synchronous: its calls block this process's event loop, which runs nothing else."""

    def __init__(self, p: dict[str, Any]) -> None:
        self.p = p

    async def setup(self) -> None:
        import redis
        from rq import Queue

        self.redis = redis.Redis.from_url(self.p["redis"])
        self.queue = Queue("bench", connection=self.redis)

    async def enqueue_one(self, i: int) -> None:
        self.queue.enqueue(NOOP, i)

    async def enqueue_bulk(self, ids: list[int]) -> None:
        from rq import Queue

        self.queue.enqueue_many([Queue.prepare_data(NOOP, args=(i,)) for i in ids])

    async def drain(self, total: int) -> int:
        from rq import SimpleWorker

        worker = SimpleWorker([self.queue], connection=self.redis)
        worker.work(burst=True, logging_level="WARNING")
        return peers_child.RAN[0]

    async def close(self) -> None:
        self.redis.close()


PEERS = {"pgqueuer": PgQueuer, "procrastinate": Procrastinate, "rq": RQ}

if __name__ == "__main__":
    main(lambda p: PEERS[p["peer"]](p))
