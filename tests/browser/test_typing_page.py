"""The typing line (SPEC §9) in headless Chromium against `quart-chat serve --workers 2`:
what the others see while someone types, and what the typer never sees."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import ExitStack

import pytest
from playwright.sync_api import Page, WebSocket, expect
from quart_auth.extension import _AuthSerializer
from redis.asyncio import Redis
from websockets.sync.client import ClientConnection, connect

from quart_chat.models.sessions import create_session
from quart_chat.models.users import get_or_create_user
from quart_chat.realtime.fanout import TYPING_COALESCE_SOCKETS

from ..servers import ChatServer, RedisServer
from ..smtp import SmtpSink
from .conftest import Browsers, server_env, unique
from .test_chat_page import delivered


def type_in(page: Page, label: str, text: str) -> None:
    """Keystrokes, as a person types them (each one an `input` event), without sending."""
    page.get_by_label(f"Message {label}", exact=True).press_sequentially(text, delay=20)


def test_the_others_see_who_is_typing_until_the_message_arrives_or_5_s_pass(
    chat_server: ChatServer, browsers: Browsers
) -> None:
    ann = browsers.person(chat_server, "ann.typing@example.test")
    bob = browsers.person(chat_server, "bob.typing@example.test")
    cy = browsers.person(chat_server, "cy.typing@example.test")
    line = ann.page.locator("#typing")
    expect(line).to_have_attribute("aria-live", "polite")
    expect(line).to_have_text("")

    text = unique("hello from bob")
    type_in(bob.page, "#general", text)
    expect(line).to_have_text(f"{bob.name} is typing…")
    expect(cy.page.locator("#typing")).to_have_text(f"{bob.name} is typing…")
    # Bob's message clears his name at once, long before the 5 s are up.
    bob.page.get_by_label("Message #general", exact=True).press("Enter")
    delivered(ann.page, text)
    expect(line).to_have_text("", timeout=2000)

    # Two at once, then each name goes 5 s after that person's last keystroke frame.
    type_in(cy.page, "#general", "and cy")
    expect(line).to_have_text(f"{cy.name} is typing…")
    time.sleep(3.2)  # past Bob's page's 3 s between typing frames
    type_in(bob.page, "#general", "bob again")
    expect(line).to_have_text(f"{cy.name} and {bob.name} are typing…")
    # Nobody is ever shown their own typing, only the other one's.
    expect(bob.page.locator("#typing")).to_have_text(f"{cy.name} is typing…")
    expect(cy.page.locator("#typing")).to_have_text(f"{bob.name} is typing…")
    expect(line).to_have_text(f"{bob.name} is typing…", timeout=4000)  # Cy's 5 s are up
    started = time.monotonic()
    expect(line).to_have_text("", timeout=7000)
    assert time.monotonic() - started > 2.0  # Bob's name stayed for its own 5 s
    assert browsers.errors == []


def test_the_typing_line_names_two_people_then_says_several(
    chat_server: ChatServer, browsers: Browsers
) -> None:
    page = browsers.person(chat_server, "dee.typing@example.test").page
    texts = page.evaluate(
        """async () => {
          const { typingText } = await import("/static/chat/roomview.js");
          return [[], ["Ann"], ["Ann", "Bob"], ["Ann", "Bob", "Cy"]].map(typingText);
        }"""
    )
    assert texts == [
        "",
        "Ann is typing…",
        "Ann and Bob are typing…",
        "Several people are typing…",
    ]


@pytest.fixture(scope="module")
def one_worker(
    tmp_path_factory: pytest.TempPathFactory, redis_server: RedisServer, smtp_sink: SmtpSink
) -> Iterator[ChatServer]:
    """One worker, so that every socket of a crowd is in the same process."""
    env = server_env(redis_server, smtp_sink)
    server = ChatServer(tmp_path_factory.mktemp("typing-one"), env, workers=1).start()
    try:
        yield server
    finally:
        server.stop()


def crowd(
    server: ChatServer, redis_url: str, secret: str, count: int, stack: ExitStack
) -> list[ClientConnection]:
    """`count` more sockets with `general` joined (10 per user, under the per-user cap),
    closed with `stack`."""

    async def sessions() -> list[str]:
        redis = Redis.from_url(redis_url)
        try:
            made = []
            for n in range((count + 9) // 10):
                user = await get_or_create_user(redis, f"crowd{n}.typing@example.test")
                made.append(await create_session(redis, user, 3600))
            return made
        finally:
            await redis.aclose()

    cookies = [
        "QUART_AUTH=" + _AuthSerializer(secret, "quart auth salt").dumps(session)
        # Playwright's own loop runs in this thread: Redis is asked from another.
        for session in ThreadPoolExecutor(1).submit(lambda: asyncio.run(sessions())).result()
    ]
    sockets = []
    for n in range(count):
        ws = stack.enter_context(
            connect(
                server.base_url.replace("http", "ws") + "/ws",
                additional_headers={"Cookie": cookies[n // 10]},
                proxy=None,
                # Nobody reads these after the join: keep reading into memory and
                # do not expect pongs (a reader waiting on the queue would miss them).
                max_queue=None,
                ping_interval=None,
            )
        )
        sockets.append(ws)
        while json.loads(ws.recv(timeout=10))["type"] != "ready":
            pass
        ws.send(json.dumps({"type": "join", "room": "general", "ref": "j"}))
        while json.loads(ws.recv(timeout=10)).get("ref") != "j":
            pass
    # A room with history that has gone quiet: a page opening it filters live frames
    # against its backlog until the next message, and typing must not wait for that.
    sockets[0].send(json.dumps({"type": "send", "room": "general", "text": "hi", "client_id": "q"}))
    while json.loads(sockets[0].recv(timeout=10)).get("client_id") != "q":
        pass
    return sockets


def test_in_a_busy_room_the_others_typing_comes_in_one_frame_and_the_page_shows_them_all(
    one_worker: ChatServer, redis_server: RedisServer, browsers: Browsers
) -> None:
    """With TYPING_COALESCE_SOCKETS sockets in the room on a worker, typing after the first
    comes once a second in one frame naming everyone (`users`): the page shows each."""
    secret = one_worker.env["CHAT_SECRET_KEY"]
    with ExitStack() as stack:
        crowd(one_worker, redis_server.url, secret, TYPING_COALESCE_SOCKETS + 5, stack)
        ann = browsers.person(one_worker, "ann.busy@example.test")
        frames: list[dict[str, object]] = []

        def watch(ws: WebSocket) -> None:
            def received(payload: str | bytes) -> None:
                if isinstance(payload, str) and '"type":"typing"' in payload:
                    frames.append(json.loads(payload))

            ws.on("framereceived", received)

        ann.page.on("websocket", watch)
        ann.page.reload()
        expect(ann.page.locator("#connection")).to_have_attribute("data-state", "connected")
        others = [
            browsers.person(one_worker, f"{name}.busy@example.test")
            for name in ("bob", "cy", "dee")
        ]
        for person in others:
            type_in(person.page, "#general", "hi")
        try:
            expect(ann.page.locator("#typing")).to_have_text("Several people are typing…")
        except AssertionError:
            raise AssertionError(f"typing frames Ann's page got: {frames}") from None
        # Bob's came at once; Cy's and Dee's, a moment later, in one frame with both.
        together = [f for f in frames if len(f.get("users", ())) >= 2]  # type: ignore[arg-type]
        assert together, frames
        names = {user["name"] for user in together[0]["users"]}  # type: ignore[attr-defined]
        assert names <= {"bob.busy", "cy.busy", "dee.busy"} and len(names) >= 2
        # None of them ever sees their own name.
        for person in others:
            expect(person.page.locator("#typing")).not_to_contain_text(person.name)
        assert browsers.errors == []
