"""What one worker process shares between all its WebSockets, started and stopped with the app."""

from __future__ import annotations

import asyncio
import logging
import random
from collections.abc import Awaitable, Callable

from redis.asyncio import Redis
from redis.exceptions import RedisError

from .. import keys
from ..config import Settings
from ..mail import make_mailer
from ..migrations import migrate
from ..models.messages import RoomHistory
from ..outbox import CLAIM_MARGIN_SECONDS, MailOutbox
from ..presence import PresenceTracker
from ..socketcaps import SocketCaps
from ..storage import Pipelined, raise_if_cancelled
from .broker import Broker

log = logging.getLogger(__name__)

START_WAIT_SECONDS = 5.0
STOP_WAIT_SECONDS = 2.0
# A loop that fails is restarted after a capped, jittered backoff; one that ran
# this long before failing starts again from the first step.
RESTART_FIRST_SECONDS = 0.5
RESTART_MAX_SECONDS = 30.0
RESTART_RESET_SECONDS = 60.0


async def supervise(name: str, run: Callable[[], Awaitable[None]]) -> None:
    """Run a background loop for the life of the worker, restarting it whenever it ends.

    The loops handle the failures they expect (Redis going away) themselves;
    anything else is a bug, and a worker whose presence writer or listener
    silently stopped would look healthy while other workers reap its users as
    offline. So: log it with its traceback, wait, start again. Only
    cancellation (shutdown) stops a supervised loop.
    """
    loop = asyncio.get_running_loop()
    backoff = RESTART_FIRST_SECONDS
    while True:
        started = loop.time()
        try:
            await run()
        except Exception:
            failure = "failed"
            log.exception("background task %s failed", name)
        else:
            failure = "returned"
        raise_if_cancelled()
        if loop.time() - started >= RESTART_RESET_SECONDS:
            backoff = RESTART_FIRST_SECONDS
        delay = backoff * random.uniform(0.5, 1.0)
        log.error("background task %s %s; restarting it in %.1fs", name, failure, delay)
        await asyncio.sleep(delay)
        backoff = min(backoff * 2, RESTART_MAX_SECONDS)


class ChatHub:
    def __init__(self, settings: Settings, redis: Redis, redis_url: str) -> None:
        self.settings = settings
        self.redis = redis
        self.broker = Broker(redis_url, redis, settings.ws_idle_timeout_seconds)
        self.presence = PresenceTracker(redis, self.broker.worker_id, keys.PRESENCE_CHANNEL)
        self.broker.presence_observer = self.presence
        # Handshakes, `ready` and joins read through this: a burst of them costs
        # a round trip per pipeline, not per socket.
        self.pipelined = Pipelined(redis)
        self.history = RoomHistory(redis, settings.history_per_room, reads=self.pipelined)
        self.outbox = MailOutbox(
            redis,
            make_mailer(settings),
            self.broker.worker_id,
            claim_idle_seconds=settings.smtp_timeout_seconds + CLAIM_MARGIN_SECONDS,
        )
        self.socket_caps = SocketCaps(
            redis,
            self.broker.worker_id,
            settings.max_sockets_per_user,
            settings.max_sockets_per_address,
            handshakes=self.pipelined,
        )
        self._tasks: list[asyncio.Task[None]] = []

    async def start(self) -> None:
        try:
            await migrate(self.redis)
        except (RedisError, OSError) as error:
            # Serving anyway, like the loops below; the next start migrates.
            log.error(
                "could not check Redis key names (%s): data written under older names "
                "stays out of sight until a worker starts with Redis up",
                error,
            )
        loops: dict[str, Callable[[], Awaitable[None]]] = {
            "chat-pubsub": self.broker.listen,
            "chat-session-sweep": self.broker.sweep_sessions,
            "chat-idle-sweep": self.broker.sweep_idle,
            "chat-presence": self.presence.run,
            "chat-socket-caps": self.socket_caps.run,
            "mail-outbox": self.outbox.run,
        }
        self._tasks = [
            asyncio.create_task(supervise(name, run), name=name) for name, run in loops.items()
        ]
        # Serve at once if Redis is down; sockets are refused until it is back.
        try:
            async with asyncio.timeout(START_WAIT_SECONDS):
                await self.broker.wait_subscribed()
        except TimeoutError:
            log.warning("Redis pub/sub is not ready yet; WebSockets are refused until it is")

    async def stop(self) -> None:
        for task in self._tasks:
            task.cancel()
        try:
            async with asyncio.timeout(STOP_WAIT_SECONDS):
                await asyncio.gather(*self._tasks, return_exceptions=True)
        except TimeoutError:
            log.warning("chat background tasks did not stop in %ss", STOP_WAIT_SECONDS)
        for counts in (self.presence, self.socket_caps):
            try:
                async with asyncio.timeout(STOP_WAIT_SECONDS):
                    await counts.withdraw()
            except (RedisError, OSError, TimeoutError) as error:
                log.warning("could not withdraw %s at shutdown: %s", counts.what, error)
