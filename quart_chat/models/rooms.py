"""Rooms: public, private and direct, their members, and each member's read marker.

A room is a `{room:<id>}:meta` hash and a `{room:<id>}:members` set; each
member also lists the room in `{user:<id>}:rooms`, and every change of
membership writes both sides in one script, so that a room never lists a
member who does not list it. `general` is the exception: everyone is a member
and nothing is stored per member but the read marker.

A read marker is "<stream id> <seq> <mentions>": the message read up to, the
room's message count at it, and how many messages had mentioned the user by
then (`{room:<id>}:mentions`, see messages.py; a two-part marker from before
mentions reads as 0). A room's unread count is its `seq` minus the marker's,
and its mention count the counter now minus the marker's, so neither costs a
stream read. Markers only move forward.

Nothing here publishes: the realtime layer turns these results into frames.
A `RoomError` carries the protocol's error code and a message for the user;
`not_allowed` with `NO_SUCH_ROOM` is the one answer for a room that does not
exist and for a room the user may not see, so neither leaks the other.
"""

from __future__ import annotations

import asyncio
import hashlib
import re
import secrets
import time
import unicodedata
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from redis.asyncio import Redis

from .. import keys
from ..storage import Commands, as_text, script
from .users import User, count_active_users, get_users, search_people

GENERAL = keys.GENERAL_ROOM
# The field of `{room:<id>}:mentions` counting @everyone/@here messages.
EVERYONE_FIELD = "*"
PUBLIC, PRIVATE, DIRECT = "public", "private", "direct"
MAX_ROOM_NAME = 80
MAX_TOPIC = 250
MAX_INITIAL_MEMBERS = 50
MAX_DIRECT_OTHERS = 8
# The most rooms one `browse` lists, and members `general` lists (everyone).
BROWSE_LIMIT = 200
GENERAL_MEMBERS_LIMIT = 1000
UNREAD_CAP = 99
# How many stream entries `mark_read` looks back through for a message.
READ_SCAN = 100

BAD_REQUEST = "bad_request"
NOT_ALLOWED = "not_allowed"
NO_SUCH_ROOM = "no such room"
NOT_CREATOR = "only the room's creator or an admin may do that"
NAME_TAKEN = "name taken"
NO_SUCH_USER = "no such user"

ROOM_ID = re.compile(r"[A-Za-z0-9_-]{1,64}")
_STREAM_ID = re.compile(r"[0-9]{1,20}-[0-9]{1,20}")
_FORBIDDEN_CATEGORIES = {"Cc", "Cs", "Zl", "Zp"}
_META_FIELDS = ("kind", "name", "topic", "created_by", "created_at", "archived", "seq", "last_id")


class RoomError(Exception):
    """A refused room operation: `code` is the protocol's error code."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message


def _no_such_room() -> RoomError:
    return RoomError(NOT_ALLOWED, NO_SUCH_ROOM)


@dataclass(frozen=True, slots=True)
class Room:
    id: str
    kind: str
    name: str
    topic: str
    created_by: str
    created_at: int
    archived: bool
    member_count: int
    seq: int
    last_id: str | None
    members: tuple[User, ...] = ()  # direct rooms only, sorted by name

    def name_for(self, viewer: User | None) -> str:
        """A direct room is named by its other members, for each viewer."""
        if self.kind != DIRECT:
            return self.name
        others = [m.name for m in self.members if viewer is None or m.id != viewer.id]
        return ", ".join(others) or (viewer.name if viewer else self.name)

    def public(self, viewer: User | None = None) -> dict[str, Any]:
        """The room object of the protocol (SPEC §8), without the viewer fields."""
        room: dict[str, Any] = {
            "id": self.id,
            "kind": self.kind,
            "name": self.name_for(viewer),
            "topic": self.topic,
            "created_by": self.created_by,
            "created_at": self.created_at,
            "archived": self.archived,
            "member_count": self.member_count,
        }
        if self.kind == DIRECT:
            room["members"] = [member.public() for member in self.members]
        return room


@dataclass(frozen=True, slots=True)
class ReadState:
    read_id: str | None
    read_seq: int
    # Messages mentioning the user up to the marker, and in the room by now.
    read_mentions: int = 0
    mentioned: int = 0


NOTHING_READ = ReadState(None, 0)


def _read_state(marker: bytes | str | None, mentioned: int = 0) -> ReadState:
    if marker is None:
        return ReadState(None, 0, 0, mentioned)
    message_id, seq, at_read, *_ = (*as_text(marker).split(" "), "0", "0")
    return ReadState(message_id, int(seq or 0), int(at_read or 0), mentioned)


def _mention_total(reply: Sequence[Any]) -> int:
    """The HMGET of a user's field and `*` in a room's mentions hash, summed."""
    return sum(int(value) for value in reply if value is not None)


# -- scripts -------------------------------------------------------------------

# KEYS: general's meta, its history. ARGV: created_at (ms). Creates general's
# meta if missing, counting the messages already stored (a Redis from before
# rooms). Field by field, so a meta that a post started (seq, last_id) is
# completed, not reset.
_ENSURE_GENERAL = """
if redis.call('HEXISTS', KEYS[1], 'kind') == 1 then return 0 end
local newest = redis.call('XREVRANGE', KEYS[2], '+', '-', 'COUNT', 1)
redis.call('HSETNX', KEYS[1], 'seq', redis.call('XLEN', KEYS[2]))
if newest[1] then redis.call('HSETNX', KEYS[1], 'last_id', newest[1][1]) end
local defaults = {'kind', 'public', 'name', 'general', 'topic', '', 'created_by', '',
                  'created_at', ARGV[1], 'archived', '0'}
for i = 1, #defaults, 2 do redis.call('HSETNX', KEYS[1], defaults[i], defaults[i + 1]) end
return 1
"""

# KEYS: rooms:names, rooms:public, meta, members, then each member's rooms set.
# ARGV: name key, room id, kind, name, topic, created_by, created_at, then the
# member ids in the order of their keys. Claims the name and makes the room in
# one step: a taken name returns 0 and writes nothing.
_CREATE = """
if redis.call('HSETNX', KEYS[1], ARGV[1], ARGV[2]) == 0 then return 0 end
redis.call('HSET', KEYS[3], 'kind', ARGV[3], 'name', ARGV[4], 'topic', ARGV[5],
  'created_by', ARGV[6], 'created_at', ARGV[7], 'archived', '0', 'seq', '0')
if ARGV[3] == 'public' then redis.call('SADD', KEYS[2], ARGV[2]) end
for i = 5, #KEYS do
  redis.call('SADD', KEYS[4], ARGV[i + 3])
  redis.call('SADD', KEYS[i], ARGV[2])
end
return 1
"""

# KEYS: meta, members, the user's rooms, the user's read markers, the room's
# mentions. ARGV: room id, user id, inviter id ('' for a join).
# 1: added; 2: already a member; 0: no such room (or not visible, or archived,
# or not public for a join); -1: a direct room. A new member starts having
# read everything so far, mentions too (someone who left and comes back).
_ADD_MEMBER = """
local meta = redis.call('HMGET', KEYS[1], 'kind', 'archived', 'last_id', 'seq')
if not meta[1] or meta[2] == '1' then return 0 end
if ARGV[3] == '' then
  if redis.call('SISMEMBER', KEYS[2], ARGV[2]) == 1 then return 2 end
  if meta[1] ~= 'public' then return 0 end
else
  if redis.call('SISMEMBER', KEYS[2], ARGV[3]) == 0 then return 0 end
  if meta[1] == 'direct' then return -1 end
  if redis.call('SISMEMBER', KEYS[2], ARGV[2]) == 1 then return 2 end
end
redis.call('SADD', KEYS[2], ARGV[2])
redis.call('SADD', KEYS[3], ARGV[1])
if meta[3] then
  local mentioned = 0
  for _, n in ipairs(redis.call('HMGET', KEYS[5], ARGV[2], '*')) do
    if n then mentioned = mentioned + tonumber(n) end
  end
  redis.call('HSET', KEYS[4], ARGV[1], meta[3] .. ' ' .. (meta[4] or '0') .. ' ' .. mentioned)
else
  redis.call('HDEL', KEYS[4], ARGV[1])
end
return 1
"""

# KEYS: meta, members, the user's rooms, the user's read markers.
# ARGV: room id, user id, remover id ('' when leaving), "1" if the remover is
# an admin. 1: done; 0: no such room (for this actor); -1: a direct room;
# -2: the remover is neither the creator nor an admin; -3: not a member.
_REMOVE_MEMBER = """
local meta = redis.call('HMGET', KEYS[1], 'kind', 'created_by')
if not meta[1] then return 0 end
if ARGV[3] == '' then
  if redis.call('SISMEMBER', KEYS[2], ARGV[2]) == 0 then return 0 end
else
  if ARGV[4] ~= '1' then
    if redis.call('SISMEMBER', KEYS[2], ARGV[3]) == 0 then return 0 end
    if meta[2] ~= ARGV[3] then return -2 end
  end
  if redis.call('SISMEMBER', KEYS[2], ARGV[2]) == 0 then
    if meta[1] == 'direct' then return -1 end
    return -3
  end
end
if meta[1] == 'direct' then return -1 end
redis.call('SREM', KEYS[2], ARGV[2])
redis.call('SREM', KEYS[3], ARGV[1])
redis.call('HDEL', KEYS[4], ARGV[1])
return 1
"""

# KEYS: rooms:names, rooms:public, meta, members, rooms:archived.
# ARGV: room id, actor id, "1" if admin, the name read before and its key,
# the new name and its key ('' for unchanged), "1" and the topic to set it,
# archived: '' unchanged, '1', '0'.
# 1: done; 0: no such room; -1: direct; -2: not creator/admin; -4: name taken;
# -9: renamed since read (the caller reads again: Lua cannot casefold).
_UPDATE = """
local meta = redis.call('HMGET', KEYS[3], 'kind', 'name', 'archived', 'created_by')
if not meta[1] then return 0 end
if ARGV[3] ~= '1' then
  if redis.call('SISMEMBER', KEYS[4], ARGV[2]) == 0 then return 0 end
  if meta[4] ~= ARGV[2] then return -2 end
end
if meta[1] == 'direct' then return -1 end
if meta[2] ~= ARGV[4] then return -9 end
local was_archived = meta[3] == '1'
local archived = was_archived
if ARGV[10] ~= '' then archived = ARGV[10] == '1' end
local name, key = ARGV[4], ARGV[5]
if ARGV[6] ~= '' then name, key = ARGV[6], ARGV[7] end
local function claim()
  if redis.call('HSETNX', KEYS[1], key, ARGV[1]) == 0
     and redis.call('HGET', KEYS[1], key) ~= ARGV[1] then return false end
  return true
end
local function release(old)
  if redis.call('HGET', KEYS[1], old) == ARGV[1] then redis.call('HDEL', KEYS[1], old) end
end
if not was_archived and archived then
  release(ARGV[5])
  redis.call('SREM', KEYS[2], ARGV[1])
  redis.call('SADD', KEYS[5], ARGV[1])
elseif not archived then
  if (was_archived or key ~= ARGV[5]) and not claim() then return -4 end
  redis.call('SREM', KEYS[5], ARGV[1])
  if not was_archived and key ~= ARGV[5] then release(ARGV[5]) end
  if meta[1] == 'public' then redis.call('SADD', KEYS[2], ARGV[1]) end
end
redis.call('HSET', KEYS[3], 'name', name, 'archived', archived and '1' or '0')
if ARGV[8] == '1' then redis.call('HSET', KEYS[3], 'topic', ARGV[9]) end
return 1
"""

# KEYS: rooms:direct, the new room's meta and members, then each member's
# rooms set. ARGV: the set's digest, the new room id, created_by, created_at,
# then the member ids in the order of their keys. {created, room id}.
_OPEN_DIRECT = """
local existing = redis.call('HGET', KEYS[1], ARGV[1])
if existing then return {0, existing} end
redis.call('HSET', KEYS[1], ARGV[1], ARGV[2])
redis.call('HSET', KEYS[2], 'kind', 'direct', 'name', '', 'topic', '',
  'created_by', ARGV[3], 'created_at', ARGV[4], 'archived', '0', 'seq', '0')
for i = 4, #KEYS do
  redis.call('SADD', KEYS[3], ARGV[i + 1])
  redis.call('SADD', KEYS[i], ARGV[2])
end
return {1, ARGV[2]}
"""

# KEYS: the user's read markers. ARGV: room id, message id, its seq, the
# user's mention count at it. Moves the marker forward only: 1 if it moved.
_MARK_READ = """
local current = redis.call('HGET', KEYS[1], ARGV[1])
if current then
  local seq = tonumber(string.match(current, '^%S+ (%d+)'))
  if seq and seq >= tonumber(ARGV[3]) then return 0 end
end
redis.call('HSET', KEYS[1], ARGV[1], ARGV[2] .. ' ' .. ARGV[3] .. ' ' .. ARGV[4])
return 1
"""

# KEYS: the room's history, its mentions. ARGV: message id, user id, the most
# newer messages to look through. Where a read up to `message id` puts the
# marker: {id, seq, mentions at it, mentions now}, or {} for no such message
# (or one from before rooms). One step in the room's slot, so that a mention
# posted meanwhile is either after the marker or in neither count, never lost.
_READ_POINT = """
-- The message at or before the id read: changes to messages (edits, reactions:
-- entries with a `kind`) are not messages, and have no `seq`.
local found, seq, kind
for _, entry in ipairs(redis.call('XREVRANGE', KEYS[1], ARGV[1], '-', 'COUNT', ARGV[4])) do
  kind, seq = nil, nil
  for i = 1, #entry[2], 2 do
    if entry[2][i] == 'kind' then kind = true end
    if entry[2][i] == 'seq' then seq = entry[2][i + 1] end
  end
  if not kind then found = entry; break end
end
if not found or not seq then return {} end
local now = 0
for _, n in ipairs(redis.call('HMGET', KEYS[2], ARGV[2], '*')) do
  if n then now = now + tonumber(n) end
end
local after = 0
local newer = redis.call('XRANGE', KEYS[1], '(' .. found[1], '+', 'COUNT', ARGV[3])
for _, entry in ipairs(newer) do
  local fields = entry[2]
  for i = 1, #fields, 2 do
    if (fields[i] == 'mentions' and string.find(' ' .. fields[i + 1] .. ' ',
          ' ' .. ARGV[2] .. ' ', 1, true))
       or (fields[i] == 'everyone' and fields[i + 1] == '1') then
      after = after + 1
      break
    end
  end
end
return {found[1], seq, math.max(0, now - after), now}
"""
# How many messages after the one read `mark_read` looks through for mentions
# (a read far behind the newest is rare; past this its mentions count as read).
READ_SCAN_LIMIT = 1000


async def ensure_general(redis: Redis) -> None:
    """Make `general` exist: its meta, its name taken, listed as public."""
    await script(redis, _ENSURE_GENERAL)(
        keys=[keys.room_meta(GENERAL), keys.room_history(GENERAL)],
        args=[_now_ms()],
    )
    await redis.hsetnx(keys.ROOMS_NAMES, GENERAL, GENERAL)
    await redis.sadd(keys.ROOMS_PUBLIC, GENERAL)


async def advance_read(
    redis: Commands, user_id: str, room_id: str, message_id: str, seq: int, mentions: int = 0
) -> bool:
    """Move the user's marker in the room to this message (where `mentions`
    messages had mentioned them) if that is forward."""
    moved = await script(redis, _MARK_READ)(
        keys=[keys.user_read(user_id)], args=[room_id, message_id, seq, mentions]
    )
    return bool(moved)


def validate_room_name(name: str) -> str:
    name = name.strip()
    if not 1 <= len(name) <= MAX_ROOM_NAME:
        raise RoomError(BAD_REQUEST, f"room name must be 1 to {MAX_ROOM_NAME} characters")
    if any(unicodedata.category(char) in _FORBIDDEN_CATEGORIES for char in name):
        raise RoomError(BAD_REQUEST, "room name must not contain control characters")
    return name


def validate_topic(topic: str) -> str:
    topic = topic.strip()
    if len(topic) > MAX_TOPIC:
        raise RoomError(BAD_REQUEST, f"topic must be at most {MAX_TOPIC} characters")
    if any(unicodedata.category(char) in _FORBIDDEN_CATEGORIES for char in topic):
        raise RoomError(BAD_REQUEST, "topic must not contain control characters")
    return topic


def name_key(name: str) -> str:
    """What room names are unique by."""
    return name.strip().casefold()


def direct_key(user_ids: Sequence[str]) -> str:
    """The field of a set of people in `rooms:direct`: the same for any order."""
    joined = ",".join(sorted(set(user_ids)))
    return hashlib.sha256(joined.encode()).hexdigest()


def _now_ms() -> int:
    return int(time.time() * 1000)


def _sort_key(room: Room, viewer: User | None) -> tuple[bool, str, str]:
    return (room.id != GENERAL, room.name_for(viewer).casefold(), room.id)


class RoomStore:
    """Rooms and memberships in Redis. Reads go through `reads` (a `Pipelined`) when
    given; writes are scripts on `redis`."""

    def __init__(self, redis: Redis, reads: Commands | None = None) -> None:
        self.redis = redis
        self.reads: Commands = reads or redis

    async def ensure_general(self) -> None:
        await ensure_general(self.redis)

    # -- reading ---------------------------------------------------------------

    async def get(self, room_id: str) -> Room | None:
        """The room, archived or not; None if there is no such room."""
        if not ROOM_ID.fullmatch(room_id):
            return None
        fields, count = await asyncio.gather(
            self.reads.execute_command("HMGET", keys.room_meta(room_id), *_META_FIELDS),
            self._member_count(room_id),
        )
        kind, name, topic, created_by, created_at, archived, seq, last_id = (
            None if value is None else as_text(value) for value in fields
        )
        if kind is None:
            if room_id != GENERAL:
                return None
            kind, name = PUBLIC, GENERAL  # before ensure_general: still there
        members: tuple[User, ...] = ()
        if kind == DIRECT:
            members = await self._direct_members(room_id)
        return Room(
            id=room_id,
            kind=kind,
            name=name or "",
            topic=topic or "",
            created_by=created_by or "",
            created_at=int(created_at or 0),
            archived=archived == "1",
            member_count=count,
            seq=int(seq or 0),
            last_id=last_id,
            members=members,
        )

    async def _member_count(self, room_id: str) -> int:
        if room_id == GENERAL:
            return await count_active_users(self.reads)
        return int(await self.reads.execute_command("SCARD", keys.room_members(room_id)))

    async def _direct_members(self, room_id: str) -> tuple[User, ...]:
        ids = await self.reads.execute_command("SMEMBERS", keys.room_members(room_id))
        users = await get_users(self.reads, sorted(as_text(i) for i in ids))
        return tuple(sorted(users, key=lambda user: (user.name.casefold(), user.id)))

    async def _get_many(self, room_ids: Sequence[str]) -> list[Room]:
        rooms = await asyncio.gather(*(self.get(room_id) for room_id in room_ids))
        return [room for room in rooms if room is not None]

    async def is_member(self, room_id: str, user_id: str) -> bool:
        """Everyone is in general; members of an archived room still are."""
        if room_id == GENERAL:
            return True
        if not ROOM_ID.fullmatch(room_id):
            return False
        found = await self.reads.execute_command("SISMEMBER", keys.room_members(room_id), user_id)
        return bool(found)

    async def member_ids(self, room_id: str) -> set[str]:
        """For general: every active user (the whole directory; better not)."""
        if room_id == GENERAL:
            entries = await self.reads.execute_command("ZRANGE", keys.USERS_NAMES, 0, -1)
            return {as_text(entry).rpartition("\x00")[2] for entry in entries}
        if not ROOM_ID.fullmatch(room_id):
            return set()
        ids = await self.reads.execute_command("SMEMBERS", keys.room_members(room_id))
        return {as_text(i) for i in ids}

    async def members(self, room_id: str) -> list[User]:
        """Members sorted by name; for general the active users, at most
        GENERAL_MEMBERS_LIMIT of them."""
        if room_id == GENERAL:
            return await self._general_members()
        users = await get_users(self.reads, sorted(await self.member_ids(room_id)))
        return sorted(users, key=lambda user: (user.name.casefold(), user.id))

    async def _general_members(self) -> list[User]:
        return await search_people(self.reads, "", GENERAL_MEMBERS_LIMIT)

    async def rooms_of(self, user: User) -> list[Room]:
        """General first, then the user's other rooms that are not archived, by name."""
        ids = await self.reads.execute_command("SMEMBERS", keys.user_rooms(user.id))
        rooms = await self._get_many([GENERAL, *sorted(as_text(i) for i in ids)])
        visible = [room for room in rooms if not room.archived]
        return sorted(visible, key=lambda room: _sort_key(room, user))

    async def browse(
        self, user_id: str, query: str, limit: int = BROWSE_LIMIT
    ) -> list[tuple[Room, bool]]:
        """Public rooms that are not archived whose name contains `query` (casefolded),
        general first then by name, each with whether the user is a member."""
        ids = sorted(
            as_text(i) for i in await self.reads.execute_command("SMEMBERS", keys.ROOMS_PUBLIC)
        )
        wanted = query.strip().casefold()
        rooms = [
            room
            for room in await self._get_many(ids)
            if room.kind == PUBLIC and not room.archived and wanted in room.name.casefold()
        ]
        rooms = sorted(rooms, key=lambda room: _sort_key(room, None))[:limit]
        if not rooms:
            return []
        flags = await self.reads.execute_command(
            "SMISMEMBER", keys.user_rooms(user_id), *(room.id for room in rooms)
        )
        return [
            (room, room.id == GENERAL or bool(flag))
            for room, flag in zip(rooms, flags, strict=True)
        ]

    async def browse_one(self, user_id: str, room_id: str) -> list[tuple[Room, bool]]:
        """`browse` for one room id: the room if it is public and not archived,
        with whether the user is a member; else nothing (a private room is
        exactly like no room)."""
        room = await self.get(room_id)
        if room is None or room.kind != PUBLIC or room.archived:
            return []
        member = room.id == GENERAL or bool(
            await self.reads.execute_command("SISMEMBER", keys.user_rooms(user_id), room.id)
        )
        return [(room, member)]

    async def browse_archived(
        self, user: User, query: str, *, admin: bool, limit: int = BROWSE_LIMIT
    ) -> list[tuple[Room, bool]]:
        """Archived rooms whose name contains `query`: for an admin all of them, for
        anyone else those they created and are still a member of (the ones `update`
        lets them restore); by name, each with whether the user is a member."""
        ids = sorted(
            as_text(i) for i in await self.reads.execute_command("SMEMBERS", keys.ROOMS_ARCHIVED)
        )
        wanted = query.strip().casefold()
        rooms = [
            room
            for room in await self._get_many(ids)
            if room.archived
            and room.kind != DIRECT
            and (admin or room.created_by == user.id)
            and wanted in room.name.casefold()
        ]
        rooms = sorted(rooms, key=lambda room: _sort_key(room, None))
        flags = await asyncio.gather(*(self.is_member(room.id, user.id) for room in rooms))
        listed = [(room, member) for room, member in zip(rooms, flags, strict=True)]
        return [(room, member) for room, member in listed if admin or member][:limit]

    async def read_states(self, user_id: str, room_ids: Sequence[str]) -> dict[str, ReadState]:
        if not room_ids:
            return {}
        markers, *mentioned = await asyncio.gather(
            self.reads.execute_command("HMGET", keys.user_read(user_id), *room_ids),
            *(
                self.reads.execute_command(
                    "HMGET", keys.room_mentions(room_id), user_id, EVERYONE_FIELD
                )
                for room_id in room_ids
            ),
        )
        return {
            room_id: _read_state(marker, _mention_total(total))
            for room_id, marker, total in zip(room_ids, markers, mentioned, strict=True)
        }

    def viewer_fields(self, room: Room, state: ReadState) -> dict[str, Any]:
        """What only this viewer sees of the room: unread and mentions (capped at
        99), the newest message and their read marker."""
        unread = max(0, min(UNREAD_CAP, room.seq - state.read_seq))
        mentions = max(0, min(UNREAD_CAP, state.mentioned - state.read_mentions))
        return {
            "unread": unread,
            "mentions": mentions,
            "last_id": room.last_id,
            "read_id": state.read_id,
        }

    # -- changing --------------------------------------------------------------

    async def create(
        self, creator: User, kind: str, name: str, topic: str, member_ids: Sequence[str]
    ) -> Room:
        if kind not in (PUBLIC, PRIVATE):
            raise RoomError(BAD_REQUEST, "kind must be public or private")
        name, topic = validate_room_name(name), validate_topic(topic)
        others = list(dict.fromkeys(i for i in member_ids if i != creator.id))
        if len(others) > MAX_INITIAL_MEMBERS:
            raise RoomError(
                BAD_REQUEST, f"a room starts with at most {MAX_INITIAL_MEMBERS} members"
            )
        await self._check_active(others)
        room_id = secrets.token_hex(8)
        people = [creator.id, *others]
        created = await script(self.redis, _CREATE)(
            keys=[
                keys.ROOMS_NAMES,
                keys.ROOMS_PUBLIC,
                keys.room_meta(room_id),
                keys.room_members(room_id),
                *(keys.user_rooms(i) for i in people),
            ],
            args=[name_key(name), room_id, kind, name, topic, creator.id, _now_ms(), *people],
        )
        if not created:
            raise RoomError(BAD_REQUEST, NAME_TAKEN)
        return await self._must_get(room_id)

    async def _check_active(self, user_ids: Sequence[str]) -> None:
        """RoomError bad_request unless every id is a known user who is not deactivated."""
        users = await get_users(self.reads, user_ids)
        if len(users) != len(user_ids) or any(user.deactivated for user in users):
            raise RoomError(BAD_REQUEST, NO_SUCH_USER)

    async def _must_get(self, room_id: str) -> Room:
        room = await self.get(room_id)
        if room is None:
            raise _no_such_room()
        return room

    async def join(self, room_id: str, user: User) -> Room:
        """Join a public room; joining a room one is in already is no change."""
        if room_id == GENERAL:
            return await self._must_get(GENERAL)
        await self._add_member(room_id, user.id, inviter="")
        return await self._must_get(room_id)

    async def invite(self, room_id: str, by: User, user_id: str) -> Room:
        """Any member adds someone to a public or private room; inviting a member is no change."""
        if room_id == GENERAL:
            raise RoomError(NOT_ALLOWED, "everyone is in general already")
        if not ROOM_ID.fullmatch(room_id) or not await self.is_member(room_id, by.id):
            raise _no_such_room()
        await self._check_active([user_id])
        await self._add_member(room_id, user_id, inviter=by.id)
        return await self._must_get(room_id)

    async def _add_member(self, room_id: str, user_id: str, inviter: str) -> None:
        if not ROOM_ID.fullmatch(room_id):
            raise _no_such_room()
        result = await script(self.redis, _ADD_MEMBER)(
            keys=[
                keys.room_meta(room_id),
                keys.room_members(room_id),
                keys.user_rooms(user_id),
                keys.user_read(user_id),
                keys.room_mentions(room_id),
            ],
            args=[room_id, user_id, inviter],
        )
        if int(result) == 0:
            raise _no_such_room()
        if int(result) == -1:
            raise RoomError(NOT_ALLOWED, "nobody can be added to a direct conversation")

    async def leave(self, room_id: str, user: User) -> Room:
        if room_id == GENERAL:
            raise RoomError(NOT_ALLOWED, "general cannot be left")
        await self._remove_member(room_id, user.id, by="", admin=False)
        return await self._must_get(room_id)

    async def remove(self, room_id: str, by: User, user_id: str, *, admin: bool) -> Room:
        """The creator or an admin takes a member out of a public or private room."""
        if room_id == GENERAL:
            raise RoomError(NOT_ALLOWED, "nobody can be removed from general")
        await self._remove_member(room_id, user_id, by=by.id, admin=admin)
        return await self._must_get(room_id)

    async def _remove_member(self, room_id: str, user_id: str, by: str, admin: bool) -> None:
        if not ROOM_ID.fullmatch(room_id):
            raise _no_such_room()
        result = int(
            await script(self.redis, _REMOVE_MEMBER)(
                keys=[
                    keys.room_meta(room_id),
                    keys.room_members(room_id),
                    keys.user_rooms(user_id),
                    keys.user_read(user_id),
                ],
                args=[room_id, user_id, by, "1" if admin else "0"],
            )
        )
        if result == 0:
            raise _no_such_room()
        if result == -1:
            raise RoomError(
                NOT_ALLOWED, "nobody can leave or be removed from a direct conversation"
            )
        if result == -2:
            raise RoomError(NOT_ALLOWED, NOT_CREATOR)
        if result == -3:
            raise RoomError(BAD_REQUEST, "not a member")

    async def update(
        self,
        room_id: str,
        by: User,
        *,
        admin: bool,
        name: str | None,
        topic: str | None,
        archived: bool | None,
    ) -> Room:
        """Rename, change the topic, archive or unarchive (creator or admin)."""
        new_name = None if name is None else validate_room_name(name)
        new_topic = None if topic is None else validate_topic(topic)
        if room_id == GENERAL:
            await self._update_general(admin, new_name, new_topic, archived)
            return await self._must_get(GENERAL)
        for _ in range(8):
            current = await self.get(room_id)
            if current is None:
                raise _no_such_room()
            result = int(
                await script(self.redis, _UPDATE)(
                    keys=[
                        keys.ROOMS_NAMES,
                        keys.ROOMS_PUBLIC,
                        keys.room_meta(room_id),
                        keys.room_members(room_id),
                        keys.ROOMS_ARCHIVED,
                    ],
                    args=[
                        room_id,
                        by.id,
                        "1" if admin else "0",
                        current.name,
                        name_key(current.name),
                        new_name or "",
                        "" if new_name is None else name_key(new_name),
                        "0" if new_topic is None else "1",
                        new_topic or "",
                        "" if archived is None else ("1" if archived else "0"),
                    ],
                )
            )
            if result != -9:
                break
        self._raise_for_update(result)
        return await self._must_get(room_id)

    @staticmethod
    def _raise_for_update(result: int) -> None:
        if result == 0:
            raise _no_such_room()
        if result == -1:
            raise RoomError(NOT_ALLOWED, "a direct conversation cannot be changed")
        if result == -2:
            raise RoomError(NOT_ALLOWED, NOT_CREATOR)
        if result == -4:
            raise RoomError(BAD_REQUEST, NAME_TAKEN)
        if result == -9:
            raise RoomError(BAD_REQUEST, "the room was renamed meanwhile, try again")

    async def _update_general(
        self, admin: bool, name: str | None, topic: str | None, archived: bool | None
    ) -> None:
        """Only an admin changes general, and only its topic."""
        if not admin:
            raise RoomError(NOT_ALLOWED, NOT_CREATOR)
        if (name is not None and name != GENERAL) or archived:
            raise RoomError(NOT_ALLOWED, "general cannot be renamed or archived")
        if topic is not None:
            await self.redis.hset(keys.room_meta(GENERAL), "topic", topic)

    async def open_direct(self, user: User, other_ids: Sequence[str]) -> tuple[Room, bool]:
        """The direct room of `user` and 1 to 8 others, made on first use: (room, created)."""
        others = list(dict.fromkeys(i for i in other_ids if i != user.id))
        if not 1 <= len(others) <= MAX_DIRECT_OTHERS:
            raise RoomError(
                BAD_REQUEST, f"a direct conversation has 1 to {MAX_DIRECT_OTHERS} other people"
            )
        await self._check_active(others)
        people = sorted([user.id, *others])
        new_id = secrets.token_hex(8)
        created, room_id = await script(self.redis, _OPEN_DIRECT)(
            keys=[
                keys.ROOMS_DIRECT,
                keys.room_meta(new_id),
                keys.room_members(new_id),
                *(keys.user_rooms(i) for i in people),
            ],
            args=[direct_key(people), new_id, user.id, _now_ms(), *people],
        )
        return await self._must_get(as_text(room_id)), bool(int(created))

    async def mark_read(self, user_id: str, room_id: str, message_id: str) -> ReadState | None:
        """Move the user's marker to the message at or before `message_id`; None if that
        is not forward (or there is no such message)."""
        if not ROOM_ID.fullmatch(room_id) or not _STREAM_ID.fullmatch(message_id):
            return None
        point = await script(self.redis, _READ_POINT)(
            keys=[keys.room_history(room_id), keys.room_mentions(room_id)],
            args=[message_id, user_id, READ_SCAN_LIMIT, READ_SCAN],
        )
        if not point:
            return None  # no such message, or stored before rooms (every marker is past it)
        entry_id, seq, at_read, now = as_text(point[0]), *(int(v) for v in point[1:])
        read = ReadState(entry_id, seq, at_read, now)
        if not await advance_read(self.redis, user_id, room_id, entry_id, seq, at_read):
            return None
        return read
