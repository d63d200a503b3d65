"""What one worker process shares between all its WebSockets, started and stopped with the app."""

from __future__ import annotations

import asyncio
import logging
import random
import secrets
from collections.abc import Awaitable, Callable

from redis.asyncio import Redis
from redis.exceptions import RedisError

from .. import keys
from ..config import Settings
from ..mail import make_mailer
from ..migrations import migrate
from ..models.changes import MessageChanges
from ..models.messages import RoomHistory
from ..models.rooms import RoomStore
from ..notify import Notifier
from ..outbox import CLAIM_MARGIN_SECONDS, MailOutbox
from ..presence import PresenceTracker
from ..socketcaps import SocketCaps
from ..storage import Pipelined, raise_if_cancelled
from .bus import Bus
from .fanout import Fanout
from .outbox import CLOSE_SERVER_ERROR
from .sweeps import sweep_idle, sweep_sessions

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
    """The worker's pub/sub `bus`, the `fanout` it feeds, and the models the sockets use."""

    def __init__(self, settings: Settings, redis: Redis, redis_url: str) -> None:
        self.settings = settings
        self.redis = redis
        self.worker_id = secrets.token_hex(6)
        self.bus = Bus(redis_url, self.worker_id, self._dispatch, self._bus_up, self._bus_down)
        self.fanout = Fanout(self.bus)
        self.presence = PresenceTracker(redis, self.worker_id, keys.PRESENCE_CHANNEL)
        # Handshakes, `ready`, joins and the membership check of every room
        # frame read through this: a burst of them costs a round trip per
        # pipeline, not per socket.
        self.pipelined = Pipelined(redis)
        self.history = RoomHistory(redis, settings.history_per_room, reads=self.pipelined)
        self.changes = MessageChanges(redis, settings.history_per_room, reads=self.pipelined)
        self.rooms = RoomStore(redis, reads=self.pipelined)
        self.outbox = MailOutbox(
            redis,
            make_mailer(settings),
            self.worker_id,
            claim_idle_seconds=settings.smtp_timeout_seconds + CLAIM_MARGIN_SECONDS,
        )
        self.socket_caps = SocketCaps(
            redis,
            self.worker_id,
            settings.max_sockets_per_user,
            settings.max_sockets_per_address,
            handshakes=self.pipelined,
        )
        self.notifier = Notifier(redis, settings, self.rooms, self.presence)
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
        try:
            await self.rooms.ensure_general()
        except (RedisError, OSError) as error:
            log.error("could not create the general room (%s); the next start will", error)
        loops: dict[str, Callable[[], Awaitable[None]]] = {
            "chat-pubsub": self.bus.listen,
            "chat-session-sweep": lambda: sweep_sessions(self.fanout, self.pipelined),
            "chat-idle-sweep": lambda: sweep_idle(
                self.fanout, self.settings.ws_idle_timeout_seconds
            ),
            "chat-presence": self.presence.run,
            "chat-socket-caps": self.socket_caps.run,
            "mail-outbox": self.outbox.run,
            "notify-email": self.notifier.run,
        }
        self._tasks = [
            asyncio.create_task(supervise(name, run), name=name) for name, run in loops.items()
        ]
        # Serve at once if Redis is down; sockets are refused until it is back.
        try:
            async with asyncio.timeout(START_WAIT_SECONDS):
                await self.bus.wait_subscribed()
        except TimeoutError:
            log.warning("Redis pub/sub is not ready yet; WebSockets are refused until it is")

    def _dispatch(self, channel: str, data: str) -> None:
        """Where each pub/sub message goes: called by the bus for every one, in order."""
        room = keys.room_of_channel(channel)
        if room is not None:
            self.fanout.room_payload(room, data)
            return
        user_id = keys.user_of_channel(channel)
        if user_id is not None:
            self.fanout.user_payload(user_id, data)
        elif channel == keys.PRESENCE_CHANNEL:
            # Started sockets only: the `ready` of the others, still to come,
            # lists everyone as of this announcement (`PresenceTracker.online`).
            self.presence.observe(data)
            self.fanout.broadcast(data)
        elif channel == keys.SESSION_REVOKED_CHANNEL:
            self.fanout.close_session(data)
        elif channel == keys.USERS_CHANNEL:
            self.fanout.user_changed(data)
        else:
            log.warning("ignored a message on channel %s", channel)

    def _bus_up(self) -> None:
        self.presence.pubsub_up()

    def _bus_down(self) -> None:
        """Every socket may have missed messages: close them all; clients reconnect and
        `join after` what they have."""
        self.presence.pubsub_down()
        self.fanout.close_every(CLOSE_SERVER_ERROR)

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
