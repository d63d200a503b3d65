"""Every Redis connection the app makes works on each transport a user can configure."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Iterator
from pathlib import Path

import pytest
from redis.asyncio import Redis

from quart_chat.launcher import EmbeddedRedis
from quart_chat.realtime.bus import Bus
from quart_chat.storage import LoggingPool, Throttled, open_redis, script, transport_options


@pytest.fixture
def unix_redis_url(tmp_path: Path) -> Iterator[str]:
    """The embedded Redis exactly as `quart-chat serve` starts it: a Unix socket."""
    server = EmbeddedRedis(tmp_path / "var")
    url = server.start()
    try:
        yield url
    finally:
        server.stop()


@pytest.mark.parametrize("transport", ["unix", "tcp"])
async def test_the_pool_and_the_pubsub_listener_connect(
    transport: str, unix_redis_url: str, redis_url: str
) -> None:
    url = unix_redis_url if transport == "unix" else redis_url
    assert url.startswith("unix://" if transport == "unix" else "redis://")
    redis = open_redis(url)
    bus = Bus(url, "test", lambda channel, data: None, lambda: None, lambda: None)
    listener = asyncio.create_task(bus.listen())
    try:
        assert await redis.ping()
        await asyncio.wait_for(bus.wait_subscribed(), 10)
        assert bus.subscribed
    finally:
        listener.cancel()
        await asyncio.gather(listener, return_exceptions=True)
        await redis.aclose()


def test_keepalive_only_where_the_transport_has_one() -> None:
    assert transport_options("redis://h:6379/0") == {"socket_keepalive": True}
    assert transport_options("rediss://h:6380/0") == {"socket_keepalive": True}
    assert transport_options("unix:///run/redis.sock") == {}


async def test_an_exhausted_pool_says_so_once_not_per_request(
    redis_url: str, caplog: pytest.LogCaptureFixture
) -> None:
    pool = LoggingPool.from_url(redis_url, max_connections=1, timeout=5)
    pool._exhausted = Throttled(logging.getLogger("quart_chat.storage"))  # a fresh interval
    redis = Redis.from_pool(pool)
    try:
        with caplog.at_level(logging.WARNING, logger="quart_chat.storage"):
            # One slow command holds the only connection; 20 more queue behind it.
            slow = asyncio.create_task(redis.blpop(["nothing-here"], timeout=1))
            await asyncio.sleep(0.2)
            answers = await asyncio.gather(*(redis.ping() for _ in range(20)))
            assert await slow is None
        assert all(answers)  # they waited; none failed
        lines = [r.getMessage() for r in caplog.records if "pool exhausted" in r.getMessage()]
        assert len(lines) == 1
        assert "all 1 connections in use" in lines[0]
    finally:
        await redis.aclose()


async def test_a_script_goes_by_its_sha_once_redis_has_it_and_survives_a_flush(
    redis: Redis,
) -> None:
    text = "return redis.call('INCR', KEYS[1])"
    counter = script(redis, text)
    assert script(redis, text) is counter
    sent: list[str] = []
    async with redis.monitor() as monitor:
        results = [await counter(keys=["n"])]
        results.append(await counter(keys=["n"]))
        await redis.script_flush()  # what a Redis restart does to its scripts
        results.append(await counter(keys=["n"]))
        results.append(await counter(keys=["n"]))
        await redis.echo("done")
        while not (command := str((await monitor.next_command())["command"])).startswith("ECHO"):
            if command.startswith("EVAL"):
                sent.append(command.split(" ", 1)[0])
    assert results == [1, 2, 3, 4]
    assert sent == ["EVAL", "EVALSHA", "EVALSHA", "EVAL", "EVALSHA"]
