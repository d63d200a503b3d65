"""The shared fixed-window limiter, against a real Redis."""

from __future__ import annotations

import asyncio

from redis.asyncio import Redis

from quart_chat.ratelimit import hit_limit


async def test_allows_up_to_the_limit_then_reports_the_wait(redis: Redis) -> None:
    results = [await hit_limit(redis, "rl:test", 3, 60) for _ in range(5)]
    assert results[:3] == [None, None, None]
    assert all(wait is not None and 0 < wait <= 60 for wait in results[3:])


async def test_window_expires(redis: Redis) -> None:
    assert await hit_limit(redis, "rl:short", 1, 1) is None
    assert await hit_limit(redis, "rl:short", 1, 1) is not None
    await redis.pexpire("rl:short", 1)  # end the window now rather than sleep a second
    await asyncio.sleep(0.05)
    assert await hit_limit(redis, "rl:short", 1, 1) is None
