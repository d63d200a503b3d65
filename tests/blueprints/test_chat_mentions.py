"""Mentions over the WebSocket (SPEC §9): the message frame names who it mentions,
a watching socket's unread bump carries them, and `ready` and `read` count them per
user the same on every device."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from redis.asyncio import Redis

from quart_chat.app import create_app
from quart_chat.base import ChatApp
from quart_chat.models.users import set_name
from quart_chat.realtime import connection

from ..chatting import ask, create_room, frames_until, join_room, log_in, post, receive, start
from ..conftest import make_settings


@pytest.fixture
async def app(redis_url: str, redis: Redis, tmp_path: Path) -> AsyncIterator[ChatApp]:
    app = create_app(make_settings(redis_url, tmp_path))
    async with app.test_app():
        yield app


@pytest.fixture(autouse=True)
def every_ping_answered(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(connection, "PONG_INTERVAL_SECONDS", 0.0)


async def test_a_mention_reaches_the_frame_the_bump_and_the_counts_on_every_device(
    app: ChatApp, redis: Redis
) -> None:
    ann = await log_in(app, redis, "ann@example.com")
    bob = await log_in(app, redis, "bob@example.com")
    await set_name(redis, bob.user, "Bob Stone")
    async with ann.socket() as ann_ws, bob.socket() as phone, bob.socket() as laptop:
        for ws in (ann_ws, phone, laptop):
            await start(ws, join=False)
        room = await create_room(ann_ws, "plans", "public", members=[bob.user.id])
        await join_room(ann_ws, room)
        posted = await post(ann_ws, room, "@bob stone can you and @everyone look?")
        assert posted["mentions"] == [bob.user.id] and posted["everyone"] is True
        for ws in (phone, laptop):
            bump = (await frames_until(ws, "unread", id=posted["id"]))[-1]
            assert bump["mentions"] == [bob.user.id] and bump["everyone"] is True
        plain = await post(ann_ws, room, "no mention here")
        bump = (await frames_until(phone, "unread", id=plain["id"]))[-1]
        assert "mentions" not in bump
        # History shows the mentions as the live frame did.
        [first, _] = await join_room(phone, room)
        assert first["mentions"] == [bob.user.id] and first["everyone"] is True
    async with bob.socket() as ws:
        ready = await receive(ws)
        [plans] = [r for r in ready["rooms"] if r["id"] == room]
        assert plans["mentions"] == 1 and plans["unread"] == 2
        async with bob.socket() as other:
            await receive(other)
            reply = await ask(ws, {"type": "read", "room": room, "id": plain["id"]})
            assert reply["type"] == "ok"
            for tab in (ws, other):
                read = (await frames_until(tab, "read", room=room))[-1]
                assert read["unread"] == 0 and read["mentions"] == 0
    async with bob.socket() as ws:
        ready = await receive(ws)
        [plans] = [r for r in ready["rooms"] if r["id"] == room]
        assert plans["mentions"] == 0


async def test_non_members_and_big_rooms_are_not_mentioned(app: ChatApp, redis: Redis) -> None:
    ann = await log_in(app, redis, "ann@example.com")
    bob = await log_in(app, redis, "bob@example.com")
    cat = await log_in(app, redis, "cat@example.com")
    async with ann.socket() as ann_ws:
        await start(ann_ws, join=False)
        room = await create_room(ann_ws, "quiet", "private", members=[bob.user.id])
        await join_room(ann_ws, room)
        posted = await post(ann_ws, room, "@cat is not here, @bob is")
        assert posted["mentions"] == [bob.user.id]
    async with cat.socket() as ws:
        ready = await receive(ws)
        assert [r["mentions"] for r in ready["rooms"]] == [0]
