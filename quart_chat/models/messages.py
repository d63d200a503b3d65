"""Durable room history: one capped Redis Stream per room; a message's id is its stream id.

Posting is one Lua script, so storing and announcing a message is atomic:
the stream append, the idempotency record and the pub/sub publish happen in
one step. That gives two guarantees the live path relies on: messages are
published in stream order, and a message is never live before it is stored
(so a client that reads the backlog after subscribing misses nothing).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, cast

from redis.asyncio import Redis

from .. import keys
from ..realtime.protocol import encode, stream_id_key
from ..storage import Commands, as_text, script
from .users import User

Entry = tuple[bytes, dict[bytes, bytes]]
# A retry of the same (user, client_id) within this window echoes the original.
IDEMPOTENCY_SECONDS = 86400
JOIN_PAGE = 100
JOIN_LAST = 50
# The most a `join after` replays. A client further behind gets the newest
# JOIN_LAST marked `reset` instead and pages back with `history`: one request
# never costs more than this many messages.
JOIN_BACKLOG_MAX = 1000

# KEYS: stream, idempotency key, channel (a channel, not a key, but named here
#       so that all three share the room's slot).
# ARGV: max length, user id, user name, text, client id, room as JSON,
#       the message JSON after its opening brace, idempotency TTL.
# The live frame is built here because only XADD knows the id; the worker
# prepends "<id> " so listeners can order frames without parsing JSON.
_POST = """
local existing = redis.call('GET', KEYS[2])
if existing then return {0, existing} end
local id = redis.call('XADD', KEYS[1], 'MAXLEN', '~', ARGV[1], '*',
  'user', ARGV[2], 'name', ARGV[3], 'text', ARGV[4], 'client_id', ARGV[5])
redis.call('SET', KEYS[2], id, 'EX', ARGV[8])
local ts = string.match(id, '^%d+')
local frame = '{"type":"message","room":' .. ARGV[6] .. ',"id":"' .. id .. '","ts":' .. ts
  .. ',' .. ARGV[7]
redis.call('PUBLISH', KEYS[3], id .. ' ' .. frame)
return {1, id, frame}
"""


@dataclass(frozen=True, slots=True)
class Posted:
    """The outcome of a send: the message frame, and whether this call stored it."""

    id: str
    frame: str
    created: bool


@dataclass(frozen=True, slots=True)
class Page:
    messages: list[dict[str, Any]]
    has_more: bool

    @property
    def last_id(self) -> str | None:
        return self.messages[-1]["id"] if self.messages else None


class RoomHistory:
    def __init__(self, redis: Redis, max_per_room: int, reads: Commands | None = None) -> None:
        self.redis = redis
        self.reads: Commands = reads or redis
        self.max_per_room = max_per_room
        self._post = script(redis, _POST)

    async def post(self, room: str, user: User, text: str, client_id: str) -> Posted:
        """Store and publish a message once per (user, client_id); a retry returns the original."""
        tail = encode({"user": user.public(), "text": text, "client_id": client_id})[1:]
        result = await self._post(
            keys=[
                keys.room_history(room),
                keys.sent_message(room, user.id, client_id),
                keys.room_channel(room),
            ],
            args=[
                self.max_per_room,
                user.id,
                user.name,
                text,
                client_id,
                encode(room),
                tail,
                IDEMPOTENCY_SECONDS,
            ],
        )
        message_id = as_text(result[1])
        if int(result[0]) == 1:
            return Posted(message_id, as_text(result[2]), created=True)
        original = await self.get(room, message_id)
        if original is None:
            # Trimmed from the stream since: echo the retry itself under the original id.
            original = _message(room, message_id, user.id, user.name, text, client_id)
        return Posted(message_id, encode({"type": "message", **original}), created=False)

    async def get(self, room: str, message_id: str) -> dict[str, Any] | None:
        key = keys.room_history(room)
        entries = cast(
            list[Entry], await self.reads.execute_command("XRANGE", key, message_id, message_id)
        )
        return _from_entry(room, entries[0]) if entries else None

    async def newest_after(self, room: str, after: str, count: int) -> list[dict[str, Any]]:
        """Up to `count` of the newest messages strictly after `after`, oldest first."""
        entries = cast(
            list[Entry],
            await self.reads.execute_command(
                "XREVRANGE", keys.room_history(room), "+", f"({after}", "COUNT", count
            ),
        )
        return [_from_entry(room, e) for e in reversed(entries)]

    async def before(self, room: str, before: str | None, count: int) -> Page:
        """The `count` messages before `before` (or the newest), newest last."""
        end = "+" if before is None else f"({before}"
        entries = cast(
            list[Entry],
            await self.reads.execute_command(
                "XREVRANGE", keys.room_history(room), end, "-", "COUNT", count + 1
            ),
        )
        has_more = len(entries) > count
        return Page([_from_entry(room, e) for e in reversed(entries[:count])], has_more)


def _from_entry(room: str, entry: Entry) -> dict[str, Any]:
    raw_id, fields = entry
    return _message(
        room,
        as_text(raw_id),
        as_text(fields[b"user"]),
        as_text(fields[b"name"]),
        as_text(fields[b"text"]),
        as_text(fields[b"client_id"]),
    )


def _message(
    room: str, message_id: str, user_id: str, name: str, text: str, client_id: str
) -> dict[str, Any]:
    return {
        "room": room,
        "id": message_id,
        "ts": stream_id_key(message_id)[0],
        "user": {"id": user_id, "name": name},
        "text": text,
        "client_id": client_id,
    }
