"""The Redis connection pool every worker keeps on `app.redis`."""

from __future__ import annotations

import asyncio
import hashlib
import logging
import time
import weakref
from collections.abc import Sequence
from typing import Any, Protocol
from urllib.parse import urlsplit

from redis.asyncio import BlockingConnectionPool, Redis
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import NoScriptError, RedisError, ResponseError

# redis-py's `from_url` caps the pool at 100 and raises past that; a blocking
# pool makes a burst wait for a free connection instead of failing a request.
# A connection is held from a command until its task runs again after the
# reply, which in a busy worker (a reconnect storm: thousands of handshakes
# queued on the event loop) takes a whole pass of the loop; so the pool must
# be wide enough to move a burst along, and waiting long beats refusing: a
# refused client comes back anyway, after a backoff. Redis itself serves
# 10,000 clients by default; a few hundred per worker cost it little.
POOL_SIZE = 128
POOL_WAIT_SECONDS = 20
# Plain commands answer in milliseconds; this only bounds a dead server.
# Blocking commands (pub/sub reads, XREAD BLOCK) pass their own timeouts.
COMMAND_TIMEOUT_SECONDS = 5


log = logging.getLogger(__name__)


class Commands(Protocol):
    """What `Redis` and `Pipelined` both offer: one command, its parsed reply."""

    async def execute_command(self, *args: Any, **options: Any) -> Any: ...


class Script:
    """A Lua script called by its SHA (EVALSHA) once Redis has it, sent whole (EVAL)
    until then.

    Unlike redis-py's `register_script`, a miss costs one EVAL, not SCRIPT LOAD
    plus a second EVALSHA, and once Redis lost its scripts (a restart) calls use
    EVAL until one succeeds: in a reconnect storm thousands of calls arrive at
    once, and each extra command holds a pool connection for a pass of the loop.
    """

    def __init__(self, redis: Commands, text: str) -> None:
        self.redis = redis
        self.text = text
        self.sha = hashlib.sha1(text.encode(), usedforsecurity=False).hexdigest()
        self._loaded = False

    async def __call__(self, keys: Sequence[str], args: Sequence[Any] = ()) -> Any:
        redis = self.redis
        if self._loaded:
            try:
                return await redis.execute_command("EVALSHA", self.sha, len(keys), *keys, *args)
            except NoScriptError:
                self._loaded = False
        result = await redis.execute_command("EVAL", self.text, len(keys), *keys, *args)
        self._loaded = True
        return result


_scripts: weakref.WeakKeyDictionary[Commands, dict[str, Script]] = weakref.WeakKeyDictionary()


def script(redis: Commands, text: str) -> Script:
    """`text` as a `Script` of `redis` (a client or a `Pipelined`), made once per client."""
    registered = _scripts.setdefault(redis, {})
    if text not in registered:
        registered[text] = Script(redis, text)
    return registered[text]


class Throttled:
    """A warning that may hold thousands of times a second, logged once per interval
    with the number of times it held since: visible, and no flood."""

    def __init__(self, logger: logging.Logger, seconds: float = 10.0) -> None:
        self.logger = logger
        self.seconds = seconds
        self._last = -seconds
        self._held = 0

    def warning(self, message: str, *args: object) -> None:
        self._held += 1
        now = time.monotonic()
        if now - self._last < self.seconds:
            return
        self.logger.warning(message + " (%d time(s) since the last such line)", *args, self._held)
        self._last, self._held = now, 0


class LoggingPool(BlockingConnectionPool):
    """A blocking pool that says when it is exhausted, instead of making requests wait
    in silence (and then fail with "No connection available")."""

    _exhausted = Throttled(log)

    async def get_connection(self, *args: Any, **kwargs: Any) -> Any:
        if not self.can_get_connection():
            self._exhausted.warning(
                "Redis connection pool exhausted: all %d connections in use, "
                "requests wait up to %ss for one",
                self.max_connections,
                self.timeout,
            )
        return await super().get_connection(*args, **kwargs)  # type: ignore[no-untyped-call]


class Pipelined:
    """Reads from many tasks sent together: one pipeline per round trip, on one
    connection, whatever the number of tasks waiting. Only commands that are
    safe to run twice (reads, absolute writes, rate-limit hits): a batch is
    sent again if the connection turns out to be closed.

    A reconnect storm runs thousands of handshakes and joins at once, each a
    command or two. Sent one by one, each takes a pool connection until its task
    runs again, and in a busy worker that is a whole pass of the event loop: the
    pool ran dry and handshakes were refused. Here a command waits at most for
    the pipeline in flight, then goes with everything queued behind it.
    """

    def __init__(self, redis: Redis) -> None:
        self.redis = redis
        self._queued: list[tuple[tuple[Any, ...], asyncio.Future[Any]]] = []
        self._sender: asyncio.Task[None] | None = None

    async def execute_command(self, *args: Any, **options: Any) -> Any:
        future: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        self._queued.append((args, future))
        if self._sender is None:
            self._sender = asyncio.create_task(self._send())
        return await future

    async def _send(self) -> None:
        batch: list[tuple[tuple[Any, ...], asyncio.Future[Any]]] = []
        try:
            while self._queued:
                batch, self._queued = [q for q in self._queued if not q[1].done()], []
                if batch:
                    await self._send_batch(batch)
        finally:
            self._sender = None
            # Only a cancellation (shutdown) gets here with callers still waiting.
            for _, future in [*batch, *self._queued]:
                if not future.done():
                    future.set_exception(RedisConnectionError("Redis pipeline stopped"))
            self._queued = []

    async def _send_batch(self, batch: list[tuple[tuple[Any, ...], asyncio.Future[Any]]]) -> None:
        replies: list[Any] = []
        for attempt in range(2):
            try:
                async with self.redis.pipeline(transaction=False) as pipe:
                    for args, _ in batch:
                        pipe.execute_command(*args)
                    replies = await pipe.execute(raise_on_error=False)
                break
            except RedisConnectionError as error:
                # Unlike single commands, redis-py does not retry a pipeline on a
                # pooled connection that Redis closed (it restarted). Reads only
                # go through here, so sending them again is safe.
                replies = [error] * len(batch)
                if attempt:
                    break
            except Exception as error:  # a timeout, a bug: every command failed
                replies = [error] * len(batch)
                break
        for (_, future), reply in zip(batch, replies, strict=True):
            if future.done():
                continue  # its caller was cancelled
            if isinstance(reply, Exception):
                future.set_exception(reply)
            else:
                future.set_result(reply)


def open_redis(url: str) -> Redis:
    pool = LoggingPool.from_url(
        url,
        max_connections=POOL_SIZE,
        timeout=POOL_WAIT_SECONDS,
        socket_timeout=COMMAND_TIMEOUT_SECONDS,
        socket_connect_timeout=COMMAND_TIMEOUT_SECONDS,
        health_check_interval=30,
        **transport_options(url),
    )
    return Redis.from_pool(pool)  # the client owns the pool, so aclose() closes it too


def transport_options(url: str) -> dict[str, Any]:
    """Connection options that only some transports accept.

    TCP keep-alive lets the kernel notice a peer that vanished without a FIN
    (a NAT that forgot us, a host that lost power). redis-py refuses the option
    outright for `unix://` URLs, whose connections have no such failure mode.
    """
    if urlsplit(url).scheme in ("redis", "rediss"):
        return {"socket_keepalive": True}
    return {}


def as_text(value: bytes | str) -> str:
    """redis-py types every reply as `bytes | str`; this pool returns bytes."""
    return value.decode() if isinstance(value, bytes) else value


def is_refusal(error: RedisError) -> bool:
    """True when Redis answered and refused the command itself (an `ERR` reply).

    Sending the same request again cannot help, unlike an outage: no
    connection, a timeout, or a server that is loading, read-only after a
    failover or out of memory (those replies have their own prefixes).
    """
    return type(error) is ResponseError and error.status_code == "ERR"


def raise_if_cancelled() -> None:
    """Honour a cancellation that redis-py swallowed.

    A cancel that lands while redis-py 8 takes a connection from its pool is
    sometimes lost (the task keeps running with `cancelling() > 0`), which
    would leave a background loop running forever after shutdown. Loops that
    call Redis check this after each call.
    """
    task = asyncio.current_task()
    if task is not None and task.cancelling():
        raise asyncio.CancelledError
