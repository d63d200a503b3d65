"""/healthz answers 200 while Redis answers and 503 once it does not."""

from __future__ import annotations

from pathlib import Path

from quart.testing import QuartClient

from quart_chat.app import create_app

from ..conftest import make_settings
from ..servers import RedisServer


async def test_healthz_ok_when_redis_answers(client: QuartClient) -> None:
    response = await client.get("/healthz")
    assert response.status_code == 200
    assert await response.get_json() == {"status": "ok"}


async def test_healthz_503_when_redis_is_down_and_recovers(tmp_path: Path) -> None:
    server = RedisServer(tmp_path / "redis", appendonly=False).start()
    app = create_app(make_settings(server.url, tmp_path / "var"))
    try:
        async with app.test_app():
            client = app.test_client()
            assert (await client.get("/healthz")).status_code == 200
            server.stop()
            response = await client.get("/healthz")
            assert response.status_code == 503
            assert (await response.get_json())["status"] == "unavailable"
            server.start()
            assert (await client.get("/healthz")).status_code == 200
    finally:
        server.stop()
