"""The web console in headless Chromium (Debian's, driven by Playwright),
against a simulated fleet behind the real gateway, with keys on.

UPDATE_SCREENSHOTS=1 writes the screenshots to docs/images/ for the README;
otherwise they go to a temporary folder and are only checked to exist.
"""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import requests
from playwright.sync_api import expect

from router import REPO_ROOT
from tests.support.cli import fleet
from tests.support.fleet import running_fleet
from tests.support.harness import wait_for

pytestmark = pytest.mark.integration

CHROMIUM = Path("/usr/bin/chromium")
# As root Chromium needs --no-sandbox; the rest keep it from reaching for
# Google's services, which this machine's closed network refuses.
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update",
                 "--disable-sync"]
REPLICAS = 3
# Bounds, not timings: Playwright's defaults (5 s for expect, 30 s for the
# rest) fail on a CI host busy enough to starve the browser.
EXPECT_TIMEOUT_MS = 30_000
PAGE_TIMEOUT_MS = 60_000
expect.set_options(timeout=EXPECT_TIMEOUT_MS)
# Per key: enough for what one test's page sends, too little for a flood.
BURST = 6


@dataclass
class ConsoleFleet:
    spec: Path
    url: str
    admin: str
    token: str
    key: str

    def add_key(self, name: str) -> str:
        added = fleet("keys", "add", name, "--spec", str(self.spec))
        assert added.returncode == 0, added.stderr
        return added.stdout.strip()

    def admin_post(self, path: str) -> None:
        response = requests.post(f"{self.admin}{path}", timeout=10,
                                 headers={"Authorization": f"Bearer {self.token}"})
        response.raise_for_status()


@pytest.fixture(scope="module")
def console_fleet(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ConsoleFleet]:
    keys: list[str] = []

    def add_key(spec: Path) -> None:
        added = fleet("keys", "add", "console", "--spec", str(spec))
        assert added.returncode == 0, added.stderr
        keys.append(added.stdout.strip())

    with running_fleet(
            tmp_path_factory.mktemp("console"), REPLICAS, before_up=add_key,
            gateway={"worker_processes": 1}, controller={"evaluate_interval_s": 1},
            auth={"enabled": True}, console={"grafana_url": "http://127.0.0.1:3000"},
            limits={"requests_per_s": 1, "burst": BURST},
            # Slow enough decoding that a stream spans many browser frames.
            sim={"defaults": {"decode_step_s": 0.03}}) as running:
        yield ConsoleFleet(running.spec, running.url, running.admin_url, running.admin_token,
                           keys[0])


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    if not CHROMIUM.exists():
        pytest.fail("Debian's chromium is not installed; run `deploy/setup.sh --dev` "
                    "(make test does)")
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        launched = playwright.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
        try:
            yield launched
        finally:
            launched.close()


@pytest.fixture
def page(browser: Any, console_fleet: ConsoleFleet) -> Iterator[Any]:
    context = browser.new_context(viewport={"width": 1100, "height": 760})
    context.set_default_timeout(PAGE_TIMEOUT_MS)
    opened = context.new_page()
    requested: list[str] = []
    opened.on("request", lambda request: requested.append(request.url))
    opened.requested = requested
    try:
        yield opened
    finally:
        context.close()
    # Everything the page loaded came from the gateway: no asset from the internet.
    assert requested and all(url.startswith(console_fleet.url + "/") for url in requested), \
        requested


def _screenshot_dir(tmp_path: Path) -> Path:
    return REPO_ROOT / "docs" / "images" if os.environ.get("UPDATE_SCREENSHOTS") else tmp_path


def _enter_key(page: Any, key: str, accepted: bool = True) -> None:
    page.get_by_label("API key").fill(key)
    page.get_by_role("button", name="Use key").click()
    if accepted:
        page.locator("#key-form").wait_for(state="hidden")


def _send(page: Any, text: str) -> None:
    box = page.get_by_label("Message")
    box.fill(text)
    box.press("Enter")  # the keyboard sends, no mouse needed


def test_chat_streams_token_by_token_and_names_the_replica(
        page: Any, console_fleet: ConsoleFleet, tmp_path: Path) -> None:
    page.goto(console_fleet.url + "/")
    # Keys are on: the page asks for one before anything else works.
    page.get_by_label("API key").wait_for(state="visible")
    _enter_key(page, console_fleet.key)
    expect(page.locator("#model")).to_contain_text("sim-model")
    page.locator("#settings summary").click()
    page.get_by_label("Max tokens").fill("60")
    page.get_by_label("System prompt").fill("You are a terse assistant.")

    with page.expect_request("**/v1/chat/completions") as sent:
        _send(page, "Tell me about load balancing.")
    session = sent.value.headers.get("x-session-id", "")
    assert session.startswith("console-") and len(session) == len("console-") + 32
    answer = page.locator(".message.assistant").last
    lengths: list[int] = []
    # A bound, not a timing: 60 tokens take about 2 s, far longer on a busy host.
    deadline = time.monotonic() + 120
    while answer.get_attribute("data-done") != "true" and time.monotonic() < deadline:
        lengths.append(len(answer.locator(".text").inner_text()))
        page.wait_for_timeout(40)
    assert answer.get_attribute("data-done") == "true"
    growing = sorted({n for n in lengths if n > 0})
    # The text grew over several frames before the answer completed.
    assert len(growing) >= 4, lengths
    assert lengths == sorted(lengths)
    meta = answer.locator(".meta").inner_text()
    assert "replica: replica-" in meta and "TTFT" in meta and "tokens/s" in meta, meta
    page.screenshot(path=str(_screenshot_dir(tmp_path) / "console-chat.png"))
    assert (_screenshot_dir(tmp_path) / "console-chat.png").stat().st_size > 10_000


def _row(page: Any, replica: str) -> Any:
    return page.locator(f"tr[data-replica='{replica}']")


def test_fleet_view_lists_every_replica_and_follows_a_drain(
        page: Any, console_fleet: ConsoleFleet, tmp_path: Path) -> None:
    page.goto(console_fleet.url + "/")
    _enter_key(page, console_fleet.key)
    # Keyboard only: from the Chat tab, the right arrow opens Fleet.
    page.get_by_role("tab", name="Chat").focus()
    page.keyboard.press("ArrowRight")
    assert page.get_by_role("tab", name="Fleet").get_attribute("aria-selected") == "true"
    rows = page.locator("#replicas tbody tr")
    rows.nth(REPLICAS - 1).wait_for()
    assert [rows.nth(i).get_attribute("data-replica") for i in range(REPLICAS)] == \
        [f"replica-{i}" for i in range(REPLICAS)]
    assert "In rotation" in _row(page, "replica-1").inner_text()
    links = page.locator("#dashboards a")
    assert links.count() == 4
    assert links.first.get_attribute("href") == "http://127.0.0.1:3000/d/llm-fleet-overview"

    console_fleet.admin_post("/replicas/replica-1/drain")
    try:
        expect(_row(page, "replica-1")).to_contain_text("Drained", timeout=EXPECT_TIMEOUT_MS)
        assert "In rotation" in _row(page, "replica-0").inner_text()
        page.screenshot(path=str(_screenshot_dir(tmp_path) / "console-fleet.png"))
    finally:
        console_fleet.admin_post("/replicas/replica-1/undrain")
    expect(_row(page, "replica-1")).to_contain_text("In rotation", timeout=EXPECT_TIMEOUT_MS)


def test_gateway_errors_are_shown_as_sentences(page: Any, console_fleet: ConsoleFleet) -> None:
    page.goto(console_fleet.url + "/")
    _enter_key(page, "sk-fleet-wrong", accepted=False)
    error = page.get_by_role("alert").filter(has_text="refused this API key")
    error.wait_for()
    assert "{" not in error.inner_text()
    # The page asks again for a key, and a message sent meanwhile says why it failed.
    page.get_by_label("API key").wait_for(state="visible")
    _send(page, "hello")
    expect(page.locator(".message.assistant.failed").last).to_contain_text(
        "refused this API key")

    # A replica's own 4xx (max_tokens beyond the context) reads as a sentence.
    _enter_key(page, console_fleet.key)
    page.locator("#settings summary").click()
    page.get_by_label("Max tokens").fill("100000")
    _send(page, "a long answer, please")
    refused = page.get_by_role("alert").filter(has_text="cannot be greater than")
    refused.wait_for()
    assert refused.inner_text().startswith("The request failed (400): ")
    page.get_by_label("Max tokens").fill("8")

    # Over the key's rate limit: a 429 with the wait from Retry-After. The
    # key is kept over its limit until the page has shown it: the burst
    # drains at one request a second, and a busy host may take longer than
    # that between the flood and the page's request.
    throttled = console_fleet.add_key("throttled")
    page.get_by_role("button", name="Change API key").click()
    _enter_key(page, throttled)
    codes: list[int] = []
    stop = threading.Event()

    def flood() -> None:
        while not stop.is_set():
            codes.append(requests.get(f"{console_fleet.url}/v1/models", timeout=5,
                                      headers={"Authorization": f"Bearer {throttled}"}
                                      ).status_code)
            stop.wait(0.1)

    flooding = threading.Thread(target=flood)
    flooding.start()
    try:
        wait_for(lambda: 429 in codes, 60, "the throttled key to be limited")
        _send(page, "again")
        limited = page.get_by_role("alert").filter(has_text="Too many requests")
        limited.wait_for(timeout=60_000)
    finally:
        stop.set()
        flooding.join(timeout=15)
    assert "Try again in 1 s" in limited.inner_text() and "{" not in limited.inner_text()


def test_phone_width_labels_and_keyboard(browser: Any, console_fleet: ConsoleFleet) -> None:
    context = browser.new_context(viewport={"width": 390, "height": 800}, is_mobile=True)
    context.set_default_timeout(PAGE_TIMEOUT_MS)
    page = context.new_page()
    try:
        page.goto(console_fleet.url + "/")
        _enter_key(page, console_fleet.key)
        for label in ("Message", "System prompt", "Temperature", "Max tokens",
                      "Stop sequences"):
            assert page.get_by_label(label).count() == 1, label
        page.locator("#settings summary").click()
        # Nothing wider than the phone: no sideways scrolling.
        assert page.evaluate("document.documentElement.scrollWidth <= window.innerWidth")
        page.get_by_role("tab", name="Fleet").click()
        page.locator("#replicas tbody tr").nth(REPLICAS - 1).wait_for()
        assert page.evaluate("document.documentElement.scrollWidth <= window.innerWidth")
        # Tab reaches the selected tab (arrows move between tabs, as in the
        # ARIA tabs pattern), then the controls of the open view.
        page.get_by_role("tab", name="Fleet").focus()
        page.keyboard.press("ArrowLeft")
        assert page.get_by_role("tab", name="Chat").get_attribute("aria-selected") == "true"
        reached = set()
        for _ in range(15):
            page.keyboard.press("Tab")
            reached.add(page.evaluate("document.activeElement.id"))
        assert {"change-key", "tab-chat", "system", "temperature", "max-tokens", "stop",
                "message", "send", "clear"} <= reached, reached
    finally:
        context.close()
