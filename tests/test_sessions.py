"""Users and sessions against a real Redis."""

from __future__ import annotations

import asyncio

from redis.asyncio import Redis

from quart_chat.models.users import get_or_create_user
from quart_chat.storage import open_redis


async def test_concurrent_first_logins_make_one_user(redis: Redis, redis_url: str) -> None:
    """Two workers logging the same new address in at once must agree on one user,
    and neither may find it half-made."""
    pools = [open_redis(redis_url), open_redis(redis_url)]
    try:
        for n in range(20):
            email = f"new{n}@example.com"
            users = await asyncio.gather(
                *(get_or_create_user(pools[i % 2], email) for i in range(8))
            )
            assert len({user.id for user in users}) == 1
            assert {(user.name, user.email) for user in users} == {(f"new{n}", email)}
    finally:
        for pool in pools:
            await pool.aclose()
