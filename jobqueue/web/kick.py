"""Kicks: make a drain happen soon instead of at the next cron tick.

The engine awaits `jq.kicker` when an enqueue wins the kick's turn in Redis (`JobQueue._dispatch`).
In production the kicker publishes an empty message to QStash, which POSTs it, signed, to
`/api/workers`. The same kicker continues a drain that ran out of budget with work left
(`jobqueue.worker.continue_later`), so a backlog is worked off back to back rather than once per
cron tick.
`make dev` installs its own kicker (`install_kicker`) that wakes an in-process tick instead.

A kick is only an optimisation: cron (or a QStash schedule) still drains, so every failure here
is logged and swallowed, and the HTTP call has a short timeout so an enqueue never waits long.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING

from .deps import Kicker, Resources

if TYPE_CHECKING:
    from fastapi import FastAPI

    from jobqueue.settings import Settings

log = logging.getLogger("jobqueue.api.kick")

QSTASH_DEFAULT_URL = "https://qstash.upstash.io"
PUBLISH_TIMEOUT_S = 3.0


class QStashKicker:
    """Publishes one message to QStash targeting `{JOBQUEUE_PUBLIC_URL}/api/workers`, at once or,
    with `at_ms`, delivered not before that time (`Upstash-Not-Before`): the delayed kick a drain
    publishes for the next schedule tick, delayed job or retry due before the next regular tick."""

    delays = True  # the drain may ask for a delayed kick (drain/loop.py)

    def __init__(self, token: str, target_url: str, base_url: str | None = None) -> None:
        self._token = token
        self.target_url = target_url
        self.publish_url = f"{(base_url or QSTASH_DEFAULT_URL).rstrip('/')}/v2/publish/{target_url}"

    async def __call__(self, at_ms: int | None = None) -> None:
        import httpx  # only an enqueue that wins the debounce pays for the import

        # No retries: a lost kick is made up by the next one or the regular tick, and a retried
        # one would only add a drain.
        headers = {"Authorization": f"Bearer {self._token}", "Upstash-Retries": "0"}
        if at_ms is not None:
            headers["Upstash-Not-Before"] = str(-(-at_ms // 1000))  # unix seconds, rounded up
        try:
            # A client per kick: kicks are debounced (at most one per JOBQUEUE_KICK_INTERVAL_MS, and
            # one per due time), and a fresh client is never bound to an event loop that Mangum or a
            # test has closed.
            async with httpx.AsyncClient(timeout=PUBLISH_TIMEOUT_S) as client:
                resp = await client.post(self.publish_url, headers=headers)
        except httpx.HTTPError as e:
            log.warning("kick: QStash publish failed: %s", type(e).__name__)
            return
        if resp.status_code >= 300:
            # The body may echo the request; the status is enough to act on.
            log.warning("kick: QStash publish answered HTTP %s", resp.status_code)


def qstash_kicker(settings: Settings) -> Kicker | None:
    """The production kicker, when QStash is configured; None otherwise (cron alone drains)."""
    if not settings.qstash_token:
        return None
    if not settings.public_url:
        log.warning("QSTASH_TOKEN is set but JOBQUEUE_PUBLIC_URL is not: QStash kicks are off")
        return None
    target = f"{settings.public_url.rstrip('/')}/api/workers"
    return QStashKicker(settings.qstash_token, target, settings.qstash_url)


def install_kicker(app: FastAPI, kicker: Kicker | None) -> None:
    """Replace the app's kicker (None turns kicks off), including on an engine already built."""
    res: Resources = app.state.resources
    res.kicker = kicker
    if res.built is not None:
        res.built.kicker = kicker
