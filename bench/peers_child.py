"""The child side of `bench.peers`: one process per system and pass, driven phase by phase.

Standard library only: it also runs in the peers' scratch venv, which has no jobqueue. The
protocol (stdout lines starting with MARK, JSON; stdin lines "go"):

    child: ready {"phase": "single"}   parent: snapshots its counters, then writes "go"
    child: done  {"phase": "single", "result": {...}}   parent: snapshots again
    ... bulk, drain ...; a failure is {"event": "error", "phase": ..., "error": ...} and exit.

A peer is an object with async `setup`, `enqueue_one(i)`, `enqueue_bulk(ids)`, `drain(total)`
(returns how many jobs ran) and `close`; `run_phases` times them all the same way.
"""

from __future__ import annotations

import asyncio
import json
import os
import sys
import time
import traceback
from typing import Any

MARK = "@@peers "
BULK = 1000
RAN = [0]  # jobs run, for peers whose worker gives no count of its own


def params() -> dict[str, Any]:
    return dict(json.loads(os.environ["BENCH_PEERS_PARAMS"]))


def send(obj: dict[str, Any]) -> None:
    sys.stdout.write(MARK + json.dumps(obj) + "\n")
    sys.stdout.flush()


def gate(phase: str) -> None:
    send({"event": "ready", "phase": phase})
    if sys.stdin.readline().strip() != "go":
        raise SystemExit(0)


def pct(values: list[float], p: float) -> float:
    s = sorted(values)
    return s[min(len(s) - 1, round(p / 100 * (len(s) - 1)))] if s else 0.0


async def run_phases(peer: Any, p: dict[str, Any]) -> None:
    n_single, jobs = int(p["single"]), int(p["jobs"])
    phase = "setup"
    try:
        await peer.setup()
        send({"event": "done", "phase": "setup", "result": {}})

        phase = "single"
        gate(phase)
        lat: list[float] = []
        t0 = time.perf_counter()
        for i in range(n_single):
            s = time.perf_counter()
            await peer.enqueue_one(i)
            lat.append((time.perf_counter() - s) * 1000)
        dt = time.perf_counter() - t0
        send(
            {
                "event": "done",
                "phase": phase,
                "result": {
                    "jobs": n_single,
                    "seconds": round(dt, 3),
                    "per_s": round(n_single / dt, 1),
                    "p50_ms": round(pct(lat, 50), 3),
                    "p99_ms": round(pct(lat, 99), 3),
                },
            }
        )

        phase = "bulk"
        gate(phase)
        calls: list[float] = []
        t0 = time.perf_counter()
        for start in range(n_single, n_single + jobs, BULK):
            s = time.perf_counter()
            await peer.enqueue_bulk(list(range(start, min(start + BULK, n_single + jobs))))
            calls.append((time.perf_counter() - s) * 1000)
        dt = time.perf_counter() - t0
        send(
            {
                "event": "done",
                "phase": phase,
                "result": {
                    "jobs": jobs,
                    "calls": len(calls),
                    "seconds": round(dt, 3),
                    "per_s": round(jobs / dt, 1),
                    "p50_ms_per_call": round(pct(calls, 50), 2),
                },
            }
        )

        phase = "drain"
        gate(phase)
        total = n_single + jobs
        t0 = time.perf_counter()
        ran = await peer.drain(total)
        dt = time.perf_counter() - t0
        result = {"jobs": total, "ran": ran, "seconds": round(dt, 3), "per_s": round(total / dt, 1)}
        if ran != total:
            send({"event": "error", "phase": phase, "error": f"the worker ran {ran} of {total} jobs", "result": result})
            return
        send({"event": "done", "phase": phase, "result": result})
        phase = "close"
        await peer.close()
        send({"event": "end"})
    except BaseException as e:
        if isinstance(e, SystemExit):
            raise
        tb = traceback.format_exc(limit=6)
        send({"event": "error", "phase": phase, "error": f"{type(e).__name__}: {e}", "traceback": tb})
        raise SystemExit(1) from e


def main(make_peer: Any) -> None:
    p = params()
    asyncio.run(run_phases(make_peer(p), p))
