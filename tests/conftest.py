"""Shared fixtures: a real Redis, settings pointed at it, the app and its test client.

Redis is `CHAT_TEST_REDIS_URL` when set, else one private redis-server for the
whole session; every test starts from an empty database.
"""

from __future__ import annotations

import os
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import pytest
from quart.testing import QuartClient
from redis.asyncio import Redis

from quart_chat.app import create_app
from quart_chat.base import ChatApp
from quart_chat.config import Settings

from .servers import RedisServer
from .smtp import SmtpSink

TEST_SECRET = "test-secret-key-" + "x" * 32

# The developer's own CHAT_* variables must not leak into the settings under test.
for _name in [name for name in os.environ if name.startswith("CHAT_") and "TEST" not in name]:
    del os.environ[_name]


@pytest.fixture(scope="session")
def redis_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    external = os.environ.get("CHAT_TEST_REDIS_URL")
    if external:
        yield external
        return
    server = RedisServer(tmp_path_factory.mktemp("redis"), appendonly=False).start()
    try:
        yield server.url
    finally:
        server.stop()


@pytest.fixture
async def redis(redis_url: str) -> AsyncIterator[Redis]:
    client = Redis.from_url(redis_url)
    await client.flushdb()
    try:
        yield client
    finally:
        await client.flushdb()
        await client.aclose()


def make_settings(redis_url: str, data_dir: Path, **overrides: Any) -> Settings:
    values: dict[str, Any] = {
        "secret_key": TEST_SECRET,
        "redis_url": redis_url,
        "data_dir": data_dir,
        "cookie_secure": False,
        **overrides,
    }
    return Settings(_env_file=None, **values)  # type: ignore[call-arg]


@pytest.fixture
def settings(redis_url: str, tmp_path: Path) -> Settings:
    return make_settings(redis_url, tmp_path / "var")


@pytest.fixture
async def app(settings: Settings, redis: Redis) -> AsyncIterator[ChatApp]:
    app = create_app(settings)
    async with app.test_app():
        yield app


@pytest.fixture
def client(app: ChatApp) -> QuartClient:
    return app.test_client()


@pytest.fixture
def smtp() -> Iterator[SmtpSink]:
    sink = SmtpSink().start()
    try:
        yield sink
    finally:
        sink.stop()


@pytest.fixture(scope="module")
def smtp_sink() -> Iterator[SmtpSink]:
    """One SMTP sink for a module's servers, bound when the module starts (a port picked
    at import could be taken by another test's sink by then)."""
    sink = SmtpSink().start()
    try:
        yield sink
    finally:
        sink.stop()
