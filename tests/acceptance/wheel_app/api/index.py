"""The shop's Vercel entry point: its own FastAPI app, with jobqueue's routes mounted under /jobs.

`POST /orders` inserts an order and enqueues its receipt in the same transaction, so the job
exists exactly when the order does: `{"item": ...}` over asyncpg inside `jq.transaction(conn)`,
`"via": "session"` in a SQLModel AsyncSession, and `"decline": true` raises after the enqueue,
rolling both back.
"""

from __future__ import annotations

import importlib.util
import os
from typing import Any

import asyncpg
from fastapi import FastAPI, HTTPException
from pydantic import BaseModel

import jobqueue
import jobqueue.client
import jobqueue.web

jobs = jobqueue.web.router(registry="shop.jobs:registry")
app = FastAPI(title="shop")
app.include_router(jobs, prefix="/jobs")  # /jobs/api/jobs, /jobs/api/workers, /jobs/dashboard


class Order(BaseModel):
    item: str
    via: str = "asyncpg"
    decline: bool = False


class Declined(Exception):
    pass


@app.get("/")
async def home() -> dict[str, Any]:
    """The app's own route, and where its code was imported from (the test checks the wheel's)."""
    return {
        "app": "shop",
        "jobqueue": jobqueue.__file__,
        "this_repository_importable": importlib.util.find_spec("handlers") is not None,
    }


@app.post("/orders", status_code=201)
async def create_order(order: Order) -> dict[str, Any]:
    try:
        if order.via == "session":
            return await _order_in_session(order)
        return await _order_on_asyncpg(order)
    except Declined:
        raise HTTPException(402, "declined: the order and its receipt were rolled back") from None


async def _order_on_asyncpg(order: Order) -> dict[str, Any]:
    conn = await asyncpg.connect(os.environ["DATABASE_URL"])
    try:
        jq = jobs.resources.jq()  # the router's engine
        async with jq.transaction(conn):  # pushes the job to Redis once this commits
            order_id = await conn.fetchval(
                "INSERT INTO orders (item, via) VALUES ($1, 'asyncpg') RETURNING id", order.item
            )
            job = await jobqueue.client.enqueue(
                jobs, "shop.receipt", {"order_id": order_id, "item": order.item}, connection=conn
            )
            if order.decline:
                raise Declined
    finally:
        await conn.close()
    return {"order_id": order_id, "job": job}


async def _order_in_session(order: Order) -> dict[str, Any]:
    from sqlalchemy import text
    from sqlalchemy.ext.asyncio import create_async_engine
    from sqlalchemy.pool import NullPool
    from sqlmodel.ext.asyncio.session import AsyncSession

    url = os.environ["DATABASE_URL"].replace("postgresql://", "postgresql+asyncpg://", 1)
    engine = create_async_engine(url, poolclass=NullPool)
    try:
        async with AsyncSession(engine) as session:
            insert = text("INSERT INTO orders (item, via) VALUES (:item, 'session') RETURNING id")
            order_id = (await session.exec(insert.bindparams(item=order.item))).scalar_one()  # type: ignore[call-overload]
            job = await jobqueue.client.enqueue(
                jobs, "shop.receipt", {"order_id": order_id, "item": order.item}, session=session
            )
            if order.decline:
                await session.rollback()
                raise Declined
            await session.commit()  # the job is pushed on this commit
    finally:
        await engine.dispose()
    return {"order_id": order_id, "job": job}
