"""Rooms across `quart-chat serve --workers 2`: membership changes reach a user's sockets on
every worker, removal stops a room at once everywhere, and each worker subscribes only
to the rooms and users it has sockets for."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Awaitable, Callable

from redis.asyncio import Redis

from quart_chat import keys
from quart_chat.models.users import get_user
from quart_chat.realtime.bus import CLIENT_NAME_PREFIX

from .servers import ChatServer
from .twoworkers import (
    Tab,
    chat_server_fixture,
    close_code,
    create_room,
    join,
    log_in,
    redis_client_fixture,
    redis_server_fixture,
    tabs_on_two_workers,
)

ADMIN = "root@example.com"
FIXED_CHANNELS = 3  # presence, session revocations, renames


redis_server = redis_server_fixture("rooms-redis")
server = chat_server_fixture("rooms-chat", CHAT_ADMIN_EMAILS=ADMIN)
redis = redis_client_fixture()


async def eventually(check: Callable[[], Awaitable[bool]], timeout: float = 30.0) -> None:
    """Poll `check` until it holds: pub/sub changes follow socket closes asynchronously."""
    async with asyncio.timeout(timeout):
        while not await check():
            await asyncio.sleep(0.05)


async def test_removal_closes_the_room_on_every_tab_of_the_user_on_both_workers(
    server: ChatServer, redis: Redis
) -> None:
    ann, bob = await log_in(redis, server), await log_in(redis, server)
    tab1, tab2 = await tabs_on_two_workers(bob, bob)
    ann_tab = Tab(await ann.open())
    room = await create_room(ann_tab, "war room", members=[bob.user_id])
    await join(ann_tab, room)
    for tab in (tab1, tab2):
        await tab.until("room", lambda f: f["room"]["id"] == room)
        await join(tab, room)
    await ann_tab.send(room, "before")
    for tab in (tab1, tab2):
        assert (await tab.until("message"))[-1]["text"] == "before"

    assert (await ann_tab.ask({"type": "room_remove", "room": room, "user": bob.user_id}))[
        "type"
    ] == "ok"
    for tab in (tab1, tab2):
        removed = (await tab.until("room_removed"))[-1]
        assert removed == {"type": "room_removed", "room": room, "reason": "removed"}
    for n in range(5):
        await ann_tab.send(room, f"after {n}")
    await ann_tab.send("general", "marker")
    for tab in (tab1, tab2):
        seen = await tab.until("unread", lambda f: f["room"] == "general")
        assert [f for f in seen if f.get("room") == room] == []
    for ws in (tab1.ws, tab2.ws, ann_tab.ws):
        await ws.close()


async def test_an_invite_appears_live_on_another_worker_and_the_join_has_no_gap(
    server: ChatServer, redis: Redis
) -> None:
    ann, bob = await log_in(redis, server), await log_in(redis, server)
    ann_tab, bob_tab = await tabs_on_two_workers(ann, bob)
    sender = Tab(await ann.open())
    room = await create_room(ann_tab, "busy")
    total = 300

    async def keep_posting() -> None:
        for n in range(total):
            await sender.send(room, f"m{n}")
            await asyncio.sleep(0.002)

    posting = asyncio.create_task(keep_posting())
    await asyncio.sleep(0.1)
    invited = await ann_tab.ask({"type": "room_invite", "room": room, "user": bob.user_id})
    assert invited["type"] == "ok"
    shown = (await bob_tab.until("room", lambda f: f["room"]["id"] == room))[-1]
    assert shown["room"]["name"] == "busy" and shown["room"]["unread"] == 0
    await asyncio.sleep(0.1)  # well into the posting
    seen = await join(bob_tab, room)
    while not seen or seen[-1] != await last_id(redis, room, total):
        frame = await bob_tab.next()
        if frame["type"] == "message":
            assert frame["room"] == room
            seen.append(frame["id"])
    await posting
    stored = [entry[0].decode() for entry in await redis.xrange(keys.room_history(room))]
    assert len(stored) == total
    assert seen == stored[stored.index(seen[0]) :]  # from the backlog on: every one, once
    for ws in (ann_tab.ws, bob_tab.ws, sender.ws):
        await ws.close()


async def last_id(redis: Redis, room: str, total: int) -> str | None:
    """The id of the last message once all `total` are stored, else None."""
    entries = await redis.xrevrange(keys.room_history(room), count=1)
    if await redis.xlen(keys.room_history(room)) < total or not entries:
        return None
    return str(entries[0][0].decode())


async def test_read_reaches_the_users_tab_on_the_other_worker(
    server: ChatServer, redis: Redis
) -> None:
    ann, bob = await log_in(redis, server), await log_in(redis, server)
    tab1, tab2 = await tabs_on_two_workers(ann, ann)
    bob_tab = Tab(await bob.open())
    room = await create_room(bob_tab, "notes", members=[ann.user_id])
    await join(bob_tab, room)
    for n in range(3):
        await bob_tab.send(room, f"n{n}")
    ids = [(await bob_tab.until("message"))[-1]["id"] for _ in range(3)]
    assert (await tab1.ask({"type": "read", "room": room, "id": ids[1]}))["type"] == "ok"
    for tab in (tab1, tab2):
        read = (await tab.until("read"))[-1]
        assert read == {"type": "read", "room": room, "id": ids[1], "unread": 1, "mentions": 0}
    for ws in (tab1.ws, tab2.ws, bob_tab.ws):
        await ws.close()


async def test_a_direct_room_is_the_same_from_either_side_and_either_worker(
    server: ChatServer, redis: Redis
) -> None:
    ann, bob, cy = [await log_in(redis, server) for _ in range(3)]
    ann_tab, bob_tab = await tabs_on_two_workers(ann, bob)
    opened = await ann_tab.ask({"type": "dm_open", "users": [bob.user_id]})
    room = opened["room"]["id"]
    assert (await bob_tab.until("room", lambda f: f["room"]["id"] == room))[-1]["room"][
        "kind"
    ] == "direct"
    again = await bob_tab.ask({"type": "dm_open", "users": [ann.user_id]})
    assert again["room"]["id"] == room
    # Both sides open the group at the same moment: still one room.
    group = await asyncio.gather(
        ann_tab.ask({"type": "dm_open", "users": [bob.user_id, cy.user_id]}),
        bob_tab.ask({"type": "dm_open", "users": [cy.user_id, ann.user_id]}),
    )
    assert group[0]["room"]["id"] == group[1]["room"]["id"] != room
    for ws in (ann_tab.ws, bob_tab.ws):
        await ws.close()


async def test_deactivation_closes_every_socket_of_the_user_with_4401_on_both_workers(
    server: ChatServer, redis: Redis
) -> None:
    root, bob = await log_in(redis, server, "root"), await log_in(redis, server)
    tab1, tab2 = await tabs_on_two_workers(bob, bob)
    root_tab = Tab(await root.open())
    assert (await root_tab.ask({"type": "user_deactivate", "user": bob.user_id}))["type"] == "ok"
    assert await asyncio.gather(close_code(tab1.ws), close_code(tab2.ws)) == [4401, 4401]
    await root_tab.ws.close()


async def subscriptions(redis: Redis, worker_id: str) -> int:
    """How many channels the worker's bus connection is subscribed to (CLIENT LIST)."""
    for client in await redis.client_list():
        if client.get("name") == CLIENT_NAME_PREFIX + worker_id:
            return int(client["sub"])
    raise AssertionError(f"no bus connection for worker {worker_id}")


async def test_a_worker_subscribes_only_to_rooms_and_users_with_sockets_on_it(
    server: ChatServer, redis: Redis
) -> None:
    ann, bob = await log_in(redis, server), await log_in(redis, server)
    ann_tab, bob_tab = await tabs_on_two_workers(ann, bob)
    room = await create_room(ann_tab, "ann alone")
    room_channel = keys.room_channel(room)
    ann_worker, bob_worker = ann_tab.worker, bob_tab.worker

    async def numsub(channel: str) -> int:
        return int(dict(await redis.pubsub_numsub(channel))[channel.encode()])

    async def settled() -> bool:
        return (
            await subscriptions(redis, ann_worker) == FIXED_CHANNELS + 3  # ann, general, room
            and await subscriptions(redis, bob_worker) == FIXED_CHANNELS + 2  # bob, general
        )

    await eventually(settled)
    assert await numsub(room_channel) == 1  # ann's worker only
    assert await numsub(keys.user_channel(ann.user_id)) == 1
    assert await numsub(keys.room_channel("general")) == 2
    channels = {c.decode() for c in await redis.pubsub_channels("{room:*")}
    assert room_channel in channels

    # Bob is invited: his worker now needs the room too.
    await ann_tab.ask({"type": "room_invite", "room": room, "user": bob.user_id})
    await bob_tab.until("room", lambda f: f["room"]["id"] == room)
    await eventually(lambda: _equals(numsub(room_channel), 2))

    await ann_tab.ws.close()

    async def ann_gone() -> bool:
        return await subscriptions(redis, ann_worker) == FIXED_CHANNELS

    await eventually(ann_gone)
    assert await numsub(keys.user_channel(ann.user_id)) == 0
    assert await numsub(room_channel) == 1  # bob's worker
    await bob_tab.ws.close()
    await eventually(lambda: _equals(subscriptions(redis, bob_worker), FIXED_CHANNELS))
    assert await numsub(room_channel) == 0


async def _equals(value: Awaitable[int], expected: int) -> bool:
    return await value == expected


async def test_typing_reaches_the_other_members_tabs_on_both_workers_and_no_tab_of_the_typer(
    server: ChatServer, redis: Redis
) -> None:
    ann, bob = await log_in(redis, server), await log_in(redis, server)
    bob1, bob2 = await tabs_on_two_workers(bob, bob)
    ann1, ann2 = await tabs_on_two_workers(ann, ann)
    room = await create_room(bob1, "typing room", members=[ann.user_id])
    for tab in (bob1, bob2, ann1, ann2):
        if tab is not bob1:
            await tab.until("room", lambda f: f["room"]["id"] == room)
        await join(tab, room)
    bob_user = await get_user(redis, bob.user_id)
    assert bob_user is not None
    await bob1.ws.send(json.dumps({"type": "typing", "room": room}))
    for tab in (ann1, ann2):
        typing = (await tab.until("typing"))[-1]
        assert typing == {
            "type": "typing",
            "room": room,
            "user": {"id": bob.user_id, "name": bob_user.name},
        }
    await ann1.send(room, "after the typing")
    for tab in (bob1, bob2):
        seen = await tab.until("message", lambda f: f["text"] == "after the typing")
        assert [f for f in seen if f["type"] == "typing"] == [], seen
    for tab in (bob1, bob2, ann1, ann2):
        await tab.ws.close()
