"""Helpers for chat tests: log users in directly and read frames with timeouts."""

from __future__ import annotations

import asyncio
import itertools
import json
from typing import Any

from quart.testing import QuartClient
from quart.typing import TestWebsocketConnectionProtocol
from quart.typing import TestWebsocketConnectionProtocol as Socket
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


# -- asking and waiting, for tests of rooms, changes, mentions and typing --------------

_refs = itertools.count()
# Frames read while looking for another, per socket, for the next look.
_held: dict[int, list[dict[str, Any]]] = {}


async def next_frame(ws: Socket) -> dict[str, Any]:
    held = _held.get(id(ws))
    if held:
        return held.pop(0)
    return await receive(ws)


async def ask(ws: Socket, frame: dict[str, Any]) -> dict[str, Any]:
    """Send `frame` with a fresh `ref`; the frame that answers it (carrying that ref).
    Frames that come first are kept for `frames_until`."""
    ref = f"ref-{next(_refs)}"
    await ws.send_json({**frame, "ref": ref})
    skipped = []
    while True:
        answer = await receive(ws)
        if answer.get("ref") == ref:
            _held.setdefault(id(ws), []).extend(skipped)
            return answer
        skipped.append(answer)


async def frames_until(ws: Socket, kind: str, **fields: Any) -> list[dict[str, Any]]:
    """Every frame up to and including the first of `kind` with these fields, presence
    news left out."""
    seen = []
    while True:
        frame = await next_frame(ws)
        if frame["type"] == "presence":
            continue
        seen.append(frame)
        if frame["type"] == kind and all(frame.get(k) == v for k, v in fields.items()):
            return seen


async def room_frame_where(ws: Socket, **fields: Any) -> dict[str, Any]:
    """The next `room` frame whose room object has these fields."""
    while True:
        room: dict[str, Any] = (await frames_until(ws, "room"))[-1]["room"]
        if all(room.get(k) == v for k, v in fields.items()):
            return room


async def create_room(ws: Socket, name: str, kind: str = "private", **extra: Any) -> str:
    reply = await ask(ws, {"type": "room_create", "kind": kind, "name": name, **extra})
    assert reply["type"] == "room", reply
    room_id: str = reply["room"]["id"]
    return room_id


async def join_room(ws: Socket, room: str) -> list[dict[str, Any]]:
    reply = await ask(ws, {"type": "join", "room": room})
    assert reply["type"] == "history", reply
    messages: list[dict[str, Any]] = reply["messages"]
    return messages


async def post(ws: Socket, room: str, text: str) -> dict[str, Any]:
    """Post and wait for the stored message (the echo through the room, or directly)."""
    await ws.send_json({"type": "send", "room": room, "text": text, "client_id": text})
    while True:
        frame = await receive(ws)
        if frame["type"] == "message" and frame["client_id"] == text:
            return frame
        assert frame["type"] in ("presence", "unread", "room", "read"), frame


async def snapshot(redis: Redis, *patterns: str) -> dict[bytes, bytes | None]:
    """Every key matching the patterns, dumped: equal snapshots mean nothing was stored."""
    names = [
        name
        for pattern in patterns
        async for name in redis.scan_iter(match=pattern)
        if b":ratelimit:" not in name
    ]
    return {name: await redis.dump(name) for name in sorted(names)}
