"""Room history on Redis Streams: ids, paging, capping and idempotent posting."""

from __future__ import annotations

import asyncio
import json

import pytest
from redis.asyncio import Redis

from quart_chat import keys
from quart_chat.models.messages import NotMember, RoomHistory
from quart_chat.models.rooms import GENERAL, RoomStore
from quart_chat.models.users import get_or_create_user
from quart_chat.realtime.protocol import message_object


async def test_concurrent_retries_of_one_client_id_post_once(redis: Redis) -> None:
    ann = await get_or_create_user(redis, "ann@example.com")
    history = RoomHistory(redis, 10000)
    results = await asyncio.gather(
        *(history.post("general", ann, "hello", "same") for _ in range(20))
    )
    assert sum(r.created for r in results) == 1
    assert len({r.id for r in results}) == 1
    assert len({r.frame for r in results}) == 1
    assert await redis.xlen(keys.room_history("general")) == 1
    # Another user may use the same client_id: ids are per user.
    bob = await get_or_create_user(redis, "bob@example.com")
    assert (await history.post("general", bob, "hello", "same")).created


async def test_a_posted_message_is_published_with_its_stream_id(redis: Redis) -> None:
    ann = await get_or_create_user(redis, "ann@example.com")
    history = RoomHistory(redis, 10000)
    pubsub = redis.pubsub()
    await pubsub.subscribe(keys.room_channel("general"))
    try:
        await pubsub.get_message(timeout=5)  # the subscribe confirmation
        posted = await history.post("general", ann, 'quotes " and \\ and ünïcode', "c1")
        message = await pubsub.get_message(timeout=5)
    finally:
        await pubsub.aclose()
    assert message is not None
    kind, message_id, author, frame = message["data"].decode().split(" ", 3)
    assert (kind, message_id, author) == ("M", posted.id, ann.id)
    assert frame == posted.frame
    assert json.loads(frame) == {
        "type": "message",
        "room": "general",
        "id": posted.id,
        "ts": int(posted.id.split("-")[0]),
        "user": {"id": ann.id, "name": "ann"},
        "text": 'quotes " and \\ and ünïcode',
        "client_id": "c1",
    }
    stored = await history.get("general", posted.id)
    assert stored is not None
    # What history and backlog frames carry is what the live frame carried.
    assert message_object(stored) == {k: v for k, v in json.loads(frame).items() if k != "type"}


async def test_pages_forward_and_back(redis: Redis) -> None:
    ann = await get_or_create_user(redis, "ann@example.com")
    history = RoomHistory(redis, 10000)
    ids = [(await history.post("general", ann, f"m{n}", f"c{n}")).id for n in range(25)]

    latest = await history.newest_after("general", ids[4], count=10)
    assert [m.id for m in latest] == ids[15:25]  # oldest first
    rest = await history.newest_after("general", ids[19], count=10)
    assert [m.id for m in rest] == ids[20:25]
    assert await history.newest_after("general", ids[24], count=10) == []

    back = await history.before("general", ids[10], count=4)
    assert [m.id for m in back.messages] == ids[6:10]  # newest last
    assert back.has_more
    first = await history.before("general", ids[3], count=4)
    assert [m.text for m in first.messages] == ["m0", "m1", "m2"]
    assert not first.has_more
    newest = await history.before("general", None, count=2)
    assert [m.id for m in newest.messages] == ids[-2:]


async def test_history_is_capped_per_room(redis: Redis) -> None:
    ann = await get_or_create_user(redis, "ann@example.com")
    history = RoomHistory(redis, 100)
    for n in range(600):
        await history.post("general", ann, f"m{n}", f"c{n}")
    # MAXLEN ~ trims whole stream nodes (100 entries each), so it may keep up to one node more.
    assert 100 <= await redis.xlen(keys.room_history("general")) <= 200
    newest = await history.before("general", None, count=1)
    assert newest.messages[0].text == "m599"


async def test_a_retry_after_trimming_still_echoes_the_original_id(redis: Redis) -> None:
    ann = await get_or_create_user(redis, "ann@example.com")
    history = RoomHistory(redis, 100)
    first = await history.post("general", ann, "old", "keep-me")
    for n in range(400):
        await history.post("general", ann, f"m{n}", f"c{n}")
    assert await history.get("general", first.id) is None
    retry = await history.post("general", ann, "old", "keep-me")
    assert not retry.created
    assert json.loads(retry.frame)["id"] == first.id
    assert json.loads(retry.frame)["text"] == "old"


async def test_only_members_post_and_each_message_counts_in_the_room(redis: Redis) -> None:
    store = RoomStore(redis)
    await store.ensure_general()
    ann = await get_or_create_user(redis, "ann@example.com")
    bob = await get_or_create_user(redis, "bob@example.com")
    history = RoomHistory(redis, 10000)
    room = await store.create(ann, "private", "plans", "", [])
    first = await history.post(room.id, ann, "one", "c1")
    second = await history.post(room.id, ann, "two", "c2")
    assert (first.seq, second.seq) == (1, 2)
    stored = await store.get(room.id)
    assert stored is not None
    assert (stored.seq, stored.last_id) == (2, second.id)
    # Not a member, no such room, a member of an archived room: refused, nothing stored.
    for room_id, user in [(room.id, bob), ("nosuchroom", ann)]:
        with pytest.raises(NotMember):
            await history.post(room_id, user, "sneaky", "c3")
    await store.update(room.id, ann, admin=False, name=None, topic=None, archived=True)
    with pytest.raises(NotMember):
        await history.post(room.id, ann, "after archiving", "c4")
    assert await redis.xlen(keys.room_history(room.id)) == 2
    assert not await redis.exists(keys.room_history("nosuchroom"))
    # Everyone posts in general; the retry of a message is not counted again.
    assert (await history.post(GENERAL, bob, "hi", "c1")).seq == 1
    assert not (await history.post(GENERAL, bob, "hi", "c1")).created
    general = await store.get(GENERAL)
    assert general is not None and general.seq == 1


async def test_the_poster_has_read_their_own_message(redis: Redis) -> None:
    store = RoomStore(redis)
    await store.ensure_general()
    ann = await get_or_create_user(redis, "ann@example.com")
    bob = await get_or_create_user(redis, "bob@example.com")
    history = RoomHistory(redis, 10000)
    await history.post(GENERAL, bob, "from bob", "b1")
    mine = await history.post(GENERAL, ann, "from ann", "a1")
    general = await store.get(GENERAL)
    assert general is not None
    states = await store.read_states(ann.id, [GENERAL])
    assert states[GENERAL].read_id == mine.id
    assert store.viewer_fields(general, states[GENERAL])["unread"] == 0
    bob_state = (await store.read_states(bob.id, [GENERAL]))[GENERAL]
    assert store.viewer_fields(general, bob_state)["unread"] == 1
