"""The operator's page (`/ui`) in a real browser: Debian's Chromium, headless, driven by Selenium
through Debian's chromedriver, against a whole cluster with keys on, while requests queue in
front of the emulator.

The page asks for the admin key (a user key is refused as not an admin's), then shows the lane
as it moves: a request seen waiting at position 3 is later shown at 2, then 1, then running, then
among the recent requests with its latency; pausing with the page's button shows the lane
paused (and holds it: the position stays while nothing runs), cancelling with a row's button
takes the request out of the lane. Every wait is Selenium's `WebDriverWait` on what the page
shows, or the emulator's own wait; nothing sleeps a fixed time.

A screenshot of the busy lane is taken: into docs/ui.png with CORRAL_UPDATE_SCREENSHOT=1, else
into the test's tmp directory (so the tests never change the checkout).

Nothing is downloaded: Selenium is given Debian's chromium and chromedriver, so Selenium Manager
never runs, and the browser resolves no name but the loopback's. Without them these tests skip,
except under CI, where they must run.
"""

from __future__ import annotations

import asyncio
import os
import shutil
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from selenium import webdriver
from selenium.common.exceptions import StaleElementReferenceException, TimeoutException
from selenium.webdriver.chrome.service import Service
from selenium.webdriver.common.by import By
from selenium.webdriver.remote.webdriver import WebDriver
from selenium.webdriver.support.ui import WebDriverWait

from corral_devstack.cluster import Cluster
from corral_emulator import EmulatorControl

# A pool of two emulators (x and y) behind the whole cluster, keys off: test_pool's fixtures.
from tests.e2e.test_pool import pool_cluster, second_emulator  # noqa: F401
from tests.fixtures import ClusterFactory, Emulator
from tests.gateway_http import TwoUsers, bearer, two_users

pytestmark = pytest.mark.e2e

CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
CHROMEDRIVER = shutil.which("chromedriver") or "/usr/bin/chromedriver"
MISSING = [path for path in (CHROMIUM, CHROMEDRIVER) if not os.access(path, os.X_OK)]
if MISSING and os.environ.get("CI"):
    pytest.fail(f"CI must run the browser tests: {', '.join(MISSING)} missing", pytrace=False)
if MISSING:
    pytest.skip(
        "no chromium/chromedriver: install Debian's chromium and chromium-driver "
        "(`make test` does) to run the operator page's browser tests",
        allow_module_level=True,
    )

SCREENSHOT = Path(__file__).resolve().parents[2] / "docs" / "ui.png"
# Bound on each thing the page must show: a cold Chromium on a busy 2-core machine included.
SHOWN_WITHIN_S = 30.0
# Each request generates at most this many tokens at the emulator's pace: long enough for every
# position to be on the page for a good while (the page gets a snapshot on each lane change).
TOKENS = 12
TOKEN_DELAY_MS = 400


@pytest.fixture(scope="module")
def ui_cluster(new_cluster: ClusterFactory) -> Iterator[TwoUsers]:
    """Keys on; users alice (`first`) and bob (`second`)."""
    with two_users(new_cluster, "ui", ("alice", "bob"), CORRAL_STATUS_INTERVAL_S="0.5") as users:
        yield users


@pytest.fixture(scope="module")
def driver(tmp_path_factory: pytest.TempPathFactory) -> Iterator[WebDriver]:
    os.environ.setdefault("SE_OFFLINE", "true")  # Selenium Manager never downloads anything
    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for argument in (
        "--headless=new",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-dev-shm-usage",
        "--window-size=1280,1100",
        f"--user-data-dir={tmp_path_factory.mktemp('chromium-profile')}",
        "--no-first-run",
        "--disable-extensions",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        "--host-resolver-rules=MAP * ~NOTFOUND, EXCLUDE localhost, EXCLUDE 127.0.0.1",
    ):
        options.add_argument(argument)
    log = tmp_path_factory.mktemp("chromedriver") / "chromedriver.log"
    browser = webdriver.Chrome(options=options, service=Service(CHROMEDRIVER, log_output=str(log)))
    try:
        yield browser
    finally:
        browser.quit()


async def open_page(driver: WebDriver, gateway_url: str) -> Page:
    """The page opened afresh, no key kept from an earlier test."""
    await asyncio.to_thread(driver.get, f"{gateway_url}/ui")
    await asyncio.to_thread(driver.execute_script, "sessionStorage.clear()")
    await asyncio.to_thread(driver.refresh)
    return Page(driver)


@pytest.fixture
async def page(driver: WebDriver, ui_cluster: TwoUsers) -> Page:
    return await open_page(driver, ui_cluster.url)


CLICK = "document.querySelector(arguments[0]).click();"
TEXT_OF = "return document.querySelector(arguments[0]).innerText;"
CELLS_OF = """
const row = document.querySelector(arguments[0]);
return row ? Array.from(row.cells, (cell) => cell.innerText) : [];
"""
ROWS_OF = """
return Array.from(document.querySelectorAll(arguments[0]),
                  (row) => Array.from(row.cells, (cell) => cell.innerText));
"""
WHERE_IS = """
for (const row of document.querySelectorAll(`tr[data-request-id="${arguments[0]}"][data-state]`)) {
  if (row.dataset.state === "running") return "running";
  const shown = row.querySelector("td.position").innerText;
  if (shown !== row.dataset.position) throw new Error(`${shown} vs ${row.dataset.position}`);
  return `waiting ${shown}`;
}
return null;
"""


class Page:
    """What the page shows, read the way an operator reads it; every wait is WebDriverWait's."""

    def __init__(self, driver: WebDriver) -> None:
        self.driver = driver

    async def until(self, shown: Callable[[WebDriver], Any], what: str) -> Any:
        def attempt(driver: WebDriver) -> Any:
            try:
                return shown(driver)
            except StaleElementReferenceException:
                return False  # redrawn while read: read again

        wait = WebDriverWait(self.driver, SHOWN_WITHIN_S, poll_frequency=0.05)
        try:
            return await asyncio.to_thread(wait.until, attempt)
        except TimeoutException:
            state = await asyncio.to_thread(self.text, "main")
            raise AssertionError(f"the page never showed {what}; it shows:\n{state}") from None

    # The page redraws its tables on every snapshot (each second while a job runs), so what is
    # read of them is read in one script, inside the page: never a stale element.

    def text(self, css: str) -> str:
        return str(self.driver.execute_script(TEXT_OF, css))

    def visible(self, css: str) -> bool:
        found = self.driver.find_elements(By.CSS_SELECTOR, css)
        return bool(found) and found[0].is_displayed()

    def where(self, request_id: str) -> str | None:
        """`running`, `waiting 3` or None: the request's row in the lane's tables."""
        where: str | None = self.driver.execute_script(WHERE_IS, request_id)
        return where

    def cells(self, row_css: str) -> list[str]:
        """The texts of the first row's cells that `row_css` finds (none: no such row)."""
        return [str(text) for text in self.driver.execute_script(CELLS_OF, row_css)]

    def rows(self, row_css: str) -> list[list[str]]:
        """The texts of the cells of every row `row_css` finds."""
        return [[str(t) for t in row] for row in self.driver.execute_script(ROWS_OF, row_css)]

    def recent(self, request_id: str) -> list[str] | None:
        """The cells of the request's row among the recent requests, if it is there."""
        return self.cells(f'#recent tr[data-request-id="{request_id}"]') or None

    async def shows(self, request_id: str, where: str | None) -> None:
        await self.until(lambda d: self.where(request_id) == where, f"{request_id}: {where}")

    async def enter_key(self, key: str) -> None:
        def enter(driver: WebDriver) -> None:
            field = driver.find_element(By.ID, "key")
            field.clear()
            field.send_keys(key)
            driver.find_element(By.CSS_SELECTOR, "#key-form button[type=submit]").click()

        await self.until(lambda d: self.visible("#key-form"), "the key form")
        await asyncio.to_thread(enter, self.driver)

    async def click(self, css: str) -> None:
        # In the page, as one step: the button may be redrawn at any moment.
        await asyncio.to_thread(self.driver.execute_script, CLICK, css)

    async def lane_state(self, state: str) -> None:
        await self.until(lambda d: self.text("#lane-state") == state, f"the lane {state}")

    async def screenshot(self, tmp_path: Path) -> Path:
        target = (
            SCREENSHOT if os.environ.get("CORRAL_UPDATE_SCREENSHOT") == "1" else tmp_path / "ui.png"
        )
        await asyncio.to_thread(self.driver.save_screenshot, str(target))
        return target


async def test_the_page_asks_for_an_admin_key(page: Page, ui_cluster: TwoUsers) -> None:
    await page.until(lambda d: page.visible("#key-form"), "the key form")
    assert not page.visible("#controls")
    await page.enter_key(ui_cluster.first)
    await page.until(lambda d: "not an admin key" in page.text("#key-error"), "a user key refused")
    assert not page.visible("#controls")
    await page.enter_key("crl_" + "x" * 46)
    await page.until(lambda d: "not accepted" in page.text("#key-error"), "a bad key refused")
    await page.enter_key(ui_cluster.admin)
    await page.until(lambda d: page.visible("#controls"), "the lane's buttons")
    assert not page.visible("#key-form")
    assert page.text("#connection") == "live"
    await page.lane_state("idle")
    # Kept for this tab: a reload needs no key.
    await asyncio.to_thread(page.driver.refresh)
    await page.until(lambda d: page.visible("#controls"), "the buttons after a reload")


async def test_the_page_follows_the_lane(
    page: Page, ui_cluster: TwoUsers, emu: EmulatorControl, tmp_path: Path
) -> None:
    await emu.configure(token_delay_ms=TOKEN_DELAY_MS)
    await page.enter_key(ui_cluster.admin)
    await page.lane_state("idle")
    await emu.hold()

    async with aiohttp.ClientSession() as session:

        def chat(request_id: str, key: str) -> asyncio.Task[tuple[int, Any]]:
            async def send() -> tuple[int, Any]:
                async with session.post(
                    f"{ui_cluster.url}/api/chat",
                    json={
                        "model": "llama3.2",
                        "messages": [{"role": "user", "content": f"Tell me about {request_id}"}],
                        "stream": False,
                        "options": {"num_predict": TOKENS},
                    },
                    headers={**bearer(key), "X-Request-Id": request_id},
                ) as response:
                    return response.status, await response.json()

            return asyncio.create_task(send())

        # Bob's request runs (held at the emulator's gate); Alice's line up behind it, in order.
        sent = {"ui-bob-1": chat("ui-bob-1", ui_cluster.second)}
        await emu.wait(held=1)
        await page.shows("ui-bob-1", "running")
        for position, request_id in enumerate(("ui-alice-1", "ui-alice-2", "ui-alice-3"), 1):
            sent[request_id] = chat(request_id, ui_cluster.first)
            await page.shows(request_id, f"waiting {position}")
        # A fourth of Alice's, cancelled from the page.
        sent["ui-alice-4"] = chat("ui-alice-4", ui_cluster.first)
        await page.shows("ui-alice-4", "waiting 4")
        await page.click('button[data-cancel="ui-alice-4"]')
        await page.shows("ui-alice-4", None)
        await page.until(lambda d: page.recent("ui-alice-4") is not None, "the cancel in recent")
        assert page.recent("ui-alice-4")[4].startswith("499")  # type: ignore[index]
        # Per caller.
        callers = page.rows("#callers tbody tr")
        assert sorted(callers) == [["alice", "0", "3"], ["bob", "1", "0"]], callers

        # Paused from the page: the running request finishes, and nothing else starts.
        await page.click("#pause")
        await page.lane_state("paused")
        await emu.release()
        await page.until(lambda d: page.recent("ui-bob-1") is not None, "bob's request done")
        assert page.recent("ui-bob-1")[4] == "200"  # type: ignore[index]
        await page.until(lambda d: page.text("#running tbody") == "nothing running", "no job")
        assert page.where("ui-alice-3") == "waiting 3"
        assert (await emu.stats())["completed"] == 1

        # Resumed: the request seen at 3 moves up to 2, then 1, then runs.
        await page.click("#resume")
        await page.shows("ui-alice-3", "waiting 2")
        await page.lane_state("running")
        # The running request's tokens counted as they come (this gateway relays it).
        await page.until(
            lambda d: page.cells("#running tbody tr[data-request-id]")[5:6] != [""],
            "tokens counted",
        )
        shot = await page.screenshot(tmp_path)
        await page.shows("ui-alice-3", "waiting 1")
        await page.shows("ui-alice-3", "running")
        await page.until(lambda d: page.recent("ui-alice-3") is not None, "ui-alice-3 done")
        await page.lane_state("idle")

        answers = {request_id: await task for request_id, task in sent.items()}
    assert {r: status for r, (status, _) in answers.items()} == {
        "ui-bob-1": 200,
        "ui-alice-1": 200,
        "ui-alice-2": 200,
        "ui-alice-3": 200,
        "ui-alice-4": 499,
    }
    # Its row among the recent requests: status, latency, queue wait, tokens and their rate.
    _, request_id, model, caller, status, latency, waited, tokens, rate = (
        page.recent("ui-alice-3") or [""] * 9
    )
    assert (request_id, model, caller, status) == ("ui-alice-3", "llama3.2", "alice", "200")
    assert latency.endswith(" s") and waited.endswith(" s")
    assert int(tokens) == answers["ui-alice-3"][1]["eval_count"] and float(rate) > 0
    # The tokens per second drawn, and the model loaded.
    assert page.driver.execute_script(
        "return document.querySelector('#sparkline polyline').getAttribute('points')"
    )
    assert "llama3.2" in page.text("#models tbody")
    assert shot.stat().st_size > 10_000


async def test_a_pool_shows_each_server_running_its_own(
    driver: WebDriver,
    emu: EmulatorControl,
    pool_cluster: Cluster,  # noqa: F811 (test_pool's fixture, imported above)
    second_emulator: Emulator,  # noqa: F811
) -> None:
    pool, y_server = pool_cluster, second_emulator
    page = await open_page(driver, pool.gateway_url)
    # Keys off: the lane at once, buttons included.
    await page.until(lambda d: page.visible("#controls"), "the lane's buttons without a key")
    assert not page.visible("#key-form")
    async with EmulatorControl(y_server.url) as y, aiohttp.ClientSession() as session:
        await y.reset()
        servers = {"x": emu, "y": y}
        for control in servers.values():
            await control.hold()

        async def chat(request_id: str) -> int:
            body = {"model": "llama3.2", "messages": [{"role": "user", "content": request_id}]}
            async with session.post(
                f"{pool.gateway_url}/api/chat",
                json={**body, "stream": False},
                headers={"X-Request-Id": request_id},
            ) as response:
                await response.read()
                return response.status

        sent = [asyncio.create_task(chat(f"ui-pool-{n}")) for n in range(3)]
        try:
            for control in servers.values():
                await control.wait(held=1)
            # One request running on each server, the third waiting for whichever frees first.
            await page.until(
                lambda d: len(page.rows('#running tr[data-state="running"]')) == 2,
                "two requests running",
            )
            await page.until(lambda d: page.visible("#servers-section"), "the servers")
            running = {row[0]: row[3] for row in page.rows('#running tr[data-state="running"]')}
            assert sorted(running.values()) == ["x", "y"], running
            for name in ("x", "y"):
                cells = page.cells(f'#servers tr[data-server="{name}"]')
                assert cells[0] == name and cells[2] == "up", cells
                assert running[cells[3]] == name, (cells, running)
            [waiting] = set(f"ui-pool-{n}" for n in range(3)) - set(running)
            await page.shows(waiting, "waiting 1")
        finally:
            for control in servers.values():
                await control.release()
        assert await asyncio.gather(*sent) == [200, 200, 200]
        for name, control in servers.items():
            assert (await control.stats())["max_active"] <= 1, f"two at once on server {name}"
    await page.lane_state("idle")
