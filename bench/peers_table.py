"""The Markdown table of `bench.peers`: one row per system, each figure with its ratio to this
project's figure over the Upstash transport (the production one)."""

from __future__ import annotations

import statistics
from typing import Any

BASE = "jobqueue-upstash"
PHASES = ("single", "bulk", "drain")


def median_pass(runs: list[dict[str, Any]]) -> dict[str, Any]:
    """One timed pass from several: per phase, the median of the runs' throughput and latency
    (each run's figure kept beside it); an error if any run failed."""
    errors = [r["error"] for r in runs if r.get("error")]
    out: dict[str, Any] = {"error": errors[0] if errors else None, "runs": len(runs), "phases": {}}
    if errors:
        return out
    for phase in PHASES:
        recs = [r["phases"][phase] for r in runs]
        rec = dict(recs[0])
        res = dict(rec.get("result", {}))
        for key in ("per_s", "p50_ms"):
            xs = [x["result"][key] for x in recs if x.get("result", {}).get(key) is not None]
            if xs:
                res[key] = statistics.median(xs)
                res[f"{key}_runs"] = xs
        rec["result"] = res
        out["phases"][phase] = rec
    return out


def _phase(sysres: dict[str, Any], kind: str, phase: str) -> dict[str, Any]:
    return dict(sysres.get("passes", {}).get(kind, {}).get("phases", {}).get(phase) or {})


def _per_job(rec: dict[str, Any], key: str) -> float | None:
    jobs = rec.get("result", {}).get("jobs")
    if key not in rec or not jobs or rec.get("error"):
        return None
    return float(rec[key]) / float(jobs)


def figures(sysres: dict[str, Any]) -> dict[str, Any]:
    f: dict[str, Any] = {}
    for phase in PHASES:
        rec = _phase(sysres, "timed", phase)
        res = rec.get("result", {}) if not rec.get("error") else {}
        f[f"{phase}_per_s"] = res.get("per_s")
        f["single_p50_ms"] = f.get("single_p50_ms") or (res.get("p50_ms") if phase == "single" else None)
        # Redis: INFO commandstats over the counting pass (the timed pass's without one), checked
        # against MONITOR over the same interval, which sees only our database number.
        # When they disagree (other clients of the server count in commandstats), MONITOR's figure.
        count = _phase(sysres, "count", phase)
        f[f"redis_commandstats_{phase}"] = _per_job(count if "redis_commands" in count else rec, "redis_commands")
        f[f"redis_monitor_{phase}"] = _per_job(count, "redis_commands_monitor")
        cs, mon = count.get("redis_commands"), count.get("redis_commands_monitor")
        polluted = cs is not None and mon is not None and abs(cs - mon) > max(5, 0.01 * mon)
        f[f"redis_polluted_{phase}"] = polluted
        f[f"redis_{phase}"] = f[f"redis_monitor_{phase}"] if polluted else f[f"redis_commandstats_{phase}"]
        f[f"pg_{phase}"] = _per_job(count, "pg_statements")
        f[f"pg_round_trips_{phase}"] = _per_job(count, "pg_round_trips")
    return f


def _num(x: float | None, digits: int | None = None) -> str:
    if x is None:
        return "–"  # noqa: RUF001
    if digits is not None:
        return f"{x:,.{digits}f}"
    if x == 0:
        return "0"
    if abs(x) >= 100:
        return f"{x:,.0f}"
    if abs(x) >= 10:
        return f"{x:.1f}"
    if abs(x) >= 0.1:
        return f"{x:.2f}"
    return f"{x:.3f}"


def _ratio(x: float | None, base: float | None) -> str:
    if x is None or base is None:
        return ""
    if base == 0:
        return "" if x == 0 else " (∞)"
    r = x / base
    return f" ({r:.0f}×)" if r >= 10 else f" ({r:.2f}×)"  # noqa: RUF001


def _costs(f: dict[str, Any], b: dict[str, Any] | None, key: str, used: bool, name: str) -> str:
    if not used:
        return "—"
    parts = []
    for phase in PHASES:
        x = f.get(f"{key}_{phase}")
        cell = _num(x) + ("" if b is None or name == BASE else _ratio(x, b.get(f"{key}_{phase}")))
        if key == "redis" and f.get(f"redis_polluted_{phase}"):
            cell += " †"
        parts.append(cell)
    return " · ".join(parts)


def render(results: dict[str, Any]) -> str:
    from .peers import SYSTEMS

    systems: dict[str, Any] = results["systems"]
    figs = {name: figures(s) for name, s in systems.items()}
    base = figs.get(BASE)
    head = [
        "system",
        "single enqueue jobs/s (p50 ms)",
        "bulk enqueue jobs/s (1000/call)",
        "drain jobs/s",
        "Redis commands/job: single enq · bulk enq · run",
        "Postgres statements/job: single enq · bulk enq · run",
        "worker",
        "errors",
    ]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    daggers = []
    for name, s in systems.items():
        f = figs[name]
        b = None if name == BASE else base
        _, uses_pg, uses_redis = SYSTEMS[name]

        def thr(phase: str, f: dict[str, Any] = f, b: dict[str, Any] | None = b) -> str:
            x = f.get(f"{phase}_per_s")
            return _num(x, 0) + (_ratio(x, b.get(f"{phase}_per_s")) if b else "")

        single = thr("single")
        if f.get("single_p50_ms") is not None:
            single += f" · {f['single_p50_ms']:.2f} ms"
        errors = []
        for kind, pas in s.get("passes", {}).items():
            if pas.get("error"):
                errors.append(f"{kind} pass: {pas['error']}"[:200].replace("|", "/"))
        row = [
            f"**{name}**" if name.startswith("jobqueue") else name,
            single,
            thr("bulk"),
            thr("drain"),
            _costs(f, b, "redis", uses_redis, name),
            _costs(f, b, "pg", uses_pg, name),
            s.get("worker", ""),
            "; ".join(errors),
        ]
        lines.append("| " + " | ".join(row) + " |")
        if uses_redis and "†" in row[4]:
            cs = [f.get(f"redis_commandstats_{p}") for p in PHASES]
            daggers.append(f"{name}: commandstats said " + " · ".join(_num(x) for x in cs))
    notes = [
        "",
        f"Ratios are to **{BASE}**. Throughput: the median of the timed passes, run in rounds that alternate"
        " the systems' order. Costs from the counting pass: Redis commands"
        " are `INFO commandstats` deltas (script-internal calls included, INFO left out), checked against MONITOR"
        " on our database number; Postgres statements are Query (non-empty) and Execute messages counted by a"
        " protocol proxy, BEGIN/COMMIT included.",
    ]
    m = results.get("machine", {})
    if m.get("loadavg_start"):
        notes.append(
            f"Load average (1 min) {m['loadavg_start'][0]:.2f} at the start, {m['loadavg_end'][0]:.2f} at the end,"
            f" on {m.get('cpus')} CPUs shared with other work: compare figures within this table, not across runs."
        )
    if daggers:
        notes.append(
            "† MONITOR's count: commandstats over the same interval differed by more than 1 % (other"
            " clients of the server count there): " + "; ".join(daggers)
        )
    return "\n".join(lines + notes)
