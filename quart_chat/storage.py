"""The Redis connection pool every worker keeps on `app.redis`."""

from __future__ import annotations

import asyncio
from typing import Any
from urllib.parse import urlsplit

from redis.asyncio import BlockingConnectionPool, Redis
from redis.exceptions import RedisError, ResponseError

# redis-py's `from_url` caps the pool at 100 and raises past that; a blocking
# pool makes a burst wait for a free connection instead of failing a request.
POOL_SIZE = 64
POOL_WAIT_SECONDS = 10
# Plain commands answer in milliseconds; this only bounds a dead server.
# Blocking commands (pub/sub reads, XREAD BLOCK) pass their own timeouts.
COMMAND_TIMEOUT_SECONDS = 5


def open_redis(url: str) -> Redis:
    pool = BlockingConnectionPool.from_url(
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
