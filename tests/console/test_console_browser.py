"""The console in a real headless Chromium (Debian's, driven through its chromedriver),
against a real gateway, simulated instances, Redis, MariaDB and a worker pool.

One browser for the module; every Selenium call runs in a thread, since the gateway and
the pool run on this test's event loop. A screenshot of the page goes to
``var/screenshots/console.png`` for people to look at.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from typing import Any

import aiohttp
import pytest
from selenium import webdriver
from selenium.common.exceptions import StaleElementReferenceException
from selenium.webdriver.chrome.service import Service
from selenium.webdriver.common.by import By
from selenium.webdriver.remote.webdriver import WebDriver
from selenium.webdriver.support.ui import WebDriverWait

from gateway.shared.settings import QueueSettings
from tests.accounts import DDL as ACCOUNTS_DDL
from tests.harness import API_KEY, ROOT, RunningGateway, Sim
from tests.workers.conftest import Harness, eventually

TOKEN = "browser-admin-secret"
QUEUE = "console-q"
SCREENSHOTS = ROOT / "var" / "screenshots"
WAIT = 20.0  # seconds a page may take to show what is awaited


@pytest.fixture(scope="module")
def driver() -> Iterator[WebDriver]:
    options = webdriver.ChromeOptions()
    options.binary_location = "/usr/bin/chromium"
    for flag in (
        "--headless=new",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-dev-shm-usage",
        "--window-size=1500,1300",
        "--disable-extensions",
        "--no-first-run",
    ):
        options.add_argument(flag)
    browser = webdriver.Chrome(service=Service("/usr/bin/chromedriver"), options=options)
    try:
        yield browser
    finally:
        browser.quit()


class Page:
    """The browser, driven from the event loop: each call in a thread."""

    def __init__(self, driver: WebDriver, base: str) -> None:
        self.driver, self.base = driver, base

    async def run(self, fn: Callable[..., Any], *args: Any) -> Any:
        return await asyncio.to_thread(fn, *args)

    async def open(self, path: str = "/console/") -> None:
        await self.run(self.driver.get, f"{self.base}{path}")

    async def until(self, check: Callable[[WebDriver], Any], what: str) -> Any:
        # the page redraws its tables on every refresh: an element read mid-redraw is stale
        wait = WebDriverWait(
            self.driver,
            WAIT,
            poll_frequency=0.1,
            ignored_exceptions=[StaleElementReferenceException],
        )
        try:
            return await self.run(wait.until, check, f"the page never showed {what}")
        except Exception:
            print(await self.run(lambda: self.driver.find_element(By.TAG_NAME, "body").text))
            raise

    async def text(self, css: str) -> str:
        return await self.run(lambda: self.driver.find_element(By.CSS_SELECTOR, css).text)

    async def shows(self, css: str, wanted: Callable[[str], bool], what: str) -> str:
        """Wait until the element's text satisfies ``wanted``; its text."""

        def check(d: WebDriver) -> str | bool:
            found = d.find_elements(By.CSS_SELECTOR, css)
            return found[0].text if found and wanted(found[0].text) else False

        return await self.until(check, what)

    async def click(self, css: str) -> None:
        await self.run(lambda: self.driver.find_element(By.CSS_SELECTOR, css).click())

    async def type(self, css: str, text: str) -> None:
        def typing() -> None:
            field = self.driver.find_element(By.CSS_SELECTOR, css)
            field.clear()
            field.send_keys(text)

        await self.run(typing)


@pytest.fixture
async def stack(
    mysql_harness: Harness,
    simulators: Callable[..., Awaitable[list[Sim]]],
    gateways: Callable[..., Awaitable[RunningGateway]],
) -> AsyncIterator[tuple[Harness, list[Sim], RunningGateway]]:
    """Three instances, a gateway with a console and a failed store in MariaDB."""
    h = mysql_harness
    async with await h.mysql_conn() as conn, conn.cursor() as cur:
        for statement in ACCOUNTS_DDL:  # the gateway writes its pins back there too
            await cur.execute(statement)
    sims = await simulators(3)
    gw = await gateways(
        [s.url for s in sims],
        admin_token=TOKEN,
        redis_prefix=h.prefix,
        mysql_dsn=h.mysql_dsn,
        workers=QueueSettings(queues=(QUEUE,)),
        health_interval=0.5,
    )
    yield h, sims, gw


async def test_an_operator_logs_in_drains_an_instance_and_retries_a_failed_job(
    driver: WebDriver,
    stack: tuple[Harness, list[Sim], RunningGateway],
    http: aiohttp.ClientSession,
) -> None:
    h, sims, gw = stack
    page = Page(driver, gw.url)
    await page.run(driver.delete_all_cookies)

    # A wrong token is refused on the page, and no session is opened.
    await page.open()
    await page.type("#token", "not-the-token")
    await page.click("#login-button")
    await page.shows("#login-error", lambda t: "Wrong admin token" in t, "the refusal")
    assert await page.run(driver.get_cookies) == []

    # The right one opens the console, which shows the fleet.
    await page.type("#token", TOKEN)
    await page.click("#login-button")
    shown = await page.until(
        lambda d: [
            row.get_attribute("data-url")
            for row in d.find_elements(By.CSS_SELECTOR, "#instances tbody tr")
        ],
        "the fleet",
    )
    assert shown == [s.url for s in sims]
    [cookie] = await page.run(driver.get_cookies)
    assert cookie["httpOnly"] is True and cookie["sameSite"] == "Strict"
    assert TOKEN not in await page.run(lambda: driver.page_source)
    await page.shows("#next-placement", lambda t: t == sims[0].url, "the first instance next")

    # Drain the instance the next session would go to: the next placement avoids it.
    await page.click(f'#instances tr[data-url="{sims[0].url}"] button.drain')
    await page.shows(
        f'#instances tr[data-url="{sims[0].url}"]', lambda t: "draining" in t, "it draining"
    )
    shown = await page.shows("#next-placement", lambda t: t != sims[0].url, "another next")
    body = {"session_id": "console-s1", "workspace_id": 7, "api_key": API_KEY}
    async with http.post(f"{gw.url}/api/sessions", json=body) as resp:
        assert resp.status == 200, await resp.text()
        assert resp.headers["X-WhatsApp-Instance"] == shown == sims[1].url
    await page.type("#session-q", "console-s")
    await page.click("#session-search button[type=submit]")
    row = await page.shows(
        'tr[data-session="console-s1"]', lambda t: sims[1].url in t, "the session"
    )
    assert "7" in row

    # A job fails (its gate is closed), shows among the failed jobs; retried from the page
    # once the gate opens, the pool runs it and it leaves the failed store.
    gate, log = h.key("gate"), h.key("log")
    await h.redis.set(gate, 1)
    payload = json.loads(await h.push(QUEUE, "gated", {"gate": gate, "log": log}, maxTries=1))
    async with h.pool(h.config(queues=(QUEUE,))):
        await page.shows(
            f'#failed tr[data-id="{payload["uuid"]}"]',
            lambda t: "the gate is closed" in t,
            "the failed job",
        )
        await page.click(f'#failed tr[data-id="{payload["uuid"]}"] button.show')
        detail = await page.shows("#failed-detail", lambda t: "Traceback" in t, "the whole job")
        assert payload["uuid"] in detail and "RuntimeError: the gate is closed" in detail
        SCREENSHOTS.mkdir(parents=True, exist_ok=True)
        await page.run(driver.save_screenshot, str(SCREENSHOTS / "console.png"))
        await h.redis.delete(gate)
        await page.click(f'#failed tr[data-id="{payload["uuid"]}"] button.retry')
        await page.until(
            lambda d: (
                not d.find_elements(By.CSS_SELECTOR, f'#failed tr[data-id="{payload["uuid"]}"]')
            ),
            "the failed job gone",
        )
        await eventually(h.log, lambda entries: len(entries) == 2, what="the job run again")
        await page.shows(f'#queues tr[data-queue="{QUEUE}"]', lambda t: " 1 (" in t, "one job done")
    assert await h.failed() == []
    await page.shows("#status", lambda t: t.startswith("updated"), "fresh data")
    assert (SCREENSHOTS / "console.png").stat().st_size > 10_000

    # Logging out ends the session: the page is the login form again.
    await page.click("#logout")
    await page.until(lambda d: d.find_elements(By.CSS_SELECTOR, "#login"), "the login form")


async def test_the_page_says_when_its_data_is_stale(
    driver: WebDriver,
    stack: tuple[Harness, list[Sim], RunningGateway],
) -> None:
    _, _, gw = stack
    page = Page(driver, gw.url)
    await page.open()
    await page.type("#token", TOKEN)
    await page.click("#login-button")
    await page.shows("#status", lambda t: t.startswith("updated"), "fresh data")
    await gw.runner.cleanup()  # the gateway goes away: the page keeps its last data
    await page.shows("#status", lambda t: t.startswith("STALE"), "that its data is stale")
    assert await page.run(driver.find_elements, By.CSS_SELECTOR, "#instances tbody tr")
