"""Rooms, direct messages and people over the WebSocket (SPEC §8), through the Quart test
client and a real Redis: what each user's sockets see, and what they never see."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from quart.testing.connections import WebsocketDisconnectError
from quart.typing import TestWebsocketConnectionProtocol as Socket
from redis.asyncio import Redis

from quart_chat import keys
from quart_chat.app import create_app
from quart_chat.base import ChatApp
from quart_chat.models.rooms import BROWSE_LIMIT, PRIVATE, PUBLIC, RoomStore
from quart_chat.realtime import connection
from quart_chat.storage import Pipelined

from ..chatting import (
    ask,
    create_room,
    frames_until,
    join_room,
    log_in,
    post,
    receive,
    receive_type,
    room_frame_where,
    snapshot,
    start,
)
from ..conftest import make_settings

ADMIN = "root@example.com"


@pytest.fixture
async def app(redis_url: str, redis: Redis, tmp_path: Path) -> AsyncIterator[ChatApp]:
    app = create_app(make_settings(redis_url, tmp_path, admin_emails=[ADMIN]))
    async with app.test_app():
        yield app


@pytest.fixture(autouse=True)
def every_ping_answered(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(connection, "PONG_INTERVAL_SECONDS", 0.0)


# -- nobody learns about a room they are not in ----------------------------------------


def room_frames(room: str, bob_id: str) -> list[dict[str, Any]]:
    return [
        {"type": "join", "room": room},
        {"type": "send", "room": room, "text": "let me in", "client_id": "c1"},
        {"type": "history", "room": room},
        {"type": "typing", "room": room},
        {"type": "read", "room": room, "id": "99999999999999-0"},
        {"type": "members", "room": room},
        {"type": "room_invite", "room": room, "user": bob_id},
        {"type": "room_remove", "room": room, "user": bob_id},
        {"type": "room_update", "room": room, "topic": "mine now"},
        {"type": "room_leave", "room": room},
        {"type": "room_join", "room": room},
    ]


async def test_every_room_frame_from_an_outsider_is_refused_alike_and_changes_nothing(
    app: ChatApp, redis: Redis
) -> None:
    """Campfire's rule: a private room and no room at all look the same from outside."""
    ann = await log_in(app, redis, "ann@example.com")
    bob = await log_in(app, redis, "bob@example.com")
    async with ann.socket() as ann_ws, bob.socket() as bob_ws:
        await start(ann_ws)
        await start(bob_ws)
        secret = await create_room(bob_ws, "secret plans")
        await join_room(bob_ws, secret)
        await post(bob_ws, secret, "the plan")
        before = await snapshot(redis, "{room:*", f"{{user:{ann.user.id}}}:*", "rooms:*")
        answers: dict[str, list[dict[str, Any]]] = {}
        for room in (secret, "r0000000000000000"):
            for frame in room_frames(room, bob.user.id):
                answers.setdefault(frame["type"], []).append(await ask(ann_ws, frame))
        for kind, (private, missing) in answers.items():
            assert private["type"] == "error", (kind, private)
            assert private["code"] == "not_allowed", (kind, private)
            assert private["message"] == missing["message"] == "no such room", kind
            assert {k: v for k, v in private.items() if k != "ref"} == {
                k: v for k, v in missing.items() if k != "ref"
            }
        assert answers["send"][0]["client_id"] == "c1"
        after = await snapshot(redis, "{room:*", f"{{user:{ann.user.id}}}:*", "rooms:*")
        assert after == before
        # Nor does anything of the room reach her: Bob's next message there comes
        # before his next one in general, which she does see.
        await post(bob_ws, secret, "still secret")
        await post(bob_ws, "general", "hello all")
        seen = await frames_until(ann_ws, "message", text="hello all")
        assert [f for f in seen if secret in str(f)] == []


async def test_a_send_to_a_room_one_is_not_in_stores_nothing(app: ChatApp, redis: Redis) -> None:
    ann = await log_in(app, redis, "ann@example.com")
    async with ann.socket() as ws:
        await start(ws)
        error = await ask(ws, {"type": "send", "room": "r1", "text": "hi", "client_id": "c9"})
        assert error == {
            "type": "error",
            "code": "not_allowed",
            "message": "no such room",
            "client_id": "c9",
            "ref": error["ref"],
        }
        assert await redis.exists(keys.room_history("r1")) == 0


# -- replies carry the request's ref ------------------------------------------------------


async def test_every_direct_reply_and_error_carries_the_requests_ref(
    app: ChatApp, redis: Redis
) -> None:
    ann = await log_in(app, redis, "ann@example.com")
    async with ann.socket() as ws:
        await start(ws)
        kinds = {
            "ping": "pong",
            "people": "people",
            "rooms_browse": "rooms",
            "history": "history",
            "members": "members",
            "profile": "user",
            "room_create": "room",
        }
        frames = {
            "history": {"room": "general"},
            "members": {"room": "general"},
            "profile": {"name": "Ann"},
            "room_create": {"kind": "public", "name": "lobby"},
        }
        for kind, answer in kinds.items():
            reply = await ask(ws, {"type": kind, **frames.get(kind, {})})
            assert reply["type"] == answer, reply
        room = await create_room(ws, "plans")
        assert (await ask(ws, {"type": "room_leave", "room": room}))["type"] == "ok"
        error = await ask(ws, {"type": "members", "room": "no/such"})
        assert error["code"] == "bad_request"
        await ws.send_json({"type": "ping", "ref": "x" * 65})
        refused = await receive_type(ws, "error")
        assert refused["code"] == "bad_request" and "ref" not in refused


# -- membership changes reach the sockets -----------------------------------------------


async def test_an_invite_shows_the_room_on_every_tab_and_removal_takes_it_from_all(
    app: ChatApp, redis: Redis
) -> None:
    ann = await log_in(app, redis, "ann@example.com")
    bob = await log_in(app, redis, "bob@example.com")
    async with ann.socket() as ann_ws, bob.socket() as tab1, bob.socket() as tab2:
        for ws in (ann_ws, tab1, tab2):
            await start(ws)
        room = await create_room(ann_ws, "plans")
        await join_room(ann_ws, room)
        assert (await ask(ann_ws, {"type": "room_invite", "room": room, "user": bob.user.id}))[
            "type"
        ] == "ok"
        for tab in (tab1, tab2):
            added = (await frames_until(tab, "room"))[-1]
            assert added["room"]["id"] == room and added["room"]["unread"] == 0
        await join_room(tab1, room)  # tab2 only watches the room
        await post(ann_ws, room, "first")
        assert (await frames_until(tab1, "message"))[-1]["text"] == "first"
        bump = (await frames_until(tab2, "unread"))[-1]
        assert bump == {"type": "unread", "room": room, "id": bump["id"], "user": ann.user.id}
        members = await ask(ann_ws, {"type": "members", "room": room})
        assert sorted(u["id"] for u in members["users"]) == sorted([ann.user.id, bob.user.id])

        await ask(ann_ws, {"type": "room_remove", "room": room, "user": bob.user.id})
        for tab in (tab1, tab2):
            removed = (await frames_until(tab, "room_removed"))[-1]
            assert removed == {"type": "room_removed", "room": room, "reason": "removed"}
        await post(ann_ws, room, "after")
        await post(ann_ws, "general", "marker")
        for tab in (tab1, tab2):
            seen = await frames_until(tab, "message", text="marker")
            assert [f for f in seen if f.get("room") == room] == []
        refused = await ask(tab1, {"type": "history", "room": room})
        assert refused["code"] == "not_allowed"


async def test_a_direct_room_is_the_same_whoever_opens_it_and_appears_for_the_other(
    app: ChatApp, redis: Redis
) -> None:
    ann = await log_in(app, redis, "ann@example.com")
    bob = await log_in(app, redis, "bob@example.com")
    async with ann.socket() as ann_ws, bob.socket() as bob_ws:
        await start(ann_ws)
        await start(bob_ws)
        opened = await ask(ann_ws, {"type": "dm_open", "users": [bob.user.id]})
        assert opened["type"] == "room" and opened["room"]["kind"] == "direct"
        assert opened["room"]["name"] == "bob"
        room = opened["room"]["id"]
        shown = (await frames_until(bob_ws, "room"))[-1]
        assert shown["room"]["id"] == room and shown["room"]["name"] == "ann"
        again = await ask(bob_ws, {"type": "dm_open", "users": [ann.user.id]})
        assert again["room"]["id"] == room
        twice = await ask(ann_ws, {"type": "dm_open", "users": [bob.user.id, bob.user.id]})
        assert twice["room"]["id"] == room
        await join_room(bob_ws, room)
        await post(ann_ws, room, "psst")
        assert (await frames_until(bob_ws, "message"))[-1]["text"] == "psst"
        left = await ask(bob_ws, {"type": "room_leave", "room": room})
        assert left["code"] == "not_allowed"


async def test_read_moves_forward_only_and_reaches_every_tab(app: ChatApp, redis: Redis) -> None:
    ann = await log_in(app, redis, "ann@example.com")
    bob = await log_in(app, redis, "bob@example.com")
    async with ann.socket() as tab1, ann.socket() as tab2, bob.socket() as bob_ws:
        for ws in (tab1, tab2, bob_ws):
            await start(ws)
        ids = [(await post(bob_ws, "general", f"m{n}"))["id"] for n in range(3)]
        ok = await ask(tab1, {"type": "read", "room": "general", "id": ids[1]})
        assert ok == {"type": "ok", "ref": ok["ref"]}
        for tab in (tab1, tab2):
            read = (await frames_until(tab, "read"))[-1]
            assert read == {
                "type": "read",
                "room": "general",
                "id": ids[1],
                "unread": 1,
                "mentions": 0,
            }
        # Backwards: nothing moves and no tab hears of it.
        await tab2.send_json({"type": "read", "room": "general", "id": ids[0]})
        await ask(tab2, {"type": "read", "room": "general", "id": ids[2]})
        for tab in (tab1, tab2):
            assert (await frames_until(tab, "read"))[-1]["id"] == ids[2]
    async with ann.socket() as ws:
        ready = await receive(ws)
        [general] = ready["rooms"]
        assert general["read_id"] == ids[2] and general["unread"] == 0


async def test_a_new_name_reaches_everyone_and_every_tab_posts_under_it(
    app: ChatApp, redis: Redis
) -> None:
    ann = await log_in(app, redis, "ann@example.com")
    bob = await log_in(app, redis, "bob@example.com")
    async with ann.socket() as tab1, ann.socket() as tab2, bob.socket() as bob_ws:
        for ws in (tab1, tab2, bob_ws):
            await start(ws)
        reply = await ask(tab1, {"type": "profile", "name": "Annie"})
        assert reply["user"] == {"id": ann.user.id, "name": "Annie"}
        for ws in (tab2, bob_ws):
            assert (await frames_until(ws, "user"))[-1]["user"]["name"] == "Annie"
        posted = await post(tab2, "general", "from the other tab")
        assert posted["user"]["name"] == "Annie"
        refused = await ask(tab1, {"type": "profile", "name": "  "})
        assert refused["code"] == "bad_request"


async def test_archiving_takes_the_room_from_every_member_and_unarchiving_brings_it_back(
    app: ChatApp, redis: Redis
) -> None:
    ann = await log_in(app, redis, "ann@example.com")
    bob = await log_in(app, redis, "bob@example.com")
    async with ann.socket() as ann_ws, bob.socket() as bob_ws:
        await start(ann_ws)
        await start(bob_ws)
        room = await create_room(ann_ws, "old", members=[bob.user.id])
        assert (await frames_until(bob_ws, "room"))[-1]["room"]["id"] == room
        renamed = await ask(ann_ws, {"type": "room_update", "room": room, "name": "older"})
        assert renamed["type"] == "ok"
        await room_frame_where(bob_ws, id=room, name="older")
        await ask(ann_ws, {"type": "room_update", "room": room, "archived": True})
        for ws in (ann_ws, bob_ws):
            removed = (await frames_until(ws, "room_removed"))[-1]
            assert removed["reason"] == "archived"
        await ask(ann_ws, {"type": "room_update", "room": room, "archived": False})
        for ws in (ann_ws, bob_ws):
            await room_frame_where(ws, id=room, archived=False, name="older")


async def test_only_an_admin_deactivates_and_it_closes_every_socket_with_4401(
    app: ChatApp, redis: Redis
) -> None:
    root = await log_in(app, redis, ADMIN)
    bob = await log_in(app, redis, "bob@example.com")
    other_session = await log_in(app, redis, "bob@example.com")
    async with root.socket() as root_ws, bob.socket() as tab1, other_session.socket() as tab2:
        ready = await receive(root_ws)
        assert ready["user"]["admin"] is True
        for ws in (tab1, tab2):
            assert (await receive(ws))["user"]["admin"] is False
        refused = await ask(tab1, {"type": "user_deactivate", "user": root.user.id})
        assert refused["code"] == "not_allowed"
        done = await ask(root_ws, {"type": "user_deactivate", "user": bob.user.id})
        assert done["type"] == "ok"
        for ws in (tab1, tab2):
            assert await closed_with(ws) == 4401
        people = await ask(root_ws, {"type": "people", "q": ""})
        assert bob.user.id not in [u["id"] for u in people["users"]]
        assert (await ask(root_ws, {"type": "user_reactivate", "user": bob.user.id}))[
            "type"
        ] == "ok"
        people = await ask(root_ws, {"type": "people", "q": "bo"})
        assert [u["id"] for u in people["users"]] == [bob.user.id]


async def closed_with(ws: Socket) -> int:
    with pytest.raises(WebsocketDisconnectError) as closed:
        while True:
            await asyncio.wait_for(ws.receive(), 5.0)
    code: int = closed.value.args[0]
    return code


async def test_joining_a_public_room_shows_it_on_the_other_tabs(app: ChatApp, redis: Redis) -> None:
    ann = await log_in(app, redis, "ann@example.com")
    bob = await log_in(app, redis, "bob@example.com")
    async with ann.socket() as ann_ws, bob.socket() as tab1, bob.socket() as tab2:
        for ws in (ann_ws, tab1, tab2):
            await start(ws)
        room = await create_room(ann_ws, "lobby", kind="public")
        browse = await ask(tab1, {"type": "rooms_browse", "q": "lob"})
        assert [(r["id"], r["member"]) for r in browse["rooms"]] == [(room, False)]
        joined = await ask(tab1, {"type": "room_join", "room": room})
        assert joined["room"]["id"] == room and joined["room"]["member_count"] == 2
        assert (await frames_until(tab2, "room"))[-1]["room"]["id"] == room
        await room_frame_where(ann_ws, id=room, member_count=2)
        private = await create_room(ann_ws, "hidden")
        refused = await ask(tab1, {"type": "room_join", "room": private})
        assert refused["code"] == "not_allowed" and refused["message"] == "no such room"


async def test_unread_bumps_a_watching_socket_and_ready_counts_what_was_missed(
    app: ChatApp, redis: Redis
) -> None:
    ann = await log_in(app, redis, "ann@example.com")
    bob = await log_in(app, redis, "bob@example.com")
    async with bob.socket() as bob_ws:
        await start(bob_ws)
        for n in range(3):
            await post(bob_ws, "general", f"while away {n}")
        async with ann.socket() as ws:
            ready = await receive(ws)
            [general] = ready["rooms"]
            assert general["unread"] == 3
            posted = await post(bob_ws, "general", "now")
            assert (await receive_type(ws, "unread"))["id"] == posted["id"]


async def test_room_changes_count_against_the_message_limit(
    redis_url: str, redis: Redis, tmp_path: Path
) -> None:
    app = create_app(make_settings(redis_url, tmp_path, messages_per_minute=3))
    async with app.test_app():
        ann = await log_in(app, redis, "ann@example.com")
        async with ann.socket() as ws:
            await start(ws)
            for n in range(3):
                await create_room(ws, f"room {n}")
            refused = await ask(ws, {"type": "room_create", "kind": "public", "name": "one more"})
            assert refused["code"] == "rate_limited" and refused["retry_after"] >= 1
            browse = await ask(ws, {"type": "rooms_browse"})
            assert [r["name"] for r in browse["rooms"]] == ["general"]


async def test_a_socket_may_open_more_rooms_a_minute_than_its_history_requests(
    app: ChatApp, redis: Redis
) -> None:
    """A page that reconnects rejoins every room it had open at once: joins are bounded by
    the rooms (a second join of one is refused), so only the user's limit counts them."""
    ann = await log_in(app, redis, "ann@example.com")
    async with ann.socket() as ws:
        await start(ws, join=False)
        rooms = [
            await create_room(ws, f"room {n}")
            for n in range(connection.BACKLOG_REQUESTS_PER_SOCKET + 5)
        ]
        for room in rooms:
            assert await join_room(ws, room) == []


async def test_lookups_are_limited_per_socket_without_touching_redis(
    app: ChatApp, redis: Redis
) -> None:
    ann = await log_in(app, redis, "ann@example.com")
    async with ann.socket() as ws, ann.socket() as other_tab:
        await start(ws, join=False)
        for n in range(connection.LIST_REQUESTS_PER_SOCKET):
            answer = await ask(ws, {"type": "people", "q": "an"})
            assert answer["type"] == "people", (n, answer)
        refused = await ask(ws, {"type": "members", "room": "general"})
        assert refused["code"] == "rate_limited" and 1 <= refused["retry_after"] <= 60
        assert "lookups" in refused["message"]
        # Joins and history have their own budget, and the other tab its own lookups.
        assert len(await join_room(ws, "general")) == 0
        await start(other_tab, join=False)
        assert (await ask(other_tab, {"type": "people", "q": "an"}))["users"] == [ann.user.public()]


# -- admin tools: deactivated people, archived rooms ---------------------------------------


async def test_admins_find_deactivated_people_and_every_page_hears_of_it(
    app: ChatApp, redis: Redis
) -> None:
    root = await log_in(app, redis, ADMIN)
    ann = await log_in(app, redis, "ann@example.com")
    bob = await log_in(app, redis, "bob.gone@example.com")
    async with root.socket() as root_ws, ann.socket() as ann_ws, bob.socket() as bob_ws:
        for ws in (root_ws, ann_ws, bob_ws):
            await start(ws, join=False)
        count = (await ask(ann_ws, {"type": "rooms_browse", "q": "general"}))["rooms"][0][
            "member_count"
        ]
        # Nobody but an admin may list deactivated people.
        refused = await ask(ann_ws, {"type": "people", "q": "", "deactivated": True})
        assert (refused["type"], refused["code"]) == ("error", "not_allowed")
        bad = await ask(ann_ws, {"type": "people", "deactivated": "yes"})
        assert bad["code"] == "bad_request"
        assert (await ask(root_ws, {"type": "people", "deactivated": True}))["users"] == []
        refused = await ask(root_ws, {"type": "user_deactivate", "user": root.user.id})
        assert refused["code"] == "bad_request"

        await ask(root_ws, {"type": "user_deactivate", "user": bob.user.id})
        assert await closed_with(bob_ws) == 4401
        # Every other page hears it: the person and general's new member count.
        seen = await frames_until(ann_ws, "user")
        assert seen[-1]["user"] == {"id": bob.user.id, "name": "bob.gone", "deactivated": True}
        await room_frame_where(ann_ws, id="general", member_count=count - 1)
        gone = await ask(root_ws, {"type": "people", "q": "bob", "deactivated": True})
        assert gone["users"] == [{"id": bob.user.id, "name": "bob.gone", "deactivated": True}]
        assert (await ask(root_ws, {"type": "people", "q": "bob"}))["users"] == []

        await ask(root_ws, {"type": "user_reactivate", "user": bob.user.id})
        seen = await frames_until(ann_ws, "user")
        assert seen[-1]["user"] == {"id": bob.user.id, "name": "bob.gone", "deactivated": False}
        await room_frame_where(ann_ws, id="general", member_count=count)
        assert (await ask(root_ws, {"type": "people", "deactivated": True}))["users"] == []
        back = await ask(ann_ws, {"type": "people", "q": "bob"})
        assert back["users"] == [{"id": bob.user.id, "name": "bob.gone"}]


async def test_the_creator_and_admins_find_archived_rooms_and_restore_them(
    app: ChatApp, redis: Redis
) -> None:
    root = await log_in(app, redis, ADMIN)
    ann = await log_in(app, redis, "ann@example.com")
    bob = await log_in(app, redis, "bob@example.com")
    async with root.socket() as root_ws, ann.socket() as ann_ws, bob.socket() as bob_ws:
        for ws in (root_ws, ann_ws, bob_ws):
            await start(ws, join=False)
        room = await create_room(ann_ws, "attic", members=[bob.user.id])
        public = await create_room(ann_ws, "porch", kind="public")
        for archived in (room, public):
            await ask(ann_ws, {"type": "room_update", "room": archived, "archived": True})

        def listed(answer: dict[str, Any]) -> list[tuple[str, bool, bool]]:
            return [(r["name"], r["archived"], r["member"]) for r in answer["rooms"]]

        mine = await ask(ann_ws, {"type": "rooms_browse", "q": "", "archived": True})
        assert listed(mine) == [("attic", True, True), ("porch", True, True)]
        found = await ask(ann_ws, {"type": "rooms_browse", "q": "ATT", "archived": True})
        assert listed(found) == [("attic", True, True)]
        # A member who did not create it cannot restore it, so is not offered it.
        assert (await ask(bob_ws, {"type": "rooms_browse", "archived": True}))["rooms"] == []
        refused = await ask(bob_ws, {"type": "room_update", "room": room, "archived": False})
        assert refused["code"] == "not_allowed"
        # An admin sees every archived room, member or not.
        every = await ask(root_ws, {"type": "rooms_browse", "archived": True})
        assert ("attic", True, False) in listed(every) and ("porch", True, False) in listed(every)
        # Public browse never lists an archived room.
        assert (await ask(bob_ws, {"type": "rooms_browse", "q": "porch"}))["rooms"] == []

        restored = await ask(root_ws, {"type": "room_update", "room": room, "archived": False})
        assert restored["type"] == "ok"
        for ws in (ann_ws, bob_ws):
            await room_frame_where(ws, id=room, archived=False, name="attic")
        mine = await ask(ann_ws, {"type": "rooms_browse", "archived": True})
        assert listed(mine) == [("porch", True, True)]
        await ask(ann_ws, {"type": "room_update", "room": public, "archived": False})
        assert (await ask(ann_ws, {"type": "rooms_browse", "archived": True}))["rooms"] == []
        assert listed(await ask(bob_ws, {"type": "rooms_browse", "q": "porch"})) == [
            ("porch", False, False)
        ]


async def test_a_link_finds_a_public_room_beyond_the_browse_list_and_never_a_private_one(
    app: ChatApp, redis: Redis
) -> None:
    """The page asks `rooms_browse {room}` when a link names a room the user is not in."""
    ann = await log_in(app, redis, "ann@example.com")
    bob = await log_in(app, redis, "bob@example.com")
    store = RoomStore(redis, reads=Pipelined(redis))
    for n in range(BROWSE_LIMIT):
        await store.create(ann.user, PUBLIC, f"a{n:03}", "", [])
    last = await store.create(ann.user, PUBLIC, "zz top", "", [])
    secret = await store.create(ann.user, PRIVATE, "zz secret", "", [])
    async with bob.socket() as ws:
        await start(ws, join=False)
        listed = (await ask(ws, {"type": "rooms_browse"}))["rooms"]
        assert len(listed) == BROWSE_LIMIT and last.id not in [r["id"] for r in listed]
        found = await ask(ws, {"type": "rooms_browse", "room": last.id})
        assert [(r["id"], r["name"], r["member"]) for r in found["rooms"]] == [
            (last.id, "zz top", False)
        ]
        # A private room, a room that does not exist and a malformed id: the same nothing.
        for other in (secret.id, "0" * 16):
            assert (await ask(ws, {"type": "rooms_browse", "room": other}))["rooms"] == []
        refused = await ask(ws, {"type": "rooms_browse", "room": "../x"})
        assert refused["type"] == "error" and refused["code"] == "bad_request"
        await ask(ws, {"type": "room_join", "room": last.id})
        found = await ask(ws, {"type": "rooms_browse", "room": last.id})
        assert found["rooms"][0]["member"] is True
