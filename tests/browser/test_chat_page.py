"""The chat page in real headless Chromium against `quart-chat serve --workers 2`."""

from __future__ import annotations

import json
import re
from collections.abc import Iterator

import pytest
import redis
from playwright.sync_api import Locator, Page, expect
from websockets.sync.client import connect

from ..servers import ChatServer, RedisServer
from ..smtp import SmtpSink
from .conftest import ARTIFACTS, Browsers, Person, message_texts, server_env, unique

PHONE = {"width": 375, "height": 740}
DESKTOP = {"width": 1280, "height": 800}


def say(page: Page, text: str) -> None:
    """Type into the composer and press Enter; Shift+Enter makes the line breaks."""
    box = page.get_by_label("Message #general")
    first, *more = text.split("\n")
    box.fill(first)
    for line in more:
        box.press("Shift+Enter")
        box.press_sequentially(line)
    box.press("Enter")


def message(page: Page, text: str) -> Locator:
    return page.locator("#messages > li").filter(
        has=page.locator(".msg-text").get_by_text(text, exact=True)
    )


def delivered(page: Page, text: str) -> None:
    """The message is on the page exactly once, acknowledged by the server."""
    item = message(page, text)
    expect(item).to_have_count(1)
    expect(item).not_to_have_class(re.compile(r"\bpending\b|\bfailed\b"))
    expect(item).to_have_attribute("data-id", re.compile(r"^\d+-\d+$"))


def assert_no_duplicates(page: Page) -> None:
    ids = page.locator("#messages > li[data-id]").evaluate_all(
        "items => items.map(item => item.dataset.id)"
    )
    assert len(ids) == len(set(ids))
    assert ids == sorted(ids, key=lambda i: tuple(int(part) for part in i.split("-")))


def test_two_people_see_each_others_messages(chat_server: ChatServer, browsers: Browsers) -> None:
    alice = browsers.person(chat_server, "alice@example.test")
    bob = browsers.person(chat_server, "bob@example.test")
    expect(alice.page.locator("#online")).to_contain_text("bob")
    expect(bob.page.locator("#online")).to_contain_text("alice")
    expect(alice.page.locator("#me")).to_have_text("alice")

    hello = unique("hello bob")
    say(alice.page, hello)
    delivered(alice.page, hello)
    delivered(bob.page, hello)
    expect(message(alice.page, hello)).to_have_class(re.compile(r"\bown\b"))
    expect(message(bob.page, hello)).not_to_have_class(re.compile(r"\bown\b"))
    expect(message(bob.page, hello).locator(".msg-author")).to_have_text("alice")

    reply = unique("hi alice") + "\nsecond line"
    say(bob.page, reply)
    delivered(alice.page, reply)
    delivered(bob.page, reply)
    expect(bob.page.get_by_label("Message #general")).to_have_value("")

    # A second message from the same author within minutes joins the first's group.
    more = unique("and one more")
    say(bob.page, more)
    delivered(alice.page, more)
    expect(message(alice.page, more)).to_have_class(re.compile(r"\bcontinued\b"))
    assert_no_duplicates(alice.page)
    assert browsers.errors == []


def test_markup_in_a_message_is_shown_as_text_and_runs_nothing(
    chat_server: ChatServer, browsers: Browsers
) -> None:
    alice = browsers.person(chat_server, "alice@example.test")
    bob = browsers.person(chat_server, "bob@example.test")
    dialogs: list[str] = []
    for page in (alice.page, bob.page):
        page.on("dialog", lambda dialog: (dialogs.append(dialog.message), dialog.dismiss()))

    payload = f'<img src=x onerror="window.pwned=1;alert(1)"> <b>{unique("bold?")}</b>'
    say(alice.page, payload)
    for person in (alice, bob):
        delivered(person.page, payload)
        assert person.page.locator("#messages img, #messages b").count() == 0
        # Give a would-be image time to fail loading and fire its handler.
        person.page.wait_for_timeout(300)
        assert person.page.evaluate("window.pwned") is None
    assert dialogs == []


def test_history_loads_older_pages_when_scrolled_to_the_top(
    chat_server: ChatServer, browsers: Browsers
) -> None:
    erin = browsers.person(chat_server, "erin@example.test")
    batch = unique("backlog")
    texts = [f"{batch} #{number}" for number in range(70)]
    send_over_websocket(erin, chat_server, texts)
    delivered(erin.page, texts[-1])

    reader = browsers.person(chat_server, "erin@example.test")
    delivered(reader.page, texts[-1])
    first_page = len(message_texts(reader.page))
    assert texts[0] not in message_texts(reader.page)
    assert first_page <= 50
    for _ in range(40):
        if texts[0] in message_texts(reader.page):
            break
        reader.page.locator("#scroller").evaluate("scroller => { scroller.scrollTop = 0; }")
        reader.page.wait_for_timeout(250)
    delivered(reader.page, texts[0])
    shown = [text for text in message_texts(reader.page) if text.startswith(batch)]
    assert shown == texts
    assert_no_duplicates(reader.page)


def send_over_websocket(person: Person, server: ChatServer, texts: list[str]) -> None:
    """Post through the public WebSocket protocol with the person's session cookie."""
    cookies = "; ".join(f"{c['name']}={c['value']}" for c in person.page.context.cookies())
    url = server.base_url.replace("http", "ws", 1) + "/ws"
    headers = {"Cookie": cookies, "Origin": server.base_url}
    with connect(url, additional_headers=headers, open_timeout=10) as socket:
        assert json.loads(socket.recv(timeout=10))["type"] == "ready"
        for number, text in enumerate(texts):
            frame = {"type": "send", "room": "general", "text": text, "client_id": f"ws-{number}"}
            socket.send(json.dumps(frame))
        echoed = 0
        while echoed < len(texts):
            frame = json.loads(socket.recv(timeout=10))
            echoed += frame["type"] == "message" and frame.get("text") in texts


def test_composer_counts_towards_the_limit(chat_server: ChatServer, browsers: Browsers) -> None:
    alice = browsers.person(chat_server, "alice@example.test")
    box = alice.page.get_by_label("Message #general")
    counter = alice.page.locator("#counter")
    expect(counter).to_be_hidden()
    box.fill("x" * 450)
    expect(counter).to_have_text("450 / 500")
    box.fill("x" * 510)
    expect(counter).to_contain_text("10 characters over")
    expect(alice.page.get_by_role("button", name="Send")).to_be_disabled()
    box.press("Enter")
    expect(alice.page.locator("#messages > li.msg-pending")).to_have_count(0)
    box.fill("short")
    expect(alice.page.get_by_role("button", name="Send")).to_be_enabled()


@pytest.fixture
def second_server(
    tmp_path_factory: pytest.TempPathFactory, redis_server: RedisServer, smtp_sink: SmtpSink
) -> Iterator[ChatServer]:
    """Another server on the same Redis, so one side can lose its server while the other talks."""
    server = ChatServer(
        tmp_path_factory.mktemp("browser-chat-2"), server_env(redis_server, smtp_sink), workers=1
    )
    server.start()
    try:
        yield server
    finally:
        server.stop()


def test_reconnects_and_fills_in_what_was_missed(
    chat_server: ChatServer, second_server: ChatServer, browsers: Browsers
) -> None:
    alice = browsers.person(chat_server, "alice@example.test")
    bob = browsers.person(second_server, "bob@example.test")
    before = unique("before the outage")
    say(bob.page, before)
    delivered(alice.page, before)

    chat_server.stop()
    expect(alice.page.locator("#connection")).to_contain_text("Reconnecting")
    expect(alice.page.locator("#connection")).to_have_attribute("data-state", "reconnecting")
    offline = unique("typed while offline")
    say(alice.page, offline)
    expect(message(alice.page, offline)).to_have_class(re.compile(r"\bpending\b"))
    expect(message(alice.page, offline)).to_contain_text("Waiting for connection")

    # More than the 50 a fresh join gets: only `join after=<last id>` fills this gap.
    batch = unique("missed")
    missed = [f"{batch} #{number}" for number in range(60)]
    say(bob.page, missed[0])
    delivered(bob.page, missed[0])
    send_over_websocket(bob, second_server, missed[1:])
    delivered(bob.page, missed[-1])

    chat_server.start()
    expect(alice.page.locator("#connection")).to_have_attribute("data-state", "connected")
    delivered(alice.page, offline)
    delivered(bob.page, offline)
    delivered(alice.page, missed[-1])
    texts = message_texts(alice.page)
    assert [text for text in texts if text.startswith(batch)] == missed
    assert texts.index(before) < texts.index(missed[0])
    assert_no_duplicates(alice.page)
    assert_no_duplicates(bob.page)


def test_logout_in_one_tab_sends_the_other_tab_to_login(
    chat_server: ChatServer, browsers: Browsers
) -> None:
    carol = browsers.person(chat_server, "carol@example.test")
    other_tab = browsers.watch(carol.page.context.new_page())
    other_tab.goto(chat_server.base_url + "/")
    expect(other_tab.locator("#connection")).to_have_attribute("data-state", "connected")
    watcher = browsers.person(chat_server, "dave@example.test")
    expect(watcher.page.locator("#online")).to_contain_text("carol")

    carol.page.get_by_role("button", name="Log out").click()
    carol.page.wait_for_url(re.compile(r"/login"))
    other_tab.wait_for_url(re.compile(r"/login"))
    expect(watcher.page.locator("#online")).not_to_contain_text("carol")
    other_tab.goto(chat_server.base_url + "/")
    other_tab.wait_for_url(re.compile(r"/login"))


@pytest.mark.parametrize(
    ("name", "viewport", "scheme"),
    [
        ("phone", PHONE, "light"),
        ("desktop", DESKTOP, "light"),
        ("desktop-dark", DESKTOP, "dark"),
    ],
)
def test_screenshots(
    chat_server: ChatServer,
    redis_server: RedisServer,
    browsers: Browsers,
    name: str,
    viewport: dict[str, int],
    scheme: str,
) -> None:
    # A room with only this conversation in it, not the other tests' traffic.
    with redis.Redis.from_url(redis_server.url) as client:
        client.flushdb()
    options = {"viewport": viewport, "color_scheme": scheme}
    frank = browsers.person(chat_server, "frank@example.test", **options)
    grace = browsers.person(chat_server, "grace.hopper@example.test", **options)
    say(grace.page, "Morning! Standup moved to 10:30 today.")
    say(grace.page, "Room 4B, same as last week.")
    say(frank.page, "Thanks, I'll be there.\nBringing the release notes.")
    last = unique("Anyone want coffee?")
    say(grace.page, last)
    delivered(frank.page, last)
    page = frank.page
    # Nothing may force sideways scrolling, on a phone least of all.
    width = page.evaluate("document.documentElement.scrollWidth")
    assert width <= viewport["width"]
    ARTIFACTS.mkdir(exist_ok=True)
    page.screenshot(path=ARTIFACTS / f"chat-{name}.png")
    login = browsers.watch(browsers.context(**options).new_page())
    login.goto(chat_server.base_url + "/login")
    assert login.evaluate("document.documentElement.scrollWidth") <= viewport["width"]
    login.screenshot(path=ARTIFACTS / f"login-{name}.png")
    assert browsers.errors == []


def test_keyboard_reaches_every_control_with_visible_focus(
    chat_server: ChatServer, browsers: Browsers
) -> None:
    page = browsers.person(chat_server, "ivan@example.test").page
    page.locator("body").focus()
    reached: dict[str, str] = {}
    for _ in range(20):
        page.keyboard.press("Tab")
        name, outline = page.evaluate(
            """() => {
                const el = document.activeElement;
                const name = el.id || el.textContent.trim() || el.tagName;
                return [name, getComputedStyle(el).outlineStyle];
            }"""
        )
        reached[name] = outline
    for control in (
        "me",
        "Log out",
        "jump",
        "create-room",
        "browse-rooms",
        "new-dm",
        "scroller",
        "text",
        "send",
    ):
        assert control in reached, reached
        assert reached[control] != "none", (control, reached[control])
    # And the composer works from the keyboard alone.
    page.get_by_label("Message #general").focus()
    text = unique("typed without a mouse")
    page.keyboard.type(text)
    page.keyboard.press("Enter")
    delivered(page, text)
