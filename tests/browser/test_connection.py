"""The page's connection against real network trouble: offline, a silently dead socket,
a refused message, a server restart. Headless Chromium, real servers, and a TCP relay
(tests/proxy.py) where the network itself has to misbehave."""

from __future__ import annotations

import re
from collections.abc import Iterator
from typing import Any

import pytest
import redis
from playwright.sync_api import Page, expect

from ..proxy import TcpRelay
from ..servers import ChatServer, RedisServer
from ..smtp import SmtpSink
from .conftest import Browsers, Person, log_in, message_texts, server_env, unique
from .test_chat_page import assert_no_duplicates, delivered, message, say

SENDS_PER_MINUTE = 6

# What the page showed and how its sockets ended, recorded in the page itself:
# a state that lasts a few milliseconds is still seen.
RECORDER = """
window.__seen = { states: [], opened: [], closed: [] };
const NativeWebSocket = window.WebSocket;
window.WebSocket = class extends NativeWebSocket {
  constructor(...args) {
    super(...args);
    window.__seen.opened.push(Date.now());
    this.addEventListener("close", (event) => window.__seen.closed.push([event.code, Date.now()]));
  }
};
document.addEventListener("DOMContentLoaded", () => {
  const connection = document.getElementById("connection");
  const record = () => window.__seen.states.push({
    state: connection.dataset.state,
    text: document.getElementById("connection-text").textContent,
    retryNow: !document.getElementById("reconnect-now").hidden,
  });
  new MutationObserver(record).observe(connection, {
    subtree: true, childList: true, characterData: true, attributes: true,
  });
});
"""


def seen(page: Page) -> dict[str, Any]:
    return page.evaluate("window.__seen")  # type: ignore[no-any-return]


@pytest.fixture(scope="module")
def chat_server(
    tmp_path_factory: pytest.TempPathFactory, redis_server: RedisServer, smtp_sink: SmtpSink
) -> Iterator[ChatServer]:
    # A low send limit, so the test of a refused message does not post hundreds first.
    env = {**server_env(redis_server, smtp_sink), "CHAT_MESSAGES_PER_MINUTE": str(SENDS_PER_MINUTE)}
    server = ChatServer(tmp_path_factory.mktemp("connection-chat"), env, workers=2)
    server.start()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture
def relay(chat_server: ChatServer) -> Iterator[TcpRelay]:
    relay = TcpRelay(chat_server.port).start()
    try:
        yield relay
    finally:
        relay.stop()


def person_via(browsers: Browsers, base_url: str, email: str) -> Person:
    """A person whose page records its connection (RECORDER) from the start."""
    context = browsers.context()
    context.add_init_script(RECORDER)
    page = browsers.watch(context.new_page())
    log_in(page, base_url, email, browsers.sink)
    return Person(page, email)


def test_going_offline_shows_at_once_and_coming_back_fills_the_gap(
    chat_server: ChatServer, browsers: Browsers
) -> None:
    alice = browsers.person(chat_server, "alice.offline@example.test")
    bob = browsers.person(chat_server, "bob.offline@example.test")
    before = unique("before the network went")
    say(bob.page, before)
    delivered(alice.page, before)

    alice.page.context.set_offline(True)
    connection = alice.page.locator("#connection")
    expect(connection).to_have_attribute("data-state", "offline")
    expect(connection).to_contain_text("Offline")
    missed = unique("said while alice was offline")
    say(bob.page, missed)
    delivered(bob.page, missed)
    typed = unique("typed while offline")
    say(alice.page, typed)
    expect(message(alice.page, typed)).to_contain_text("Waiting for connection")

    alice.page.context.set_offline(False)
    expect(connection).to_have_attribute("data-state", "connected")
    delivered(alice.page, missed)
    delivered(alice.page, typed)
    delivered(bob.page, typed)
    texts = message_texts(alice.page)
    assert texts.index(before) < texts.index(missed) < texts.index(typed)
    assert_no_duplicates(alice.page)
    assert_no_duplicates(bob.page)


def test_a_connection_that_died_silently_is_noticed_and_replaced(
    chat_server: ChatServer, relay: TcpRelay, browsers: Browsers
) -> None:
    alice = person_via(browsers, relay.base_url, "alice.halfopen@example.test")
    bob = browsers.person(chat_server, "bob.halfopen@example.test")
    before = unique("before the socket died")
    say(bob.page, before)
    delivered(alice.page, before)

    # No close, no offline event: bytes just stop, both ways. Only the heartbeat can tell.
    relay.freeze()
    missed = unique("said into the dead socket")
    say(bob.page, missed)
    delivered(bob.page, missed)
    # A ping every 10 s, 5 s for an answer, then a reconnect: within ~16 s.
    delivered_within = 30_000
    expect(message(alice.page, missed)).to_have_count(1, timeout=delivered_within)
    delivered(alice.page, missed)
    expect(alice.page.locator("#connection")).to_have_attribute("data-state", "connected")
    states = [entry["state"] for entry in seen(alice.page)["states"]]
    assert "reconnecting" in states, states
    texts = message_texts(alice.page)
    assert texts.index(before) < texts.index(missed)
    assert_no_duplicates(alice.page)


def test_a_refused_message_turns_red_and_retry_posts_it_once(
    chat_server: ChatServer, redis_server: RedisServer, browsers: Browsers
) -> None:
    rita = browsers.person(chat_server, "rita.retry@example.test")
    watcher = browsers.person(chat_server, "walt.retry@example.test")
    for number in range(SENDS_PER_MINUTE):
        text = unique(f"allowed #{number}")
        say(rita.page, text)
        delivered(rita.page, text)

    refused = unique("one too many")
    say(rita.page, refused)
    item = message(rita.page, refused)
    expect(item).to_have_class(re.compile(r"\bfailed\b"))
    expect(item).to_contain_text("Too many messages")
    retry = item.get_by_role("button", name="Retry")
    expect(retry).to_be_visible()

    # The minute passes (the fixed window's counter expires).
    with redis.Redis.from_url(redis_server.url) as client:
        for key in client.scan_iter("{user:*}:ratelimit:send"):
            client.delete(key)
    retry.click()
    delivered(rita.page, refused)
    delivered(watcher.page, refused)
    assert_no_duplicates(rita.page)


@pytest.fixture
def restarting_server(
    tmp_path_factory: pytest.TempPathFactory, redis_server: RedisServer, smtp_sink: SmtpSink
) -> Iterator[ChatServer]:
    """A replica that is restarted under its users, next to the module's `chat_server`."""
    server = ChatServer(
        tmp_path_factory.mktemp("restarting-chat"), server_env(redis_server, smtp_sink), workers=1
    )
    server.start()
    try:
        yield server
    finally:
        if server.process is not None:
            server.stop()


def closed_for_restart(page: Page) -> None:
    codes = [code for code, _ in seen(page)["closed"]]
    assert 1012 in codes, f"the server closed the page's socket with {codes}, not 1012"


def test_a_restart_reconnects_at_once_and_shows_no_error(
    chat_server: ChatServer, restarting_server: ChatServer, browsers: Browsers
) -> None:
    # Two replicas behind a balancer; one of them is restarted (rolling restart).
    relay = TcpRelay(restarting_server.port).start()
    try:
        alice = person_via(browsers, relay.base_url, "alice.restart@example.test")
        bob = browsers.person(chat_server, "bob.restart@example.test")
        before = unique("before the restart")
        say(bob.page, before)
        delivered(alice.page, before)

        relay.upstream = chat_server.port
        relay.hold()  # the other replica answers only once alice has typed
        restarting_server.stop()
        expect(alice.page.locator("#connection")).to_have_attribute("data-state", "reconnecting")
        closed_for_restart(alice.page)
        pending = unique("typed during the restart")
        say(alice.page, pending)
        expect(message(alice.page, pending)).to_contain_text("Waiting for connection")
        relay.release()

        expect(alice.page.locator("#connection")).to_have_attribute("data-state", "connected")
        delivered(alice.page, pending)
        delivered(bob.page, pending)
        assert_no_duplicates(alice.page)
        # No countdown, no "Retry now", nothing red: a restart is not the user's problem.
        shown = seen(alice.page)["states"]
        assert not [entry for entry in shown if entry["retryNow"] or "in " in entry["text"]], shown
        expect(alice.page.locator("#messages > li.msg-failed")).to_have_count(0)
    finally:
        relay.stop()


def test_tabs_reconnecting_after_a_restart_are_spread_out(
    chat_server: ChatServer, restarting_server: ChatServer, browsers: Browsers
) -> None:
    # Whatever the close code,
    # the first reconnect is spread, so a restarted server is not hit by every tab at once.
    relay = TcpRelay(restarting_server.port).start()
    try:
        first = person_via(browsers, relay.base_url, "tabs.restart@example.test")
        tabs = [first.page]
        for _ in range(7):
            tab = browsers.watch(first.page.context.new_page())
            tab.goto(relay.base_url + "/")
            expect(tab.locator("#connection")).to_have_attribute("data-state", "connected")
            tabs.append(tab)

        relay.upstream = chat_server.port
        restarting_server.stop()
        delays = []
        for tab in tabs:
            expect(tab.locator("#connection")).to_have_attribute("data-state", "connected")
            record = seen(tab)
            _, lost_at = record["closed"][0]
            delays.append(min(at for at in record["opened"] if at >= lost_at) - lost_at)
        # Each tab waits a random 0-1 s: 8 tabs all within 250 ms of each other happens
        # with a chance of 1 in 2,500; without the jitter they all reconnect at once.
        assert max(delays) - min(delays) >= 250, delays
    finally:
        relay.stop()
