"""The login page in real headless Chromium: pasted codes, inline errors, the wait when limited."""

from __future__ import annotations

import re
from collections.abc import Iterator

import pytest
from playwright.sync_api import Page, expect

from ..servers import ChatServer, RedisServer
from ..smtp import SmtpSink
from .conftest import Browsers, server_env


def ask_for_code(page: Page, base_url: str, email: str) -> None:
    page.goto(base_url + "/login")
    expect(page.get_by_label("Email")).to_be_focused()
    page.get_by_label("Email").fill(email)
    page.get_by_label("Email").press("Enter")


def test_pasted_code_logs_in_and_the_code_field_is_focused(
    chat_server: ChatServer, browsers: Browsers, smtp_sink: SmtpSink
) -> None:
    context = browsers.context()
    context.grant_permissions(["clipboard-read", "clipboard-write"], origin=chat_server.base_url)
    page = browsers.watch(context.new_page())
    email = "paste@example.test"
    mails = len(smtp_sink.messages_to(email))
    ask_for_code(page, chat_server.base_url, email)
    code_field = page.get_by_label("Code")
    expect(code_field).to_be_focused()
    expect(page.locator("#code-sent")).to_contain_text(email)

    # Copied out of a mail, with a space in the middle and a line break after it.
    code = smtp_sink.wait_for_code(email, count=mails + 1)
    page.evaluate("text => navigator.clipboard.writeText(text)", f" {code[:3]} {code[3:]}\n")
    code_field.press("ControlOrMeta+v")
    page.wait_for_url(chat_server.base_url + "/")
    expect(page.locator("#connection")).to_have_attribute("data-state", "connected")
    assert browsers.errors == []


def test_wrong_code_and_bad_email_are_explained_next_to_the_field(
    chat_server: ChatServer, browsers: Browsers
) -> None:
    page = browsers.context().new_page()
    page.goto(chat_server.base_url + "/login")
    email = page.get_by_label("Email")
    email.fill("not-an-address")
    page.get_by_role("button", name="Send code").click()
    error = page.locator("#email-form #message")
    expect(error).to_contain_text("email address")
    expect(email).to_have_attribute("aria-invalid", "true")
    expect(email).to_be_focused()

    email.fill("wrong@example.test")
    email.press("Enter")
    code_field = page.get_by_label("Code")
    expect(code_field).to_be_focused()
    code_field.fill("000000")
    code_field.press("Enter")
    error = page.locator("#code-form #message")
    expect(error).to_contain_text("wrong, expired or already used")
    expect(code_field).to_have_attribute("aria-invalid", "true")
    expect(page).to_have_url(re.compile(r"/login"))


@pytest.fixture
def strict_server(
    tmp_path_factory: pytest.TempPathFactory, smtp_sink: SmtpSink
) -> Iterator[ChatServer]:
    """One code request per hour, on a Redis of its own so no other test's requests count."""
    workdir = tmp_path_factory.mktemp("browser-strict")
    redis_server = RedisServer(workdir / "redis", appendonly=False).start()
    env = {**server_env(redis_server, smtp_sink), "CHAT_CODE_REQUESTS_PER_IP_HOUR": "1"}
    server = ChatServer(workdir, env, workers=1)
    try:
        server.start()
        yield server
    finally:
        if server.process is not None:
            server.stop()
        redis_server.stop()


def test_rate_limited_shows_how_long_to_wait(strict_server: ChatServer, browsers: Browsers) -> None:
    page = browsers.context().new_page()
    ask_for_code(page, strict_server.base_url, "limited@example.test")
    expect(page.get_by_label("Code")).to_be_focused()
    page.get_by_role("button", name="Use another address").click()
    page.get_by_label("Email").fill("limited@example.test")
    page.get_by_label("Email").press("Enter")
    expect(page.locator("#message")).to_contain_text(re.compile(r"Try again in \d+ minutes"))
    send = page.locator("#email-form button[type=submit]")
    expect(send).to_be_disabled()
    expect(send).to_contain_text(re.compile(r"wait \d+ minutes"))
