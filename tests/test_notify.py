"""Notification emails with real Redis and a real SMTP server: a DM or a mention for
a user with no open socket becomes one email after CHAT_NOTIFY_EMAIL_AFTER_MINUTES,
listing rooms and counts only, at most one per CHAT_NOTIFY_EMAIL_EVERY_MINUTES."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from dataclasses import dataclass
from email.message import EmailMessage
from pathlib import Path
from typing import Any

import pytest
from redis.asyncio import Redis

from quart_chat import keys
from quart_chat.models.messages import RoomHistory
from quart_chat.models.rooms import GENERAL, PUBLIC, RoomStore
from quart_chat.models.users import User, get_or_create_user, set_name
from quart_chat.notify import Notifier
from quart_chat.presence import PresenceTracker
from quart_chat.storage import Pipelined

from .conftest import make_settings
from .smtp import SmtpSink
from .test_outbox import draining, outbox_for

AFTER_MINUTES = 0.01  # 0.6 s


@dataclass
class World:
    redis: Redis
    rooms: RoomStore
    history: RoomHistory
    presence: PresenceTracker
    ann: User
    bob: User
    sent: int = 0

    async def say(self, room: str, user: User, text: str) -> None:
        self.sent += 1
        await self.history.post(room, user, text, f"c{self.sent}")


@pytest.fixture
async def world(redis: Redis) -> World:
    rooms = RoomStore(redis, reads=Pipelined(redis))
    await rooms.ensure_general()
    ann = await set_name(redis, await get_or_create_user(redis, "ann@example.com"), "Ann Lee")
    bob = await set_name(redis, await get_or_create_user(redis, "bob@example.com"), "Bob")
    presence = PresenceTracker(redis, "w1", keys.PRESENCE_CHANNEL)
    return World(redis, rooms, RoomHistory(redis, 10000), presence, ann, bob)


def notifier(world: World, tmp_path: Path, **overrides: Any) -> Notifier:
    options: dict[str, Any] = {"notify_email_after_minutes": AFTER_MINUTES, **overrides}
    settings = make_settings("redis://127.0.0.1:1/0", tmp_path, **options)
    return Notifier(world.redis, settings, world.rooms, world.presence)


@pytest.fixture
async def sending(redis: Redis, smtp: SmtpSink, tmp_path: Path) -> AsyncIterator[None]:
    async with draining(outbox_for(redis, smtp, tmp_path, "drainer")):
        yield


async def mails_to(smtp: SmtpSink, address: str, wait: float) -> list[EmailMessage]:
    """What reached `address` within `wait` seconds (or as soon as one has)."""
    loop = asyncio.get_running_loop()
    end = loop.time() + wait
    while loop.time() < end and not smtp.messages_to(address):
        await asyncio.sleep(0.05)
    await asyncio.sleep(0.3)  # a second one would be right behind
    return smtp.messages_to(address)


def body(message: EmailMessage) -> str:
    part = message.get_body(("plain",))
    assert part is not None
    return str(part.get_content())


async def dm_to_bob(world: World, notify: Notifier, *texts: str) -> str:
    room, _ = await world.rooms.open_direct(world.ann, [world.bob.id])
    for text in texts:
        await world.say(room.id, world.ann, text)
    await notify.mark([world.bob.id])
    return room.id


async def run_for(notify: Notifier, seconds: float) -> None:
    task = asyncio.create_task(notify.run())
    await asyncio.sleep(seconds)
    task.cancel()
    await asyncio.gather(task, return_exceptions=True)


@pytest.mark.usefixtures("sending")
async def test_a_dm_to_someone_away_becomes_one_email_with_rooms_and_counts_only(
    world: World, smtp: SmtpSink, tmp_path: Path
) -> None:
    notify = notifier(world, tmp_path, public_url="https://chat.example.com/")
    await dm_to_bob(world, notify, "the secret plan", "more secret")
    await world.say(GENERAL, world.ann, "hi @Bob, also secret")
    await notify.mark([world.bob.id])
    # Not before the delay.
    assert await notify.tick() == 0
    await run_for(notify, 2.0)
    [mail] = await mails_to(smtp, "bob@example.com", 5)
    text = body(mail)
    assert "Ann Lee: 2 unread direct messages" in text
    assert "#general: 1 mention" in text
    assert "https://chat.example.com/" in text
    assert "secret" not in text and "ann@example.com" not in text
    assert smtp.messages_to("ann@example.com") == []
    # Another DM within CHAT_NOTIFY_EMAIL_EVERY_MINUTES: no second email.
    await dm_to_bob(world, notify, "again")
    await run_for(notify, 1.5)
    assert len(await mails_to(smtp, "bob@example.com", 0.5)) == 1


@pytest.mark.usefixtures("sending")
async def test_without_a_public_url_the_email_says_open_quart_chat(
    world: World, smtp: SmtpSink, tmp_path: Path
) -> None:
    notify = notifier(world, tmp_path)
    await dm_to_bob(world, notify, "hello")
    await run_for(notify, 1.5)
    [mail] = await mails_to(smtp, "bob@example.com", 5)
    assert "Open quart-chat to read them." in body(mail)
    assert "http" not in body(mail)


@pytest.mark.usefixtures("sending")
async def test_no_email_once_read_or_while_online_or_when_off(
    world: World, smtp: SmtpSink, tmp_path: Path
) -> None:
    notify = notifier(world, tmp_path)
    room_id = await dm_to_bob(world, notify, "read me")
    room = await world.rooms.get(room_id)
    assert room is not None and room.last_id is not None
    await world.rooms.mark_read(world.bob.id, room_id, room.last_id)
    await run_for(notify, 1.5)
    # Online (a socket open on a worker): nothing either.
    world.presence.add(world.bob)
    await dm_to_bob(world, notify, "while online")
    await run_for(notify, 1.5)
    world.presence.remove(world.bob)
    # Off (0 minutes): nothing is scheduled at all.
    off = notifier(world, tmp_path, notify_email_after_minutes=0)
    await dm_to_bob(world, off, "off")
    assert await world.redis.zcard(keys.NOTIFY_DUE) == 0
    await run_for(notify, 1.0)
    assert await mails_to(smtp, "bob@example.com", 1.0) == []


@pytest.mark.usefixtures("sending")
async def test_a_dm_during_the_every_window_is_emailed_when_the_window_ends(
    world: World, smtp: SmtpSink, tmp_path: Path
) -> None:
    notify = notifier(world, tmp_path, notify_email_every_minutes=0.1)  # 6 s
    task = asyncio.create_task(notify.run())
    try:
        await dm_to_bob(world, notify, "first")
        [first] = await mails_to(smtp, "bob@example.com", 5)
        assert "Ann Lee: 1 unread direct message\r\n" in body(first)
        # A second DM right away: checked after the delay, but the window is on.
        await dm_to_bob(world, notify, "second")
        await asyncio.sleep(1.0)
        assert len(smtp.messages_to("bob@example.com")) == 1
        # Looked at again when the window ends: one more email with both.
        async with asyncio.timeout(15):
            while len(smtp.messages_to("bob@example.com")) < 2:
                await asyncio.sleep(0.05)
        second = smtp.messages_to("bob@example.com")[1]
        assert "Ann Lee: 2 unread direct messages" in body(second)
        # Nothing new since: nobody is due, so no third one.
        assert await world.redis.zcard(keys.NOTIFY_DUE) == 0
        await asyncio.sleep(0.5)
        assert len(smtp.messages_to("bob@example.com")) == 2
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)


async def test_a_post_schedules_the_dms_other_members_and_the_people_it_names_only(
    world: World, tmp_path: Path
) -> None:
    notify = notifier(world, tmp_path)
    cy = await get_or_create_user(world.redis, "cy@example.com")
    await notify.posted(GENERAL, world.ann.id, [])
    room = await world.rooms.create(world.ann, PUBLIC, "plans", "", [world.bob.id])
    await notify.posted(room.id, world.ann.id, [])
    assert await world.redis.zcard(keys.NOTIFY_DUE) == 0  # nobody named, not a DM
    await notify.posted(GENERAL, world.ann.id, [cy.id, world.ann.id])
    assert await world.redis.zrange(keys.NOTIFY_DUE, 0, -1) == [cy.id.encode()]
    dm, _ = await world.rooms.open_direct(world.ann, [world.bob.id, cy.id])
    await world.redis.delete(keys.NOTIFY_DUE)
    await notify.posted(dm.id, world.bob.id, [])
    due = {member.decode() for member in await world.redis.zrange(keys.NOTIFY_DUE, 0, -1)}
    assert due == {world.ann.id, cy.id}  # never the poster
