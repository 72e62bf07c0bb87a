"""The registry: names are unique, defaults travel with the type, payloads are validated."""

from __future__ import annotations

from typing import Any

import pytest
from pydantic import BaseModel

from jobqueue.builtins import default_registry
from jobqueue.errors import DuplicateJobType, InvalidDefinition, InvalidJob
from jobqueue.models import Backoff
from jobqueue.registry import Blueprint, JobContext, Registry


async def _noop(payload: Any, ctx: JobContext) -> None:
    return None


def test_a_name_defined_twice_in_a_blueprint_is_refused() -> None:
    bp = Blueprint()
    bp.job("a")(_noop)
    with pytest.raises(DuplicateJobType, match="'a'"):
        bp.job("a")(_noop)


def test_a_name_registered_twice_across_blueprints_is_refused() -> None:
    one, two = Blueprint(), Blueprint()
    one.job("email.send")(_noop)
    two.job("email.send")(_noop)
    reg = Registry([one])
    with pytest.raises(DuplicateJobType):
        reg.add_blueprint(two)
    with pytest.raises(DuplicateJobType):
        default_registry().job("echo")(_noop)  # a built-in name is taken too


def test_defaults_and_queues() -> None:
    bp = Blueprint()
    policy = Backoff(type="fixed", delay_ms=250)
    bp.job("report.build", queue="reports", max_attempts=7, backoff=policy, timeout_ms=120_000)(_noop)
    reg = Registry([bp])
    t = reg.get("report.build")
    assert (t.queue, t.max_attempts, t.backoff, t.timeout_ms) == ("reports", 7, policy, 120_000)
    assert reg.queues == {"reports", "default"}
    assert "report.build" in reg and "nope" not in reg
    with pytest.raises(InvalidJob) as e:
        reg.get("nope")
    assert e.value.field == "type"


def test_payload_errors_name_the_field() -> None:
    class Receipt(BaseModel):
        order_id: str
        amount: int

    bp = Blueprint()
    bp.job("receipt", model=Receipt)(_noop)
    t = Registry([bp]).get("receipt")
    assert isinstance(t.validate({"order_id": "1", "amount": 3}), Receipt)
    with pytest.raises(InvalidJob) as e:
        t.validate({"order_id": "1", "amount": "lots"})
    assert e.value.field == "payload.amount"
    assert "receipt" in e.value.message


@pytest.mark.parametrize(
    ("options", "says"),
    [
        ({"backoff": {"type": "linear"}}, "backoff.type"),
        ({"backoff": "exponential"}, "backoff must be a jobqueue.Backoff"),
        ({"max_attempts": 0}, "max_attempts must be an integer from 1 to 100"),
        ({"max_attempts": 2.5}, "max_attempts"),
        ({"timeout_ms": -1}, "timeout_ms"),
        ({"queue": "no spaces"}, "queue must be"),
        ({"model": dict}, "model must be a pydantic BaseModel subclass"),
    ],
)
def test_a_wrong_option_is_refused_when_the_type_is_defined(options: dict[str, Any], says: str) -> None:
    with pytest.raises(InvalidDefinition, match=says):
        Blueprint().job("bad", **options)(_noop)


def test_a_plain_def_handler_is_refused_when_the_type_is_defined() -> None:
    def not_async(payload: Any, ctx: JobContext) -> None:
        return None

    with pytest.raises(InvalidDefinition, match="must be an `async def` function"):
        Blueprint().job("sync")(not_async)  # type: ignore[arg-type]


def test_a_dict_backoff_is_taken_as_the_policy_it_describes() -> None:
    bp = Blueprint()
    bp.job("ok", backoff={"type": "fixed", "delay_ms": 5})(_noop)
    assert bp.types[0].backoff == Backoff(type="fixed", delay_ms=5)


def test_backoff_is_exported_from_the_package() -> None:
    import jobqueue

    assert jobqueue.Backoff is Backoff
