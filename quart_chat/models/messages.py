"""Durable room history: one capped Redis Stream per room; a message's id is its stream id.

Posting is one Lua script, so checking, storing and announcing a message is
atomic: the membership check, the stream append, the room's message count
(`seq`, stored in the entry too) and newest id, the idempotency record and the
pub/sub publish happen in one step. That gives the guarantees the live path
relies on: messages are published in stream order, a message is never live
before it is stored (so a client that reads the backlog after subscribing
misses nothing), and nobody removed from a room can post to it a moment later.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import cast

from redis.asyncio import Redis

from .. import keys
from ..realtime.protocol import encode, message_frame, stream_id_key
from ..storage import Commands, as_text, script
from .changes import Change, change_from_entry
from .mentions import NOBODY, resolve_mentions
from .rooms import GENERAL, advance_read
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
#       so that it shares the room's slot), the room's meta, its members, its
#       mention counters.
# ARGV: max length, user id, user name, text, client id, room as JSON,
#       the message JSON after its opening brace, idempotency TTL,
#       "1" to check membership (every room but general), the mentioned ids
#       (space-separated), "1" for @everyone, the frame's mention fields.
# The live frame is built here because only XADD knows the id. The channel
# payload is "M <id> <author id> <frame>" (see realtime/protocol.py), so that
# listeners can order and attribute frames without parsing JSON.
# A mention counts once per message: in the mentioned member's field of the
# counters, or for @everyone in the `*` field (the same for every member).
# Returns {-1} when the user may not post there (not a member, no such room,
# archived), {0, original id} for a retry, {1, id, frame, seq, the poster's
# mention count} for a new message.
_POST = """
if ARGV[9] == '1' and (redis.call('HGET', KEYS[4], 'archived') ~= '0'
    or redis.call('SISMEMBER', KEYS[5], ARGV[2]) == 0) then
  return {-1}
end
local existing = redis.call('GET', KEYS[2])
if existing then return {0, existing} end
local seq = redis.call('HINCRBY', KEYS[4], 'seq', 1)
local entry = {'user', ARGV[2], 'name', ARGV[3], 'text', ARGV[4], 'client_id', ARGV[5],
  'seq', seq}
if ARGV[10] ~= '' then table.insert(entry, 'mentions'); table.insert(entry, ARGV[10]) end
if ARGV[11] == '1' then
  table.insert(entry, 'everyone'); table.insert(entry, '1')
  redis.call('HINCRBY', KEYS[6], '*', 1)
else
  for mentioned in string.gmatch(ARGV[10], '%S+') do
    redis.call('HINCRBY', KEYS[6], mentioned, 1)
  end
end
local id = redis.call('XADD', KEYS[1], 'MAXLEN', '~', ARGV[1], '*', unpack(entry))
redis.call('HSET', KEYS[4], 'last_id', id)
redis.call('SET', KEYS[2], id, 'EX', ARGV[8])
local ts = string.match(id, '^%d+')
local frame = '{"type":"message","room":' .. ARGV[6] .. ',"id":"' .. id .. '","ts":' .. ts
  .. ',' .. ARGV[12] .. ARGV[7]
redis.call('PUBLISH', KEYS[3], 'M ' .. id .. ' ' .. ARGV[2] .. ' ' .. frame)
local mentioned = 0
for _, n in ipairs(redis.call('HMGET', KEYS[6], ARGV[2], '*')) do
  if n then mentioned = mentioned + tonumber(n) end
end
return {1, id, frame, seq, mentioned}
"""


class NotMember(Exception):
    """The poster is not a member of the room, or it does not exist or is archived."""


@dataclass(frozen=True, slots=True)
class Posted:
    """The outcome of a send: the message frame, and whether this call stored it."""

    id: str
    frame: str
    created: bool
    # The room's message count at this message; None for a retry's echo.
    seq: int | None = None
    # Who the message mentions by name (not @everyone): for email notifications.
    mentions: tuple[str, ...] = ()


@dataclass(frozen=True, slots=True)
class Message:
    """A stored message as read back from its room's stream; `id` is its stream id."""

    room: str
    id: str
    user_id: str
    user_name: str
    text: str
    client_id: str
    mentions: tuple[str, ...] = ()
    everyone: bool = False

    @property
    def ts(self) -> int:
        """When it was stored, in epoch milliseconds: the stream id's first part."""
        return stream_id_key(self.id)[0]


@dataclass(frozen=True, slots=True)
class Page:
    messages: list[Message]
    has_more: bool

    @property
    def last_id(self) -> str | None:
        return self.messages[-1].id if self.messages else None


@dataclass(slots=True)
class Backlog:
    """Stream entries after an id: messages and changes, each oldest first."""

    messages: list[Message]
    changes: list[Change]
    # The newest entry's id (a message's or a change's), None if there is none.
    last_id: str | None
    # How many entries were read: the caller asked for at most some number.
    entries: int


class RoomHistory:
    def __init__(self, redis: Redis, max_per_room: int, reads: Commands | None = None) -> None:
        self.redis = redis
        self.reads: Commands = reads or redis
        self.max_per_room = max_per_room
        self._post = script(redis, _POST)

    async def post(self, room: str, user: User, text: str, client_id: str) -> Posted:
        """Store and publish a message once per (user, client_id); a retry returns the original.

        Raises `NotMember` if the user may not post in the room. The poster has
        read their own message: their read marker moves to it, so their own
        messages never count as unread.
        """
        tail = encode({"user": user.public(), "text": text, "client_id": client_id})[1:]
        mentions = await resolve_mentions(self.reads, room, text) if "@" in text else NOBODY
        result = await self._post(
            keys=[
                keys.room_history(room),
                keys.sent_message(room, user.id, client_id),
                keys.room_channel(room),
                keys.room_meta(room),
                keys.room_members(room),
                keys.room_mentions(room),
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
                "0" if room == GENERAL else "1",
                " ".join(mentions.ids),
                "1" if mentions.everyone else "0",
                mentions.json_fields(),
            ],
        )
        if int(result[0]) == -1:
            raise NotMember(room)
        message_id = as_text(result[1])
        if int(result[0]) == 1:
            seq = int(result[3])
            await advance_read(self.redis, user.id, room, message_id, seq, int(result[4]))
            return Posted(
                message_id, as_text(result[2]), created=True, seq=seq, mentions=tuple(mentions.ids)
            )
        original = await self.get(room, message_id)
        if original is None:
            # Trimmed from the stream since: echo the retry itself under the original id.
            original = Message(
                room,
                message_id,
                user.id,
                user.name,
                text,
                client_id,
                mentions.ids,
                mentions.everyone,
            )
        return Posted(message_id, message_frame(original), created=False)

    async def get(self, room: str, message_id: str) -> Message | None:
        key = keys.room_history(room)
        entries = cast(
            list[Entry], await self.reads.execute_command("XRANGE", key, message_id, message_id)
        )
        return _from_entry(room, entries[0]) if entries else None

    async def newest_after(self, room: str, after: str, count: int) -> list[Message]:
        """Up to `count` of the newest messages strictly after `after`, oldest first
        (changes to messages are not counted, nor returned)."""
        backlog = await self.entries_after(room, after, count)
        return backlog.messages

    async def entries_after(self, room: str, after: str, count: int) -> Backlog:
        """The newest `count` stream entries strictly after `after`, oldest first: the
        messages and the changes (edits, deletions, reactions) among them."""
        entries = cast(
            list[Entry],
            await self.reads.execute_command(
                "XREVRANGE", keys.room_history(room), "+", f"({after}", "COUNT", count
            ),
        )
        backlog = Backlog([], [], as_text(entries[0][0]) if entries else None, len(entries))
        for raw_id, fields in reversed(entries):
            if b"kind" in fields:
                backlog.changes.append(change_from_entry(room, raw_id, fields))
            else:
                backlog.messages.append(_from_entry(room, (raw_id, fields)))
        return backlog

    async def before(self, room: str, before: str | None, count: int) -> Page:
        """The `count` messages before `before` (or the newest), newest last.

        The stream also holds changes to messages, which are skipped: it is read
        backwards in batches until `count` + 1 messages are found or it ends.
        """
        end = "+" if before is None else f"({before}"
        found: list[Message] = []
        batch = count + 1
        while True:
            entries = cast(
                list[Entry],
                await self.reads.execute_command(
                    "XREVRANGE", keys.room_history(room), end, "-", "COUNT", batch
                ),
            )
            found.extend(_from_entry(room, e) for e in entries if b"kind" not in e[1])
            if len(entries) < batch or len(found) > count:
                break
            end = f"({as_text(entries[-1][0])}"
            batch = min(batch * 2, 1000)
        has_more = len(found) > count
        return Page(list(reversed(found[:count])), has_more)


def _from_entry(room: str, entry: Entry) -> Message:
    raw_id, fields = entry
    return Message(
        room,
        as_text(raw_id),
        as_text(fields[b"user"]),
        as_text(fields[b"name"]),
        as_text(fields[b"text"]),
        as_text(fields[b"client_id"]),
        tuple(as_text(fields[b"mentions"]).split()) if b"mentions" in fields else (),
        fields.get(b"everyone") == b"1",
    )
