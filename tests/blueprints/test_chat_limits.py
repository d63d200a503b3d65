"""What one socket's requests can make the server send (issue 12, amplification).

`join` and `history` answer a small frame with up to ~100 messages: repeated
joins are refused, both are rate-limited per socket and per user, and a
`join after` never replays more than JOIN_BACKLOG_MAX messages.
"""

from __future__ import annotations

import asyncio
import json
from pathlib import Path
from typing import Any

import pytest
from quart.typing import TestWebsocketConnectionProtocol as Socket
from redis.asyncio import Redis

from quart_chat.app import create_app
from quart_chat.base import ChatApp
from quart_chat.models.messages import RoomHistory
from quart_chat.models.users import User
from quart_chat.realtime import connection

from ..chatting import WAIT, log_in, receive, receive_type, send_text, start
from ..conftest import make_settings

SENTINEL = {"type": "send", "room": "general", "text": "", "client_id": "sentinel"}


async def answers_until_sentinel(ws: Socket) -> list[str]:
    """Every frame sent in answer to what came before SENTINEL (whose own error ends them)."""
    await ws.send_json(SENTINEL)
    frames = []
    while True:
        raw = await receive_raw(ws)
        frame = json.loads(raw)
        if frame.get("client_id") == "sentinel":
            return frames
        if frame["type"] != "presence":
            frames.append(raw)


async def receive_raw(ws: Socket) -> str:
    raw = await asyncio.wait_for(ws.receive(), WAIT)
    assert isinstance(raw, str)
    return raw


async def fill_room(redis: Redis, user: User, count: int, size: int = 1000) -> list[str]:
    history = RoomHistory(redis, 10000)
    return [(await history.post("general", user, "x" * size, f"c{n}")).id for n in range(count)]


def kinds(frames: list[str]) -> list[tuple[str, Any]]:
    return [(f["type"], f.get("code")) for f in map(json.loads, frames)]


async def test_joining_again_is_refused_and_costs_no_backlog(app: ChatApp, redis: Redis) -> None:
    """2,000 joins once made the server send 108.5 MB; now one backlog and small errors."""
    ann = await log_in(app, redis, "ann@example.com")
    await fill_room(redis, ann.user, 50)
    async with ann.socket() as ws:
        await start(ws)  # the one join that sends the backlog (~55 KB)
        for _ in range(2000):
            await ws.send('{"type":"join","room":"general"}')
        frames = await answers_until_sentinel(ws)
        assert kinds(frames) == [("error", "bad_request")] * 2000
        assert "already joined" in json.loads(frames[0])["message"]
        assert sum(len(f.encode()) for f in frames) < 2000 * 120
        assert (await send_text(ws, "still here", "c-after"))["text"] == "still here"


async def test_history_requests_are_limited_per_socket(app: ChatApp, redis: Redis) -> None:
    ann = await log_in(app, redis, "ann@example.com")
    ids = await fill_room(redis, ann.user, 100)
    request = {"type": "history", "room": "general", "before": ids[-1], "limit": 100}
    async with ann.socket() as ws, ann.socket() as other_tab:
        await start(ws)  # a join counts against the user's limit only
        for _ in range(100):
            await ws.send_json(request)
        frames = await answers_until_sentinel(ws)
        allowed = connection.BACKLOG_REQUESTS_PER_SOCKET
        assert kinds(frames) == [("history", None)] * allowed + [("error", "rate_limited")] * (
            100 - allowed
        )
        refusal = json.loads(frames[-1])
        assert 1 <= refusal["retry_after"] <= 60
        assert f"try again in {refusal['retry_after']} s" in refusal["message"]
        # Bytes: the allowed pages, then a small error per request.
        page_bytes = sum(len(f.encode()) for f in frames[:allowed])
        assert sum(len(f.encode()) for f in frames) < page_bytes + 100 * 150
        # The same user's other tab has its own share.
        await start(other_tab)
        await other_tab.send_json(request)
        assert len((await receive_type(other_tab, "history"))["messages"]) == 99


async def test_backlog_requests_are_limited_per_user_across_tabs(
    redis_url: str, redis: Redis, tmp_path: Path
) -> None:
    app = create_app(make_settings(redis_url, tmp_path, backlog_requests_per_minute=4))
    async with app.test_app():
        ann = await log_in(app, redis, "ann@example.com")
        bob = await log_in(app, redis, "bob@example.com")
        request = {"type": "history", "room": "general"}
        async with ann.socket() as tab1, ann.socket() as tab2, bob.socket() as bob_ws:
            await start(tab1)  # 1
            await tab1.send_json(request)  # 2
            await start(tab2)  # 3
            await tab2.send_json(request)  # 4
            await tab1.send_json(request)  # 5: over, although tab1 has made only 3
            assert kinds(await answers_until_sentinel(tab1)) == [
                ("history", None),
                ("error", "rate_limited"),
            ]
            assert kinds(await answers_until_sentinel(tab2)) == [("history", None)]
            await tab2.send_json({"type": "join", "room": "general"})
            assert kinds(await answers_until_sentinel(tab2)) == [("error", "bad_request")]
            await start(bob_ws)
            assert (await send_text(tab2, "sending is not limited by this", "c1"))["text"]


async def test_a_join_too_far_behind_starts_over_from_the_newest(
    app: ChatApp, redis: Redis, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(connection, "JOIN_BACKLOG_MAX", 120)
    ann = await log_in(app, redis, "ann@example.com")
    ids = await fill_room(redis, ann.user, 122, size=10)
    async with ann.socket() as ws:
        await receive(ws)
        await ws.send_json({"type": "join", "room": "general", "after": ids[0]})  # 121 behind
        page = await receive_type(ws, "history")
        assert page["reset"] is True
        assert page["has_more"] is True
        assert [m["id"] for m in page["messages"]] == ids[-50:]
        live = await send_text(ws, "live", "c-live")
        assert live["text"] == "live"
    async with ann.socket() as ws:
        await receive(ws)
        await ws.send_json({"type": "join", "room": "general", "after": ids[2]})  # 120 behind
        pages = [await receive_type(ws, "history")]
        while pages[-1]["has_more"]:
            pages.append(await receive_type(ws, "history"))
        assert [len(p["messages"]) for p in pages] == [100, 20]
        assert not any("reset" in p for p in pages)
        assert [m["id"] for p in pages for m in p["messages"]] == [*ids[3:], live["id"]]
