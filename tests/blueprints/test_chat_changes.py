"""Edits, deletions and reactions over the WebSocket (SPEC §9), through the Quart test
client and a real Redis: who may change what, what others see live, what history and
`join after` show afterwards, and that bad changes store nothing."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from redis.asyncio import Redis

from quart_chat import keys
from quart_chat.app import create_app
from quart_chat.base import ChatApp
from quart_chat.realtime import connection

from ..chatting import (
    ask,
    create_room,
    log_in,
    next_frame,
    post,
    receive,
    receive_type,
    snapshot,
    start,
)
from ..conftest import make_settings


@pytest.fixture
async def app(redis_url: str, redis: Redis, tmp_path: Path) -> AsyncIterator[ChatApp]:
    settings = make_settings(redis_url, tmp_path).model_copy(
        update={"admin_emails": ["root@example.com"]}
    )
    app = create_app(settings)
    async with app.test_app():
        yield app


@pytest.fixture(autouse=True)
def every_ping_answered(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(connection, "PONG_INTERVAL_SECONDS", 0.0)


async def history(ws: Any, room: str = "general") -> list[dict[str, Any]]:
    reply = await ask(ws, {"type": "history", "room": room})
    assert reply["type"] == "history", reply
    messages: list[dict[str, Any]] = reply["messages"]
    return messages


# Through JSON in Lua (cjson) and back: quotes, slashes, line breaks, non-ASCII, markup.
EDITED = 'hello "you" </b>\n☃ 👩‍👩‍👧 \\u0000'


async def skip_to(ws: Any, kind: str) -> dict[str, Any]:
    """The next frame of `kind`, anything before it skipped."""
    while (frame := await next_frame(ws))["type"] != kind:
        pass
    return frame


async def test_an_edit_reaches_the_room_and_history_shows_the_new_text(
    app: ChatApp, redis: Redis
) -> None:
    ann = await log_in(app, redis, "ann@example.com")
    bob = await log_in(app, redis, "bob@example.com")
    async with ann.socket() as ann_ws, bob.socket() as bob_ws:
        await start(ann_ws)
        await start(bob_ws)
        message = await post(ann_ws, "general", "helo")
        await receive_type(bob_ws, "message")
        seq = await redis.hget(keys.room_meta("general"), "seq")
        reply = await ask(
            ann_ws, {"type": "edit", "room": "general", "id": message["id"], "text": EDITED}
        )
        assert reply == {"type": "ok", "ref": reply["ref"]}
        edit = await receive_type(bob_ws, "edit")
        assert edit["target"] == message["id"] and edit["text"] == EDITED
        assert edit["user"] == {"id": ann.user.id, "name": ann.user.name}
        assert edit["id"] > message["id"] and edit["ts"] >= message["ts"]
        # Not a message: the unread count of the room does not move.
        assert await redis.hget(keys.room_meta("general"), "seq") == seq
        (shown,) = await history(bob_ws)
        assert shown["id"] == message["id"] and shown["text"] == EDITED
        assert shown["edited_ts"] == edit["ts"]


async def test_changes_nobody_may_make_are_refused_and_store_nothing(
    app: ChatApp, redis: Redis
) -> None:
    ann = await log_in(app, redis, "ann@example.com")
    bob = await log_in(app, redis, "bob@example.com")
    async with ann.socket() as ann_ws, bob.socket() as bob_ws:
        await start(ann_ws)
        await start(bob_ws)
        message = await post(ann_ws, "general", "mine")
        private = await create_room(ann_ws, "secret")
        theirs = await post(ann_ws, private, "hidden")
        before = await snapshot(redis, "{room:*")
        cases: list[tuple[dict[str, Any], str, str]] = [
            (
                {"type": "edit", "id": message["id"], "text": "x"},
                "not_allowed",
                "only its author can edit a message",
            ),
            (
                {"type": "delete", "id": message["id"]},
                "not_allowed",
                "only its author or an admin can delete a message",
            ),
            ({"type": "edit", "id": "1-1", "text": "x"}, "bad_request", "no such message"),
            ({"type": "react", "id": "1-1", "emoji": "👍"}, "bad_request", "no such message"),
            ({"type": "react", "id": message["id"], "emoji": "lol"}, "bad_request", ""),
            ({"type": "react", "id": message["id"], "emoji": "👍" * 40}, "bad_request", ""),
            ({"type": "react", "id": message["id"], "emoji": "<b>"}, "bad_request", ""),
            ({"type": "react", "id": message["id"], "emoji": "👍👍"}, "bad_request", ""),
            ({"type": "react", "id": message["id"], "emoji": ":nope:"}, "bad_request", ""),
            ({"type": "edit", "id": message["id"], "text": " "}, "bad_request", ""),
        ]
        for frame, code, text in cases:
            error = await ask(bob_ws, {**frame, "room": "general"})
            assert error["type"] == "error" and error["code"] == code, (frame, error)
            assert text in error["message"]
        for frame in (
            {"type": "edit", "id": theirs["id"], "text": "x"},
            {"type": "delete", "id": theirs["id"]},
            {"type": "react", "id": theirs["id"], "emoji": "👍"},
        ):
            error = await ask(bob_ws, {**frame, "room": private})
            assert (error["code"], error["message"]) == ("not_allowed", "no such room")
        assert await snapshot(redis, "{room:*") == before
        # The socket is still open and served.
        assert (await ask(bob_ws, {"type": "ping"}))["type"] == "pong"


async def test_a_deletion_leaves_a_tombstone_and_stops_further_changes(
    app: ChatApp, redis: Redis
) -> None:
    ann = await log_in(app, redis, "ann@example.com")
    bob = await log_in(app, redis, "bob@example.com")
    root = await log_in(app, redis, "root@example.com")
    async with ann.socket() as ann_ws, bob.socket() as bob_ws, root.socket() as root_ws:
        for ws in (ann_ws, bob_ws, root_ws):
            await start(ws)
        first = await post(ann_ws, "general", "first")
        second = await post(ann_ws, "general", "second")
        assert (await ask(ann_ws, {"type": "delete", "room": "general", "id": first["id"]}))[
            "type"
        ] == "ok"
        deleted = await skip_to(bob_ws, "delete")
        assert deleted["target"] == first["id"] and deleted["user"]["id"] == ann.user.id
        # An admin may delete anyone's message.
        reply = await ask(root_ws, {"type": "delete", "room": "general", "id": second["id"]})
        assert reply["type"] == "ok", reply
        shown = await history(bob_ws)
        assert [(m["id"], m["text"], m.get("deleted")) for m in shown] == [
            (first["id"], "", True),
            (second["id"], "", True),
        ]
        for frame in (
            {"type": "edit", "id": first["id"], "text": "back"},
            {"type": "react", "id": first["id"], "emoji": "👍"},
            {"type": "delete", "id": first["id"]},
        ):
            error = await ask(ann_ws, {**frame, "room": "general"})
            assert (error["code"], error["message"]) == ("bad_request", "the message was deleted")


async def test_reactions_toggle_and_count_who_reacted(app: ChatApp, redis: Redis) -> None:
    ann = await log_in(app, redis, "ann@example.com")
    bob = await log_in(app, redis, "bob@example.com")
    async with ann.socket() as ann_ws, bob.socket() as bob_ws:
        await start(ann_ws)
        await start(bob_ws)
        message = await post(ann_ws, "general", "vote")
        await receive_type(bob_ws, "message")
        react = {"type": "react", "room": "general", "id": message["id"]}
        # A :short_name: is the same reaction as its emoji.
        for ws, emoji in ((ann_ws, "👍"), (bob_ws, ":thumbsup:")):
            assert (await ask(ws, {**react, "emoji": emoji, "on": True}))["type"] == "ok"
        assert (await ask(bob_ws, {**react, "emoji": "👨‍👩‍👧", "on": True}))["type"] == "ok"
        (shown,) = await history(bob_ws)
        assert shown["reactions"] == [
            {"emoji": "👍", "count": 2, "users": [ann.user.id, bob.user.id], "me": True},
            {"emoji": "👨‍👩‍👧", "count": 1, "users": [bob.user.id], "me": True},
        ]
        assert (await ask(bob_ws, {**react, "emoji": ":+1:", "on": False}))["type"] == "ok"
        assert (await ask(bob_ws, {**react, "emoji": "👨‍👩‍👧", "on": False}))["type"] == "ok"
        (shown,) = await history(ann_ws)
        assert shown["reactions"] == [
            {"emoji": "👍", "count": 1, "users": [ann.user.id], "me": True}
        ]
        # Ann's socket saw every reaction live, in order.
        seen = []
        while len(seen) < 5:
            frame = await next_frame(ann_ws)
            if frame["type"] != "reaction":
                continue
            seen.append((frame["user"]["id"], frame["emoji"], frame["on"]))
        assert seen == [
            (ann.user.id, "👍", True),
            (bob.user.id, "👍", True),
            (bob.user.id, "👨‍👩‍👧", True),
            (bob.user.id, "👍", False),
            (bob.user.id, "👨‍👩‍👧", False),
        ]


async def test_join_after_brings_an_offline_page_to_the_final_state(
    app: ChatApp, redis: Redis
) -> None:
    ann = await log_in(app, redis, "ann@example.com")
    bob = await log_in(app, redis, "bob@example.com")
    async with ann.socket() as ann_ws:
        await start(ann_ws)
        old = await post(ann_ws, "general", "old")
        async with bob.socket() as bob_ws:
            await start(bob_ws)
        # Bob is offline from here; his page last saw `old`.
        new = await post(ann_ws, "general", "new")
        await ask(ann_ws, {"type": "edit", "room": "general", "id": old["id"], "text": "old!"})
        await ask(ann_ws, {"type": "react", "room": "general", "id": old["id"], "emoji": "🎉"})
        await ask(ann_ws, {"type": "edit", "room": "general", "id": new["id"], "text": "secret"})
        await ask(ann_ws, {"type": "react", "room": "general", "id": new["id"], "emoji": "🎉"})
        await ask(ann_ws, {"type": "delete", "room": "general", "id": new["id"]})
        async with bob.socket() as bob_ws:
            await receive_type(bob_ws, "ready")
            await bob_ws.send_json({"type": "join", "room": "general", "after": old["id"]})
            frames = [await receive_type(bob_ws, "history")]
            while frames[-1]["type"] != "delete":
                frames.append(await receive(bob_ws))
        frames = [f for f in frames if f["type"] not in ("presence", "unread")]
        assert [f["type"] for f in frames] == ["history", "edit", "reaction", "delete"]
        (shown,) = frames[0]["messages"]
        assert (shown["id"], shown["text"], shown["deleted"]) == (new["id"], "", True)
        assert (frames[1]["target"], frames[1]["text"]) == (old["id"], "old!")
        assert (frames[2]["target"], frames[2]["emoji"], frames[2]["on"]) == (old["id"], "🎉", True)
        assert frames[3]["target"] == new["id"]
        # The deleted message's edit is not replayed: its text is gone for good.
        assert all(f.get("text") != "secret" for f in frames)


async def test_a_flood_of_changes_counts_against_the_message_limit(
    redis_url: str, redis: Redis, tmp_path: Path
) -> None:
    settings = make_settings(redis_url, tmp_path).model_copy(update={"messages_per_minute": 3})
    app = create_app(settings)
    async with app.test_app():
        ann = await log_in(app, redis, "ann@example.com")
        async with ann.socket() as ws:
            await start(ws)
            message = await post(ws, "general", "one")  # 1 of 3
            react = {"type": "react", "room": "general", "id": message["id"], "emoji": "👍"}
            assert (await ask(ws, {**react, "on": True}))["type"] == "ok"  # 2
            assert (await ask(ws, {**react, "on": False}))["type"] == "ok"  # 3
            before = await snapshot(redis, "{room:*")
            error = await ask(ws, {**react, "on": True})
            assert (error["type"], error["code"]) == ("error", "rate_limited")
            assert error["retry_after"] > 0
            assert await snapshot(redis, "{room:*") == before


async def test_a_read_marker_at_a_change_goes_to_the_message_before_it(
    app: ChatApp, redis: Redis
) -> None:
    ann = await log_in(app, redis, "ann@example.com")
    bob = await log_in(app, redis, "bob@example.com")
    async with ann.socket() as ann_ws, bob.socket() as bob_ws:
        await start(ann_ws)
        await start(bob_ws, join=False)
        message = await post(ann_ws, "general", "read me")
        await ask(ann_ws, {"type": "react", "room": "general", "id": message["id"], "emoji": "👀"})
        change = (await skip_to(ann_ws, "reaction"))["id"]
        assert (await ask(bob_ws, {"type": "read", "room": "general", "id": change}))[
            "type"
        ] == "ok"
        read = await skip_to(bob_ws, "read")
        assert (read["id"], read["unread"]) == (message["id"], 0)
