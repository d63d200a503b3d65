"""Typing indicators over the WebSocket (SPEC §9), through the Quart test client and a real
Redis: who hears that someone is typing, who never does, and that a flood of them costs
one publish per window and leaves the gapless join alone."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from redis.asyncio import Redis
from redis.asyncio.client import PubSub

from quart_chat import keys
from quart_chat.app import create_app
from quart_chat.base import ChatApp
from quart_chat.models.messages import RoomHistory
from quart_chat.realtime import connection

from ..chatting import (
    ask,
    create_room,
    frames_until,
    join_room,
    log_in,
    post,
    receive,
    receive_type,
    start,
)
from ..conftest import make_settings


@pytest.fixture
async def app(redis_url: str, redis: Redis, tmp_path: Path) -> AsyncIterator[ChatApp]:
    app = create_app(make_settings(redis_url, tmp_path))
    async with app.test_app():
        yield app


@pytest.fixture(autouse=True)
def every_ping_answered(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(connection, "PONG_INTERVAL_SECONDS", 0.0)


@pytest.fixture
async def published(redis: Redis) -> AsyncIterator[PubSub]:
    """What is published on any room's channel from now on."""
    pubsub = redis.pubsub()
    await pubsub.psubscribe(keys.room_channel("*"))
    await pubsub.get_message(timeout=1.0)  # the subscription's confirmation
    yield pubsub
    await pubsub.aclose()


async def typing_payloads(pubsub: PubSub, quiet: float = 0.3) -> list[str]:
    """Typing events published until the channels are quiet for `quiet` seconds."""
    payloads = []
    while (message := await pubsub.get_message(timeout=quiet)) is not None:
        data = message["data"].decode()
        if data.startswith("E typing "):
            payloads.append(data)
    return payloads


async def settled(ws: Any) -> None:
    """Every frame sent on this socket before has been served (frames run in order)."""
    assert (await ask(ws, {"type": "ping"}))["type"] == "pong"


async def test_typing_reaches_members_with_the_room_open_but_never_the_typers_tabs(
    app: ChatApp, redis: Redis
) -> None:
    ann = await log_in(app, redis, "ann@example.com")
    bob = await log_in(app, redis, "bob@example.com")
    cy = await log_in(app, redis, "cy@example.com")
    async with (
        ann.socket() as ann_ws,
        bob.socket() as bob_ws,
        bob.socket() as bob_tab,
        cy.socket() as cy_ws,
    ):
        for ws in (ann_ws, bob_ws, bob_tab):
            await start(ws)
        await start(cy_ws, join=False)  # general in her list, not open
        await bob_ws.send_json({"type": "typing", "room": "general"})
        typing = await receive_type(ann_ws, "typing")
        assert typing == {
            "type": "typing",
            "room": "general",
            "user": {"id": bob.user.id, "name": bob.user.name},
        }
        # What came before Ann's message on the others' sockets: no typing line.
        await post(ann_ws, "general", "after the typing")
        for ws in (bob_ws, bob_tab):
            seen = await frames_until(ws, "message", text="after the typing")
            assert [f for f in seen if f["type"] == "typing"] == [], seen
        seen = await frames_until(cy_ws, "unread")
        assert [f for f in seen if f["type"] == "typing"] == [], seen


async def test_a_non_members_typing_is_refused_and_nothing_is_published(
    app: ChatApp, redis: Redis, published: PubSub
) -> None:
    ann = await log_in(app, redis, "ann@example.com")
    bob = await log_in(app, redis, "bob@example.com")
    async with ann.socket() as ann_ws, bob.socket() as bob_ws:
        await start(ann_ws)
        await start(bob_ws)
        secret = await create_room(bob_ws, "secret plans")
        await join_room(bob_ws, secret)
        await typing_payloads(published)  # the room's creation news
        for _ in range(2):  # refused every time, not just outside a throttle window
            error = await ask(ann_ws, {"type": "typing", "room": secret})
            assert error["type"] == "error" and error["code"] == "not_allowed", error
            assert error["message"] == "no such room"
        assert await typing_payloads(published) == []
        await post(ann_ws, "general", "marker")
        seen = await frames_until(bob_ws, "message", text="marker")
        assert [f for f in seen if f["type"] == "typing"] == [], seen


async def test_a_flood_of_typing_publishes_one_per_window_and_the_socket_stays_open(
    app: ChatApp, redis: Redis, published: PubSub, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(connection, "TYPING_INTERVAL_SECONDS", 1.0)
    ann = await log_in(app, redis, "ann@example.com")
    bob = await log_in(app, redis, "bob@example.com")
    async with ann.socket() as ann_ws, bob.socket() as bob_ws:
        await start(ann_ws)
        await start(bob_ws)
        for number in range(50):
            await bob_ws.send_json({"type": "typing", "room": "general", "ref": f"t{number}"})
        # The first extra one is refused with its ref; the other 48 are dropped
        # without a word: after that error, the pong is the next frame Bob gets.
        refused = await receive_type(bob_ws, "error")
        assert refused["code"] == "rate_limited" and refused["ref"] == "t1", refused
        assert "typing at most once every" in refused["message"]
        await settled(bob_ws)
        assert len(await typing_payloads(published)) == 1
        await asyncio.sleep(1.0)  # the window is over: the next one goes out
        await bob_ws.send_json({"type": "typing", "room": "general"})
        await settled(bob_ws)
        assert len(await typing_payloads(published)) == 1
        await post(bob_ws, "general", "done typing")
        seen = await frames_until(ann_ws, "message", text="done typing")
        assert [f["type"] for f in seen if f["type"] == "typing"] == ["typing"] * 2


async def test_a_join_while_typing_events_flow_has_no_gap_and_no_duplicate(
    app: ChatApp, redis: Redis, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Typing events carry no stream id: the join's buffer and its floor ignore them."""
    monkeypatch.setattr(connection, "TYPING_INTERVAL_SECONDS", 0.0)
    ann = await log_in(app, redis, "ann@example.com")
    bob = await log_in(app, redis, "bob@example.com")
    history = RoomHistory(redis, 10000)
    first = (await history.post("general", bob.user, "first", "b-first")).id

    async with ann.socket() as ws, bob.socket() as bob_ws:
        await start(bob_ws, join=False)

        async def flood() -> str:
            last = ""
            for n in range(300):
                await bob_ws.send_json({"type": "typing", "room": "general"})
                last = (await history.post("general", bob.user, f"b{n}", f"b{n}")).id
            return last

        await receive(ws)
        sender = asyncio.create_task(flood())
        await asyncio.sleep(0.01)  # join while the flood is under way
        await ws.send_json({"type": "join", "room": "general", "after": first})
        last = await sender
        seen: list[str] = []
        typing_live = 0
        while not seen or seen[-1] != last:
            frame = await receive_type(ws, "history") if not seen else await receive(ws)
            if frame["type"] == "history":
                seen += [m["id"] for m in frame["messages"]]
            elif frame["type"] == "message":
                seen.append(frame["id"])
            elif frame["type"] == "typing":
                typing_live += 1
    stored = [entry[0].decode() for entry in await redis.xrange(keys.room_history("general"))]
    assert seen == stored[1:]
    assert typing_live > 0  # they did flow, interleaved with the live messages
