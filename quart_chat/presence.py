"""Who is online, counted per user across every worker, with heartbeats and expiry.

Each worker keeps the truth about its own sockets in memory and mirrors it to
Redis from one writer task: `{presence}:worker:<id>` holds its per-user
connection counts and `{presence}:workers` the time each worker's heartbeat
expires. A user is online while any live worker counts them. One Lua script
applies a batch of counts, announces the transitions (first tab anywhere:
online; last tab anywhere: offline) and reaps workers whose heartbeat
stopped, so a crashed worker's users go offline within HEARTBEAT_TTL.
Because the writer sends absolute counts from memory, a failed write (Redis
down) is repaired by the next heartbeat.

Every `ready` frame lists who is online. Reading that from Redis scans every
worker's hash for every user, which a reconnect storm of N sockets made
O(N²) and which stalled Redis for seconds. Instead each worker keeps the list
in memory: one snapshot from Redis, kept current by the announcements the
worker receives anyway on pub/sub (`observe`), refreshed now and then as a
safety net, and kept only while the pub/sub connection is up (`pubsub_up`,
`pubsub_down`); without one, every call reads Redis.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from typing import Any

from redis.asyncio import Redis

from . import keys
from .models.users import User
from .realtime.protocol import DEFAULT_ROOM, encode
from .storage import as_text, script
from .workercounts import HEARTBEAT_SECONDS, HEARTBEAT_TTL_SECONDS, WorkerCounts

log = logging.getLogger(__name__)

# The in-memory online list is rebuilt from Redis this often even though
# announcements keep it current: a safety net, not the mechanism.
ONLINE_REFRESH_SECONDS = 30.0

# Other workers' hashes are named by ARGV[1] (their prefix) and the ids in the
# workers set: only the script knows which are live. All share one slot.
_TOTAL = """
local function worker_key(w) return ARGV[1] .. w end
local function now_ms()
  local t = redis.call('TIME')
  return tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
end
local function live_workers(now)
  return redis.call('ZRANGEBYSCORE', KEYS[1], '(' .. now, '+inf')
end
local function total(live, user)
  local n = 0
  for _, w in ipairs(live) do
    n = n + tonumber(redis.call('HGET', worker_key(w), user) or '0')
  end
  return n
end
"""

# KEYS: workers zset, names hash, this worker's hash.
# ARGV: worker hash prefix, worker id, heartbeat ttl ms, full sync (1/0),
#       channel, room JSON, then (user id, count, public user JSON) for each
#       user to set.
_SYNC = (
    _TOTAL
    + """
local me = ARGV[2]
local mine = KEYS[3]
local now = now_ms()
local ttl = tonumber(ARGV[3])
-- Live while this runs even when withdrawing (ttl 0), so its users' totals drop to 0 here.
redis.call('ZADD', KEYS[1], now + math.max(ttl, 1000), me)

local function announce(user, status)
  local public = redis.call('HGET', KEYS[2], user)
  if public then
    redis.call('PUBLISH', ARGV[5], '{"type":"presence","room":' .. ARGV[6] .. ',"user":'
      .. public .. ',"status":"' .. status .. '"}')
  end
end

local function set_count(user, count)
  local live = live_workers(now)
  local before = total(live, user)
  if count > 0 then
    redis.call('HSET', mine, user, count)
  else
    redis.call('HDEL', mine, user)
  end
  local after = total(live, user)
  if before == 0 and after > 0 then
    announce(user, 'online')
  elseif before > 0 and after == 0 then
    announce(user, 'offline')
  end
end

local given = {}
for i = 7, #ARGV, 3 do
  given[ARGV[i]] = true
  if tonumber(ARGV[i + 1]) > 0 then redis.call('HSET', KEYS[2], ARGV[i], ARGV[i + 2]) end
  set_count(ARGV[i], tonumber(ARGV[i + 1]))
end
if ARGV[4] == '1' then
  for _, user in ipairs(redis.call('HKEYS', mine)) do
    if not given[user] then set_count(user, 0) end
  end
end

if ttl == 0 then
  redis.call('ZREM', KEYS[1], me)
  redis.call('DEL', mine)
end

for _, w in ipairs(redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', now)) do
  local users = redis.call('HKEYS', worker_key(w))
  redis.call('DEL', worker_key(w))
  redis.call('ZREM', KEYS[1], w)
  local live = live_workers(now)
  for _, user in ipairs(users) do
    if total(live, user) == 0 then announce(user, 'offline') end
  end
end
return 1
"""
)

# KEYS: workers zset, names hash. ARGV: worker hash prefix.
# Returns the public JSON of every online user.
_ONLINE = (
    _TOTAL
    + """
local seen = {}
local out = {}
for _, w in ipairs(live_workers(now_ms())) do
  for _, user in ipairs(redis.call('HKEYS', worker_key(w))) do
    if not seen[user] then
      seen[user] = true
      local public = redis.call('HGET', KEYS[2], user)
      if public then table.insert(out, public) end
    end
  end
end
return out
"""
)


class PresenceTracker(WorkerCounts):
    """This worker's open connections per user, mirrored to Redis by one writer task.

    `add` and `remove` never wait, so a socket's cleanup cannot be held up by Redis.
    """

    what = "presence"

    def __init__(
        self,
        redis: Redis,
        worker_id: str,
        channel: str,
        heartbeat_seconds: float = HEARTBEAT_SECONDS,
        ttl_seconds: float = HEARTBEAT_TTL_SECONDS,
    ) -> None:
        super().__init__(heartbeat_seconds, ttl_seconds)
        self.redis = redis
        self.worker_id = worker_id
        self.channel = channel
        # This worker's users as public JSON, encoded once per add.
        self._users: dict[str, str] = {}
        self._sync = script(redis, _SYNC)
        self._online = script(redis, _ONLINE)
        # Everyone online on any worker (user id -> public JSON), or None until
        # the first snapshot and after pub/sub was lost (announcements missed).
        self._known: dict[str, str] | None = None
        self._known_at = 0.0
        self._known_json: str | None = None  # the values as a JSON array body, until a change
        # Announcements received while a snapshot is being read, replayed onto it.
        self._heard_meanwhile: list[tuple[str, str | None]] | None = None
        self._snapshot: asyncio.Task[None] | None = None
        self._generation = 0
        self._fed = False

    def add(self, user: User) -> None:
        self._counts[user.id] += 1
        self._users[user.id] = encode(user.public())
        self._mark(user.id)

    def remove(self, user: User) -> None:
        self._uncount(user.id)

    def has(self, user_id: str) -> bool:
        """Whether the user has a socket open on this worker."""
        return self._counts.get(user_id, 0) > 0

    async def online(self) -> list[dict[str, str]]:
        result: list[dict[str, str]] = json.loads(await self.online_json())
        return result

    async def online_json(self) -> str:
        """Everyone online on any live worker, including this worker's not yet written
        users, as a JSON array of public users: encoded once per change, not per socket.

        The list reflects every announcement this worker had received when the
        call returns, so a socket that starts right after it (without awaiting
        in between) needs only the announcements that come later.
        """
        if not self._fed:
            known = await self._read_online()
            body = ",".join(known.values())
        else:
            if self._known is None or time.monotonic() - self._known_at > ONLINE_REFRESH_SECONDS:
                if self._snapshot is None:
                    self._snapshot = asyncio.create_task(self._take_snapshot())
                # Shared by every caller meanwhile; one caller's cancellation is not theirs.
                await asyncio.shield(self._snapshot)
            known = self._known or {}
            if self._known_json is None:
                self._known_json = ",".join(known.values())
            body = self._known_json
        extra = [self._users[uid] for uid in self._counts if uid not in known]
        if extra:
            body = ",".join([body, *extra]) if body else ",".join(extra)
        return f"[{body}]"

    async def _take_snapshot(self) -> None:
        generation = self._generation
        heard = self._heard_meanwhile = []
        try:
            known = await self._read_online()
        finally:
            self._heard_meanwhile = None
            self._snapshot = None
        if generation != self._generation:
            return  # pub/sub was lost meanwhile: the next call reads again
        # An announcement may have been published before or after the snapshot
        # was read; they arrive in publish order, so replaying all of them in
        # order leaves each user as their last announcement says.
        for user_id, public in heard:
            _apply(known, user_id, public)
        self._known, self._known_at, self._known_json = known, time.monotonic(), None

    async def _read_online(self) -> dict[str, str]:
        stored = await self._online(
            keys=[keys.PRESENCE_WORKERS, keys.PRESENCE_NAMES], args=[keys.PRESENCE_WORKER_PREFIX]
        )
        known = {}
        for item in stored:
            public = as_text(item)
            known[json.loads(public)["id"]] = public
        return known

    def observe(self, frame: str) -> None:
        """A presence announcement from pub/sub (any worker's, in publish order)."""
        try:
            announced = json.loads(frame)
            user = announced["user"]
            user_id = user["id"]
            public = encode(user) if announced["status"] == "online" else None
        except (ValueError, TypeError, KeyError):
            # Not ours (anyone with Redis access can publish): the list is no
            # longer known to be current, so read it again rather than fail.
            log.warning("ignoring a malformed presence announcement: %.200r", frame)
            self._known = self._known_json = None
            return
        if self._heard_meanwhile is not None:
            self._heard_meanwhile.append((user_id, public))
        if self._known is not None:
            _apply(self._known, user_id, public)
            self._known_json = None

    def pubsub_up(self) -> None:
        """Subscribed: every announcement from now on reaches `observe`."""
        self._fed = True

    def pubsub_down(self) -> None:
        """Pub/sub was lost, and announcements with it: read Redis until it is back."""
        self._fed = False
        self._known = self._known_json = None
        self._generation += 1

    async def _write(self, fields: set[str], *, full: bool, ttl_seconds: float) -> None:
        users = fields
        args: list[Any] = [
            keys.PRESENCE_WORKER_PREFIX,
            self.worker_id,
            int(ttl_seconds * 1000),
            "1" if full else "0",
            self.channel,
            encode(DEFAULT_ROOM),
        ]
        for user_id in users:
            public = self._users.get(user_id) or encode({"id": user_id, "name": ""})
            args += [user_id, self._counts.get(user_id, 0), public]
        await self._sync(
            keys=[keys.PRESENCE_WORKERS, keys.PRESENCE_NAMES, keys.presence_worker(self.worker_id)],
            args=args,
        )
        for user_id in users:
            if user_id not in self._counts:
                self._users.pop(user_id, None)


def _apply(known: dict[str, str], user_id: str, public: str | None) -> None:
    """An announcement: `public` JSON for online, None for offline."""
    if public is None:
        known.pop(user_id, None)
    else:
        known[user_id] = public
