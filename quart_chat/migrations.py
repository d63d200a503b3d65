"""Brings data written by older releases to today's names and structures, once per Redis.

Every worker calls `migrate` before it serves. The first to take the lock
migrates; the others wait for it to record the new schema version. Once the
version is recorded, a start costs one GET. A migration that stops half-way
(the worker died) is simply run again: each step can run twice (keys already
renamed no longer match the old patterns; indexes are added to, never
replaced), and the lock expires.

- Schema 2 (issue 11): keys renamed to names with hash tags.
- Schema 3 (issue 14, rooms): every user in the `users:names` directory,
  `general`'s meta counting the messages already stored, and every user's
  read marker in `general` at its newest message (nobody starts with 99+).
"""

from __future__ import annotations

import asyncio
import logging
import secrets
from collections.abc import Awaitable, Callable

from redis.asyncio import Redis
from redis.exceptions import ResponseError

from . import keys
from .models.rooms import GENERAL, ensure_general
from .models.users import index_all_users
from .storage import as_text

log = logging.getLogger(__name__)

LOCK_SECONDS = 300
WAIT_SECONDS = 0.2
SCAN_COUNT = 1000

# Version 1 (the first release) named keys without hash tags, some with the raw
# email or client id in them. Old prefix -> the new name of the key's rest.
_RENAMES_V1: dict[str, Callable[[str], str]] = {
    "history:": keys.room_history,
    # Every send of version 1 went to the one room.
    "sent:": lambda rest: keys.sent_message(GENERAL, *rest.split(":", 1)),
    "user:": keys.user_profile,
    "ratelimit:send:": lambda user_id: keys.user_rate_limit(user_id, "send"),
    "ratelimit:backlog:": lambda user_id: keys.user_rate_limit(user_id, "backlog"),
    "login-code:": keys.login_code,
    "login-code-resend:": keys.login_code_resend,
    "login-code-failures:": keys.login_code_failures,
    "login-code-mail:": keys.login_code_mail,
    "presence:worker:": keys.presence_worker,
    "sockets:worker:": keys.socket_worker,
}
_FIXED_V1 = {
    "mail:outbox": keys.MAIL_OUTBOX,
    "mail:retry": keys.MAIL_RETRY,
    "presence:workers": keys.PRESENCE_WORKERS,
    "presence:names": keys.PRESENCE_NAMES,
    "sockets:workers": keys.SOCKET_WORKERS,
}
_OLD_MAIL = "mail:"
_OLD_RESEND = "login-code-resend:"


async def migrate(redis: Redis) -> None:
    """Bring this Redis's key names to keys.SCHEMA_VERSION, or wait for the worker doing it."""
    token = secrets.token_hex(8)
    while int(await redis.get(keys.SCHEMA_VERSION_KEY) or 0) < keys.SCHEMA_VERSION:
        if not await redis.set(keys.MIGRATION_LOCK_KEY, token, nx=True, ex=LOCK_SECONDS):
            await asyncio.sleep(WAIT_SECONDS)
            continue
        try:
            # Another worker may have finished between our read and our lock.
            await _migrate_from(redis, int(await redis.get(keys.SCHEMA_VERSION_KEY) or 0))
        finally:
            if as_text(await redis.get(keys.MIGRATION_LOCK_KEY) or b"") == token:
                await redis.delete(keys.MIGRATION_LOCK_KEY)


async def _migrate_from(redis: Redis, version: int) -> None:
    if version >= keys.SCHEMA_VERSION:
        return
    if version < 2:
        renamed = await _rename_v1(redis)
        log.info("renamed %d Redis keys to schema 2", renamed)
    if version < 3:
        indexed = await _add_rooms(redis)
        log.info("indexed %d users and set up room general for schema 3", indexed)
    await redis.set(keys.SCHEMA_VERSION_KEY, keys.SCHEMA_VERSION)


async def _add_rooms(redis: Redis) -> int:
    indexed = await index_all_users(redis)
    await ensure_general(redis)
    last_id, seq = await redis.hmget(keys.room_meta(GENERAL), ["last_id", "seq"])
    if last_id is not None:
        marker = f"{as_text(last_id)} {as_text(seq or b'0')}"
        for user_id in await redis.hvals(keys.USERS_BY_EMAIL):
            await redis.hsetnx(keys.user_read(as_text(user_id)), GENERAL, marker)
    return indexed


async def _rename_v1(redis: Redis) -> int:
    renamed = 0
    for old, new in _FIXED_V1.items():
        if await redis.exists(old):
            await redis.rename(old, new)
            renamed += 1
    for prefix, name in _RENAMES_V1.items():
        renamed += await _rename_prefix(redis, prefix, name, _fix_pointer)
    # Last: "mail:*" no longer matches the outbox's fixed keys, renamed above.
    renamed += await _rename_prefix(redis, _OLD_MAIL, keys.mail, _fix_release)
    return renamed


async def _rename_prefix(
    redis: Redis,
    prefix: str,
    name: Callable[[str], str],
    fix: Callable[[Redis, str, str], Awaitable[None]],
) -> int:
    # Collected first: renaming while scanning could visit a key twice or skip one.
    found = redis.scan_iter(match=prefix + "*", count=SCAN_COUNT)
    old_names = [as_text(key) async for key in found]
    renamed = 0
    for old in old_names:
        new = name(old.removeprefix(prefix))
        try:
            await redis.rename(old, new)
        except ResponseError as error:
            if "no such key" not in str(error):
                raise
            continue  # expired since the scan (a login code, a rate-limit window)
        await fix(redis, old, new)
        renamed += 1
    return renamed


async def _fix_pointer(redis: Redis, old: str, new: str) -> None:
    """A login code's mail pointer held the mail's old key name."""
    if old.startswith("login-code-mail:"):
        pointed = as_text(await redis.get(new) or b"")
        if pointed.startswith(_OLD_MAIL):
            await redis.set(new, keys.mail(pointed.removeprefix(_OLD_MAIL)), keepttl=True)


async def _fix_release(redis: Redis, old: str, new: str) -> None:
    """A queued code mail names the resend window it releases if the outbox gives up."""
    release = as_text(await redis.hget(new, "release") or b"")
    if release.startswith(_OLD_RESEND):
        await redis.hset(new, "release", keys.login_code_resend(release.removeprefix(_OLD_RESEND)))
