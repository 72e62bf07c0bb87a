"""Queue settings as operators type them (jobqueue/queue_admin.py): option text parsed or refused
naming the option, patches that keep the nested objects' other keys, the values a form shows, and
flow-control scopes named for people."""

from __future__ import annotations

import hashlib
from typing import Any

import pytest

from jobqueue.errors import InvalidJob
from jobqueue.keys import type_tag
from jobqueue.models import QueueSettings
from jobqueue.queue_admin import OPTIONS, describe_scope, flat_values, parse_option, settings_patch


@pytest.mark.parametrize(
    ("name", "text", "value"),
    [
        ("concurrency", "4", 4),
        ("concurrency", " -1 ", -1),  # read here; QueueSettings refuses it naming the field
        ("concurrency", "none", None),
        ("concurrency", "NONE", None),
        ("concurrency", "", None),
        ("rate", "10/1000", {"limit": 10, "period_ms": 1000}),
        ("rate", "10 / 1000 / 5", {"limit": 10, "period_ms": 1000, "burst": 5}),
        ("group_rate", "none", None),
        ("aging_ms", "60000", 60000),
        ("retain_failed_days", "1.5", 1.5),
        ("retain_completed_days", "0", 0.0),
    ],
)
def test_option_text_is_parsed(name: str, text: str, value: Any) -> None:
    assert parse_option(name, text) == value


@pytest.mark.parametrize(
    ("name", "text"),
    [
        ("concurrency", "4.5"),
        ("concurrency", "lots"),
        ("rate", "10"),
        ("rate", "10/1000/5/2"),
        ("rate", "ten/second"),
        ("retain_failed_days", "a week"),
        ("retain_failed_days", "nan"),
        ("retain_failed_days", "inf"),
        ("nope", "1"),
    ],
)
def test_unreadable_option_text_is_a_422_naming_the_option(name: str, text: str) -> None:
    with pytest.raises(InvalidJob) as e:
        parse_option(name, text)
    assert e.value.field == name


CURRENT = QueueSettings.model_validate(
    {
        "concurrency": 3,
        "defaults": {"max_attempts": 5, "timeout_ms": 1000, "backoff": {"type": "fixed", "delay_ms": 10}},
        "retention": {"completed": {"age_days": 2, "count": 100}, "failed": {"age_days": 30}},
    }
)


def apply(current: QueueSettings, patch: dict[str, Any]) -> QueueSettings:
    """What JobQueue.set_queue_settings stores for a patch (its merge, without the writes)."""
    given = QueueSettings.model_validate(patch)
    return current.model_copy(update={k: getattr(given, k) for k in given.model_fields_set})


def test_a_patch_changes_only_the_options_given_keeping_nested_keys() -> None:
    assert settings_patch(CURRENT, {}) == {}
    assert settings_patch(CURRENT, {"concurrency": None, "rate": {"limit": 1, "period_ms": 10}}) == {
        "concurrency": None,
        "rate": {"limit": 1, "period_ms": 10},
    }
    patch = settings_patch(CURRENT, {"max_attempts": 9})
    assert patch == {
        "defaults": {
            "max_attempts": 9,
            "timeout_ms": 1000,
            "backoff": {"type": "fixed", "delay_ms": 10, "max_delay_ms": 3_600_000, "jitter": 0.0},
        }
    }
    assert settings_patch(CURRENT, {"retain_completed_days": None}) == {
        "retention": {"completed": {"count": 100}, "failed": {"age_days": 30.0}}
    }
    assert settings_patch(CURRENT, {"retain_failed_days": None, "retain_completed_days": 1.0}) == {
        "retention": {"completed": {"age_days": 1.0, "count": 100}}
    }
    empty = QueueSettings()
    assert settings_patch(empty, {"max_attempts": None, "retain_failed_days": None}) == {
        "defaults": None,
        "retention": None,
    }
    with pytest.raises(InvalidJob) as e:
        settings_patch(CURRENT, {"paused": True})
    assert e.value.field == "paused"


def test_a_patch_applied_gives_the_settings_intended() -> None:
    patch = settings_patch(CURRENT, {"timeout_ms": None, "retain_failed_days": 7.0})
    merged = apply(CURRENT, patch)
    assert merged.defaults is not None and (merged.defaults.max_attempts, merged.defaults.timeout_ms) == (5, None)
    assert merged.retention is not None and merged.retention.failed is not None
    assert (merged.retention.failed.age_days, merged.concurrency) == (7.0, 3)


def test_flat_values_are_what_a_form_shows_and_read_back() -> None:
    settings = apply(CURRENT, {"rate": {"limit": 5, "period_ms": 100}})
    shown = flat_values(settings)
    assert set(shown) == set(OPTIONS)
    assert shown == {
        "concurrency": "3",
        "rate": "5/100",
        "group_concurrency": "",
        "group_rate": "",
        "aging_ms": "",
        "max_attempts": "5",
        "timeout_ms": "1000",
        "retain_completed_days": "2",
        "retain_failed_days": "30",
    }
    # Submitting the form unchanged changes nothing.
    read = {k: parse_option(k, v) for k, v in shown.items()}
    assert apply(settings, settings_patch(settings, read)) == settings
    burst = QueueSettings.model_validate({"group_rate": {"limit": 2, "period_ms": 10, "burst": 4}})
    assert flat_values(burst)["group_rate"] == "2/10/4"


def test_scopes_are_described_with_the_type_name_when_known() -> None:
    gh = hashlib.sha256(b"acme").hexdigest()[:12]
    tag = type_tag("webhook.deliver")
    names = ["echo", "webhook.deliver"]
    assert describe_scope(f"g:{gh}", names) == {"scope": f"g:{gh}", "type": None, "group_hash": gh}
    assert describe_scope(f"t:{tag}", names) == {"scope": f"t:{tag}", "type": "webhook.deliver", "group_hash": None}
    assert describe_scope(f"t:{tag}:g:{gh}", names) == {
        "scope": f"t:{tag}:g:{gh}",
        "type": "webhook.deliver",
        "group_hash": gh,
    }
    assert describe_scope("t:00000000", names) == {"scope": "t:00000000", "type": None, "group_hash": None}
