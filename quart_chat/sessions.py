"""Users and server-side sessions: the cookie carries only an opaque session id.

A session exists only while its Redis key does, so logout (or expiry) takes
effect everywhere at once; `revoke_session` also announces the revocation so
every worker can close that session's WebSockets.
"""

from __future__ import annotations

import secrets
from dataclasses import dataclass

from quart_auth import Action, AuthUser
from redis.asyncio import Redis

from . import keys
from .base import get_app
from .storage import Commands, as_text, script


@dataclass(frozen=True, slots=True)
class User:
    id: str
    name: str
    email: str

    def public(self) -> dict[str, str]:
        """What other users may see: never the email."""
        return {"id": self.id, "name": self.name}


# KEYS: users-by-email, the new user. ARGV: email, new id, name. Claims the
# address for the new id and writes the user in one step, so a concurrent first
# login of the same address never finds the id without its user. (Two slots in
# a Redis Cluster: the global index and the user.)
_CLAIM_USER = """
if redis.call('HSETNX', KEYS[1], ARGV[1], ARGV[2]) == 1 then
  redis.call('HSET', KEYS[2], 'email', ARGV[1], 'name', ARGV[3])
  return ARGV[2]
end
return redis.call('HGET', KEYS[1], ARGV[1])
"""


async def get_or_create_user(redis: Redis, email: str) -> User:
    email = email.lower()
    new_id = secrets.token_hex(8)
    stored_id = await script(redis, _CLAIM_USER)(
        keys=[keys.USERS_BY_EMAIL, keys.user_profile(new_id)],
        args=[email, new_id, email.split("@")[0]],
    )
    user = await get_user(redis, as_text(stored_id))
    assert user is not None
    return user


async def get_user(redis: Redis, user_id: str) -> User | None:
    fields = await redis.hgetall(keys.user_profile(user_id))
    if not fields:
        return None
    return User(id=user_id, name=as_text(fields[b"name"]), email=as_text(fields[b"email"]))


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


class SessionUser(AuthUser):
    """quart-auth's user: `auth_id` is the session id, resolved against Redis once per request."""

    def __init__(self, auth_id: str | None, action: Action = Action.PASS) -> None:
        super().__init__(auth_id, action)
        self._loaded = False
        self._user: User | None = None

    async def load(self) -> User | None:
        if not self._loaded:
            self._loaded = True
            if self.auth_id is not None:
                self._user = await load_session(get_app().redis, self.auth_id)
        return self._user

    @property
    async def is_authenticated(self) -> bool:
        return await self.load() is not None
