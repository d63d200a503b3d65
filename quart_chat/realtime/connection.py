"""One chat WebSocket after its handshake: the `ready` frame, then its frames one at a time.

The task the server runs the socket in reads and serves client frames; frames
to the client go through the socket's `Subscriber`, whose outbox is drained by
a task that exists only while there is something to send. A server-side close
(`Subscriber.close`: logout, a full outbox, Redis lost) cancels the serving
task, which then returns the close code; the client leaving ends the loop.
Cleanup is synchronous and in `finally`, so it runs on every path.
"""

from __future__ import annotations

import asyncio
import logging
import math
import time
from typing import Any

from hypercorn.typing import ASGIReceiveCallable, ASGISendCallable
from redis.exceptions import RedisError

from .. import keys
from ..models.messages import JOIN_BACKLOG_MAX, JOIN_LAST, JOIN_PAGE, Page
from ..models.sessions import session_exists
from ..models.users import User
from ..ratelimit import hit_limit
from ..storage import is_refusal, raise_if_cancelled
from .broker import CLOSE_LOGGED_OUT, CLOSE_SERVER_ERROR, Subscriber
from .hub import ChatHub
from .protocol import (
    BAD_REQUEST,
    PONG,
    RATE_LIMITED,
    ROOMS,
    UNAVAILABLE,
    ClientFrame,
    FrameError,
    History,
    Join,
    Ping,
    Send,
    Typing,
    encode,
    parse_frame,
)

log = logging.getLogger(__name__)
SEND_WINDOW_SECONDS = 60
# `join` and `history` answer with up to ~100 messages each: limited per user
# (CHAT_BACKLOG_REQUESTS_PER_MINUTE, across tabs and workers) and per socket,
# so one runaway tab cannot use up its user's other tabs' share. The socket's
# count is in memory: a flood from one socket costs no Redis call.
BACKLOG_WINDOW_SECONDS = 60
BACKLOG_REQUESTS_PER_SOCKET = 20
# At most one pong per this interval on a socket; pings in between are dropped
# without a word, so a ping flood costs a JSON parse each and amplifies nothing.
PONG_INTERVAL_SECONDS = 0.25


class ChatConnection:
    __slots__ = (
        "_backlog_count",
        "_backlog_window_end",
        "_ponged",
        "_receive",
        "hub",
        "session_id",
        "subscriber",
        "user",
    )

    def __init__(
        self,
        hub: ChatHub,
        user: User,
        session_id: str,
        send: ASGISendCallable,
        receive: ASGIReceiveCallable,
    ) -> None:
        self.hub = hub
        self.user = user
        self.session_id = session_id
        self._receive = receive
        self._ponged = 0.0
        self.subscriber = Subscriber(session_id, send)
        self._backlog_count = 0
        self._backlog_window_end = 0.0

    async def serve(self) -> int | None:
        """Run until the server closes the socket (returns the close code) or the client leaves."""
        hub, subscriber = self.hub, self.subscriber
        task = asyncio.current_task()
        assert task is not None
        subscriber.attach(task)
        hub.broker.register(subscriber)
        hub.presence.add(self.user)
        try:
            await self._send_ready()
            await self._receive_loop()
        except asyncio.CancelledError:
            # `Subscriber.close` cancelled us; any other cancellation goes on up.
            if subscriber.close_code is None or task.uncancel() > 0:
                raise
        finally:
            hub.broker.unregister(subscriber)
            hub.presence.remove(self.user)
            subscriber.stop()
        return subscriber.close_code

    async def _send_ready(self) -> None:
        """Start sending with the first frame, ahead of anything the broker delivered meanwhile."""
        if self.subscriber.close_code is not None:
            return  # `register` refused it: this worker has lost Redis
        try:
            # A logout announced between the handshake and `register` was missed.
            if not await session_exists(self.hub.pipelined, self.session_id):
                self.subscriber.close(CLOSE_LOGGED_OUT)
                return
            online = await self.hub.presence.online_json()
        except (RedisError, OSError):
            self.subscriber.close(CLOSE_SERVER_ERROR)
            return
        raise_if_cancelled()
        # Spliced in as text: the list is encoded once per change, not per socket.
        user = encode({"type": "ready", "user": self.user.public(), "rooms": list(ROOMS)})
        self.subscriber.start(f'{user[:-1]},"online":{online}}}')

    async def _receive_loop(self) -> None:
        max_chars = self.hub.settings.message_max_chars
        receive, subscriber = self._receive, self.subscriber
        while subscriber.close_code is None:
            event: Any = await receive()
            kind = event["type"]
            if kind == "websocket.disconnect":
                return
            if kind != "websocket.receive":
                continue  # `websocket.connect`, which servers send first
            subscriber.heard = time.monotonic()
            raw = event.get("text")
            if raw is None:
                raw = event.get("bytes") or b""
            try:
                await self._handle(parse_frame(raw, max_chars))
            except FrameError as error:
                subscriber.deliver(error.frame())
            raise_if_cancelled()
            # Frames that arrived together are read without yielding, so
            # answers to a flood would fill the outbox (closing it with 1013)
            # before the first is sent. Waiting here instead leaves the rest
            # unread, and TCP slows the client down.
            await subscriber.wait_half_empty()

    async def _handle(self, frame: ClientFrame) -> None:
        if isinstance(frame, Ping):
            self._pong()
            return
        try:
            if isinstance(frame, Send):
                await self._post(frame)
            elif isinstance(frame, Join):
                await self._join(frame)
            elif isinstance(frame, History):
                await self._limit_backlog()
                page = await self.hub.history.before(frame.room, frame.before, frame.limit)
                self.subscriber.deliver(_history_frame(frame.room, page))
            elif isinstance(frame, Typing):
                pass  # accepted and ignored until typing indicators exist
        except (RedisError, OSError) as error:
            client_id = frame.client_id if isinstance(frame, Send) else None
            if isinstance(error, RedisError) and is_refusal(error):
                # The frame passed validation, so this is a gap in it: worth a look.
                log.warning("Redis refused a %s frame: %s", type(frame).__name__, error)
                raise FrameError(
                    BAD_REQUEST, "the server cannot serve this request", client_id
                ) from None
            raise FrameError(UNAVAILABLE, "storage is unavailable, try again", client_id) from None

    def _pong(self) -> None:
        now = self.subscriber.heard
        if now - self._ponged >= PONG_INTERVAL_SECONDS:
            self._ponged = now
            self.subscriber.deliver(PONG)

    async def _post(self, frame: Send) -> None:
        hub = self.hub
        retry_after = await hit_limit(
            hub.redis,
            keys.user_rate_limit(self.user.id, "send"),
            hub.settings.messages_per_minute,
            SEND_WINDOW_SECONDS,
        )
        if retry_after is not None:
            raise FrameError(
                RATE_LIMITED, "too many messages", frame.client_id, retry_after=retry_after
            )
        posted = await hub.history.post(frame.room, self.user, frame.text, frame.client_id)
        # A new message reaches its sender through the room like everyone else's;
        # a retry, or a sender outside the room, gets the echo directly.
        if not posted.created or not hub.broker.in_room(self.subscriber, frame.room):
            self.subscriber.deliver(posted.frame)

    async def _limit_backlog(self) -> None:
        """Count a backlog-producing request against the socket's and the user's limits."""
        loop = asyncio.get_running_loop()
        now = loop.time()
        if now >= self._backlog_window_end:
            self._backlog_window_end = now + BACKLOG_WINDOW_SECONDS
            self._backlog_count = 0
        self._backlog_count += 1
        if self._backlog_count > BACKLOG_REQUESTS_PER_SOCKET:
            retry_after: int | None = max(1, math.ceil(self._backlog_window_end - now))
        else:
            # Through the pipeline: after a restart every socket joins at once.
            retry_after = await hit_limit(
                self.hub.pipelined,
                keys.user_rate_limit(self.user.id, "backlog"),
                self.hub.settings.backlog_requests_per_minute,
                BACKLOG_WINDOW_SECONDS,
            )
        if retry_after is not None:
            raise FrameError(
                RATE_LIMITED,
                f"too many join and history requests; try again in {retry_after} s",
                retry_after=retry_after,
            )

    async def _join(self, frame: Join) -> None:
        """Backlog, then live, with nothing lost or repeated in between.

        Live frames are buffered from before the backlog is read; once it is
        sent, those not already in it are delivered and the room goes live.
        """
        broker, history, subscriber = self.hub.broker, self.hub.history, self.subscriber
        if broker.in_room(subscriber, frame.room):
            # It would only send the backlog again: the amplification of issue 12.
            raise FrameError(BAD_REQUEST, "already joined; use history for older messages")
        # Buffering starts before any await, so a message published while the
        # limit is checked is not missed.
        broker.begin_join(subscriber, frame.room)
        try:
            await self._limit_backlog()
            if frame.after is None:
                page = await history.before(frame.room, None, JOIN_LAST)
                subscriber.deliver(_history_frame(frame.room, page))
                last_id = page.last_id
            else:
                backlog = await history.newest_after(frame.room, frame.after, JOIN_BACKLOG_MAX + 1)
                if len(backlog) > JOIN_BACKLOG_MAX:
                    # Too far behind to replay: start over from the newest, like a fresh join.
                    page = Page(backlog[-JOIN_LAST:], has_more=True)
                    subscriber.deliver(_history_frame(frame.room, page, reset=True))
                    last_id = page.last_id
                else:
                    last_id = backlog[-1]["id"] if backlog else frame.after
                    await self._deliver_pages(frame.room, backlog)
        except BaseException:
            broker.abandon_join(subscriber, frame.room)
            raise
        broker.finish_join(subscriber, frame.room, last_id)

    async def _deliver_pages(self, room: str, messages: list[dict[str, Any]]) -> None:
        """`messages` as history frames of up to JOIN_PAGE, `has_more` on all but the last;
        paced so live frames still fit in the outbox."""
        subscriber = self.subscriber
        starts = range(0, len(messages), JOIN_PAGE) if messages else range(1)
        for start in starts:
            if start:
                await subscriber.wait_half_empty()
            end = start + JOIN_PAGE
            page = Page(messages[start:end], has_more=end < len(messages))
            subscriber.deliver(_history_frame(room, page))


def _history_frame(room: str, page: Page, *, reset: bool = False) -> str:
    frame = {"type": "history", "room": room, "messages": page.messages, "has_more": page.has_more}
    if reset:
        frame["reset"] = True
    return encode(frame)
