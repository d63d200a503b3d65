"""Server-side sessions: the cookie carries only an opaque session id.

A session exists only while its Redis key does, so logout (or expiry) takes
effect everywhere at once; `revoke_session` also announces the revocation so
every worker can close that session's WebSockets.
"""

from __future__ import annotations

import secrets

from redis.asyncio import Redis

from .. import keys
from ..storage import Commands, as_text
from .users import User


async def create_session(redis: Redis, user: User, ttl_seconds: int) -> str:
    session_id = secrets.token_urlsafe(32)  # 256 bits
    await redis.set(keys.session(session_id), user.id, ex=ttl_seconds)
    return session_id


async def load_session(redis: Commands, session_id: str) -> User | None:
    """The session's user, or None.

    Two reads, because the user's key is named by the id the session holds
    and a script may only touch keys it is given. Every handshake and page
    request does this; through `Pipelined` a burst of them still costs one
    round trip per batch and step.
    """
    user_id = await redis.execute_command("GET", keys.session(session_id))
    if user_id is None:
        return None
    user_id = as_text(user_id)
    name, email = await redis.execute_command("HMGET", keys.user_profile(user_id), "name", "email")
    if name is None:
        return None
    return User(id=user_id, name=as_text(name), email=as_text(email))


async def session_exists(redis: Commands, session_id: str) -> bool:
    return bool(await redis.execute_command("EXISTS", keys.session(session_id)))


async def revoke_session(redis: Redis, session_id: str) -> None:
    await redis.delete(keys.session(session_id))
    await redis.publish(keys.SESSION_REVOKED_CHANNEL, session_id)
