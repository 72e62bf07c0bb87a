"""The dashboard in a real browser: log in, find a dead-lettered job by its idempotency key, open
it, retry it through the confirmation page, drain, reload and see it completed; open the
Schedules page, run a schedule now through its confirmation and see its job complete. Each page is
screenshotted to test-artifacts/screenshots/ for review; with UPDATE_DOCS_SCREENSHOT=1 the
overview also replaces docs/dashboard.png (opt-in, so an ordinary run leaves the tree clean).
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path
from typing import TYPE_CHECKING, Any

import httpx
import pytest

from .conftest import API_TOKEN, CHROMIUM_ARGS, WORKER_SECRET, LiveServer, seed_history, utcnow

if TYPE_CHECKING:
    from playwright.async_api import Page

pytestmark = [pytest.mark.browser, pytest.mark.timeout(60)]

ROOT = Path(__file__).resolve().parents[2]
SHOTS = ROOT / "test-artifacts" / "screenshots"
DESKTOP = {"width": 1280, "height": 860}
PHONE = {"width": 390, "height": 844}
ORDER_KEY = "order-7731"


async def seed(server: LiveServer, database_url: str) -> None:
    """A day of history, then live jobs through the API: one to dead-letter, some done, some waiting."""
    await seed_history(database_url, utcnow())
    api = {"Authorization": f"Bearer {API_TOKEN}"}
    async with httpx.AsyncClient(base_url=server.url, headers=api, timeout=10) as c:
        jobs: list[dict[str, Any]] = [
            {"type": "charge", "payload": {"order": 7731, "amount_cents": 4999}, "idempotency_key": ORDER_KEY},
            *({"type": "echo", "payload": {"n": n}, "queue": "emails"} for n in range(4)),
        ]
        r = await c.post("/api/jobs/batch", json={"jobs": jobs})
        assert r.status_code == 201, r.text
        await drain(server)
        r = await c.post("/api/queues/reports/pause")
        assert r.status_code == 200
        later = [{"type": "echo", "payload": {"n": n}, "delay_ms": 600_000} for n in range(2)]
        now = [{"type": "echo", "payload": {"report": n}, "queue": "reports"} for n in range(3)]
        r = await c.post("/api/jobs/batch", json={"jobs": later + now})
        assert r.status_code == 201, r.text
        limits = {"concurrency": 4, "rate": {"limit": 10, "period_ms": 1000, "burst": 5}, "group_concurrency": 1}
        r = await c.put("/api/queues/payments", json=limits)
        assert r.status_code == 200, r.text
        for sid, timing in (
            ("nightly-report", {"cron": "30 2 * * *", "tz": "Europe/Lisbon"}),
            ("hourly-sync", {"every_ms": 3_600_000}),
        ):
            r = await c.put(f"/api/schedules/{sid}", json={"type": "echo", "payload": {"schedule": sid}, **timing})
            assert r.status_code == 201, r.text


async def drain(server: LiveServer) -> dict[str, Any]:
    async with httpx.AsyncClient(base_url=server.url, timeout=30) as c:
        r = await c.post("/api/workers", headers={"Authorization": f"Bearer {WORKER_SECRET}"})
    assert r.status_code == 200, r.text
    report: dict[str, Any] = r.json()
    return report


async def shot(page: Page, name: str, *, full_page: bool = True) -> Path:
    path = SHOTS / f"{name}.png"
    await page.screenshot(path=str(path), full_page=full_page)
    return path


async def test_find_retry_and_complete_a_dead_lettered_job(
    chromium: str, live_server: LiveServer, database_url: str
) -> None:
    from playwright.async_api import async_playwright, expect

    await seed(live_server, database_url)
    SHOTS.mkdir(parents=True, exist_ok=True)
    async with async_playwright() as pw:
        browser = await pw.chromium.launch(executable_path=chromium, args=CHROMIUM_ARGS)
        try:
            context = await browser.new_context(viewport=DESKTOP)
            page = await context.new_page()
            errors: list[str] = []
            page.on("console", lambda m: errors.append(m.text) if m.type == "error" else None)

            await page.goto(f"{live_server.url}/dashboard")
            await expect(page).to_have_url(f"{live_server.url}/dashboard/login")
            await shot(page, "login")
            await page.fill("#token", "not-the-token")
            await page.click("button[type=submit]")
            await expect(page.get_by_role("alert")).to_have_text("That token is not valid.")
            errors.clear()  # Chromium logs the 401 answering the wrong token; nothing else may fail
            await page.fill("#token", API_TOKEN)
            await page.click("button[type=submit]")
            await expect(page).to_have_url(f"{live_server.url}/dashboard")
            await expect(page.locator('[data-metric="queue:reports:state"]')).to_have_text("paused")
            overview = await shot(page, "overview")

            await page.click("nav >> text=Jobs")
            await shot(page, "jobs", full_page=False)  # 50 rows: the first screenful says enough
            await page.fill("#search", ORDER_KEY)
            await page.click("form[role=search] button[type=submit]")
            rows = page.locator("tr[data-job-id]")
            await expect(rows).to_have_count(1)
            await rows.first.locator("a.id").click()
            await expect(page.locator("h1 .badge")).to_have_text("failed")
            await expect(page.locator(".error-text")).to_contain_text("card_declined")
            await shot(page, "job")

            await page.click("text=Retry…")
            await expect(page.locator("h1")).to_contain_text("Retry job #")
            await shot(page, "confirm")
            await page.click("button:has-text('Retry job')")
            await expect(page.locator(".notice")).to_have_text("The job is queued again with a fresh set of attempts.")
            await expect(page.locator("h1 .badge")).to_have_text("pending")

            live_server.declines["on"] = False
            report = await drain(live_server)
            assert report["completed"] == 1 and report["failed"] == 0, report
            await page.reload()
            await expect(page.locator("h1 .badge")).to_have_text("completed")
            await expect(page.locator('[data-field="result"]')).to_contain_text('"receipt"')
            await expect(page.locator("tr.requeue")).to_contain_text("after it was failed")

            await page.click("nav >> text=Dead letters")
            await expect(page.locator("h1")).to_have_text("Dead letters")
            await shot(page, "dlq", full_page=False)
            await page.check("[data-select-all]")  # the page's one script: tick every row
            rows = await page.locator('input[name="ids"]').count()
            failed = int(await page.locator('[data-metric="dlq:total"]').inner_text())
            assert rows == min(failed, 50) and await page.locator('input[name="ids"]:checked').count() == rows

            await page.click("nav >> text=Schedules")
            await expect(page.locator("h1")).to_have_text("Schedules")
            await expect(page.locator('[data-metric="schedule:nightly-report:state"]')).to_have_text("active")
            await expect(page.locator('tr[data-schedule-id="nightly-report"]')).to_contain_text("Europe/Lisbon")
            await shot(page, "schedules")
            await page.locator('tr[data-schedule-id="hourly-sync"] >> text=Run now…').click()
            await expect(page.locator("h1")).to_have_text("Run schedule hourly-sync now?")
            await page.click("button:has-text('Run it now')")
            await expect(page.locator(".notice")).to_contain_text("Schedule hourly-sync enqueued this job now")
            await expect(page.locator("h1 .badge")).to_have_text("pending")
            report = await drain(live_server)
            assert report["completed"] >= 1, report
            await page.reload()
            await expect(page.locator("h1 .badge")).to_have_text("completed")
            await page.click("nav >> text=Schedules")
            await expect(page.locator('tr[data-schedule-id="hourly-sync"] .badge-completed')).to_have_text("completed")
            await page.locator('tr[data-schedule-id="nightly-report"] >> text=Pause').click()
            await expect(page.locator('[data-metric="schedule:nightly-report:state"]')).to_have_text("paused")

            await page.click("nav >> text=Overview")
            await expect(page.locator('[data-metric="queue:payments:rate"]')).to_have_text("10 per 1 s, burst 5")
            await page.locator('article[aria-label="Queue payments"] summary').click()
            await page.fill("#payments-concurrency", "6")
            await shot(page, "queue-settings", full_page=False)
            await page.locator('article[aria-label="Queue payments"] >> text=Save settings').click()
            await expect(page.locator(".notice")).to_contain_text("Queue payments's settings are saved")
            await expect(page.locator('[data-metric="queue:payments:running"]')).to_have_text("0 / 6")

            phone = await browser.new_context(viewport=PHONE, is_mobile=True, has_touch=True)
            await phone.add_cookies(await context.cookies())
            mobile = await phone.new_page()
            await mobile.goto(f"{live_server.url}/dashboard")
            await expect(mobile.locator("h1")).to_have_text("Overview")
            assert await mobile.evaluate("document.documentElement.scrollWidth") <= PHONE["width"]
            await shot(mobile, "overview-phone")
            await mobile.goto(f"{live_server.url}/dashboard/schedules")
            await expect(mobile.locator("h1")).to_have_text("Schedules")
            assert await mobile.evaluate("document.documentElement.scrollWidth") <= PHONE["width"]
            await shot(mobile, "schedules-phone")
            assert errors == []  # no CSP violation or script error in the console
        finally:
            await browser.close()
    if os.environ.get("UPDATE_DOCS_SCREENSHOT") == "1":
        shutil.copyfile(overview, ROOT / "docs" / "dashboard.png")
