"""Counts of this worker's sockets, mirrored to Redis by one writer task with a heartbeat.

Presence (connections per user) and the socket caps (sockets per user and per
address) keep the truth about this worker's sockets in memory and write it as
absolute counts: what changed as soon as it changes, everything on each
heartbeat. Absolute counts make a failed write harmless (the next full write
repairs it), and a worker whose heartbeat stops stops counting once its TTL
has passed, so a crashed worker's sockets are forgotten within that time.
"""

from __future__ import annotations

import asyncio
import logging
from collections import Counter

from redis.exceptions import RedisError

from .storage import raise_if_cancelled

log = logging.getLogger(__name__)

HEARTBEAT_SECONDS = 10.0
HEARTBEAT_TTL_SECONDS = 30.0
RETRY_SECONDS = 1.0


class WorkerCounts:
    """`_counts` in memory, written by `run` through the subclass's `_write`."""

    # What the counts are, for the log line when a write fails.
    what = "counts"

    def __init__(
        self,
        heartbeat_seconds: float = HEARTBEAT_SECONDS,
        ttl_seconds: float = HEARTBEAT_TTL_SECONDS,
    ) -> None:
        self.heartbeat_seconds = heartbeat_seconds
        self.ttl_seconds = ttl_seconds
        self._counts: Counter[str] = Counter()
        self._dirty: set[str] = set()
        self._wake = asyncio.Event()

    def _mark(self, *fields: str) -> None:
        self._dirty.update(fields)
        self._wake.set()

    def _uncount(self, *fields: str) -> None:
        for field in fields:
            self._counts[field] -= 1
            if self._counts[field] <= 0:
                del self._counts[field]
        self._mark(*fields)

    async def run(self) -> None:
        """Write changed counts as they happen and every count on each heartbeat."""
        loop = asyncio.get_running_loop()
        next_heartbeat = loop.time()
        while True:
            try:
                async with asyncio.timeout(max(0.0, next_heartbeat - loop.time())):
                    await self._wake.wait()
            except TimeoutError:
                pass
            self._wake.clear()
            full = loop.time() >= next_heartbeat
            fields = set(self._counts) if full else set(self._dirty)
            self._dirty.clear()
            try:
                await self._write(fields, full=full, ttl_seconds=self.ttl_seconds)
                raise_if_cancelled()
            except (RedisError, OSError) as error:
                log.warning("could not update %s: %s", self.what, error)
                # Write everything again soon: absolute counts make a retry safe.
                next_heartbeat = loop.time() + RETRY_SECONDS
                continue
            if full:
                next_heartbeat = loop.time() + self.heartbeat_seconds

    async def withdraw(self) -> None:
        """On shutdown: this worker's sockets stop counting at once."""
        self._counts.clear()
        await self._write(set(), full=True, ttl_seconds=0)

    async def _write(self, fields: set[str], *, full: bool, ttl_seconds: float) -> None:
        """Store `fields`' counts (all of this worker's when `full`) with a `ttl_seconds`
        heartbeat; a TTL of 0 withdraws the worker."""
        raise NotImplementedError
