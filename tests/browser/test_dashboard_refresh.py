"""The dashboard keeps up, in a real browser: the overview refreshes itself (new jobs show up
without a reload), the toggle stops it with one click, the choice survives a reload, and turning
it back on resumes it; no CSP violation or script error on the way."""

from __future__ import annotations

import asyncio

import httpx
import pytest

from .conftest import API_TOKEN, CHROMIUM_ARGS, LiveServer

pytestmark = [pytest.mark.browser, pytest.mark.timeout(60)]

API = {"Authorization": f"Bearer {API_TOKEN}"}


async def enqueue(server: LiveServer, n: int) -> None:
    async with httpx.AsyncClient(base_url=server.url, headers=API, timeout=10) as c:
        r = await c.post("/api/jobs/batch", json={"jobs": [{"type": "echo", "delay_ms": 600_000}] * n})
        assert r.status_code == 201, r.text


@pytest.mark.parametrize("live_server", [{"JOBQUEUE_DASHBOARD_REFRESH_S": 1}], indirect=True)
async def test_the_overview_refreshes_itself_until_turned_off(chromium: str, live_server: LiveServer) -> None:
    from playwright.async_api import async_playwright, expect

    async with async_playwright() as pw:
        browser = await pw.chromium.launch(executable_path=chromium, args=CHROMIUM_ARGS)
        try:
            page = await (await browser.new_context()).new_page()
            errors: list[str] = []
            page.on("console", lambda m: errors.append(m.text) if m.type == "error" else None)
            await page.goto(f"{live_server.url}/dashboard/login")
            await page.fill("#token", API_TOKEN)
            await page.click("button[type=submit]")
            await expect(page).to_have_url(f"{live_server.url}/dashboard")
            scheduled = page.locator('[data-metric="total:scheduled"]')
            toggle = page.locator("[data-refresh-toggle]")
            await expect(scheduled).to_have_text("0")
            await expect(toggle).to_have_attribute("aria-pressed", "true")

            await enqueue(live_server, 3)
            await expect(scheduled).to_have_text("3", timeout=5000)  # no reload: the page fetched itself
            assert int(await page.locator("main").get_attribute("data-refreshes") or 0) >= 1

            await toggle.click()
            await expect(toggle).to_have_attribute("aria-pressed", "false")
            await expect(toggle).to_have_text("Auto-refresh off")
            await enqueue(live_server, 2)
            await asyncio.sleep(2.5)  # two intervals and more: nothing changes while it is off
            await expect(scheduled).to_have_text("3")

            await page.reload()  # the server renders the truth; the choice is remembered
            await expect(scheduled).to_have_text("5")
            await expect(toggle).to_have_attribute("aria-pressed", "false")
            await enqueue(live_server, 1)
            await asyncio.sleep(2.5)
            await expect(scheduled).to_have_text("5")

            await toggle.click()
            await expect(toggle).to_have_attribute("aria-pressed", "true")
            await expect(scheduled).to_have_text("6", timeout=5000)
            assert errors == []
        finally:
            await browser.close()
