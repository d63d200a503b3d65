"""The worker's background loops survive their own bugs: logged, restarted, never silent."""

from __future__ import annotations

import asyncio
import logging
from typing import Any

import pytest
from redis.asyncio import Redis
from redis.asyncio.client import PubSub

from quart_chat.config import Settings
from quart_chat.models.users import get_or_create_user
from quart_chat.presence import PresenceTracker
from quart_chat.realtime.hub import ChatHub, supervise

from .test_presence import announcements, next_announcement, start, stop

__all__ = ["announcements"]  # a fixture, used by name


async def test_a_presence_writer_that_fails_is_logged_and_restarted_and_users_stay_online(
    redis: Redis,
    redis_url: str,
    settings: Settings,
    announcements: PubSub,
    caplog: pytest.LogCaptureFixture,
) -> None:
    ann = await get_or_create_user(redis, "ann@example.com")
    hub = ChatHub(settings, redis, redis_url)
    hub.presence.heartbeat_seconds, hub.presence.ttl_seconds = 0.2, 2.0
    # Another worker, whose heartbeats reap every worker whose heartbeat stopped.
    other = PresenceTracker(redis, "other", hub.presence.channel, 0.2, 2.0)
    other_task = start(other)
    await hub.start()
    try:
        hub.presence.add(ann)
        assert await next_announcement(announcements) == ("ann", "online")

        write = hub.presence._write
        failures = []

        async def fails_once(*args: Any, **kwargs: Any) -> None:
            if not failures:
                failures.append(1)
                raise RuntimeError("injected fault in the presence writer")
            await write(*args, **kwargs)

        hub.presence._write = fails_once  # type: ignore[method-assign]
        # Three heartbeat lifetimes: a writer that stayed dead would be reaped.
        with (
            caplog.at_level(logging.ERROR, logger="quart_chat.realtime.hub"),
            pytest.raises(TimeoutError),
        ):
            await next_announcement(announcements, timeout=6)
        assert failures == [1]
        failed = [r for r in caplog.records if "chat-presence failed" in r.getMessage()]
        assert failed and failed[0].exc_info is not None
        assert "injected fault" in str(failed[0].exc_info[1])
        assert [user["name"] for user in await other.online()] == ["ann"]
        # Still the live writer: leaving is announced as before.
        hub.presence.remove(ann)
        assert await next_announcement(announcements) == ("ann", "offline")
    finally:
        await hub.stop()
        await stop(other_task)


async def test_a_supervised_loop_stops_when_cancelled() -> None:
    running = asyncio.Event()

    async def forever() -> None:
        running.set()
        await asyncio.Event().wait()

    task = asyncio.create_task(supervise("test", forever))
    await running.wait()
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
