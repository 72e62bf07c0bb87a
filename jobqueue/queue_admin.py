"""Queue settings as operators change them, shared by the CLI (`jobqueue queues set`) and the
dashboard's settings form: flat options (`concurrency`, `rate`, `max_attempts`,
`retain_failed_days`, ...) parsed from text and turned into a patch for
`JobQueue.set_queue_settings`, and the flow-control scopes named for people.

Why a patch is built here rather than sent as given: `set_queue_settings` replaces each top-level
field it is given, and two of them are objects (`defaults`, `retention`). An operator who changes
only `--max-attempts` must not lose the queue's default `timeout_ms` or backoff, so the nested
object is rebuilt from the current settings with just that key changed. (The read and the write
are two steps: two operators editing the same queue's nested settings at once can lose one edit;
the HTTP API's own PUT has the same granularity.)
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from typing import Any

from .errors import InvalidJob
from .keys import type_tag
from .models import QueueSettings

# How each flat option is read. concurrency, rate, group_concurrency, group_rate and aging_ms are
# top-level fields; max_attempts and timeout_ms go into `defaults`; retain_*_days into
# `retention.<status>.age_days`.
INTS = ("concurrency", "group_concurrency", "aging_ms", "max_attempts", "timeout_ms")
RATES = ("rate", "group_rate")
DAYS = ("retain_completed_days", "retain_failed_days")
OPTIONS: tuple[str, ...] = (
    "concurrency",
    "rate",
    "group_concurrency",
    "group_rate",
    "aging_ms",
    "max_attempts",
    "timeout_ms",
    "retain_completed_days",
    "retain_failed_days",
)
CLEAR = "none"  # the word that clears a setting on the command line (an empty form field does too)
_RATE = re.compile(r"\s*(\d+)\s*/\s*(\d+)\s*(?:/\s*(\d+)\s*)?")


def parse_option(name: str, text: str) -> Any:
    """One option's text: an int, a rate `LIMIT/PERIOD_MS[/BURST]` as its object, days as a
    number; `none` or nothing clears (None). A 422 naming the option when it cannot be read;
    ranges are checked by QueueSettings itself (set_queue_settings names the field)."""
    text = text.strip()
    if text == "" or text.lower() == CLEAR:
        return None
    if name in INTS:
        if not re.fullmatch(r"-?\d+", text):
            raise InvalidJob(f"{name}: a whole number or '{CLEAR}', got {text!r}", field=name)
        return int(text)
    if name in RATES:
        m = _RATE.fullmatch(text)
        if m is None:
            raise InvalidJob(f"{name}: LIMIT/PERIOD_MS[/BURST] (e.g. 10/1000) or '{CLEAR}', got {text!r}", field=name)
        rate: dict[str, int] = {"limit": int(m[1]), "period_ms": int(m[2])}
        if m[3] is not None:
            rate["burst"] = int(m[3])
        return rate
    if name in DAYS:
        try:
            days = float(text)
        except ValueError:
            raise InvalidJob(f"{name}: a number of days or '{CLEAR}', got {text!r}", field=name) from None
        if days != days or days in (float("inf"), float("-inf")):
            raise InvalidJob(f"{name}: a number of days or '{CLEAR}', got {text!r}", field=name)
        return days
    raise InvalidJob(f"unknown queue setting {name!r}", field=name)


def settings_patch(current: QueueSettings, changes: Mapping[str, Any]) -> dict[str, Any]:
    """The body for `set_queue_settings` that applies `changes` (flat option -> parsed value, None
    to clear; options left out stay as they are) to `current`, keeping the other keys of the
    nested `defaults` and `retention` objects."""
    unknown = set(changes) - set(OPTIONS)
    if unknown:
        name = sorted(unknown)[0]
        raise InvalidJob(f"unknown queue setting {name!r}", field=name)
    top = ("concurrency", "rate", "group_concurrency", "group_rate", "aging_ms")
    patch: dict[str, Any] = {k: changes[k] for k in top if k in changes}
    if "max_attempts" in changes or "timeout_ms" in changes:
        defaults = current.defaults.model_dump(mode="json", exclude_none=True) if current.defaults else {}
        for key in ("max_attempts", "timeout_ms"):
            if key in changes:
                _put(defaults, key, changes[key])
        patch["defaults"] = defaults or None
    if "retain_completed_days" in changes or "retain_failed_days" in changes:
        retention = current.retention.model_dump(mode="json", exclude_none=True) if current.retention else {}
        for status in ("completed", "failed"):
            key = f"retain_{status}_days"
            if key in changes:
                rule = dict(retention.get(status) or {})
                _put(rule, "age_days", changes[key])
                if rule:
                    retention[status] = rule
                else:
                    retention.pop(status, None)
        patch["retention"] = retention or None
    return patch


def _put(target: dict[str, Any], key: str, value: Any) -> None:
    if value is None:
        target.pop(key, None)
    else:
        target[key] = value


def flat_values(settings: QueueSettings) -> dict[str, str]:
    """The flat options' current values as text (a form's prefilled inputs; "" when unset)."""

    def rate(r: Any) -> str:
        return "" if r is None else f"{r.limit}/{r.period_ms}" + ("" if r.burst == 1 else f"/{r.burst}")

    def num(v: float | int | None) -> str:
        return "" if v is None else f"{v:g}" if isinstance(v, float) else str(v)

    d, ret = settings.defaults, settings.retention
    return {
        "concurrency": num(settings.concurrency),
        "rate": rate(settings.rate),
        "group_concurrency": num(settings.group_concurrency),
        "group_rate": rate(settings.group_rate),
        "aging_ms": num(settings.aging_ms),
        "max_attempts": num(d.max_attempts if d else None),
        "timeout_ms": num(d.timeout_ms if d else None),
        "retain_completed_days": num(ret.completed.age_days if ret and ret.completed else None),
        "retain_failed_days": num(ret.failed.age_days if ret and ret.failed else None),
    }


# --- flow-control scopes ---------------------------------------------------------------------------


def describe_scope(scope: str, type_names: Iterable[str]) -> dict[str, str | None]:
    """A parked scope (claim.lua: `g:<group hash>`, `t:<type tag>`, `t:<type tag>:g:<group hash>`)
    as `{"scope", "type", "group_hash"}`: the type's name when a registered type has that tag (the
    tag is a hash of the name, so it is found by hashing the names this process knows), and the
    group's hash (the engine keeps only the hash of a group's name in Redis)."""
    tag = group = None
    m = re.fullmatch(r"(?:t:([^:]+))?(?::?g:([^:]+))?", scope)
    if m is not None:
        tag, group = m[1], m[2]
    name = None
    if tag is not None:
        name = next((n for n in type_names if type_tag(n) == tag), None)
    return {"scope": scope, "type": name, "group_hash": group}
