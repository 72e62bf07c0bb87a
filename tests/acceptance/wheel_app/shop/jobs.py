"""The shop's job types, and the registry its router is pointed at (`shop.jobs:registry`)."""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel

from jobqueue import Blueprint, JobContext, Registry
from jobqueue.builtins import default_registry

blueprint = Blueprint()


class Receipt(BaseModel):
    order_id: int
    item: str


@blueprint.job("shop.receipt", model=Receipt, queue="shop", max_attempts=2)
async def send_receipt(payload: Receipt, ctx: JobContext) -> dict[str, Any]:
    # What only this app's handler answers: the test checks it came from here.
    return {"receipt": f"order {payload.order_id}: {payload.item}", "handler": __name__, "attempt": ctx.attempt}


def registry() -> Registry:
    reg = default_registry()
    reg.add_blueprint(blueprint)
    return reg
