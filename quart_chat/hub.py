"""What one worker process shares between all its WebSockets, started and stopped with the app."""

from __future__ import annotations

import asyncio
import logging

from redis.asyncio import Redis
from redis.exceptions import RedisError

from .broker import PRESENCE_CHANNEL, Broker
from .config import Settings
from .history import RoomHistory
from .mail import make_mailer
from .outbox import CLAIM_MARGIN_SECONDS, MailOutbox
from .presence import PresenceTracker
from .socketcaps import SocketCaps

log = logging.getLogger(__name__)

START_WAIT_SECONDS = 5.0
STOP_WAIT_SECONDS = 2.0


class ChatHub:
    def __init__(self, settings: Settings, redis: Redis, redis_url: str) -> None:
        self.settings = settings
        self.redis = redis
        self.broker = Broker(redis_url, redis)
        self.presence = PresenceTracker(redis, self.broker.worker_id, PRESENCE_CHANNEL)
        self.history = RoomHistory(redis, settings.history_per_room)
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
        )
        self._tasks: list[asyncio.Task[None]] = []

    async def start(self) -> None:
        self._tasks = [
            asyncio.create_task(self.broker.listen(), name="chat-pubsub"),
            asyncio.create_task(self.broker.sweep_sessions(), name="chat-session-sweep"),
            asyncio.create_task(self.presence.run(), name="chat-presence"),
            asyncio.create_task(self.outbox.run(), name="mail-outbox"),
            asyncio.create_task(self.socket_caps.run(), name="chat-socket-caps"),
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
        try:
            async with asyncio.timeout(STOP_WAIT_SECONDS):
                await self.presence.withdraw()
        except (RedisError, OSError, TimeoutError) as error:
            log.warning("could not withdraw presence at shutdown: %s", error)
        try:
            async with asyncio.timeout(STOP_WAIT_SECONDS):
                await self.socket_caps.withdraw()
        except (RedisError, OSError, TimeoutError) as error:
            log.warning("could not withdraw socket counts at shutdown: %s", error)
