"""Per-process fan-out: one Redis pub/sub connection shared by every WebSocket of the worker.

The listener reads each published frame once and hands the same `str` to every
local subscriber with a non-blocking append to its bounded outbox, so a slow
client costs the others nothing: when its outbox is full it is closed with
1013 and resumes later with `join after`. When the pub/sub connection breaks,
every local socket is closed with 1011 (they may have missed messages) and
the listener reconnects with backoff; new sockets are refused until it has.
"""

from __future__ import annotations

import asyncio
import logging
import random
import secrets
import time
from collections import deque
from typing import Protocol

from hypercorn.typing import ASGISendCallable
from redis.asyncio import Redis
from redis.asyncio.client import PubSub
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff
from redis.exceptions import RedisError

from .. import keys
from ..storage import as_text, raise_if_cancelled, transport_options
from .protocol import stream_id_key

log = logging.getLogger(__name__)

# WebSocket close codes.
CLOSE_SERVER_ERROR = 1011
CLOSE_TRY_AGAIN_LATER = 1013
CLOSE_LOGGED_OUT = 4401
# Like HTTP 408: the client sent nothing, not even its heartbeat, for too long.
CLOSE_IDLE = 4408

# Frames waiting for one socket; the frames themselves are shared, so a full
# outbox costs a few KB of pointers, not copies.
OUTBOX_FRAMES = 512
# The listener lets the sockets send after this many frames in a row: well
# under OUTBOX_FRAMES, so only a client that really cannot keep up is closed,
# and small enough that one pass of the event loop (every socket sending its
# share) stays short and handshakes in the same burst keep moving.
DISPATCH_BATCH = 16
# How long the pub/sub connection may be silent before we PING it, and how long
# that PING may go unanswered before the connection counts as dead. Explicit read
# timeouts: redis-py's own socket timeout would not cover a silent dead peer.
PUBSUB_IDLE_SECONDS = 5.0
CONNECT_TIMEOUT_SECONDS = 5.0
BACKOFF_FIRST_SECONDS = 0.1
BACKOFF_MAX_SECONDS = 5.0
# Expired sessions are noticed by polling; revoked ones are announced at once.
SESSION_SWEEP_SECONDS = 30.0
# Silent sockets are looked for this many times per idle timeout, so one is
# closed at most a quarter of the timeout late.
IDLE_SWEEPS_PER_TIMEOUT = 4
DEFAULT_IDLE_TIMEOUT_SECONDS = 60.0


class PresenceObserver(Protocol):
    """Told of every presence announcement the listener receives, and when it may miss some."""

    def observe(self, frame: str) -> None: ...

    def pubsub_up(self) -> None: ...

    def pubsub_down(self) -> None: ...


class Subscriber:
    """One WebSocket as the broker sees it: a bounded outbox and a way to close it.

    An idle socket holds no task and no buffer: the first frame delivered
    creates the outbox and a task that sends until it is empty, then both go.
    That keeps the many idle sockets of a worker small (bench/ measures it),
    while a busy one drains whole bursts in one task without waiting per frame.
    """

    __slots__ = (
        "_drained",
        "_frames",
        "_limit",
        "_owner",
        "_send",
        "_sender",
        "_started",
        "close_code",
        "heard",
        "session_id",
    )

    def __init__(self, session_id: str, send: ASGISendCallable, limit: int = OUTBOX_FRAMES) -> None:
        self.session_id = session_id
        self.close_code: int | None = None
        # When the client last sent a frame (time.monotonic()); the serving task
        # sets it and one sweep per worker reads it: no timer per socket.
        self.heard = time.monotonic()
        self._send = send
        self._limit = limit
        self._frames: deque[str] | None = None
        self._sender: asyncio.Task[None] | None = None
        self._started = False
        self._drained: asyncio.Future[None] | None = None
        self._owner: asyncio.Task[object] | None = None

    @property
    def started(self) -> bool:
        """True once the `ready` frame is queued: from then on it gets presence news."""
        return self._started

    def attach(self, owner: asyncio.Task[object]) -> None:
        """The task serving this socket: `close` from any other task cancels it."""
        self._owner = owner

    def start(self, first: str) -> None:
        """Begin sending: `first` (the `ready` frame), then whatever was delivered before."""
        if self.close_code is not None:
            return
        frames = self._frames
        if frames is None:
            frames = self._frames = deque()
        frames.appendleft(first)
        self._started = True
        # Silence counts from `ready`: until then the client has nothing to say,
        # and a worker busy with a burst may take a while to send it.
        self.heard = time.monotonic()
        self._sender = asyncio.create_task(self._drain(frames))

    def deliver(self, frame: str) -> None:
        """Queue a frame without ever waiting; a full outbox closes the socket instead."""
        if self.close_code is not None:
            return
        frames = self._frames
        if frames is None:
            frames = self._frames = deque((frame,))
        elif len(frames) >= self._limit:
            log.info("closing a WebSocket that cannot keep up (%d frames queued)", self._limit)
            self.close(CLOSE_TRY_AGAIN_LATER)
            return
        else:
            frames.append(frame)
        if self._sender is None and self._started:
            self._sender = asyncio.create_task(self._drain(frames))

    async def _drain(self, frames: deque[str]) -> None:
        send, half = self._send, self._limit // 2
        try:
            while frames:
                frame = frames.popleft()
                drained = self._drained
                if drained is not None and len(frames) <= half and not drained.done():
                    drained.set_result(None)
                await send({"type": "websocket.send", "bytes": None, "text": frame})
        except Exception:
            log.exception("sending to a WebSocket failed")
            self.close(CLOSE_SERVER_ERROR)
        finally:
            # Nothing can be delivered between the loop's last check and here.
            if self._frames is frames:
                self._frames = None
            self._sender = None

    async def wait_half_empty(self) -> None:
        """Pace a producer that may wait (a long backlog) so live frames still fit."""
        while (
            self._frames is not None
            and len(self._frames) > self._limit // 2
            and self.close_code is None
        ):
            self._drained = asyncio.get_running_loop().create_future()
            await self._drained

    def close(self, code: int) -> None:
        """Stop sending, and stop the serving task unless it is the caller (it checks
        `close_code` itself); the code is what the socket is then closed with."""
        if self.close_code is not None:
            return
        self.close_code = code
        self._discard(self._sender, self._owner)

    def stop(self) -> None:
        """The socket is gone: drop what was not sent."""
        self._discard(self._sender)
        self._owner = None

    def _discard(self, *tasks: asyncio.Task[object] | None) -> None:
        """Drop the unsent frames and cancel these tasks, except the one calling."""
        if self._frames is not None:
            self._frames.clear()
            self._frames = None
        current = asyncio.current_task()
        for task in tasks:
            if task is not None and task is not current:
                task.cancel()


class _Joining:
    """A join in progress: live frames buffered while the backlog is read, then the
    backlog's last id, below which late-arriving live frames are dropped."""

    __slots__ = ("buffer", "floor")

    def __init__(self) -> None:
        self.buffer: list[tuple[str, str]] | None = []
        self.floor: tuple[int, int] | None = None


class Broker:
    """The worker's subscribers, indexed by room and session, fed by one pub/sub listener."""

    def __init__(
        self,
        redis_url: str,
        redis: Redis,
        idle_timeout_seconds: float = DEFAULT_IDLE_TIMEOUT_SECONDS,
    ) -> None:
        self.worker_id = secrets.token_hex(6)
        self.redis = redis
        self.idle_timeout_seconds = idle_timeout_seconds
        self._redis_url = redis_url
        self._subscribers: set[Subscriber] = set()
        self._sessions: dict[str, set[Subscriber]] = {}
        self._rooms: dict[str, set[Subscriber]] = {}
        # Subscribers between `begin_join` and their first live frame newer than the backlog.
        self._joining: dict[str, dict[Subscriber, _Joining]] = {}
        self._subscribed = asyncio.Event()
        self.presence_observer: PresenceObserver | None = None
        self._backoff = BACKOFF_FIRST_SECONDS
        self._last_heard = 0.0
        # Set by `close_all`: the code every socket registered from then on is closed with.
        self._closing: int | None = None

    @property
    def subscribed(self) -> bool:
        """True while the pub/sub connection is up; only then may sockets be accepted."""
        return self._subscribed.is_set()

    async def wait_subscribed(self) -> None:
        await self._subscribed.wait()

    # -- subscribers -------------------------------------------------------

    def register(self, subscriber: Subscriber) -> None:
        self._subscribers.add(subscriber)
        self._sessions.setdefault(subscriber.session_id, set()).add(subscriber)
        if self._closing is not None:
            subscriber.close(self._closing)
        elif not self.subscribed:
            subscriber.close(CLOSE_SERVER_ERROR)

    @property
    def closing(self) -> bool:
        """True once `close_all` ran: the worker is stopping and takes no new sockets."""
        return self._closing is not None

    def close_all(self, code: int) -> None:
        """The worker is going away: close every socket with `code`, now and from now on."""
        self._closing = code
        for subscriber in list(self._subscribers):
            subscriber.close(code)

    def unregister(self, subscriber: Subscriber) -> None:
        self._subscribers.discard(subscriber)
        same_session = self._sessions.get(subscriber.session_id)
        if same_session is not None:
            same_session.discard(subscriber)
            if not same_session:
                del self._sessions[subscriber.session_id]
        for room in list(self._rooms):
            self._leave_live(subscriber, room)
        for room in list(self._joining):
            self._leave_joining(subscriber, room)

    def begin_join(self, subscriber: Subscriber, room: str) -> None:
        """Buffer the room's live frames for this subscriber; call before reading the backlog."""
        self._leave_live(subscriber, room)
        self._joining.setdefault(room, {})[subscriber] = _Joining()

    def finish_join(self, subscriber: Subscriber, room: str, last_id: str | None) -> None:
        """Deliver buffered frames newer than the backlog's last id, then go live.

        A frame the backlog already held may still be on its way from Redis
        (it was published before the backlog was read, but not yet received),
        so until the first newer frame arrives, live frames are filtered too.
        Pub/sub order is stream order, so after that first one none can be old.
        """
        state = self._joining.get(room, {}).get(subscriber)
        if state is None or state.buffer is None:
            return  # closed meanwhile
        buffered, state.buffer = state.buffer, None
        if last_id is None:
            newer = [frame for _, frame in buffered]
        else:
            state.floor = stream_id_key(last_id)
            newer = [frame for i, frame in buffered if stream_id_key(i) > state.floor]
        for frame in newer:
            subscriber.deliver(frame)
        if newer or last_id is None:
            self._go_live(subscriber, room)

    def abandon_join(self, subscriber: Subscriber, room: str) -> None:
        self._leave_joining(subscriber, room)

    def in_room(self, subscriber: Subscriber, room: str) -> bool:
        return subscriber in self._rooms.get(room, ()) or subscriber in self._joining.get(room, {})

    def close_session(self, session_id: str, code: int = CLOSE_LOGGED_OUT) -> None:
        for subscriber in list(self._sessions.get(session_id, ())):
            subscriber.close(code)

    def _go_live(self, subscriber: Subscriber, room: str) -> None:
        self._leave_joining(subscriber, room)
        self._rooms.setdefault(room, set()).add(subscriber)

    def _leave_live(self, subscriber: Subscriber, room: str) -> None:
        members = self._rooms.get(room)
        if members is not None:
            members.discard(subscriber)
            if not members:
                del self._rooms[room]

    def _leave_joining(self, subscriber: Subscriber, room: str) -> None:
        self._joining.get(room, {}).pop(subscriber, None)
        self._drop_empty_joining(room)

    def _drop_empty_joining(self, room: str) -> None:
        if room in self._joining and not self._joining[room]:
            del self._joining[room]

    # -- fan-out -------------------------------------------------------------

    def _fan_out_room(self, room: str, payload: str) -> None:
        _, message_id, _, frame = payload.split(" ", 3)  # "M <id> <author id> <frame>"
        for subscriber in self._rooms.get(room, ()):
            subscriber.deliver(frame)
        joining = self._joining.get(room)
        if joining:
            caught_up = []
            for subscriber, state in joining.items():
                if state.buffer is not None:
                    if len(state.buffer) >= OUTBOX_FRAMES:
                        subscriber.close(CLOSE_TRY_AGAIN_LATER)
                    else:
                        state.buffer.append((message_id, frame))
                elif state.floor is None or stream_id_key(message_id) > state.floor:
                    subscriber.deliver(frame)
                    caught_up.append(subscriber)
            for subscriber in caught_up:
                self._go_live(subscriber, room)

    def _fan_out_presence(self, frame: str) -> None:
        """To started sockets only: the `ready` of the others, still to come, lists
        everyone as of this announcement (see `PresenceTracker.online`)."""
        if self.presence_observer is not None:
            self.presence_observer.observe(frame)
        for subscriber in self._subscribers:
            if subscriber.started:
                subscriber.deliver(frame)

    def _dispatch(self, message: dict[str, object]) -> None:
        kind = message["type"]
        data = message["data"]
        if kind not in {"message", "pmessage"} or not isinstance(data, bytes):
            return  # subscription confirmations and PING replies
        channel = as_text(message["channel"])  # type: ignore[arg-type]
        room = keys.room_of_channel(channel) if kind == "pmessage" else None
        if room is not None:
            self._fan_out_room(room, data.decode())
        elif channel == keys.PRESENCE_CHANNEL:
            self._fan_out_presence(data.decode())
        elif channel == keys.SESSION_REVOKED_CHANNEL:
            self.close_session(data.decode())

    # -- the listener ----------------------------------------------------------

    async def listen(self) -> None:
        """Run the pub/sub listener forever, reconnecting with capped, jittered backoff."""
        while True:
            try:
                await self._listen_once()
            except (RedisError, OSError, TimeoutError) as error:
                log.warning("Redis pub/sub connection lost (%s); reconnecting", error)
            except Exception:
                # A bug must not leave the worker deaf: start over like after an outage.
                log.exception("Redis pub/sub listener failed; reconnecting")
            finally:
                self._subscribed.clear()
                if self.presence_observer is not None:
                    self.presence_observer.pubsub_down()
                for subscriber in list(self._subscribers):
                    subscriber.close(CLOSE_SERVER_ERROR)
            await asyncio.sleep(self._backoff * random.uniform(0.5, 1.5))
            self._backoff = min(self._backoff * 2, BACKOFF_MAX_SECONDS)

    async def _listen_once(self) -> None:
        # A dedicated connection without silent reconnect-and-resubscribe, which
        # would hide lost messages. Reads block without a timeout of their own
        # (cheaper per message, and nothing for a cancellation to get lost in);
        # a watchdog task PINGs a silent connection and drops it if Redis does
        # not answer.
        client = Redis.from_url(
            self._redis_url,
            socket_connect_timeout=CONNECT_TIMEOUT_SECONDS,
            socket_timeout=CONNECT_TIMEOUT_SECONDS,
            retry=Retry(NoBackoff(), 0),
            health_check_interval=0,
            **transport_options(self._redis_url),
        )
        pubsub = client.pubsub()
        try:
            await pubsub.psubscribe(keys.ROOM_CHANNEL_PATTERN)
            await pubsub.subscribe(keys.PRESENCE_CHANNEL, keys.SESSION_REVOKED_CHANNEL)
            await _await_confirmations(pubsub, 3)
            raise_if_cancelled()
            if self.presence_observer is not None:
                self.presence_observer.pubsub_up()
            self._subscribed.set()
            self._backoff = BACKOFF_FIRST_SECONDS
            log.info("worker %s subscribed to Redis pub/sub", self.worker_id)
            self._last_heard = asyncio.get_running_loop().time()
            # Cancel-in-finally rather than a TaskGroup: on Python 3.11 a
            # TaskGroup whose child fails can leave its parent's cancel count
            # raised, which `raise_if_cancelled` would then take for a real cancel.
            tasks = [
                asyncio.create_task(self._read(pubsub)),
                asyncio.create_task(self._watch(pubsub)),
            ]
            try:
                done, _ = await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
                for task in done:
                    task.result()  # re-raise what ended it
            finally:
                for task in tasks:
                    task.cancel()
                await asyncio.gather(*tasks, return_exceptions=True)
        finally:
            await pubsub.aclose()
            await client.aclose()

    async def _read(self, pubsub: PubSub) -> None:
        loop = asyncio.get_running_loop()
        dispatched = 0
        while True:
            message = await pubsub.get_message(timeout=None)
            self._last_heard = loop.time()
            if message is not None:
                self._dispatch(message)
                dispatched += 1
                if dispatched % DISPATCH_BATCH == 0:
                    # Reading buffered messages never waits, so without this a
                    # burst (a reconnect storm's presence news: one per user)
                    # would pile up in every outbox before any could send,
                    # closing fast clients as if they were slow.
                    await asyncio.sleep(0)

    async def _watch(self, pubsub: PubSub) -> None:
        """PING a connection that has been silent; only an unanswered PING means it is dead.

        Silence alone proves nothing: a quiet room sends nothing, and a worker
        whose loop ran late (a burst of handshakes) has not read for a while.
        """
        loop = asyncio.get_running_loop()
        while True:
            await asyncio.sleep(PUBSUB_IDLE_SECONDS)
            if loop.time() - self._last_heard < PUBSUB_IDLE_SECONDS:
                continue
            pinged = loop.time()
            await pubsub.ping()
            raise_if_cancelled()
            await asyncio.sleep(PUBSUB_IDLE_SECONDS)
            if self._last_heard < pinged:
                raise TimeoutError("Redis did not answer a PING on the pub/sub connection")

    # -- silent peers ------------------------------------------------------------

    async def sweep_idle(self) -> None:
        """Close sockets whose client went silent: a peer that vanished without a FIN.

        Neither Hypercorn nor TCP would: Hypercorn's `websocket_ping_interval`
        sends pings but never checks for the pong (and costs a task per
        socket), and the kernel only gives up on a dead peer when something
        unacknowledged is outstanding, after ~15 minutes of retransmits.
        """
        while True:
            await asyncio.sleep(self.idle_timeout_seconds / IDLE_SWEEPS_PER_TIMEOUT)
            closed = self.close_idle()
            if closed:
                log.info(
                    "closed %d WebSocket(s) silent for over %gs", closed, self.idle_timeout_seconds
                )

    def close_idle(self) -> int:
        deadline = time.monotonic() - self.idle_timeout_seconds
        silent = [s for s in self._subscribers if s.started and s.heard < deadline]
        for subscriber in silent:
            subscriber.close(CLOSE_IDLE)
        return len(silent)

    # -- expired sessions --------------------------------------------------------

    async def sweep_sessions(self) -> None:
        """Close the sockets of sessions that expired; revocations arrive by pub/sub instead."""
        while True:
            await asyncio.sleep(SESSION_SWEEP_SECONDS)
            await self.close_expired_sessions()
            raise_if_cancelled()

    async def close_expired_sessions(self) -> None:
        session_ids = list(self._sessions)
        if not session_ids:
            return
        try:
            # One pipeline: a command per session at once would take every
            # connection of the pool and queue the handshakes behind them.
            async with self.redis.pipeline(transaction=False) as pipe:
                for session_id in session_ids:
                    pipe.exists(keys.session(session_id))
                exists = await pipe.execute()
        except (RedisError, OSError) as error:
            log.warning("could not check sessions: %s", error)
            return
        for session_id, alive in zip(session_ids, exists, strict=True):
            if not alive:
                self.close_session(session_id)


async def _await_confirmations(pubsub: PubSub, count: int) -> None:
    """SUBSCRIBE is only in effect once Redis confirms it; until then messages could be missed."""
    async with asyncio.timeout(CONNECT_TIMEOUT_SECONDS):
        while count:
            message = await pubsub.get_message(timeout=None)
            if message is not None and message["type"] in {"subscribe", "psubscribe"}:
                count -= 1
