"""Caps on open chat sockets per user and per client address, across every worker.

Each worker keeps its own counts in memory and mirrors them to Redis
(`{sockets}:worker:<id>`, a hash of `u:<user id>` and `a:<address>` counts),
with its heartbeat expiry in `{sockets}:workers`. A handshake is one script
call: it sums the live workers' counts, and stores this worker's new ones if
the socket is admitted. A closed socket only changes memory; one writer task
mirrors it at once (and every count on each heartbeat), so the close path
never waits on Redis. A crashed worker's counts stop counting when its
heartbeat expires, like presence (quart_chat/presence.py).
"""

from __future__ import annotations

import ipaddress
import logging
from typing import Any

from redis.asyncio import Redis

from . import keys
from .storage import Commands, script
from .workercounts import WorkerCounts

log = logging.getLogger(__name__)

# What a refused client is told to wait: sockets close at human pace.
RETRY_AFTER_SECONDS = 30
# Behind a misconfigured proxy the address is whatever a client sent.
MAX_ADDRESS_CHARS = 64

_NOW = """
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
"""

# KEYS: workers zset, this worker's hash.
# ARGV: worker id, heartbeat ttl ms, user field, address field ('' for none),
#       this worker's user count and address count with the new socket,
#       user cap, address cap, the prefix of every worker's hash (only the
#       script knows which workers are live; all share one slot).
# Returns 0 (admitted and stored), 1 (user at cap) or 2 (address at cap).
# Only the writer's heartbeat keeps a worker live: if that task died, the
# worker's counts (no longer kept up to date) stop counting.
_ADMIT = (
    _NOW
    + """
local users, addresses = tonumber(ARGV[5]), tonumber(ARGV[6])
for _, w in ipairs(redis.call('ZRANGEBYSCORE', KEYS[1], '(' .. now, '+inf')) do
  if w ~= ARGV[1] then
    local counts = redis.call('HMGET', ARGV[9] .. w, ARGV[3], ARGV[4])
    users = users + tonumber(counts[1] or '0')
    addresses = addresses + tonumber(counts[2] or '0')
  end
end
if users > tonumber(ARGV[7]) then return 1 end
if ARGV[4] ~= '' and addresses > tonumber(ARGV[8]) then return 2 end
redis.call('HSET', KEYS[2], ARGV[3], ARGV[5])
if ARGV[4] ~= '' then redis.call('HSET', KEYS[2], ARGV[4], ARGV[6]) end
redis.call('PEXPIRE', KEYS[2], ARGV[2])
return 0
"""
)

# KEYS: workers zset, this worker's hash.
# ARGV: worker id, heartbeat ttl ms (0: withdraw), full (1/0), the prefix of
#       every worker's hash, then (field, count) pairs.
_SYNC = (
    _NOW
    + """
local ttl = tonumber(ARGV[2])
if ARGV[3] == '1' then redis.call('DEL', KEYS[2]) end
if ttl == 0 then
  redis.call('ZREM', KEYS[1], ARGV[1])
  return 0
end
redis.call('ZADD', KEYS[1], now + ttl, ARGV[1])
for i = 5, #ARGV, 2 do
  if tonumber(ARGV[i + 1]) > 0 then
    redis.call('HSET', KEYS[2], ARGV[i], ARGV[i + 1])
  else
    redis.call('HDEL', KEYS[2], ARGV[i])
  end
end
redis.call('PEXPIRE', KEYS[2], ttl)
for _, w in ipairs(redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', now)) do
  redis.call('DEL', ARGV[4] .. w)
  redis.call('ZREM', KEYS[1], w)
end
return 0
"""
)


class SocketCapReached(Exception):
    """The handshake would go over a cap; `code` names which."""

    def __init__(self, code: str) -> None:
        super().__init__(code)
        self.code = code
        self.retry_after = RETRY_AFTER_SECONDS


def address_key(host: str | None) -> str | None:
    """What the per-address cap counts: the IP, or its /64 for IPv6, where one
    subscriber usually holds the whole network."""
    if not host:
        return None  # a Unix socket: no address to tell clients apart by
    try:
        address = ipaddress.ip_address(host)
    except ValueError:
        return host[:MAX_ADDRESS_CHARS]
    if isinstance(address, ipaddress.IPv6Address):
        if address.ipv4_mapped is not None:
            return str(address.ipv4_mapped)
        return str(ipaddress.IPv6Network((address, 64), strict=False))
    return str(address)


class SocketCaps(WorkerCounts):
    what = "socket counts"

    def __init__(
        self,
        redis: Redis,
        worker_id: str,
        max_per_user: int,
        max_per_address: int,
        handshakes: Commands | None = None,
    ) -> None:
        super().__init__()
        self.worker_id = worker_id
        self.max_per_user = max_per_user
        self.max_per_address = max_per_address
        self._key = keys.socket_worker(worker_id)
        # Every handshake of a reconnect storm admits at once: through the
        # worker's pipeline (`Pipelined`), not a pool connection each. The
        # script writes absolute counts, so running it twice is harmless.
        self._admit = script(handshakes or redis, _ADMIT)
        self._sync = script(redis, _SYNC)

    async def admit(self, user_id: str, address: str | None) -> None:
        """Count a new socket of this user from this address, or raise `SocketCapReached`.

        One Redis round trip. Every admitted socket must be `release`d.
        """
        user_field = f"u:{user_id}"
        address_field = "" if address is None else f"a:{address}"
        fields = [user_field] if address is None else [user_field, address_field]
        # Reserved before the call, so a concurrent write from memory includes it.
        for field in fields:
            self._counts[field] += 1
        try:
            refused = await self._admit(
                keys=[keys.SOCKET_WORKERS, self._key],
                args=[
                    self.worker_id,
                    int(self.ttl_seconds * 1000),
                    user_field,
                    address_field,
                    self._counts[user_field],
                    self._counts[address_field] if address is not None else 0,
                    self.max_per_user,
                    self.max_per_address,
                    keys.SOCKET_WORKER_PREFIX,
                ],
            )
        except BaseException:
            # Redis may have stored the counts before failing: rewrite them.
            self._uncount(*fields)
            raise
        if int(refused):
            # A write from memory meanwhile may have stored the reservation.
            self._uncount(*fields)
            raise SocketCapReached(
                "too_many_sockets" if int(refused) == 1 else "too_many_sockets_from_address"
            )

    def release(self, user_id: str, address: str | None) -> None:
        """The socket is gone; synchronous, for `finally` blocks."""
        fields = [f"u:{user_id}"] if address is None else [f"u:{user_id}", f"a:{address}"]
        self._uncount(*fields)

    async def _write(self, fields: set[str], *, full: bool, ttl_seconds: float) -> None:
        args: list[Any] = [
            self.worker_id,
            int(ttl_seconds * 1000),
            "1" if full else "0",
            keys.SOCKET_WORKER_PREFIX,
        ]
        for field in fields:
            args += [field, self._counts.get(field, 0)]
        await self._sync(keys=[keys.SOCKET_WORKERS, self._key], args=args)
