"""Browser fixtures: the system Chromium driven by Playwright, against real servers.

One `quart-chat serve --workers 2` per module, with its own Redis and a real
SMTP sink the tests read login codes from. Chromium is Debian's
`/usr/bin/chromium`, never a downloaded browser: without it these tests skip
on a developer machine and fail in CI (`CI=true`).
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from playwright.sync_api import Browser, BrowserContext, Page, expect, sync_playwright

from ..servers import ChatServer, RedisServer
from ..smtp import SmtpSink

CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
]
ARTIFACTS = Path(__file__).resolve().parents[2] / "test-artifacts"
# The one admin (CHAT_ADMIN_EMAILS) of the browser tests' servers.
ADMIN_EMAIL = "root.admin@example.test"
# Generous: two cores are shared with other test runs.
expect.set_options(timeout=20_000)


# Module scope, not session: Playwright's sync API owns an event loop while it
# runs, which must not overlap the loops of the async tests in other modules.
@pytest.fixture(scope="module")
def browser() -> Iterator[Browser]:
    if not CHROMIUM.exists():
        reason = f"{CHROMIUM} is missing; install it with `apt-get install chromium`"
        if os.environ.get("CI"):
            pytest.fail(reason)
        pytest.skip(reason)
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
        try:
            yield browser
        finally:
            browser.close()


@pytest.fixture(scope="module")
def redis_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedisServer]:
    server = RedisServer(tmp_path_factory.mktemp("browser-redis")).start()
    try:
        yield server
    finally:
        server.stop()


def server_env(redis_server: RedisServer, smtp_sink: SmtpSink) -> dict[str, str]:
    return {
        **smtp_sink.env(),
        "CHAT_REDIS_URL": redis_server.url,
        "CHAT_SECRET_KEY": "browser-test-secret-" + "k" * 32,
        "CHAT_COOKIE_SECURE": "false",
        "CHAT_CODE_REQUESTS_PER_IP_HOUR": "10000",
        "CHAT_LOGIN_ATTEMPTS_PER_IP_HOUR": "10000",
        "CHAT_CODE_RESEND_SECONDS": "0",
        "CHAT_MESSAGE_MAX_CHARS": "500",
        "CHAT_ADMIN_EMAILS": ADMIN_EMAIL,
    }


@pytest.fixture(scope="module")
def chat_server(
    tmp_path_factory: pytest.TempPathFactory, redis_server: RedisServer, smtp_sink: SmtpSink
) -> Iterator[ChatServer]:
    server = ChatServer(
        tmp_path_factory.mktemp("browser-chat"), server_env(redis_server, smtp_sink), workers=2
    )
    server.start()
    try:
        yield server
    finally:
        if server.process is not None:
            server.stop()


@dataclass
class Person:
    """One browser page logged in as one address."""

    page: Page
    email: str

    @property
    def name(self) -> str:
        return self.email.split("@")[0]


def log_in(page: Page, base_url: str, email: str, sink: SmtpSink) -> None:
    """The login flow as a person does it: email, code from the mail, into the chat."""
    mails_before = len(sink.messages_to(email))
    page.goto(base_url + "/login")
    page.get_by_label("Email").fill(email)
    page.get_by_role("button", name="Send code").click()
    code_field = page.get_by_label("Code")
    expect(code_field).to_be_focused()
    code_field.fill(sink.wait_for_code(email, count=mails_before + 1))
    page.get_by_role("button", name="Log in").click()
    page.wait_for_url(base_url + "/")
    expect(page.locator("#connection")).to_have_attribute("data-state", "connected")


class Browsers:
    """Makes logged-in pages; every context it opens is closed after the test."""

    def __init__(self, browser: Browser, sink: SmtpSink) -> None:
        self.browser = browser
        self.sink = sink
        self.contexts: list[BrowserContext] = []
        self.errors: list[str] = []

    def context(self, **options: object) -> BrowserContext:
        context = self.browser.new_context(**options)  # type: ignore[arg-type]
        self.contexts.append(context)
        return context

    def watch(self, page: Page) -> Page:
        """Collect script errors and console errors (a CSP violation is one)."""
        page.on("pageerror", lambda error: self.errors.append(f"pageerror: {error}"))
        page.on(
            "console",
            lambda message: (
                self.errors.append(f"console: {message.text}") if message.type == "error" else None
            ),
        )
        return page

    def person(self, server: ChatServer, email: str, **options: object) -> Person:
        page = self.watch(self.context(**options).new_page())
        log_in(page, server.base_url, email, self.sink)
        return Person(page, email)

    def close(self) -> None:
        for context in self.contexts:
            context.close()


@pytest.fixture
def browsers(browser: Browser, smtp_sink: SmtpSink) -> Iterator[Browsers]:
    made = Browsers(browser, smtp_sink)
    try:
        yield made
    finally:
        made.close()


def unique(prefix: str) -> str:
    """A message text no other test sends, so counts are exact."""
    return f"{prefix} {os.urandom(4).hex()}"


def message_texts(page: Page) -> list[str]:
    return page.locator("#messages > li .msg-text").all_text_contents()
