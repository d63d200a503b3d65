"""Fixed-window counters in Redis, so a limit holds across every worker process."""

from __future__ import annotations

from redis.asyncio import Redis


async def hit_limit(redis: Redis, key: str, limit: int, window_seconds: int) -> int | None:
    """Count one hit on `key`; return seconds until the window resets if over `limit`, else None."""
    pipe = redis.pipeline(transaction=True)
    pipe.incr(key)
    # NX: the window starts at the first hit and is not extended by later ones.
    pipe.expire(key, window_seconds, nx=True)
    pipe.ttl(key)
    count, _, ttl = await pipe.execute()
    if int(count) > limit:
        return max(1, int(ttl))
    return None


async def over_limit(redis: Redis, key: str, limit: int) -> int | None:
    """Like `hit_limit` but without counting: seconds to wait if `key` is at its limit."""
    pipe = redis.pipeline(transaction=False)
    pipe.get(key)
    pipe.ttl(key)
    count, ttl = await pipe.execute()
    if count is not None and int(count) >= limit:
        return max(1, int(ttl))
    return None
