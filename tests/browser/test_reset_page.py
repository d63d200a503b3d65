"""A page too far behind to catch up (issue 12: one `join after` replays at most 1,000
messages) starts over from the newest messages instead of showing a hole."""

from __future__ import annotations

import asyncio
from concurrent.futures import ThreadPoolExecutor

from playwright.sync_api import expect
from redis.asyncio import Redis

from quart_chat.models.messages import JOIN_BACKLOG_MAX, RoomHistory
from quart_chat.models.users import get_or_create_user

from ..servers import ChatServer, RedisServer
from .conftest import Browsers, message_texts, unique


def post_many(redis_url: str, texts: list[str]) -> None:
    async def post() -> None:
        async with Redis.from_url(redis_url) as redis:
            bob = await get_or_create_user(redis, "bob@example.test")
            history = RoomHistory(redis, 10000)
            for number, text in enumerate(texts):
                await history.post("general", bob, text, f"bulk-{number}")

    # Playwright's sync API keeps an event loop running in this thread.
    with ThreadPoolExecutor(1) as pool:
        pool.submit(asyncio.run, post()).result()


def test_a_page_too_far_behind_starts_over_from_the_newest(
    chat_server: ChatServer, redis_server: RedisServer, browsers: Browsers
) -> None:
    alice = browsers.person(chat_server, "alice@example.test")
    seen = unique("seen before the outage")
    post_many(redis_server.url, [seen])
    expect(alice.page.locator("#messages")).to_contain_text(seen)

    chat_server.stop()
    expect(alice.page.locator("#connection")).to_have_attribute("data-state", "reconnecting")
    batch = unique("missed")
    missed = [f"{batch} #{number}" for number in range(JOIN_BACKLOG_MAX + 10)]
    post_many(redis_server.url, missed)
    chat_server.start()

    expect(alice.page.locator("#connection")).to_have_attribute("data-state", "connected")
    expect(alice.page.locator("#messages")).to_contain_text(missed[-1])
    # The newest 50, and nothing older: the page does not pretend there is no gap.
    assert message_texts(alice.page) == missed[-50:]
    expect(alice.page.locator("#load-older")).to_be_visible()
    alice.page.locator("#load-older").click()
    expect(alice.page.locator("#messages")).to_contain_text(missed[-51])
    # Older pages fill in without a hole (scrolled to the top, the page may load more).
    texts = message_texts(alice.page)
    assert len(texts) >= 100
    assert texts == missed[-len(texts) :]
