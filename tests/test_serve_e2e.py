"""The web page end to end in headless Chromium: pick a sample user, run, watch the investigation, see the ranking.

The app runs with the scripted chat model of `test_serve.py` over the tiny fixture, served by uvicorn on
127.0.0.1 (a free port) in a thread. Needs Debian's `/usr/bin/chromium` and the `playwright` package (no
browser download: Playwright drives the system Chromium); skipped when either is missing. `/docs` and
`/redoc` must render with every request off loopback refused.

`docs/screenshot.png` is the real thing -- `recthinker serve --dataset ml-1m` with the default trained model --
and is made again by (about 30 s; a first run also builds the ML-1M benchmark cache):

    python tests/test_serve_e2e.py --out docs/screenshot.png

`test_screenshot_of_ml1m_with_the_default_model` (slow, realdata) runs the same procedure into a temp folder.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import re
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import urlparse

import pytest

CHROMIUM = Path("/usr/bin/chromium")
if not CHROMIUM.exists():
    pytest.skip("needs /usr/bin/chromium (apt-get install chromium)", allow_module_level=True)
pytest.importorskip("playwright.sync_api", reason="needs the playwright package")
uvicorn = pytest.importorskip("uvicorn")

from playwright.sync_api import expect, sync_playwright  # noqa: E402

from recthinker.agent.loop import AgentConfig  # noqa: E402
from recthinker.serve.app import create_app  # noqa: E402
from recthinker.tools.build import load_resources  # noqa: E402
from test_serve import ScriptedServeModel  # noqa: E402
from test_serve_limits import free_port, serving  # noqa: E402

CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
]


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
    with serving(app) as port:
        yield f"http://127.0.0.1:{port}"


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
            page.screenshot(path=str(shot), full_page=True)  # the toy page; docs/screenshot.png: see above
            assert shot.stat().st_size > 10_000

            # an error is shown, not swallowed: an unknown user id
            page.click("#custom summary")
            page.fill("#user-id", "nobody")
            page.click("#run")
            expect(page.locator("#status")).to_contain_text("Error 422: unknown user_id 'nobody'")
        finally:
            browser.close()


def test_docs_render_offline(server_url):
    """Swagger UI and ReDoc render from this server alone: every request off 127.0.0.1 is refused."""
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
        try:
            page = browser.new_page()
            off_loopback: list[str] = []

            def only_loopback(route) -> None:
                if urlparse(route.request.url).hostname == "127.0.0.1":
                    route.continue_()
                else:
                    off_loopback.append(route.request.url)
                    route.abort()

            page.route("**/*", only_loopback)
            problems: list[str] = []
            page.on("console", lambda m: problems.append(m.text) if m.type == "error" else None)
            page.on("pageerror", lambda e: problems.append(str(e)))
            page.goto(server_url + "/docs")
            expect(page.locator(".swagger-ui .info .title")).to_contain_text("RecThinker")
            expect(page.locator(".opblock-summary-path", has_text="/v1/recommend/stream")).to_be_visible()
            page.goto(server_url + "/redoc")
            expect(page.locator("h1", has_text="RecThinker")).to_be_visible(timeout=20_000)
            expect(page.get_by_text("/v1/recommend/stream").first).to_be_attached()
            assert off_loopback == []
            # the one thing refused: ReDoc's footer logo on its CDN (by the page's Content-Security-Policy)
            assert all("cdn.redoc.ly/redoc/logo-mini.svg" in m for m in problems), problems
        finally:
            browser.close()


# ---- docs/screenshot.png: ML-1M with the default trained model ---------------------------------------


@contextlib.contextmanager
def recthinker_serve(dataset: str, log_path: Path, startup_s: float = 900.0) -> Iterator[str]:
    """`recthinker serve --dataset DATASET` (default model) on a free loopback port; yields its URL."""
    port = free_port()
    cmd = [sys.executable, "-m", "recthinker.cli", "serve", "--dataset", dataset, "--port", str(port)]
    with open(log_path, "wb") as log_file:
        proc = subprocess.Popen(cmd, stdout=log_file, stderr=subprocess.STDOUT)
        url = f"http://127.0.0.1:{port}"
        try:
            deadline = time.monotonic() + startup_s
            while True:
                if proc.poll() is not None:
                    raise RuntimeError(f"recthinker serve exited with {proc.returncode}: see {log_path}")
                if time.monotonic() > deadline:
                    raise RuntimeError(f"recthinker serve not up after {startup_s:.0f} s: see {log_path}")
                with contextlib.suppress(OSError), urllib.request.urlopen(url + "/healthz", timeout=2) as r:
                    if json.load(r)["ready"]:
                        break
                time.sleep(1)
            yield url
        finally:
            proc.terminate()
            try:
                proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(timeout=30)


def take_screenshot(url: str, out: Path, *, sample: int = 1, timeout_s: float = 600.0) -> dict[str, str]:
    """Run the page at `url` for its `sample`-th sample user with the default model's own budget (3 turns,
    2 tool calls, as it was trained), wait for the final ranking, and save a full-page screenshot to `out`.
    Returns what the page showed."""
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
        try:
            page = browser.new_page(viewport={"width": 1200, "height": 900})
            page.goto(url + "/")
            expect(page.locator("#health")).to_contain_text("dataset", timeout=30_000)
            button = page.locator(".sample").nth(sample)
            button.click()
            page.fill("#max-steps", "3")
            page.fill("#max-tool-calls", "2")
            page.click("#run")
            expect(page.locator("#status")).to_contain_text(
                re.compile("Finished|Error|Connection failed"), timeout=timeout_s * 1000
            )
            page.wait_for_timeout(300)  # let the last paint settle
            out.parent.mkdir(parents=True, exist_ok=True)
            page.screenshot(path=str(out), full_page=True)
            return {
                "health": page.locator("#health").inner_text(),
                "user": button.get_attribute("data-user") or "",
                "status": page.locator("#status").inner_text(),
                "verdict": page.locator("#verdict").inner_text(),
                "turns": str(page.locator("#steps .turn").count()),
                "tools": json.dumps(page.locator("#steps .tool .call").all_inner_texts()),
                "ranking": json.dumps(page.locator("#ranking tbody tr td:nth-child(2)").all_inner_texts()),
            }
        finally:
            browser.close()


@pytest.mark.slow
@pytest.mark.realdata
def test_screenshot_of_ml1m_with_the_default_model(tmp_path):
    with recthinker_serve("ml-1m", tmp_path / "serve.log") as url:
        shown = take_screenshot(url, tmp_path / "screenshot.png")
    assert shown["health"].startswith("dataset ml-1m · model smollm2-135m+default_model"), shown
    assert shown["status"].startswith("Finished"), shown
    assert shown["verdict"] == "A valid ranking of all 10 candidates.", shown
    assert int(shown["turns"]) >= 2 and json.loads(shown["tools"]), shown  # it investigated before ranking
    titles = json.loads(shown["ranking"])
    assert len(titles) == 10 and all(re.search(r"\(\d{4}\)", t) for t in titles), (
        titles
    )  # "Title (1999) | ..."
    assert 30_000 < (tmp_path / "screenshot.png").stat().st_size < 1_000_000


if __name__ == "__main__":
    parser = argparse.ArgumentParser(
        description="Screenshot the page with the real dataset and default model."
    )
    parser.add_argument("--dataset", default="ml-1m")
    parser.add_argument("--out", type=Path, default=Path("docs/screenshot.png"))
    parser.add_argument("--sample", type=int, default=1, help="which sample user of the page (0-5)")
    args = parser.parse_args()
    with (
        tempfile.TemporaryDirectory() as tmp,
        recthinker_serve(args.dataset, Path(tmp) / "serve.log") as server,
    ):
        print(json.dumps(take_screenshot(server, args.out, sample=args.sample), indent=1, ensure_ascii=False))
