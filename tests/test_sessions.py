"""Users and sessions against a real Redis."""

from __future__ import annotations

import asyncio

from redis.asyncio import Redis

from quart_chat import keys
from quart_chat.models.sessions import (
    create_session,
    load_session,
    revoke_session,
    revoke_user_sessions,
)
from quart_chat.models.users import get_or_create_user, set_deactivated
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


async def test_revoking_a_users_sessions_ends_each_and_announces_it(redis: Redis) -> None:
    ann = await get_or_create_user(redis, "ann@example.com")
    bob = await get_or_create_user(redis, "bob@example.com")
    ann_sessions = [await create_session(redis, ann, 3600) for _ in range(3)]
    bob_session = await create_session(redis, bob, 3600)
    # One of ann's sessions expired on its own: not announced, and pruned.
    await redis.delete(keys.session(ann_sessions[0]))
    pubsub = redis.pubsub()
    await pubsub.subscribe(keys.SESSION_REVOKED_CHANNEL)
    try:
        await pubsub.get_message(timeout=5)  # the subscribe confirmation
        revoked = await revoke_user_sessions(redis, ann.id)
        announced = [await pubsub.get_message(timeout=5) for _ in revoked]
    finally:
        await pubsub.aclose()
    assert sorted(revoked) == sorted(ann_sessions[1:])
    assert sorted(m["data"].decode() for m in announced if m) == sorted(ann_sessions[1:])
    for session_id in ann_sessions:
        assert await load_session(redis, session_id) is None
    assert await load_session(redis, bob_session) == bob
    assert not await redis.exists(keys.user_sessions(ann.id))
    assert await revoke_user_sessions(redis, ann.id) == []


async def test_a_deactivated_users_session_no_longer_loads(redis: Redis) -> None:
    ann = await get_or_create_user(redis, "ann@example.com")
    session_id = await create_session(redis, ann, 3600)
    assert await load_session(redis, session_id) == ann
    await set_deactivated(redis, ann.id, True)
    assert await load_session(redis, session_id) is None
    await set_deactivated(redis, ann.id, False)
    assert await load_session(redis, session_id) == ann


async def test_the_session_index_forgets_logged_out_and_expired_sessions(redis: Redis) -> None:
    ann = await get_or_create_user(redis, "ann@example.com")
    first = await create_session(redis, ann, 3600)
    second = await create_session(redis, ann, 3600)
    await revoke_session(redis, first)
    assert await redis.smembers(keys.user_sessions(ann.id)) == {second.encode()}
    assert 0 < await redis.ttl(keys.user_sessions(ann.id)) <= 3600
    await redis.delete(keys.session(second))  # expired
    third = await create_session(redis, ann, 3600)
    assert await redis.smembers(keys.user_sessions(ann.id)) == {third.encode()}
