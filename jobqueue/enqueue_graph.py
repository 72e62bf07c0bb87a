"""Enqueue a batch in which jobs depend on others (`depends_on`, `{"index": N}` references):
checked all or nothing (a reference outside the batch, a cycle, an unknown id: a 422 and nothing
stored), inserted in one statement, settled in a second (dependencies.py explains why), pushed
in one request. Jobs without dependencies never come here: they keep enqueue.py's path and cost.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import orjson

from .enqueue import DEFAULT_BACKOFF_JSON, DEFAULT_MAX_ATTEMPTS, _decoded, _new_row, _us
from .errors import InvalidJob, StatementFailed
from .models import BatchRef

if TYPE_CHECKING:
    from .dependencies import Dependencies
    from .enqueue import Enqueuer
    from .store import Row


def plan(jobs: list[dict[str, Any]], single: bool) -> list[list[int | BatchRef]]:
    """Check the references of a batch (`{"index": N}` within it, no cycle) before anything is
    stored; returns each job's dependencies, deduplicated, in the order given."""
    out: list[list[int | BatchRef]] = []
    for i, j in enumerate(jobs):
        seen: set[Any] = set()
        deps: list[int | BatchRef] = []
        for k, d in enumerate(j.get("depends_on") or ()):
            where = f"depends_on.{k}" if single else f"jobs.{i}.depends_on.{k}"
            if isinstance(d, BatchRef):
                if single:
                    raise InvalidJob(
                        '{"index": N} names a job of the same batch: use POST /api/jobs/batch', field=where
                    )
                if d.index >= len(jobs):
                    raise InvalidJob(f"jobs[{i}]: index {d.index} is not in this batch", field=where, index=i)
                key: Any = ("n", d.index)
            else:
                key = ("id", d)
            if key not in seen:
                seen.add(key)
                deps.append(d)
        out.append(deps)
    _check_acyclic(out)
    return out


def _check_acyclic(deps: list[list[int | BatchRef]]) -> None:
    """Only references inside the batch can close a cycle (an existing job cannot depend on a new one)."""
    refs = [[d.index for d in ds if isinstance(d, BatchRef)] for ds in deps]
    state = [0] * len(refs)  # 0 new, 1 on the path, 2 done
    for start in range(len(refs)):
        if state[start]:
            continue
        stack = [(start, iter(refs[start]))]
        state[start] = 1
        while stack:
            node, it = stack[-1]
            nxt = next(it, None)
            if nxt is None:
                state[node] = 2
                stack.pop()
            elif state[nxt] == 1:
                path = [n for n, _ in stack]
                cycle = [*path[path.index(nxt) :], nxt]
                raise InvalidJob(
                    "depends_on makes a cycle: " + " -> ".join(f"jobs[{n}]" for n in cycle),
                    field=f"jobs.{node}.depends_on",
                    index=node,
                )
            elif state[nxt] == 0:
                state[nxt] = 1
                stack.append((nxt, iter(refs[nxt])))


class GraphEnqueuer:
    def __init__(self, enqueuer: Enqueuer, deps: Dependencies) -> None:
        self.enqueuer = enqueuer
        self.store = enqueuer.store
        self.deps = deps

    async def insert(self, jobs: list[dict[str, Any]], *, single: bool) -> list[tuple[Row, bool]]:
        """Insert a batch in which some jobs have dependencies: two statements (the insert and
        the settle), plus one to look up idempotency keys when the batch has any; one push."""
        deps = plan(jobs, single)
        try:
            return await self._insert(jobs, deps, single)
        except StatementFailed as e:
            if "jobs_queue_idempotency_key" not in e.message:
                raise
            # A concurrent enqueue took one of the keys between the lookup and the insert: the
            # lookup now finds it.
            return await self._insert(jobs, deps, single)

    async def _insert(
        self, jobs: list[dict[str, Any]], deps: list[list[int | BatchRef]], single: bool
    ) -> list[tuple[Row, bool]]:
        # Jobs whose idempotency key is taken (by an existing job, or an earlier one of the
        # batch) are not inserted: references to them mean the job that holds the key.
        keyed = [(j["queue"], j["idempotency_key"]) for j in jobs if j["idempotency_key"]]
        existing: dict[tuple[str, str], Row] = {}
        if keyed:
            rows = await self.store.fetch("jobs_by_keys", [q for q, _ in keyed], [k for _, k in keyed])
            existing = {(r["queue"], r["idempotency_key"]): _decoded(r) for r in rows}
        first: dict[tuple[str, str], int] = {}
        target: list[int | Row] = []  # per job: its index in the insert, or the existing row
        new: list[int] = []  # batch indices inserted, in order
        for i, j in enumerate(jobs):
            key = (j["queue"], j["idempotency_key"]) if j["idempotency_key"] else None
            if key is not None and key in existing:
                target.append(existing[key])
            elif key is not None and key in first:
                target.append(target[first[key]])
            else:
                if key is not None:
                    first[key] = i
                target.append(len(new))
                new.append(i)
        e_n: list[int] = []
        e_id: list[int | None] = []
        e_ref: list[int | None] = []
        upstream: set[int] = set()
        for pos, i in enumerate(new):
            edges: set[tuple[int | None, int | None]] = set()
            for d in deps[i]:
                t = target[d.index] if isinstance(d, BatchRef) else None
                if isinstance(t, int):
                    edges.add((None, t))
                    upstream.add(t)
                else:
                    edges.add((t["id"] if t is not None else d, None))  # type: ignore[arg-type]
            for up_id, ref in sorted(edges, key=str):
                e_n.append(pos)
                e_id.append(up_id)
                e_ref.append(ref)
        doc = orjson.dumps(
            [
                {
                    "n": pos,
                    **jobs[i]["columns"],
                    "payload": orjson.Fragment(jobs[i]["payload_json"]),
                    "run_at_us": _us(jobs[i]["run_at"]),
                    "created_us": _us(jobs[i]["created_at"]),
                    "policy": jobs[i]["policy"] if deps[i] else None,
                    "upstream": pos in upstream,
                }
                for pos, i in enumerate(new)
            ]
        ).decode()
        defaults = (DEFAULT_MAX_ATTEMPTS, self.enqueuer.settings.default_timeout_ms, DEFAULT_BACKOFF_JSON)
        made: dict[int, Row] = {}
        if new:
            got = await self.store.fetch("insert_dependent_jobs", doc, *defaults, e_n, e_id, e_ref)
            missing = sorted(r["id"] for r in got if r["kind"] == "missing")
            if missing:
                raise _unknown(jobs, deps, set(missing), single)
            # Ids were taken in batch order: the n-th smallest is the n-th job's.
            by_n = dict(enumerate(sorted((r for r in got if r["kind"] == "job"), key=lambda r: r["id"])))
            for pos, i in enumerate(new):
                r = by_n[pos]
                row = _new_row(jobs[i], r["id"], {r["id"]: r})
                row.update(
                    status=r["status"],
                    pending_deps=r["pending_deps"],
                    on_dependency_failure=jobs[i]["policy"] if deps[i] else None,
                    has_dependents=pos in upstream,
                )
                made[pos] = row
        waiting = [row["id"] for row in made.values() if row["status"] == "waiting"]
        if waiting:
            # The settle: edges whose dependency ended meanwhile, or had failed (the cascade).
            moved = {r["id"]: r for r in await self.deps.resolve([], waiting)}
            for row in made.values():
                if row["id"] in moved:
                    m = moved[row["id"]]
                    row["status"], row["run_at"] = m["status"], m["run_at"]
                    if m["status"] == "cancelled":
                        row["finished_at"] = m["run_at"]
                        row["error"] = m.get("error")
            await self._push_extra(moved, {row["id"] for row in made.values()})
        runnable = [row for row in made.values() if row["status"] in ("pending", "scheduled")]
        if runnable:
            await self.enqueuer.dispatch(runnable)
        out: list[tuple[Row, bool]] = []
        for t in target:
            out.append((made[t], True) if isinstance(t, int) else (t, False))
        return out

    async def _push_extra(self, moved: dict[int, Row], mine: set[int]) -> None:
        """Jobs outside this batch that the settle released (a dependent added by id meanwhile)."""
        extra = [r for jid, r in moved.items() if jid not in mine and r["status"] in ("pending", "scheduled")]
        if extra:
            await self.enqueuer.dispatch(extra)


def _unknown(
    _jobs: list[dict[str, Any]], deps: list[list[int | BatchRef]], missing: set[int], single: bool
) -> InvalidJob:
    for i, ds in enumerate(deps):
        for k, d in enumerate(ds):
            if not isinstance(d, BatchRef) and d in missing:
                where = f"depends_on.{k}" if single else f"jobs.{i}.depends_on.{k}"
                prefix = "" if single else f"jobs[{i}]: "
                return InvalidJob(f"{prefix}depends_on: job {d} does not exist", field=where, index=i)
    return InvalidJob(f"depends_on: jobs {sorted(missing)} do not exist", field="depends_on")
