"""The chat page's routes: `/` and `/r/<room>` serve one page, whatever the room."""

from __future__ import annotations

from quart.testing import QuartClient
from redis.asyncio import Redis

from quart_chat.base import ChatApp

from ..chatting import log_in


async def test_a_room_url_without_a_session_comes_back_after_login(client: QuartClient) -> None:
    response = await client.get("/r/abc_DEF-123")
    assert response.status_code == 302
    assert response.headers["Location"] == "/login?next=/r/abc_DEF-123"


async def test_every_room_url_serves_the_same_page(app: ChatApp, redis: Redis) -> None:
    """The page does not look the room up: a private room's URL and a made-up one
    answer byte for byte alike, so the URL reveals nothing to a non-member."""
    ann = await log_in(app, redis, "ann@example.com")
    headers = {"Cookie": ann.cookie}
    bodies = []
    for path in ("/", "/r/general", "/r/some-private-room", "/r/no-such-room"):
        response = await ann.client.get(path, headers=headers)
        assert response.status_code == 200
        bodies.append(await response.get_data(as_text=True))
    assert len(set(bodies)) == 1
    assert '<script type="module" src="/static/chat/main.js"></script>' in bodies[0]
