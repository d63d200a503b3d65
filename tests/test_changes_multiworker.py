"""Edits, deletions and reactions across `quart-chat serve --workers 2` (SPEC §9): a page
offline while a message was edited, reacted to and deleted ends, after `join after`,
with exactly the state a fresh page reads from history."""

from __future__ import annotations

import json
from typing import Any

from redis.asyncio import Redis

from .servers import ChatServer
from .twoworkers import (
    chat_server_fixture,
    create_room,
    join,
    log_in,
    redis_client_fixture,
    redis_server_fixture,
    tabs_on_two_workers,
)

redis_server = redis_server_fixture("changes-redis")
server = chat_server_fixture("changes-chat")
redis = redis_client_fixture()


def apply(page: dict[str, dict[str, Any]], frame: dict[str, Any], me: str) -> None:
    """What a page does with a frame (static/chat/roomview.js): messages by id, changes
    applied as "set" operations."""
    if frame["type"] == "history":
        for message in frame["messages"]:
            page[message["id"]] = _shown(message, me)
    elif frame["type"] == "message":
        page.setdefault(frame["id"], _shown(frame, me))
    elif frame["type"] in ("edit", "delete", "reaction"):
        shown = page.get(frame["target"])
        if shown is None or shown["deleted"]:
            return
        if frame["type"] == "edit":
            shown["text"] = frame["text"]
        elif frame["type"] == "delete":
            shown.update(text="", deleted=True, reactions={})
        else:
            users = shown["reactions"].setdefault(frame["emoji"], set())
            (users.add if frame["on"] else users.discard)(frame["user"]["id"])
            if not users:
                del shown["reactions"][frame["emoji"]]


def _shown(message: dict[str, Any], me: str) -> dict[str, Any]:
    return {
        "text": message["text"],
        "deleted": bool(message.get("deleted")),
        "reactions": {r["emoji"]: set(r["users"]) for r in message.get("reactions", [])},
    }


async def test_a_page_offline_during_changes_ends_with_the_final_state_after_join_after(
    server: ChatServer, redis: Redis
) -> None:
    ann, bob = await log_in(redis, server), await log_in(redis, server)
    ann_tab, bob_tab = await tabs_on_two_workers(ann, bob)
    room = await create_room(ann_tab, "changes", members=[bob.user_id])
    await bob_tab.until("room", lambda f: f["room"]["id"] == room)
    await join(ann_tab, room)
    page: dict[str, dict[str, Any]] = {}
    reply = await bob_tab.ask({"type": "join", "room": room})
    apply(page, reply, bob.user_id)

    async def change(frame: dict[str, Any]) -> None:
        assert (await ann_tab.ask({**frame, "room": room}))["type"] == "ok"

    await ann_tab.send(room, "one")
    one = (await ann_tab.until("message"))[-1]["id"]
    await change({"type": "edit", "id": one, "text": "one, edited"})
    for frame in await bob_tab.until("edit"):
        apply(page, frame, bob.user_id)
    assert page[one]["text"] == "one, edited"  # live, from the other worker
    last_seen = one
    await bob_tab.ws.close()

    # Bob is offline: the message he has is edited, reacted to and deleted; another
    # arrives and is edited and reacted to; a third is edited.
    await change({"type": "edit", "id": one, "text": "one, again"})
    await change({"type": "react", "id": one, "emoji": "👍", "on": True})
    await ann_tab.send(room, "two")
    two = (await ann_tab.until("message", lambda f: f["text"] == "two"))[-1]["id"]
    await change({"type": "react", "id": two, "emoji": "🎉", "on": True})
    await change({"type": "react", "id": two, "emoji": "👍", "on": True})
    await change({"type": "react", "id": two, "emoji": "🎉", "on": False})
    await change({"type": "edit", "id": two, "text": "two, edited"})
    await change({"type": "delete", "id": one})

    bob_back, fresh = await tabs_on_two_workers(bob, bob)
    await bob_back.ws.send(json.dumps({"type": "join", "room": room, "after": last_seen}))
    frames = await bob_back.until("delete", lambda f: f["target"] == one)
    for frame in frames:
        apply(page, frame, bob.user_id)
    expected: dict[str, dict[str, Any]] = {}
    apply(expected, await fresh.ask({"type": "join", "room": room}), bob.user_id)
    assert page == expected
    assert page == {
        one: {"text": "", "deleted": True, "reactions": {}},
        two: {"text": "two, edited", "deleted": False, "reactions": {"👍": {ann.user_id}}},
    }
    # Events are not messages: nobody's unread count moved for them.
    assert await redis.hget(f"{{room:{room}}}:meta", "seq") == b"2"
    for tab in (ann_tab, bob_back, fresh):
        await tab.ws.close()
