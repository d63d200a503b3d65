"""Server-side sessions: the cookie carries only an opaque session id.

A session exists only while its Redis key does, so logout (or expiry) takes
effect everywhere at once; revoking also announces the revocation so every
worker can close that session's WebSockets. Each user's session ids are kept
in `{user:<id>}:sessions` so that deactivation can revoke them all; ids whose
session expired are pruned from it whenever it is read.
"""

from __future__ import annotations

import secrets

from redis.asyncio import Redis

from .. import keys
from ..storage import Commands, as_text
from .users import User, get_user


async def create_session(redis: Redis, user: User, ttl_seconds: int) -> str:
    session_id = secrets.token_urlsafe(32)  # 256 bits
    index = keys.user_sessions(user.id)
    async with redis.pipeline(transaction=False) as pipe:
        pipe.set(keys.session(session_id), user.id, ex=ttl_seconds)
        pipe.sadd(index, session_id)
        # Every session lives as long, so the newest expires last: the index
        # goes with it. (Plain EXPIRE: Redis 6.2 has no EXPIRE GT.)
        pipe.expire(index, ttl_seconds)
        await pipe.execute()
    await _live_sessions(redis, user.id)
    return session_id


async def load_session(redis: Commands, session_id: str) -> User | None:
    """The session's user, or None (no such session, or the user is deactivated).

    Two reads, because the user's key is named by the id the session holds
    and a script may only touch keys it is given. Every handshake and page
    request does this; through `Pipelined` a burst of them still costs one
    round trip per batch and step.
    """
    user_id = await redis.execute_command("GET", keys.session(session_id))
    if user_id is None:
        return None
    user = await get_user(redis, as_text(user_id))
    return None if user is None or user.deactivated else user


async def session_exists(redis: Commands, session_id: str) -> bool:
    return bool(await redis.execute_command("EXISTS", keys.session(session_id)))


async def revoke_session(redis: Redis, session_id: str) -> None:
    user_id = await redis.getdel(keys.session(session_id))
    if user_id is not None:
        await redis.srem(keys.user_sessions(as_text(user_id)), session_id)
    await redis.publish(keys.SESSION_REVOKED_CHANNEL, session_id)


async def revoke_user_sessions(redis: Redis, user_id: str) -> list[str]:
    """End every session of a user (deactivation) and announce each, so that every
    worker closes their sockets; returns the ids that were live."""
    session_ids = await _live_sessions(redis, user_id)
    async with redis.pipeline(transaction=False) as pipe:
        for session_id in session_ids:
            pipe.delete(keys.session(session_id))
            pipe.srem(keys.user_sessions(user_id), session_id)
        for session_id in session_ids:
            pipe.publish(keys.SESSION_REVOKED_CHANNEL, session_id)
        await pipe.execute()
    return session_ids


async def _live_sessions(redis: Redis, user_id: str) -> list[str]:
    """The user's session ids whose session still exists; the others are pruned."""
    index = keys.user_sessions(user_id)
    session_ids = sorted(as_text(i) for i in await redis.smembers(index))
    if not session_ids:
        return []
    async with redis.pipeline(transaction=False) as pipe:
        for session_id in session_ids:
            pipe.exists(keys.session(session_id))
        alive = await pipe.execute()
    gone = [i for i, exists in zip(session_ids, alive, strict=True) if not exists]
    if gone:
        await redis.srem(index, *gone)
    return [i for i, exists in zip(session_ids, alive, strict=True) if exists]
