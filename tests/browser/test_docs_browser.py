"""The API docs in a real browser, offline: /api/docs renders Swagger UI from the app's own files
under its Content-Security-Policy (every request that would leave the server is blocked and
recorded), the Authorize button takes the API token, and "Try it out" answers 200."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

import pytest

from .conftest import API_TOKEN, CHROMIUM_ARGS, LiveServer

if TYPE_CHECKING:
    from playwright.async_api import Route

pytestmark = [pytest.mark.browser, pytest.mark.timeout(60)]

SHOTS = Path(__file__).resolve().parents[2] / "test-artifacts" / "screenshots"


async def test_swagger_ui_works_offline_with_the_authorize_button(chromium: str, live_server: LiveServer) -> None:
    from playwright.async_api import async_playwright, expect

    SHOTS.mkdir(parents=True, exist_ok=True)
    off_site: list[str] = []
    async with async_playwright() as pw:
        browser = await pw.chromium.launch(executable_path=chromium, args=CHROMIUM_ARGS)
        try:
            context = await browser.new_context(viewport={"width": 1280, "height": 900})

            async def only_this_server(route: Route) -> None:
                if route.request.url.startswith(live_server.url):
                    await route.continue_()
                else:  # a CDN, the spec validator, fonts...: the page must not need any of them
                    off_site.append(route.request.url)
                    await route.abort()

            await context.route("**/*", only_this_server)
            page = await context.new_page()
            errors: list[str] = []
            page.on("console", lambda m: errors.append(m.text) if m.type == "error" else None)
            page.on("pageerror", lambda e: errors.append(str(e)))

            await page.goto(f"{live_server.url}/api/docs")
            await expect(page.locator(".swagger-ui .info .title")).to_contain_text("jobqueue")
            await page.click("button.authorize")
            dialog = page.locator(".modal-ux")
            await expect(dialog).to_contain_text("ApiToken")
            await expect(dialog).to_contain_text("EnqueueToken")
            await expect(dialog).to_contain_text("UpstashSignature")
            api_token = dialog.locator(".auth-container", has_text="ApiToken")
            await api_token.locator("input").fill(API_TOKEN)
            await api_token.locator("button.authorize").click()
            await expect(api_token.locator("button", has_text="Logout")).to_be_visible()  # authorized
            await dialog.locator("button.close-modal").click()

            op = page.locator("#operations-queues-list_queues_api_queues_get")
            await op.locator(".opblock-summary").click()
            await op.locator("button.try-out__btn").click()
            await op.locator("button.execute").click()
            await expect(op.locator(".live-responses-table tr.response .response-col_status")).to_have_text("200")
            # The enqueue body is per job type: its first example is the server's first type (`charge`).
            enqueue = page.locator("#operations-jobs-enqueue_api_jobs_post")
            await enqueue.locator(".opblock-summary").click()
            await expect(enqueue.locator(".body-param__example, .highlight-code").first).to_contain_text(
                '"type": "charge"'
            )
            await page.screenshot(path=str(SHOTS / "api-docs.png"), full_page=False)
            assert off_site == []
            assert errors == []  # no CSP violation or script error
        finally:
            await browser.close()
