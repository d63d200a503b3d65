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

from .base import get_app
from .storage import Commands, as_text

SESSION_REVOKED_CHANNEL = "chat:session-revoked"


def session_key(session_id: str) -> str:
    return f"session:{session_id}"


def _user_key(user_id: str) -> str:
    return f"user:{user_id}"


USERS_BY_EMAIL = "users:by-email"


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
# login of the same address never finds the id without its user.
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
    stored_id = await redis.eval(
        _CLAIM_USER, 2, USERS_BY_EMAIL, _user_key(new_id), email, new_id, email.split("@")[0]
    )
    user = await get_user(redis, as_text(stored_id))
    assert user is not None
    return user


async def get_user(redis: Redis, user_id: str) -> User | None:
    fields = await redis.hgetall(_user_key(user_id))
    if not fields:
        return None
    return User(id=user_id, name=as_text(fields[b"name"]), email=as_text(fields[b"email"]))


async def create_session(redis: Redis, user: User, ttl_seconds: int) -> str:
    session_id = secrets.token_urlsafe(32)  # 256 bits
    await redis.set(session_key(session_id), user.id, ex=ttl_seconds)
    return session_id


# KEYS: the session key. The session's user as (id, name, email), or nil.
# One round trip instead of two: every handshake and page request does this,
# and a reconnect storm does it thousands of times at once.
_LOAD_SESSION = """
local user_id = redis.call('GET', KEYS[1])
if not user_id then return nil end
local fields = redis.call('HMGET', 'user:' .. user_id, 'name', 'email')
if not fields[1] then return nil end
return {user_id, fields[1], fields[2]}
"""


async def load_session(redis: Commands, session_id: str) -> User | None:
    # EVAL, not EVALSHA: Redis caches the script either way, and a pipeline of
    # EVALSHA could meet NOSCRIPT after a Redis restart.
    found = await redis.execute_command("EVAL", _LOAD_SESSION, 1, session_key(session_id))
    if found is None:
        return None
    user_id, name, email = (as_text(value) for value in found)
    return User(id=user_id, name=name, email=email)


async def session_exists(redis: Commands, session_id: str) -> bool:
    return bool(await redis.execute_command("EXISTS", session_key(session_id)))


async def revoke_session(redis: Redis, session_id: str) -> None:
    await redis.delete(session_key(session_id))
    await redis.publish(SESSION_REVOKED_CHANNEL, session_id)


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
