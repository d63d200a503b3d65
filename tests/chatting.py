"""Helpers for chat tests: log users in directly and read frames with timeouts."""

from __future__ import annotations

import asyncio
import json
from typing import Any

from quart.testing import QuartClient
from quart.typing import TestWebsocketConnectionProtocol
from quart_auth import generate_auth_token
from redis.asyncio import Redis

from quart_chat.base import ChatApp
from quart_chat.models.sessions import create_session
from quart_chat.models.users import User, get_or_create_user

WAIT = 10.0
# Frames a socket gets whatever it asked for.
NOTICES = ("presence", "unread")


class Person:
    """A logged-in user of the Quart test app: their session cookie and a client."""

    def __init__(self, app: ChatApp, user: User, session_id: str) -> None:
        self.app = app
        self.user = user
        self.session_id = session_id
        self.client: QuartClient = app.test_client()
        self.cookie = f"QUART_AUTH={generate_auth_token(self.client, session_id)}"

    def socket(self, **headers: str) -> TestWebsocketConnectionProtocol:
        return self.client.websocket("/ws", headers={"Cookie": self.cookie, **headers})


async def log_in(app: ChatApp, redis: Redis, email: str) -> Person:
    user = await get_or_create_user(redis, email)
    session_id = await create_session(redis, user, 3600)
    return Person(app, user, session_id)


async def receive(ws: TestWebsocketConnectionProtocol, timeout: float = WAIT) -> dict[str, Any]:
    raw = await asyncio.wait_for(ws.receive(), timeout)
    frame: dict[str, Any] = json.loads(raw)
    return frame


async def receive_type(
    ws: TestWebsocketConnectionProtocol, kind: str, timeout: float = WAIT
) -> dict[str, Any]:
    """The next frame of this type; presence news and unread bumps (of rooms the socket
    has not joined) in between are skipped, others fail."""
    while True:
        frame = await receive(ws, timeout)
        if frame["type"] == kind:
            return frame
        assert frame["type"] in NOTICES, f"expected {kind}, got {frame}"


async def start(ws: TestWebsocketConnectionProtocol, join: bool = True) -> dict[str, Any]:
    """Read `ready` and join `general` (reading its backlog frame); returns `ready`."""
    ready = await receive(ws)
    assert ready["type"] == "ready"
    if join:
        await ws.send_json({"type": "join", "room": "general"})
        await receive_type(ws, "history")
    return ready


async def send_text(
    ws: TestWebsocketConnectionProtocol, text: str, client_id: str
) -> dict[str, Any]:
    await ws.send_json({"type": "send", "room": "general", "text": text, "client_id": client_id})
    return await receive_type(ws, "message")
