"""Users: who has logged in, found by id, by their normalised email or by name.

`users:names` is the directory: one member "<casefolded name>\\x00<id>" per
active user, all scored 0, so that a name prefix is a ZRANGEBYLEX range. A
profile and its directory entry change together in one script.
"""

from __future__ import annotations

import asyncio
import secrets
import time
import unicodedata
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from redis.asyncio import Redis

from .. import keys
from ..config import Settings
from ..storage import Commands, as_text, script

MAX_NAME = 64
PEOPLE_LIMIT = 50
# Characters a name may not hold: they would break a line or hide text.
_FORBIDDEN_CATEGORIES = {"Cc", "Cs", "Zl", "Zp"}
_PROFILE_FIELDS = ("name", "email", "deactivated")


@dataclass(frozen=True, slots=True)
class User:
    id: str
    name: str
    email: str
    deactivated: bool = False

    def public(self) -> dict[str, str]:
        """What other users may see: never the email."""
        return {"id": self.id, "name": self.name}


class InvalidName(ValueError):
    """A display name that cannot be used; `message` says why, for the user."""

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


def directory_entry(name: str, user_id: str) -> str:
    return f"{name.casefold()}\x00{user_id}"


# KEYS: users-by-email, the new user's profile, the directory, the new user's
# read markers, general's meta. ARGV: email, new id, name, directory entry,
# created_at (ms). Claims the address for the new id and writes the user in one
# step, so a concurrent first login of the same address never finds the id
# without its user; a new user starts having read all of general (see keys.py
# for why this spans slots).
_CLAIM_USER = """
if redis.call('HSETNX', KEYS[1], ARGV[1], ARGV[2]) == 1 then
  redis.call('HSET', KEYS[2], 'email', ARGV[1], 'name', ARGV[3], 'created_at', ARGV[5])
  redis.call('ZADD', KEYS[3], 0, ARGV[4])
  local general = redis.call('HMGET', KEYS[5], 'last_id', 'seq')
  if general[1] then
    redis.call('HSET', KEYS[4], 'general', general[1] .. ' ' .. (general[2] or '0'))
  end
  return ARGV[2]
end
return redis.call('HGET', KEYS[1], ARGV[1])
"""

# KEYS: profile, directory, deactivated directory. ARGV: the name read before,
# its directory entry, then (to set a name) the new name and entry, or (to
# deactivate) "1"/"0". Directory entries are casefolded, which Lua cannot do,
# so they come from Python; a name changed since it was read returns -1 and
# the caller reads again. Returns 0 for an unknown user. A deactivated user's
# entry is in the deactivated directory, whatever their name.
_SET_NAME = """
local current = redis.call('HMGET', KEYS[1], 'name', 'deactivated')
if not current[1] then return 0 end
if current[1] ~= ARGV[1] then return -1 end
redis.call('HSET', KEYS[1], 'name', ARGV[3])
local directory = KEYS[2]
if current[2] == '1' then directory = KEYS[3] end
redis.call('ZREM', directory, ARGV[2])
redis.call('ZADD', directory, 0, ARGV[4])
return 1
"""

# KEYS: as above, then the address's login flag (keys.login_deactivated).
_SET_DEACTIVATED = """
local current = redis.call('HGET', KEYS[1], 'name')
if not current then return 0 end
if current ~= ARGV[1] then return -1 end
if ARGV[3] == '1' then
  redis.call('HSET', KEYS[1], 'deactivated', '1')
  redis.call('ZREM', KEYS[2], ARGV[2])
  redis.call('ZADD', KEYS[3], 0, ARGV[2])
  redis.call('SET', KEYS[4], '1')
else
  redis.call('HDEL', KEYS[1], 'deactivated')
  redis.call('ZREM', KEYS[3], ARGV[2])
  redis.call('ZADD', KEYS[2], 0, ARGV[2])
  redis.call('DEL', KEYS[4])
end
return 1
"""
# How often a profile script is tried again while renames race with it: one
# user renaming from many tabs at once, so a handful at most.
_PROFILE_TRIES = 32


async def get_or_create_user(redis: Redis, email: str) -> User:
    user, _ = await claim_user(redis, email)
    return user


async def claim_user(redis: Redis, email: str) -> tuple[User, bool]:
    """The user of `email`, made on its first login: (user, whether it was made now).

    A new user changes general's member count, which the caller announces.
    """
    email = email.lower()
    new_id = secrets.token_hex(8)
    name = default_name(email)
    stored_id = await script(redis, _CLAIM_USER)(
        keys=[
            keys.USERS_BY_EMAIL,
            keys.user_profile(new_id),
            keys.USERS_NAMES,
            keys.user_read(new_id),
            keys.room_meta(keys.GENERAL_ROOM),
        ],
        args=[email, new_id, name, directory_entry(name, new_id), int(time.time() * 1000)],
    )
    user = await get_user(redis, as_text(stored_id))
    assert user is not None
    return user, user.id == new_id


def default_name(email: str) -> str:
    """The part of the address before the @, made a valid display name."""
    try:
        return validate_name(email.split("@")[0])
    except InvalidName:
        return "user"


async def find_user_by_email(redis: Commands, email: str) -> User | None:
    """The user of a normalised address, or None if it never logged in."""
    user_id = await redis.execute_command("HGET", keys.USERS_BY_EMAIL, email.lower())
    return None if user_id is None else await get_user(redis, as_text(user_id))


async def get_user(redis: Commands, user_id: str) -> User | None:
    fields = await redis.execute_command("HMGET", keys.user_profile(user_id), *_PROFILE_FIELDS)
    return _user(user_id, fields)


async def get_users(redis: Commands, user_ids: Sequence[str]) -> list[User]:
    """The known users among `user_ids`, in the same order: one round trip."""
    replies = await _hmget_many(redis, [keys.user_profile(i) for i in user_ids], _PROFILE_FIELDS)
    found = (_user(user_id, fields) for user_id, fields in zip(user_ids, replies, strict=True))
    return [user for user in found if user is not None]


async def search_people(
    redis: Commands, prefix: str, limit: int = PEOPLE_LIMIT, *, deactivated: bool = False
) -> list[User]:
    """Active users (or, with `deactivated`, deactivated ones) whose casefolded name
    starts with `prefix`, sorted by name."""
    start = prefix.strip().casefold().encode()
    # No UTF-8 text contains the byte 0xff, so it bounds every name with the prefix.
    low, high = (b"[" + start, b"(" + start + b"\xff") if start else (b"-", b"+")
    directory = keys.USERS_DEACTIVATED if deactivated else keys.USERS_NAMES
    entries = await redis.execute_command("ZRANGEBYLEX", directory, low, high, "LIMIT", 0, limit)
    ids = [as_text(entry).rpartition("\x00")[2] for entry in entries]
    return [user for user in await get_users(redis, ids) if user.deactivated == deactivated]


def validate_name(name: str) -> str:
    """`name` trimmed, or InvalidName if it is empty, too long or holds control characters."""
    name = name.strip()
    if not 1 <= len(name) <= MAX_NAME:
        raise InvalidName(f"name must be 1 to {MAX_NAME} characters")
    if any(unicodedata.category(char) in _FORBIDDEN_CATEGORIES for char in name):
        raise InvalidName("name must not contain control characters")
    return name


async def set_name(redis: Redis, user: User, name: str) -> User:
    """Set the user's display name (trimmed) and their directory entry; InvalidName if
    the name is not valid or the user is unknown."""
    name = validate_name(name)
    updated = await _change_profile(redis, user.id, _SET_NAME, name, directory_entry(name, user.id))
    if updated is None:
        raise InvalidName("no such user")
    return User(updated.id, name, updated.email, updated.deactivated)


async def set_deactivated(redis: Redis, user_id: str, deactivated: bool) -> User | None:
    """Flag the user and take them out of the directory, or undo both; None if unknown.

    Their address gets no login code and no code logs them in while deactivated
    (quart_chat/codes.py checks the flag set here). Their sessions are not
    touched here: see `sessions.revoke_user_sessions` (`load_session` refuses a
    deactivated user's sessions anyway).
    """
    flag = "1" if deactivated else "0"
    user = await _change_profile(redis, user_id, _SET_DEACTIVATED, flag, login_flag=True)
    return None if user is None else User(user.id, user.name, user.email, deactivated)


async def _change_profile(
    redis: Redis, user_id: str, text: str, *args: str, login_flag: bool = False
) -> User | None:
    """Run a profile script with the name read just before; the user as read, or None."""
    for _ in range(_PROFILE_TRIES):
        user = await get_user(redis, user_id)
        if user is None:
            return None
        names = [keys.user_profile(user_id), keys.USERS_NAMES, keys.USERS_DEACTIVATED]
        if login_flag:
            names.append(keys.login_deactivated(user.email))
        result = await script(redis, text)(
            keys=names, args=[user.name, directory_entry(user.name, user_id), *args]
        )
        if int(result) == 1:
            return user
        if int(result) == 0:
            return None
    raise RuntimeError(f"user {user_id} was renamed {_PROFILE_TRIES} times while changing it")


async def count_active_users(redis: Commands) -> int:
    """Users who are not deactivated: the directory's size."""
    return int(await redis.execute_command("ZCARD", keys.USERS_NAMES))


def is_admin(settings: Settings, user: User) -> bool:
    """Whether `user` is in CHAT_ADMIN_EMAILS (both sides normalised)."""
    return user.email in settings.admin_emails


async def index_all_users(redis: Redis) -> int:
    """Put every active user in the directory, and every deactivated one in theirs
    (the migration to schema 3)."""
    user_ids = [as_text(v) for v in (await redis.hgetall(keys.USERS_BY_EMAIL)).values()]
    users = await get_users(redis, user_ids)
    entries = {directory_entry(u.name, u.id): 0 for u in users if not u.deactivated}
    if entries:
        await redis.zadd(keys.USERS_NAMES, entries)
    gone = {directory_entry(u.name, u.id): 0 for u in users if u.deactivated}
    if gone:
        await redis.zadd(keys.USERS_DEACTIVATED, gone)
    return len(entries)


def _user(user_id: str, fields: Sequence[Any]) -> User | None:
    name, email, deactivated = fields
    if name is None:
        return None
    return User(
        id=user_id,
        name=as_text(name),
        email=as_text(email or b""),
        deactivated=deactivated is not None and as_text(deactivated) == "1",
    )


async def _hmget_many(redis: Commands, names: Sequence[str], fields: Sequence[str]) -> list[Any]:
    """HMGET of each hash in one round trip: a pipeline on a client, a batch on `Pipelined`."""
    if isinstance(redis, Redis):
        async with redis.pipeline(transaction=False) as pipe:
            for name in names:
                pipe.execute_command("HMGET", name, *fields)
            return list(await pipe.execute())
    return list(
        await asyncio.gather(*(redis.execute_command("HMGET", name, *fields) for name in names))
    )
