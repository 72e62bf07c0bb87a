"""This project in `bench.peers`: the engine in-process, through its public calls only.

`JobQueue.from_settings` (so the production hooks ride on drains), `enqueue`, `enqueue_many` and
`drain(budget_s)` called until every job has run; over plain Redis (`REDIS_URL`, redis-py) or
the Upstash REST transport through a local `jobqueue upstash-proxy`, as `params()["transport"]` says.
"""

from __future__ import annotations

import time
from typing import Any

from bench.peers_child import main


class JobQueuePeer:
    def __init__(self, p: dict[str, Any]) -> None:
        self.p = p

    async def setup(self) -> None:
        from jobqueue.builtins import default_registry
        from jobqueue.engine import JobQueue
        from jobqueue.settings import Settings

        conf: dict[str, Any] = {"DATABASE_URL": self.p["pg"], "JOBQUEUE_PREFIX": self.p["prefix"]}
        if self.p["transport"] == "upstash":
            conf["UPSTASH_REDIS_REST_URL"] = self.p["upstash_url"]
            conf["UPSTASH_REDIS_REST_TOKEN"] = self.p["upstash_token"]
        else:
            conf["REDIS_URL"] = self.p["redis"]
        self.jq = JobQueue.from_settings(Settings(**conf), default_registry())
        await self.jq.drain(2)  # the first drain builds the index, as a deployment's first cron tick does

    async def enqueue_one(self, i: int) -> None:
        await self.jq.enqueue({"type": "echo", "payload": {"i": i}})

    async def enqueue_bulk(self, ids: list[int]) -> None:
        await self.jq.enqueue_many([{"type": "echo", "payload": {"i": i}} for i in ids])

    async def drain(self, total: int) -> int:
        deadline = time.monotonic() + float(self.p.get("timeout", 600))
        ran = empty = 0
        while ran < total and time.monotonic() < deadline and empty < 5:
            report = await self.jq.drain(min(60.0, max(1.0, deadline - time.monotonic())))
            ran += int(report.completed)
            empty = 0 if report.completed else empty + 1
        return ran

    async def close(self) -> None:
        await self.jq.close()


if __name__ == "__main__":
    main(JobQueuePeer)
