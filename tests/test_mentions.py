"""Mentions against a real Redis: resolution at post time, and per-user counts that
survive reloads and reset with the read marker."""

from __future__ import annotations

import json
from dataclasses import dataclass

import pytest
from redis.asyncio import Redis

from quart_chat import keys
from quart_chat.models.mentions import EVERYONE_LIMIT, resolve_mentions
from quart_chat.models.messages import RoomHistory
from quart_chat.models.rooms import GENERAL, RoomStore
from quart_chat.models.users import User, get_or_create_user, set_deactivated, set_name
from quart_chat.realtime.protocol import message_frame
from quart_chat.storage import Pipelined


@dataclass
class World:
    redis: Redis
    store: RoomStore
    history: RoomHistory
    ann: User
    bob: User
    cat: User
    sent: int = 0

    async def say(self, room: str, user: User, text: str) -> str:
        self.sent += 1
        posted = await self.history.post(room, user, text, f"c{self.sent}")
        return posted.id

    async def mentions(self, room_id: str, user: User) -> int:
        # A fresh store each time: the counts come from Redis, as after a reload.
        store = RoomStore(self.redis)
        room = await store.get(room_id)
        assert room is not None
        state = (await store.read_states(user.id, [room_id]))[room_id]
        return int(store.viewer_fields(room, state)["mentions"])


@pytest.fixture
async def world(redis: Redis) -> World:
    store = RoomStore(redis, reads=Pipelined(redis))
    await store.ensure_general()
    ann = await set_name(redis, await get_or_create_user(redis, "ann@example.com"), "Ann Lee")
    bob = await set_name(redis, await get_or_create_user(redis, "bob@example.com"), "Bob")
    cat = await set_name(redis, await get_or_create_user(redis, "cat@example.com"), "Zoë Ærø")
    return World(redis, store, RoomHistory(redis, 10000), ann, bob, cat)


async def resolved(world: World, room: str, text: str) -> tuple[set[str], bool]:
    found = await resolve_mentions(world.redis, room, text)
    return set(found.ids), found.everyone


async def test_names_resolve_case_insensitively_longest_first_with_spaces_and_unicode(
    world: World,
) -> None:
    ann, bob, cat = world.ann, world.bob, world.cat
    annie = await set_name(
        world.redis, await get_or_create_user(world.redis, "annie@example.com"), "Ann"
    )
    assert await resolved(world, GENERAL, "hi @ann lee, look") == ({ann.id}, False)
    assert await resolved(world, GENERAL, "hi @Ann, look") == ({annie.id}, False)
    assert await resolved(world, GENERAL, "@ANN LEEX no") == ({annie.id}, False)
    assert await resolved(world, GENERAL, "@zoë ærø and @BOB!") == ({cat.id, bob.id}, False)
    assert await resolved(world, GENERAL, "@ZOË ÆRØ") == ({cat.id}, False)
    # Not a mention: an e-mail address, a bare @, an unknown name, a name's prefix.
    assert await resolved(world, GENERAL, "mail bob@example.com @ @nobody @Bo") == (set(), False)


async def test_only_members_resolve_and_deactivated_people_do_not(world: World) -> None:
    ann, bob, cat = world.ann, world.bob, world.cat
    room = await world.store.create(ann, "private", "secret", "", [bob.id])
    assert await resolved(world, room.id, "@Bob @Zoë Ærø @Ann Lee") == ({bob.id, ann.id}, False)
    await set_deactivated(world.redis, bob.id, True)
    assert await resolved(world, room.id, "@Bob") == (set(), False)
    assert await resolved(world, GENERAL, "@Bob @Zoë Ærø") == ({cat.id}, False)


async def test_everyone_and_here_only_in_rooms_up_to_the_limit(world: World) -> None:
    ann, bob = world.ann, world.bob
    room = await world.store.create(ann, "public", "big", "", [bob.id])
    assert await resolved(world, room.id, "@everyone look") == (set(), True)
    assert await resolved(world, room.id, "@HERE: @Bob") == ({bob.id}, True)
    assert await resolved(world, room.id, "@everyones @hereby") == (set(), False)
    await world.redis.sadd(
        keys.room_members(room.id), *(f"x{n}" for n in range(EVERYONE_LIMIT - 2))
    )
    assert await resolved(world, room.id, "@everyone") == (set(), True)  # exactly 500
    await world.redis.sadd(keys.room_members(room.id), "one-too-many")
    assert await resolved(world, room.id, "@everyone @Bob") == ({bob.id}, False)


async def test_the_message_stores_its_mentions_and_history_shows_them_as_live(
    world: World,
) -> None:
    ann, bob = world.ann, world.bob
    posted = await world.history.post(GENERAL, ann, "@bob and @everyone", "c1")
    live = json.loads(posted.frame)
    assert live["mentions"] == [bob.id] and live["everyone"] is True
    stored = await world.history.get(GENERAL, posted.id)
    assert stored is not None and stored.mentions == (bob.id,) and stored.everyone
    assert json.loads(message_frame(stored)) == live
    plain = await world.history.post(GENERAL, ann, "nobody here", "c2")
    assert "mentions" not in json.loads(plain.frame)
    # A retry echoes the original, mentions and all.
    again = await world.history.post(GENERAL, ann, "@bob and @everyone", "c1")
    assert json.loads(again.frame) == live


async def test_counts_survive_reloads_and_reset_with_the_read_marker(world: World) -> None:
    ann, bob, cat = world.ann, world.bob, world.cat
    room = await world.store.create(ann, "public", "counted", "", [bob.id, cat.id])
    first = await world.say(room.id, ann, "@Bob one")
    await world.say(room.id, ann, "no mention")
    second = await world.say(room.id, ann, "@bob two @BOB again (one message)")
    assert await world.mentions(room.id, bob) == 2
    assert await world.mentions(room.id, cat) == 0
    read = await world.store.mark_read(bob.id, room.id, first)
    assert read is not None and world.store.viewer_fields(room, read)["mentions"] == 1
    assert await world.mentions(room.id, bob) == 1
    await world.store.mark_read(bob.id, room.id, second)
    assert await world.mentions(room.id, bob) == 0
    # @everyone counts once for every member, even with a name mention too.
    await world.say(room.id, cat, "@everyone and @Bob")
    assert await world.mentions(room.id, bob) == 1
    assert await world.mentions(room.id, ann) == 1
    # The poster's own mention is read as they post it.
    await world.say(room.id, cat, "@everyone @Zoë Ærø")
    assert await world.mentions(room.id, cat) == 0
    assert await world.mentions(room.id, ann) == 2


async def test_a_read_at_an_older_message_keeps_the_newer_mentions(world: World) -> None:
    ann, bob = world.ann, world.bob
    room = await world.store.create(ann, "public", "behind", "", [bob.id])
    seen = await world.say(room.id, ann, "hello")
    await world.say(room.id, ann, "@Bob after what you read")
    await world.say(room.id, ann, "@everyone after that")
    await world.store.mark_read(bob.id, room.id, seen)
    assert await world.mentions(room.id, bob) == 2


async def test_counts_cap_at_99_and_old_markers_read_as_no_mentions(world: World) -> None:
    ann, bob = world.ann, world.bob
    room = await world.store.create(ann, "public", "busy", "", [bob.id])
    for _ in range(101):
        last = await world.say(room.id, ann, "@bob")
    assert await world.mentions(room.id, bob) == 99
    # A marker written before mentions ("<id> <seq>"): nothing read counts yet.
    await world.redis.hset(keys.user_read(bob.id), room.id, f"{last} 101")
    assert await world.mentions(room.id, bob) == 99
    newer = await world.say(room.id, ann, "@bob")
    assert await world.store.mark_read(bob.id, room.id, newer) is not None
    assert await world.mentions(room.id, bob) == 0


async def test_someone_who_leaves_and_comes_back_has_no_old_mentions(world: World) -> None:
    ann, bob = world.ann, world.bob
    room = await world.store.create(ann, "public", "return", "", [bob.id])
    await world.say(room.id, ann, "@Bob hi")
    await world.say(room.id, ann, "@everyone hi")
    assert await world.mentions(room.id, bob) == 2
    await world.store.leave(room.id, bob)
    await world.store.join(room.id, bob)
    assert await world.mentions(room.id, bob) == 0
    await world.say(room.id, ann, "@Bob welcome back")
    assert await world.mentions(room.id, bob) == 1
