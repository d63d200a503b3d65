"""The worker's one Redis pub/sub connection: a channel per room and per user with local
sockets, subscribed and unsubscribed as they come and go, plus the fixed channels.

A subscription is in effect only once Redis confirms it, so `ensure` waits for
the confirmations (`ready` and `join` rely on it: a message published after the
confirmation is received). Redis answers a connection's commands in order, so
each channel keeps a queue of its unconfirmed SUBSCRIBE/UNSUBSCRIBE and every
confirmation settles the oldest: a subscribe-unsubscribe-subscribe race ends
in the state of the last command sent, whatever the timing.

When the connection breaks, every local socket is closed with 1011 (they may
have missed messages) and the bus reconnects with backoff, subscribing the
channels still wanted; new sockets are refused until it has. redis-py would
silently re-subscribe on a reconnect of its own, hiding the gap: its retries
are off, and each connection is a new client.
"""

from __future__ import annotations

import asyncio
import logging
import random
from collections import deque
from collections.abc import Callable, Iterable, Sequence

from redis.asyncio import Redis
from redis.asyncio.client import PubSub
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import RedisError

from ..storage import as_text, raise_if_cancelled, transport_options
from .channels import FIXED

log = logging.getLogger(__name__)

# The reader lets the sockets send after this many messages in a row: well
# under the outbox size, so only a client that really cannot keep up is closed,
# and small enough that one pass of the event loop (every socket sending its
# share) stays short and handshakes in the same burst keep moving.
DISPATCH_BATCH = 16
# How long the connection may be silent before we PING it, and how long that
# PING may go unanswered before the connection counts as dead. Explicit read
# timeouts: redis-py's own socket timeout would not cover a silent dead peer.
PUBSUB_IDLE_SECONDS = 5.0
CONNECT_TIMEOUT_SECONDS = 5.0
# A safety net only: a SUBSCRIBE is answered before any later PING, and an
# unanswered PING drops the connection (failing every wait) much sooner.
ENSURE_TIMEOUT_SECONDS = 60.0
BACKOFF_FIRST_SECONDS = 0.1
BACKOFF_MAX_SECONDS = 5.0
# Channels per SUBSCRIBE command when many are (re)subscribed at once.
SUBSCRIBE_CHUNK = 500
# The name the connection has in CLIENT LIST (with the worker id).
CLIENT_NAME_PREFIX = "chat-bus-"


class BusDown(RedisConnectionError):
    """The pub/sub connection is not up, or did not confirm in time."""


class Bus:
    """SUBSCRIBE/UNSUBSCRIBE as channels are wanted; `on_message(channel, data)` per message."""

    def __init__(
        self,
        redis_url: str,
        worker_id: str,
        on_message: Callable[[str, str], None],
        on_up: Callable[[], None],
        on_down: Callable[[], None],
    ) -> None:
        self.worker_id = worker_id
        self._redis_url = redis_url
        self._on_message = on_message
        self._on_up = on_up
        self._on_down = on_down
        self._wanted: set[str] = set()
        # For the current connection: channels whose last command sent was
        # SUBSCRIBE, unconfirmed commands per channel (True: subscribe), and
        # the channels Redis confirmed as subscribed.
        self._sent: set[str] = set()
        self._pending: dict[str, deque[bool]] = {}
        self._confirmed: set[str] = set()
        self._dirty: set[str] = set()
        self._kick = asyncio.Event()
        self._waiters: dict[str, list[asyncio.Future[bool]]] = {}
        self._first = asyncio.Event()
        self._subscribed = asyncio.Event()
        self._backoff = BACKOFF_FIRST_SECONDS
        self._last_heard = 0.0

    @property
    def client_name(self) -> str:
        return CLIENT_NAME_PREFIX + self.worker_id

    @property
    def subscribed(self) -> bool:
        """True while the connection is up with its fixed channels; only then may sockets
        be accepted."""
        return self._subscribed.is_set()

    async def wait_subscribed(self) -> None:
        await self._subscribed.wait()

    def confirmed(self, channel: str) -> bool:
        """Subscribed, with no command for it still unanswered (an UNSUBSCRIBE sent
        before the last SUBSCRIBE would end it for a moment)."""
        return channel in self._confirmed and channel not in self._pending

    # -- what the fan-out wants (ChannelListener) ---------------------------------

    def want(self, channel: str) -> None:
        self._wanted.add(channel)
        self._mark(channel)

    def unwant(self, channel: str) -> None:
        self._wanted.discard(channel)
        self._mark(channel)
        self._settle(channel, False)

    def _mark(self, channel: str) -> None:
        self._dirty.add(channel)
        self._kick.set()

    async def ensure(self, channels: Iterable[str]) -> bool:
        """Wait until Redis confirmed every channel; False if one stopped being wanted
        meanwhile (its room was left), `BusDown` if the connection is or goes down.

        Each wait is on its channel's own future, so a burst of sockets (a
        reconnect storm) costs one wake-up per socket, not one per socket per
        confirmation. No deadline of its own: a silent connection is found by
        the watchdog, and going down fails every wait.
        """
        waits = []
        for channel in channels:
            if not self.subscribed:
                raise BusDown("Redis pub/sub is not subscribed")
            if channel not in self._wanted:
                return False
            if not self.confirmed(channel):
                future = asyncio.get_running_loop().create_future()
                self._waiters.setdefault(channel, []).append(future)
                waits.append(future)
        if not waits:
            return True
        try:
            async with asyncio.timeout(ENSURE_TIMEOUT_SECONDS):
                results = await asyncio.gather(*waits)
        except TimeoutError:
            raise BusDown("Redis did not confirm a subscription in time") from None
        finally:
            for future in waits:
                future.cancel()  # the others, when one failed
        return all(results)

    def _settle(self, channel: str, result: bool) -> None:
        """Tell the channel's waiters: confirmed (True) or no longer wanted (False)."""
        for future in self._waiters.pop(channel, ()):
            if not future.done():
                future.set_result(result)

    def _fail_waiters(self) -> None:
        waiters, self._waiters = self._waiters, {}
        for futures in waiters.values():
            for future in futures:
                if not future.done():
                    future.set_exception(BusDown("Redis pub/sub connection lost"))

    # -- the connection -------------------------------------------------------------

    async def listen(self) -> None:
        """Run the pub/sub connection forever, reconnecting with capped, jittered backoff."""
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
                self._reset()
                self._on_down()
            await asyncio.sleep(self._backoff * random.uniform(0.5, 1.5))
            self._backoff = min(self._backoff * 2, BACKOFF_MAX_SECONDS)

    def _reset(self) -> None:
        self._sent.clear()
        self._pending.clear()
        self._confirmed.clear()
        self._dirty = set(self._wanted)
        self._kick.set()
        self._fail_waiters()

    async def _listen_once(self) -> None:
        # A dedicated connection without silent reconnect-and-resubscribe.
        # Reads block without a timeout of their own (cheaper per message, and
        # nothing for a cancellation to get lost in); a watchdog task PINGs a
        # silent connection and drops it if Redis does not answer.
        client = Redis.from_url(
            self._redis_url,
            socket_connect_timeout=CONNECT_TIMEOUT_SECONDS,
            socket_timeout=CONNECT_TIMEOUT_SECONDS,
            retry=Retry(NoBackoff(), 0),
            health_check_interval=0,
            client_name=self.client_name,
            **transport_options(self._redis_url),
        )
        pubsub = client.pubsub()
        self._reset()
        # Cancel-in-finally rather than a TaskGroup: on Python 3.11 a TaskGroup
        # whose child fails can leave its parent's cancel count raised, which
        # `raise_if_cancelled` would then take for a real cancel.
        tasks: list[asyncio.Task[None]] = []
        try:
            await self._send(pubsub, FIXED, subscribe=True)
            first = list(FIXED) + sorted(self._wanted)
            tasks = [
                asyncio.create_task(self._read(pubsub)),
                asyncio.create_task(self._write(pubsub)),
            ]
            self._last_heard = asyncio.get_running_loop().time()
            await self._await_first(first, tasks)
            raise_if_cancelled()
            self._subscribed.set()
            self._backoff = BACKOFF_FIRST_SECONDS
            self._on_up()
            log.info("worker %s subscribed to Redis pub/sub", self.worker_id)
            tasks.append(asyncio.create_task(self._watch(pubsub)))
            done, _ = await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
            for task in done:
                task.result()  # re-raise what ended it
        finally:
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
            await pubsub.aclose()
            await client.aclose()

    async def _await_first(self, channels: list[str], tasks: list[asyncio.Task[None]]) -> None:
        """The fixed channels and those wanted at connect, confirmed; or the reason not."""
        async with asyncio.timeout(CONNECT_TIMEOUT_SECONDS):
            while not all(self.confirmed(c) for c in channels if c in self._wanted or c in FIXED):
                self._first.clear()
                changed = asyncio.create_task(self._first.wait())
                done, _ = await asyncio.wait([changed, *tasks], return_when=asyncio.FIRST_COMPLETED)
                changed.cancel()
                for task in done:
                    if task is not changed:
                        task.result()
                        raise RedisConnectionError("pub/sub ended while subscribing")

    async def _send(self, pubsub: PubSub, channels: Sequence[str], *, subscribe: bool) -> None:
        for channel in channels:
            self._pending.setdefault(channel, deque()).append(subscribe)
            if subscribe:
                self._sent.add(channel)
            else:
                self._sent.discard(channel)
        for start in range(0, len(channels), SUBSCRIBE_CHUNK):
            chunk = channels[start : start + SUBSCRIBE_CHUNK]
            if subscribe:
                await pubsub.subscribe(*chunk)
            else:
                await pubsub.unsubscribe(*chunk)

    async def _write(self, pubsub: PubSub) -> None:
        """Send what changed since the last pass: one SUBSCRIBE and one UNSUBSCRIBE at most."""
        while True:
            await self._kick.wait()
            self._kick.clear()
            dirty, self._dirty = self._dirty, set()
            wanted, sent = self._wanted, self._sent
            subscribe = sorted(c for c in dirty if c in wanted and c not in sent)
            unsubscribe = sorted(c for c in dirty if c not in wanted and c in sent)
            if subscribe:
                await self._send(pubsub, subscribe, subscribe=True)
            if unsubscribe:
                await self._send(pubsub, unsubscribe, subscribe=False)

    async def _read(self, pubsub: PubSub) -> None:
        loop = asyncio.get_running_loop()
        dispatched = 0
        while True:
            message = await pubsub.get_message(timeout=None)
            self._last_heard = loop.time()
            if message is None:
                continue
            kind = message["type"]
            if kind == "message":
                self._on_message(as_text(message["channel"]), as_text(message["data"]))
                dispatched += 1
                if dispatched % DISPATCH_BATCH == 0:
                    # Reading buffered messages never waits, so without this a
                    # burst (a reconnect storm's presence news: one per user)
                    # would pile up in every outbox before any could send,
                    # closing fast clients as if they were slow.
                    await asyncio.sleep(0)
            elif kind in ("subscribe", "unsubscribe"):
                self._confirm(as_text(message["channel"]), kind == "subscribe")

    def _confirm(self, channel: str, subscribed: bool) -> None:
        pending = self._pending.get(channel)
        if pending:
            pending.popleft()
            if not pending:
                del self._pending[channel]
        elif not subscribed and channel in self._sent:
            # Not one we asked for: Redis dropped it. Subscribe again if still wanted.
            log.warning("Redis ended the subscription to %s; subscribing again", channel)
            self._sent.discard(channel)
            self._mark(channel)
        if subscribed:
            self._confirmed.add(channel)
        else:
            self._confirmed.discard(channel)
        if self.confirmed(channel):
            self._settle(channel, True)
        self._first.set()

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
