"""Rooms: public, private and direct, their members, and each member's read marker."""

from __future__ import annotations

import time

from redis.asyncio import Redis

from .. import keys
from ..storage import script

GENERAL = keys.GENERAL_ROOM

# KEYS: general's meta, its history. ARGV: created_at (ms). Creates general's
# meta if missing, counting the messages already stored (a Redis from before
# rooms). Field by field, so a meta that a post started (seq, last_id) is
# completed, not reset.
_ENSURE_GENERAL = """
if redis.call('HEXISTS', KEYS[1], 'kind') == 1 then return 0 end
local newest = redis.call('XREVRANGE', KEYS[2], '+', '-', 'COUNT', 1)
redis.call('HSETNX', KEYS[1], 'seq', redis.call('XLEN', KEYS[2]))
if newest[1] then redis.call('HSETNX', KEYS[1], 'last_id', newest[1][1]) end
local defaults = {'kind', 'public', 'name', 'general', 'topic', '', 'created_by', '',
                  'created_at', ARGV[1], 'archived', '0'}
for i = 1, #defaults, 2 do redis.call('HSETNX', KEYS[1], defaults[i], defaults[i + 1]) end
return 1
"""


async def ensure_general(redis: Redis) -> None:
    """Make `general` exist: its meta, its name taken, listed as public."""
    await script(redis, _ENSURE_GENERAL)(
        keys=[keys.room_meta(GENERAL), keys.room_history(GENERAL)],
        args=[int(time.time() * 1000)],
    )
    await redis.hsetnx(keys.ROOMS_NAMES, GENERAL, GENERAL)
    await redis.sadd(keys.ROOMS_PUBLIC, GENERAL)
