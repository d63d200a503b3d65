"""Fixed-window counters in Redis, so a limit holds across every worker process.

Written for Redis 6.2 (the embedded server): no `EXPIRE ... NX`, so the window
is started by a script, atomically with the first hit.
"""

from __future__ import annotations

from .storage import Commands, script

_HIT = """
local count = redis.call('INCR', KEYS[1])
if count == 1 then redis.call('EXPIRE', KEYS[1], ARGV[1]) end
local ttl = redis.call('TTL', KEYS[1])
if ttl < 0 then redis.call('EXPIRE', KEYS[1], ARGV[1]); ttl = tonumber(ARGV[1]) end
return {count, ttl}
"""


async def hit_limit(redis: Commands, key: str, limit: int, window_seconds: int) -> int | None:
    """Count one hit on `key`; return seconds until the window resets if over `limit`, else None.

    `redis` may be a `Pipelined`: a hit counted twice after a reconnect only
    makes that window one request stricter.
    """
    count, ttl = await script(redis, _HIT)(keys=[key], args=[window_seconds])
    if int(count) > limit:
        return max(1, int(ttl))
    return None
