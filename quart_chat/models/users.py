"""Users: who has logged in, found by id or by their normalised email."""

from __future__ import annotations

import secrets
from dataclasses import dataclass

from redis.asyncio import Redis

from .. import keys
from ..storage import as_text, script


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
