"""The web page end to end in headless Chromium: pick a sample user, run, watch the investigation, see the ranking.

The app runs with the scripted chat model of `test_serve.py` over the tiny fixture, served by uvicorn on
127.0.0.1 (a free port) in a thread. Needs Debian's `/usr/bin/chromium` and the `playwright` package (no
browser download: Playwright drives the system Chromium); skipped when either is missing.
"""

from __future__ import annotations

import socket
import threading
import time
from pathlib import Path

import pytest

CHROMIUM = Path("/usr/bin/chromium")
if not CHROMIUM.exists():
    pytest.skip("needs /usr/bin/chromium (apt-get install chromium)", allow_module_level=True)
pytest.importorskip("playwright.sync_api", reason="needs the playwright package")
uvicorn = pytest.importorskip("uvicorn")

from playwright.sync_api import expect, sync_playwright  # noqa: E402

from recthinker.agent.loop import AgentConfig  # noqa: E402
from recthinker.serve.app import create_app  # noqa: E402
from recthinker.tools.resources import load_resources  # noqa: E402
from test_serve import ScriptedServeModel  # noqa: E402

CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def server_url(tiny_benchmark):
    res = load_resources(tiny_benchmark, "dense/test")
    app = create_app(
        res,
        tiny_benchmark.items,
        ScriptedServeModel(delay=0.15),  # slow enough that the turns arrive one by one
        config=AgentConfig(max_steps=4, max_tool_calls=3),
        dataset="tiny",
    )
    port = free_port()
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 20
    while not server.started:
        if time.monotonic() > deadline or not thread.is_alive():
            pytest.fail("uvicorn did not start")
        time.sleep(0.05)
    yield f"http://127.0.0.1:{port}"
    server.should_exit = True
    thread.join(timeout=10)


def test_page_runs_a_sample_user(server_url, tmp_path):
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
        try:
            page = browser.new_page(viewport={"width": 1200, "height": 900})
            page.goto(server_url + "/")
            expect(page.locator("#health")).to_contain_text("dataset tiny")
            samples = page.locator(".sample")
            expect(samples.first).to_be_visible()
            assert samples.count() == 6
            samples.nth(1).click()
            user = samples.nth(1).get_attribute("data-user")
            page.fill("#propose", "6")
            page.click("#run")
            # the investigation streams in: what it knew, what it lacked, the tool call and its result
            expect(page.locator("#turn-0")).to_contain_text("I know the recent history", timeout=20_000)
            expect(page.locator("#turn-0")).to_contain_text("Look at the last items")
            expect(page.locator("#turn-0 .tool .call")).to_have_text('→ user_history({"k":3})')
            expect(page.locator("#turn-0 .tool pre")).not_to_be_empty()
            # then the final ranking, with titles and evidence
            expect(page.locator("#verdict")).to_have_text(
                "A valid ranking of all 6 candidates.", timeout=20_000
            )
            rows = page.locator("#ranking tbody tr")
            expect(rows).to_have_count(6)
            assert rows.nth(0).locator("td").nth(2).inner_text().startswith("als_rank")
            assert page.locator("#candidate-list li").count() == 6
            expect(page.locator("#proposed")).to_contain_text("proposed")
            expect(page.locator("#status")).to_contain_text("Finished")
            # the ranking shown is the one the API returned: candidate 2 first
            second_candidate = page.locator("#candidate-list li").nth(1).inner_text()
            assert rows.nth(0).locator("td").nth(1).inner_text() == second_candidate
            assert user and page.locator("#user-id").input_value() == user
            shot = tmp_path / "screenshot.png"
            page.screenshot(path=str(shot), full_page=True)  # docs/screenshot.png is a copy of one
            assert shot.stat().st_size > 10_000

            # an error is shown, not swallowed: an unknown user id
            page.click("#custom summary")
            page.fill("#user-id", "nobody")
            page.click("#run")
            expect(page.locator("#status")).to_contain_text("Error 422: unknown user_id 'nobody'")
        finally:
            browser.close()
