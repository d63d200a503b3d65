"""/healthz answers 200 only while the worker can chat: Redis answers and pub/sub is subscribed."""

from __future__ import annotations

import asyncio
from pathlib import Path

import redis
from quart.testing import QuartClient

from quart_chat.app import create_app
from quart_chat.base import ChatApp

from ..conftest import make_settings
from ..servers import RedisServer

WAIT = 20.0


async def health(client: QuartClient) -> tuple[int, object]:
    response = await client.get("/healthz")
    return response.status_code, await response.get_json()


async def wait_health(client: QuartClient, expected: tuple[int, object]) -> None:
    """Poll until /healthz says `expected` (the listener reconnects with backoff)."""
    async with asyncio.timeout(WAIT):
        while await health(client) != expected:
            await asyncio.sleep(0.1)


OK = (200, {"status": "ok"})


async def test_healthz_ok_when_redis_answers(client: QuartClient) -> None:
    assert await health(client) == OK


async def test_healthz_503_once_the_worker_is_stopping(app: ChatApp, client: QuartClient) -> None:
    assert await health(client) == OK
    app.hub.fanout.close_all(1012)  # what the worker's SIGTERM handler does first
    assert await health(client) == (503, {"status": "unavailable", "reason": "stopping"})


async def test_healthz_503_when_redis_is_down_and_recovers(tmp_path: Path) -> None:
    server = RedisServer(tmp_path / "redis", appendonly=False).start()
    app = create_app(make_settings(server.url, tmp_path / "var"))
    try:
        async with app.test_app():
            client = app.test_client()
            assert await health(client) == OK
            server.stop()
            assert await health(client) == (503, {"status": "unavailable", "reason": "redis"})
            server.start()
            await wait_health(client, OK)
    finally:
        server.stop()


async def test_healthz_503_while_the_listener_cannot_subscribe(tmp_path: Path) -> None:
    """Redis answers, but this worker has no pub/sub: it refuses every WebSocket, so unhealthy."""
    server = RedisServer(tmp_path / "redis", appendonly=False).start()
    admin = redis.Redis(port=server.port)
    app = create_app(make_settings(server.url, tmp_path / "var"))
    try:
        async with app.test_app():
            client = app.test_client()
            assert await health(client) == OK
            # An ACL that forbids pub/sub (a misconfigured Redis user), and the
            # listener's connection dropped: it cannot subscribe again.
            admin.acl_setuser("default", enabled=True, commands=["-@pubsub"])
            admin.client_kill_filter(_type="pubsub")
            unhealthy = (503, {"status": "unavailable", "reason": "pubsub"})
            await wait_health(client, unhealthy)
            assert await health(client) == unhealthy
            admin.acl_setuser("default", enabled=True, commands=["+@all"])
            await wait_health(client, OK)
    finally:
        admin.close()
        server.stop()
