"""Mentions in the system Chromium: completion in the composer, the mention marked in
the message, and the room list's mention count on every device of the mentioned."""

from __future__ import annotations

import asyncio
import re
from concurrent.futures import ThreadPoolExecutor

from playwright.sync_api import Page, expect
from redis.asyncio import Redis

from quart_chat.models.users import get_or_create_user, set_name

from ..servers import ChatServer, RedisServer
from .conftest import ARTIFACTS, Browsers, unique
from .test_chat_page import delivered, message
from .test_rooms_page import create_room, room_name, sidebar_link, title


def name_user(redis_url: str, email: str, name: str) -> None:
    async def rename() -> None:
        async with Redis.from_url(redis_url) as redis:
            await set_name(redis, await get_or_create_user(redis, email), name)

    # Playwright's sync API keeps an event loop running in this thread.
    with ThreadPoolExecutor(1) as pool:
        pool.submit(asyncio.run, rename()).result()


def mention_badge(page: Page, room: str) -> object:
    return sidebar_link(page, room).locator(".sidebar-mention-badge")


def test_a_mention_picked_by_completion_counts_for_the_mentioned_on_every_device(
    chat_server: ChatServer, redis_server: RedisServer, browsers: Browsers
) -> None:
    bob_name = f"Bob {unique('Stone').replace(' ', '')}"
    name_user(redis_server.url, "bob.mention@example.test", bob_name)
    ann = browsers.person(chat_server, "ann.mention@example.test")
    bob = browsers.person(chat_server, "bob.mention@example.test")
    phone = browsers.person(chat_server, "bob.mention@example.test")  # his second device
    plans = room_name("plans")
    create_room(ann.page, plans, invite=(bob_name,))
    for page in (bob.page, phone.page):
        expect(sidebar_link(page, plans)).to_be_visible()

    box = ann.page.get_by_label(f"Message #{plans}", exact=True)
    listbox = ann.page.get_by_role("listbox", name="People to mention")
    # Escape closes the list and leaves the text.
    box.press_sequentially("@bo")
    expect(listbox).to_be_visible()
    box.press("Escape")
    expect(listbox).to_be_hidden()
    expect(box).to_have_value("@bo")
    box.fill("")
    box.press_sequentially("look @bob s")
    expect(listbox).to_be_visible()
    option = listbox.get_by_role("option", name=bob_name)
    expect(option).to_have_attribute("aria-selected", "true")
    expect(box).to_have_attribute("aria-expanded", "true")
    ARTIFACTS.mkdir(exist_ok=True)
    ann.page.screenshot(path=ARTIFACTS / "mentions-completion.png")
    box.press("Enter")  # picks, does not send
    expect(listbox).to_be_hidden()
    expect(box).to_have_value(f"look @{bob_name} ")
    text_end = unique("at this")
    box.press_sequentially(text_end)
    box.press("Enter")
    sent = f"look @{bob_name} {text_end}"
    delivered(ann.page, sent)
    expect(message(ann.page, sent).locator("mark.mention")).to_have_text(f"@{bob_name}")

    # Bob is looking at general on both devices: the room shows he was mentioned.
    for page in (bob.page, phone.page):
        expect(mention_badge(page, plans)).to_have_text("@1")
        expect(sidebar_link(page, plans)).to_have_class(re.compile(r"\bsidebar-mentioned\b"))
        expect(sidebar_link(page, plans)).to_have_attribute(
            "aria-label", re.compile(r"1 unread, 1 mention$")
        )
    # Ann's own mention of him counts nothing for her.
    expect(mention_badge(ann.page, plans)).to_have_count(0)
    bob.page.screenshot(path=ARTIFACTS / "mentions-sidebar.png")

    sidebar_link(bob.page, plans).click()
    expect(title(bob.page)).to_have_text(f"#{plans}")
    delivered(bob.page, sent)
    item = message(bob.page, sent)
    expect(item).to_have_class(re.compile(r"\bmsg-mentions-me\b"))
    expect(item.locator("mark.mention-me")).to_have_text(f"@{bob_name}")
    bob.page.screenshot(path=ARTIFACTS / "mentions-message.png")
    expect(mention_badge(bob.page, plans)).to_have_count(0)
    # Read on one device is read on the other, live and after a reload.
    expect(mention_badge(phone.page, plans)).to_have_count(0)
    expect(sidebar_link(phone.page, plans)).not_to_have_class(re.compile(r"sidebar-mentioned"))
    phone.page.reload()
    expect(sidebar_link(phone.page, plans)).to_be_visible()
    expect(mention_badge(phone.page, plans)).to_have_count(0)

    # @here by keyboard, while Bob looks at general again: Down moves through the
    # list, Tab picks.
    sidebar_link(bob.page, "general").click()
    expect(title(bob.page)).to_have_text("#general")
    box.press_sequentially("@e")
    expect(listbox.get_by_role("option")).to_have_count(1)
    box.press("Backspace")
    expect(listbox.get_by_role("option", name=re.compile("^here"))).to_be_visible()
    box.press("ArrowDown")
    expect(listbox.get_by_role("option", name=re.compile("^here"))).to_have_attribute(
        "aria-selected", "true"
    )
    box.press("Tab")
    expect(box).to_have_value("@here ")
    expect(box).to_be_focused()
    box.press_sequentially("lunch?")
    box.press("Enter")
    delivered(ann.page, "@here lunch?")
    for page in (bob.page, phone.page):
        expect(mention_badge(page, plans)).to_have_text("@1")
    sidebar_link(bob.page, plans).click()
    item = message(bob.page, "@here lunch?")
    expect(item).to_have_class(re.compile(r"\bmsg-mentions-me\b"))
    expect(item.locator("mark.mention-me")).to_have_text("@here")
    for page in (bob.page, phone.page):
        expect(mention_badge(page, plans)).to_have_count(0)
    assert browsers.errors == []
