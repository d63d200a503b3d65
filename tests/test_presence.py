"""Presence across workers: counts per user, announcements once per user, dead workers expire."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator

import pytest
from redis.asyncio import Redis
from redis.asyncio.client import PubSub

from quart_chat import keys
from quart_chat.models.users import User, get_or_create_user
from quart_chat.presence import PresenceTracker


@pytest.fixture
async def announcements(redis: Redis) -> AsyncIterator[PubSub]:
    pubsub = redis.pubsub()
    await pubsub.subscribe(keys.PRESENCE_CHANNEL)
    await pubsub.get_message(timeout=5)
    try:
        yield pubsub
    finally:
        await pubsub.aclose()


async def next_announcement(pubsub: PubSub, timeout: float = 10) -> tuple[str, str]:
    async with asyncio.timeout(timeout):
        while True:
            message = await pubsub.get_message(ignore_subscribe_messages=True, timeout=timeout)
            if message is not None:
                frame = json.loads(message["data"])
                assert frame["type"] == "presence" and frame["room"] == "general"
                assert "email" not in frame["user"]
                return frame["user"]["name"], frame["status"]


def start(tracker: PresenceTracker) -> asyncio.Task[None]:
    return asyncio.create_task(tracker.run())


async def stop(task: asyncio.Task[None]) -> None:
    task.cancel()
    await asyncio.gather(task, return_exceptions=True)


async def test_a_user_is_online_while_any_worker_has_a_tab(
    redis: Redis, announcements: PubSub
) -> None:
    ann = await get_or_create_user(redis, "ann@example.com")
    bob = await get_or_create_user(redis, "bob@example.com")
    one = PresenceTracker(redis, "one", keys.PRESENCE_CHANNEL)
    two = PresenceTracker(redis, "two", keys.PRESENCE_CHANNEL)
    tasks = [start(one), start(two)]
    try:
        one.add(ann)
        assert await next_announcement(announcements) == ("ann", "online")
        two.add(ann)  # a second tab on another worker: no news
        two.add(bob)
        assert await next_announcement(announcements) == ("bob", "online")
        assert sorted(u["name"] for u in await one.online()) == ["ann", "bob"]
        one.remove(ann)  # ann still has a tab on worker two
        two.remove(bob)
        assert await next_announcement(announcements) == ("bob", "offline")
        two.remove(ann)
        assert await next_announcement(announcements) == ("ann", "offline")
        assert await one.online() == []
    finally:
        for task in tasks:
            await stop(task)


async def test_a_dead_workers_users_go_offline_when_its_heartbeat_expires(
    redis: Redis, announcements: PubSub
) -> None:
    ann = await get_or_create_user(redis, "ann@example.com")
    bob = await get_or_create_user(redis, "bob@example.com")
    dying = PresenceTracker(
        redis, "dying", keys.PRESENCE_CHANNEL, heartbeat_seconds=0.2, ttl_seconds=1
    )
    alive = PresenceTracker(
        redis, "alive", keys.PRESENCE_CHANNEL, heartbeat_seconds=0.2, ttl_seconds=1
    )
    dying_task, alive_task = start(dying), start(alive)
    try:
        dying.add(ann)
        dying.add(bob)
        alive.add(bob)
        names = {await next_announcement(announcements) for _ in range(2)}
        assert names == {("ann", "online"), ("bob", "online")}
        await stop(dying_task)  # the worker dies without a word
        assert await next_announcement(announcements, timeout=10) == ("ann", "offline")
        assert [u["name"] for u in await alive.online()] == ["bob"]
    finally:
        await stop(dying_task)
        await stop(alive_task)


async def test_a_stopping_worker_withdraws_its_users_at_once(
    redis: Redis, announcements: PubSub
) -> None:
    ann: User = await get_or_create_user(redis, "ann@example.com")
    tracker = PresenceTracker(redis, "w", keys.PRESENCE_CHANNEL)
    task = start(tracker)
    tracker.add(ann)
    assert await next_announcement(announcements) == ("ann", "online")
    await stop(task)
    await tracker.withdraw()
    assert await next_announcement(announcements, timeout=2) == ("ann", "offline")
    assert await redis.zcard(keys.PRESENCE_WORKERS) == 0


async def test_a_listening_worker_keeps_the_online_list_in_memory_from_announcements(
    redis: Redis, announcements: PubSub
) -> None:
    """`ready` costs no Redis scan: one snapshot, then the news this worker hears anyway."""
    ann = await get_or_create_user(redis, "ann@example.com")
    bob = await get_or_create_user(redis, "bob@example.com")
    other = PresenceTracker(redis, "other", keys.PRESENCE_CHANNEL)
    other_task = start(other)
    listening = PresenceTracker(redis, "listening", keys.PRESENCE_CHANNEL)
    try:
        other.add(ann)
        assert await next_announcement(announcements) == ("ann", "online")
        listening.pubsub_up()
        assert [u["name"] for u in await listening.online()] == ["ann"]  # the snapshot
        other.add(bob)
        message = None
        while message is None:
            message = await announcements.get_message(ignore_subscribe_messages=True, timeout=10)
        # Not read from Redis again: until the news reaches it, bob is not listed.
        assert [u["name"] for u in await listening.online()] == ["ann"]
        listening.observe(message["data"].decode())
        assert sorted(u["name"] for u in await listening.online()) == ["ann", "bob"]
        listening.observe('{"type": "presence", "user": "not a user"}')  # read again
        other.remove(ann)
        assert await next_announcement(announcements) == ("ann", "offline")
        assert [u["name"] for u in await listening.online()] == ["bob"]
        # Pub/sub lost: news may have been missed, so Redis is read every time.
        listening.pubsub_down()
        other.remove(bob)
        assert await next_announcement(announcements) == ("bob", "offline")
        assert await listening.online() == []
    finally:
        await stop(other_task)
