"""Changes to posted messages (SPEC §9): edits, deletions and reactions.

Each change is an event entry in the room's stream (fields `kind`, `target`,
`user`, `name`, and `text` or `emoji` + `on`), so `join after` replays it in
order with the messages, and one hash per room (`keys.room_state`) holds each
changed message's current state, so that history shows it without replaying
anything. One Lua script checks, appends, updates the state and publishes,
like the post script: a change is never live before it is stored, and is
published in stream order.

Event entries are not messages: they do not count in the room's `seq` (unread
counts), do not move `last_id`, and are published as `V <id> <user> <frame>`
so that fanout orders them like messages for joined and joining sockets but
never bumps a watching socket's unread count.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any, cast

from redis.asyncio import Redis

from .. import keys
from ..realtime.protocol import change_frame_parts
from ..storage import Commands, as_text, script
from .rooms import GENERAL
from .users import User

EDIT = "edit"
DELETE = "delete"
REACT = "react"
# At most this many distinct emoji on one message (SPEC §9).
MAX_DISTINCT_REACTIONS = 20
# A message object lists at most this many reactors per emoji (and the count).
REACTION_USERS_SHOWN = 10

# KEYS: stream, state hash, channel, meta, members (all in the room's slot).
# ARGV: 1 max length, 2 user id, 3 user name, 4 target id, 5 kind,
#       6 text (edit) or emoji (react) or '', 7 '1' on / '0' off (react),
#       8 '1' if the user is an admin, 9 '1' to check membership (not general),
#       10 the frame up to before its id, 11 the frame after its ts,
#       12 the most distinct emoji per message.
# Returns {-1} not a member (or no such room, archived), {-2} no such message,
# {-3} not the author (nor, for a deletion, an admin), {-4} already deleted,
# {-5} too many distinct emoji, {0} nothing to change (a reaction already on
# or off), {1, id, frame} stored and published.
_CHANGE = """
if ARGV[9] == '1' and (redis.call('HGET', KEYS[4], 'archived') ~= '0'
    or redis.call('SISMEMBER', KEYS[5], ARGV[2]) == 0) then
  return {-1}
end
local found = redis.call('XRANGE', KEYS[1], ARGV[4], ARGV[4])
if #found == 0 then return {-2} end
local fields = found[1][2]
local author = nil
for i = 1, #fields, 2 do
  if fields[i] == 'kind' then return {-2} end
  if fields[i] == 'user' then author = fields[i + 1] end
end
local raw = redis.call('HGET', KEYS[2], ARGV[4])
local state = {}
if raw then state = cjson.decode(raw) end
if state.deleted then return {-4} end
local kind = ARGV[5]
if kind == 'edit' then
  if author ~= ARGV[2] then return {-3} end
elseif kind == 'delete' then
  if author ~= ARGV[2] and ARGV[8] ~= '1' then return {-3} end
else
  local reactions = state.reactions or {}
  local users = reactions[ARGV[6]]
  local at = nil
  if users then
    for i, u in ipairs(users) do if u == ARGV[2] then at = i end end
  end
  if ARGV[7] == '1' then
    if at then return {0} end
    if not users then
      local n = 0
      for _ in pairs(reactions) do n = n + 1 end
      if n >= tonumber(ARGV[12]) then return {-5} end
      users = {}
      reactions[ARGV[6]] = users
    end
    table.insert(users, ARGV[2])
  else
    if not at then return {0} end
    table.remove(users, at)
    if #users == 0 then reactions[ARGV[6]] = nil end
  end
  state.reactions = reactions
end
local id
if kind == 'edit' then
  id = redis.call('XADD', KEYS[1], 'MAXLEN', '~', ARGV[1], '*', 'kind', kind,
    'target', ARGV[4], 'user', ARGV[2], 'name', ARGV[3], 'text', ARGV[6])
  state.text = ARGV[6]
  state.edited_id = id
elseif kind == 'delete' then
  id = redis.call('XADD', KEYS[1], 'MAXLEN', '~', ARGV[1], '*', 'kind', kind,
    'target', ARGV[4], 'user', ARGV[2], 'name', ARGV[3])
  state = {deleted = true}
else
  id = redis.call('XADD', KEYS[1], 'MAXLEN', '~', ARGV[1], '*', 'kind', kind,
    'target', ARGV[4], 'user', ARGV[2], 'name', ARGV[3], 'emoji', ARGV[6], 'on', ARGV[7])
end
redis.call('HSET', KEYS[2], ARGV[4], cjson.encode(state))
local ts = string.match(id, '^%d+')
local frame = ARGV[10] .. ',"id":"' .. id .. '","ts":' .. ts .. ARGV[11]
redis.call('PUBLISH', KEYS[3], 'V ' .. id .. ' ' .. ARGV[2] .. ' ' .. frame)
return {1, id, frame}
"""

_REFUSALS = {
    -1: "not_member",
    -2: "no_message",
    -3: "not_yours",
    -4: "deleted",
    -5: "too_many",
}


class ChangeRefused(Exception):
    """The change cannot be made; `reason` is one of the values of `_REFUSALS`."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


@dataclass(frozen=True, slots=True)
class Change:
    """An event entry of a room's stream, as read back (for `join after`)."""

    room: str
    id: str
    kind: str
    target: str
    user_id: str
    user_name: str
    text: str = ""
    emoji: str = ""
    on: bool = True

    def frame(self) -> str:
        head, tail = change_frame_parts(
            self.room, self.kind, self.target, self.user_id, self.user_name, self._value(), self.on
        )
        ts = self.id.partition("-")[0]
        return f'{head},"id":"{self.id}","ts":{ts}{tail}'

    def _value(self) -> str:
        return self.text if self.kind == EDIT else self.emoji


@dataclass(frozen=True, slots=True)
class MessageState:
    """What changed about one message: its edit, its deletion, its reactions."""

    text: str | None = None
    edited_id: str | None = None
    deleted: bool = False
    reactions: tuple[tuple[str, tuple[str, ...]], ...] = ()

    @classmethod
    def parse(cls, raw: str) -> MessageState:
        data = json.loads(raw)
        reactions = data.get("reactions") or {}
        return cls(
            text=data.get("text"),
            edited_id=data.get("edited_id"),
            deleted=bool(data.get("deleted")),
            # Lua tables keep no order: the most used first, then by the emoji itself.
            reactions=tuple(
                sorted(
                    ((emoji, tuple(users)) for emoji, users in reactions.items() if users),
                    key=lambda item: (-len(item[1]), item[0]),
                )
            ),
        )

    def fields(self, viewer: str | None) -> dict[str, Any]:
        """The fields a message object gains (SPEC §9), as `viewer` sees them."""
        out: dict[str, Any] = {}
        if self.deleted:
            out["deleted"] = True
            out["text"] = ""
            return out
        if self.edited_id is not None and self.text is not None:
            out["text"] = self.text
            out["edited_ts"] = int(self.edited_id.partition("-")[0])
        if self.reactions:
            out["reactions"] = [
                {
                    "emoji": emoji,
                    "count": len(users),
                    "users": list(users[:REACTION_USERS_SHOWN]),
                    "me": viewer in users,
                }
                for emoji, users in self.reactions
            ]
        return out


class MessageChanges:
    def __init__(self, redis: Redis, max_per_room: int, reads: Commands | None = None) -> None:
        self.reads: Commands = reads or redis
        self.max_per_room = max_per_room
        self._change = script(redis, _CHANGE)

    async def change(
        self,
        room: str,
        user: User,
        target: str,
        kind: str,
        value: str = "",
        *,
        on: bool = True,
        admin: bool = False,
    ) -> str | None:
        """Store and publish a change; its event frame, or None when there was nothing
        to change (a reaction already on, or off). Raises `ChangeRefused`."""
        head, tail = change_frame_parts(room, kind, target, user.id, user.name, value, on)
        result = await self._change(
            keys=[
                keys.room_history(room),
                keys.room_state(room),
                keys.room_channel(room),
                keys.room_meta(room),
                keys.room_members(room),
            ],
            args=[
                self.max_per_room,
                user.id,
                user.name,
                target,
                kind,
                value,
                "1" if on else "0",
                "1" if admin else "0",
                "0" if room == GENERAL else "1",
                head,
                tail,
                MAX_DISTINCT_REACTIONS,
            ],
        )
        code = int(result[0])
        if code < 0:
            raise ChangeRefused(_REFUSALS[code])
        return as_text(result[2]) if code == 1 else None

    async def states(self, room: str, ids: list[str]) -> dict[str, MessageState]:
        """The current state of those of `ids` that were ever changed."""
        if not ids:
            return {}
        raw = cast(
            list[bytes | None],
            await self.reads.execute_command("HMGET", keys.room_state(room), *ids),
        )
        return {i: MessageState.parse(as_text(r)) for i, r in zip(ids, raw, strict=True) if r}


def change_from_entry(room: str, raw_id: bytes, fields: dict[bytes, bytes]) -> Change:
    return Change(
        room,
        as_text(raw_id),
        as_text(fields[b"kind"]),
        as_text(fields[b"target"]),
        as_text(fields[b"user"]),
        as_text(fields.get(b"name", b"")),
        text=as_text(fields.get(b"text", b"")),
        emoji=as_text(fields.get(b"emoji", b"")),
        on=fields.get(b"on", b"1") == b"1",
    )
