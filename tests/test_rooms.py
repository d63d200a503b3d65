"""Rooms against a real Redis: every rule of design14.md's "Rules" that the models enforce."""

from __future__ import annotations

import asyncio
import itertools
from collections.abc import Awaitable
from dataclasses import dataclass, field
from typing import Any

import pytest
from redis.asyncio import Redis

from quart_chat import keys
from quart_chat.models.messages import NotMember, RoomHistory
from quart_chat.models.rooms import GENERAL, Room, RoomError, RoomStore
from quart_chat.models.users import User, get_or_create_user, set_deactivated, set_name
from quart_chat.storage import Pipelined


@dataclass
class World:
    redis: Redis
    store: RoomStore
    history: RoomHistory
    ann: User
    bob: User
    cat: User
    dan: User

    sent: itertools.count[int] = field(default_factory=itertools.count)

    async def post(self, room: str, user: User, count: int = 1) -> list[str]:
        ids = []
        for n in itertools.islice(self.sent, count):
            ids.append((await self.history.post(room, user, f"m{n}", f"c{n}")).id)
        return ids

    async def unread(self, room_id: str, user: User) -> int:
        room = await self.store.get(room_id)
        assert room is not None
        state = (await self.store.read_states(user.id, [room_id]))[room_id]
        return int(self.store.viewer_fields(room, state)["unread"])

    async def names_of_rooms(self, user: User) -> list[str]:
        return [room.name_for(user) for room in await self.store.rooms_of(user)]


@pytest.fixture
async def world(redis: Redis) -> World:
    store = RoomStore(redis, reads=Pipelined(redis))
    await store.ensure_general()
    users = [await get_or_create_user(redis, f"{n}@example.com") for n in ("ann", "bob", "cat")]
    dan = await get_or_create_user(redis, "dan@example.com")
    return World(redis, store, RoomHistory(redis, 10000), *users, dan)


async def refused(call: Awaitable[Any]) -> tuple[str, str]:
    with pytest.raises(RoomError) as error:
        await call
    return error.value.code, error.value.message


NO_SUCH_ROOM = ("not_allowed", "no such room")


async def test_a_created_room_lists_its_members_and_is_found_by_everyone_it_should_be(
    world: World,
) -> None:
    store, ann, bob, cat = world.store, world.ann, world.bob, world.cat
    room = await store.create(ann, "public", "  Plans ", " what next ", [bob.id, ann.id, bob.id])
    assert room.public(ann) == {
        "id": room.id,
        "kind": "public",
        "name": "Plans",
        "topic": "what next",
        "created_by": ann.id,
        "created_at": room.created_at,
        "archived": False,
        "member_count": 2,
    }
    assert room.seq == 0 and room.last_id is None
    assert await store.get(room.id) == room
    assert await store.member_ids(room.id) == {ann.id, bob.id}
    assert [u.name for u in await store.members(room.id)] == ["ann", "bob"]
    assert await world.names_of_rooms(ann) == ["general", "Plans"]
    assert await world.names_of_rooms(bob) == ["general", "Plans"]
    assert await world.names_of_rooms(cat) == ["general"]
    assert [(r.name, member) for r, member in await store.browse(cat.id, "")] == [
        ("general", True),
        ("Plans", False),
    ]
    secret = await store.create(cat, "private", "secret", "", [])
    assert await world.names_of_rooms(cat) == ["general", "secret"]
    assert [r.name for r, _ in await store.browse(ann.id, "")] == ["general", "Plans"]
    assert await store.is_member(secret.id, cat.id)
    assert not await store.is_member(secret.id, ann.id)
    assert not await store.is_member("no-such-room", ann.id)
    keys_left = [k.decode() for k in await world.redis.keys("*")]
    assert [k for k in keys_left if not keys.is_known_key(k)] == []


@pytest.mark.parametrize(
    ("kind", "name", "topic", "message"),
    [
        ("direct", "x", "", "kind must be public or private"),
        ("secret", "x", "", "kind must be public or private"),
        ("public", "  ", "", "room name must be 1 to 80 characters"),
        ("public", "x" * 81, "", "room name must be 1 to 80 characters"),
        ("public", "a\nb", "", "room name must not contain control characters"),
        ("public", "x", "t" * 251, "topic must be at most 250 characters"),
        ("public", "x", "two\nlines", "topic must not contain control characters"),
    ],
)
async def test_invalid_rooms_are_refused(
    world: World, kind: str, name: str, topic: str, message: str
) -> None:
    assert await refused(world.store.create(world.ann, kind, name, topic, [])) == (
        "bad_request",
        message,
    )
    assert await world.names_of_rooms(world.ann) == ["general"]


async def test_names_up_to_80_chars_and_topics_up_to_250_are_fine(world: World) -> None:
    room = await world.store.create(world.ann, "private", "n" * 80, "t" * 250, [])
    assert (len(room.name), len(room.topic)) == (80, 250)


async def test_initial_members_must_be_active_users_and_at_most_50(world: World) -> None:
    store, ann = world.store, world.ann
    await set_deactivated(world.redis, world.dan.id, True)
    for members in (["nobody"], [world.bob.id, world.dan.id]):
        assert await refused(store.create(ann, "public", "x", "", members)) == (
            "bad_request",
            "no such user",
        )
    many = [(await get_or_create_user(world.redis, f"u{n}@x.org")).id for n in range(51)]
    assert await refused(store.create(ann, "public", "x", "", many)) == (
        "bad_request",
        "a room starts with at most 50 members",
    )
    room = await store.create(ann, "public", "x", "", many[:50])
    assert room.member_count == 51
    assert await world.redis.hget(keys.ROOMS_NAMES, "x") == room.id.encode()


async def test_names_are_unique_casefolded_among_public_and_private_rooms(world: World) -> None:
    store, ann, bob = world.store, world.ann, world.bob
    await store.create(ann, "public", "Straße", "", [])
    for name in ("strasse", " STRASSE ", "General"):
        for kind in ("public", "private"):
            assert await refused(store.create(bob, kind, name, "", [])) == (
                "bad_request",
                "name taken",
            )
    assert await world.names_of_rooms(bob) == ["general"]


async def test_concurrent_creates_of_one_name_make_one_room(world: World) -> None:
    results = await asyncio.gather(
        *(world.store.create(world.ann, "public", "Race", "", []) for _ in range(10)),
        return_exceptions=True,
    )
    rooms = [r for r in results if isinstance(r, Room)]
    assert len(rooms) == 1
    assert all(
        isinstance(r, RoomError) and r.message == "name taken" for r in results if r not in rooms
    )
    assert await world.names_of_rooms(world.ann) == ["general", "Race"]


async def test_general_is_everyones_and_cannot_be_left_renamed_or_archived(world: World) -> None:
    store, ann, bob = world.store, world.ann, world.bob
    general = await store.get(GENERAL)
    assert general is not None
    assert (general.kind, general.name, general.member_count) == ("public", "general", 4)
    assert await store.is_member(GENERAL, "anyone at all")
    await set_deactivated(world.redis, world.dan.id, True)
    assert (await store.get(GENERAL) or general).member_count == 3
    assert [u.name for u in await store.members(GENERAL)] == ["ann", "bob", "cat"]
    assert await store.member_ids(GENERAL) == {ann.id, bob.id, world.cat.id}
    assert (await store.join(GENERAL, bob)).id == GENERAL
    assert (await refused(store.leave(GENERAL, bob)))[0] == "not_allowed"
    assert (await refused(store.invite(GENERAL, ann, bob.id)))[0] == "not_allowed"
    assert (await refused(store.remove(GENERAL, ann, bob.id, admin=True)))[0] == "not_allowed"
    for change in ({"name": "lobby"}, {"archived": True}):
        args: dict[str, Any] = {"name": None, "topic": None, "archived": None, **change}
        assert await refused(store.update(GENERAL, ann, admin=True, **args)) == (
            "not_allowed",
            "general cannot be renamed or archived",
        )
    assert (
        await refused(store.update(GENERAL, ann, admin=False, name=None, topic="hi", archived=None))
    )[0] == "not_allowed"
    updated = await store.update(
        GENERAL, ann, admin=True, name=None, topic=" all hands ", archived=None
    )
    assert (updated.name, updated.topic, updated.archived) == ("general", "all hands", False)


async def test_anyone_joins_a_public_room_and_starts_with_nothing_unread(world: World) -> None:
    store, ann, bob = world.store, world.ann, world.bob
    room = await store.create(ann, "public", "open", "", [])
    ids = await world.post(room.id, ann, 5)
    joined = await store.join(room.id, bob)
    assert joined.member_count == 2
    assert await world.unread(room.id, bob) == 0
    state = (await store.read_states(bob.id, [room.id]))[room.id]
    assert (state.read_id, state.read_seq) == (ids[-1], 5)
    await world.post(room.id, ann, 2)
    assert await world.unread(room.id, bob) == 2
    # Joining again changes nothing, not even the marker.
    assert (await store.join(room.id, bob)).member_count == 2
    assert await world.unread(room.id, bob) == 2


async def test_a_private_room_looks_exactly_like_no_room_to_outsiders(world: World) -> None:
    store, ann, bob = world.store, world.ann, world.bob
    secret = await store.create(ann, "private", "secret", "", [])
    direct, _ = await store.open_direct(ann, [world.cat.id])
    archived = await store.create(ann, "public", "old", "", [])
    await store.update(archived.id, ann, admin=False, name=None, topic=None, archived=True)
    for room_id in (secret.id, direct.id, archived.id, "0123456789abcdef", "bad id!"):
        assert await refused(store.join(room_id, bob)) == NO_SUCH_ROOM
    for room_id in (secret.id, direct.id, "0123456789abcdef"):
        assert await refused(store.leave(room_id, bob)) == NO_SUCH_ROOM
        assert await refused(store.invite(room_id, bob, bob.id)) == NO_SUCH_ROOM
        assert await refused(store.remove(room_id, bob, ann.id, admin=False)) == NO_SUCH_ROOM
        update = store.update(room_id, bob, admin=False, name="mine", topic=None, archived=None)
        assert await refused(update) == NO_SUCH_ROOM
        assert not await store.is_member(room_id, bob.id)
        assert await store.mark_read(bob.id, room_id, "0-1") is None
    assert await world.names_of_rooms(bob) == ["general"]


async def test_any_member_invites_and_only_the_creator_or_an_admin_removes(world: World) -> None:
    store, ann, bob, cat, dan = world.store, world.ann, world.bob, world.cat, world.dan
    room = await store.create(ann, "private", "team", "", [bob.id])
    await world.post(room.id, ann, 3)
    invited = await store.invite(room.id, bob, cat.id)
    assert invited.member_count == 3
    assert await world.unread(room.id, cat) == 0
    assert await world.names_of_rooms(cat) == ["general", "team"]
    assert (await store.invite(room.id, bob, cat.id)).member_count == 3
    assert await refused(store.invite(room.id, bob, "nobody")) == ("bad_request", "no such user")
    assert await refused(store.remove(room.id, bob, cat.id, admin=False)) == (
        "not_allowed",
        "only the room's creator or an admin may do that",
    )
    # An admin need not be a member.
    assert (await store.remove(room.id, dan, cat.id, admin=True)).member_count == 2
    assert not await store.is_member(room.id, cat.id)
    assert await world.names_of_rooms(cat) == ["general"]
    assert await world.redis.hget(keys.user_read(cat.id), room.id) is None
    assert await refused(store.remove(room.id, ann, cat.id, admin=False)) == (
        "bad_request",
        "not a member",
    )
    assert (await store.remove(room.id, ann, bob.id, admin=False)).member_count == 1
    # Removed means removed at once: no more posting there.
    with pytest.raises(NotMember):
        await world.post(room.id, bob)


async def test_leaving_a_private_room_needs_an_invite_to_come_back(world: World) -> None:
    store, ann, bob = world.store, world.ann, world.bob
    room = await store.create(ann, "private", "team", "", [bob.id])
    assert (await store.leave(room.id, bob)).member_count == 1
    assert await world.names_of_rooms(bob) == ["general"]
    assert await refused(store.join(room.id, bob)) == NO_SUCH_ROOM
    assert await refused(store.leave(room.id, bob)) == NO_SUCH_ROOM
    await store.invite(room.id, ann, bob.id)
    assert await store.is_member(room.id, bob.id)


async def test_a_direct_room_is_the_same_for_the_same_people_in_any_order(world: World) -> None:
    store, ann, bob, cat = world.store, world.ann, world.bob, world.cat
    one, created = await store.open_direct(ann, [bob.id])
    assert created
    again, created_again = await store.open_direct(bob, [ann.id, bob.id, ann.id])
    assert (again.id, created_again) == (one.id, False)
    group, _ = await store.open_direct(cat, [bob.id, ann.id])
    same_group, created = await store.open_direct(bob, [ann.id, cat.id])
    assert (same_group.id, created) == (group.id, False)
    assert group.id != one.id
    # Named for each viewer by the others.
    assert (one.name_for(ann), one.name_for(bob)) == ("bob", "ann")
    assert group.name_for(ann) == "bob, cat"
    await set_name(world.redis, cat, "Aaron")
    group = await store.get(group.id) or group
    assert group.public(bob) == {
        "id": group.id,
        "kind": "direct",
        "name": "Aaron, ann",
        "topic": "",
        "created_by": cat.id,
        "created_at": group.created_at,
        "archived": False,
        "member_count": 3,
        "members": [{"id": cat.id, "name": "Aaron"}, ann.public(), bob.public()],
    }
    assert await world.names_of_rooms(ann) == ["general", "Aaron, bob", "bob"]
    assert await store.browse(ann.id, "") == [(await store.get(GENERAL), True)]


async def test_direct_rooms_take_2_to_9_active_people_and_never_change(world: World) -> None:
    store, ann, bob = world.store, world.ann, world.bob
    people = [(await get_or_create_user(world.redis, f"p{n}@x.org")).id for n in range(9)]
    nine, _ = await store.open_direct(ann, people[:8])
    assert nine.member_count == 9
    bad = "a direct conversation has 1 to 8 other people"
    assert await refused(store.open_direct(ann, people)) == ("bad_request", bad)
    assert await refused(store.open_direct(ann, [ann.id])) == ("bad_request", bad)
    assert await refused(store.open_direct(ann, [])) == ("bad_request", bad)
    assert await refused(store.open_direct(ann, ["nobody"])) == ("bad_request", "no such user")
    await set_deactivated(world.redis, world.dan.id, True)
    assert await refused(store.open_direct(ann, [world.dan.id])) == ("bad_request", "no such user")
    room, _ = await store.open_direct(ann, [bob.id])
    assert (await refused(store.leave(room.id, ann)))[0] == "not_allowed"
    assert (await refused(store.invite(room.id, ann, world.cat.id)))[0] == "not_allowed"
    assert (await refused(store.remove(room.id, ann, bob.id, admin=True)))[0] == "not_allowed"
    update = store.update(room.id, ann, admin=True, name="x", topic=None, archived=None)
    assert (await refused(update))[0] == "not_allowed"
    assert await store.member_ids(room.id) == {ann.id, bob.id}


async def test_rename_collisions_and_case_only_renames(world: World) -> None:
    store, ann = world.store, world.ann
    a = await store.create(ann, "public", "alpha", "", [])
    await store.create(ann, "private", "beta", "", [])

    async def rename(name: str) -> Room:
        return await store.update(a.id, ann, admin=False, name=name, topic=None, archived=None)

    assert await refused(rename(" BETA ")) == ("bad_request", "name taken")
    assert await refused(rename("general")) == ("bad_request", "name taken")
    assert (await rename("Alpha")).name == "Alpha"
    renamed = await rename("gamma")
    assert renamed.name == "gamma"
    # The old name is free again, the new one taken.
    assert (await store.create(ann, "public", "ALPHA", "", [])).name == "ALPHA"
    assert await refused(store.create(ann, "public", "Gamma", "", [])) == (
        "bad_request",
        "name taken",
    )
    changed = await store.update(
        a.id, ann, admin=False, name=None, topic="new topic", archived=None
    )
    assert (changed.name, changed.topic) == ("gamma", "new topic")


async def test_only_the_creator_or_an_admin_updates(world: World) -> None:
    store, ann, bob = world.store, world.ann, world.bob
    room = await store.create(ann, "public", "alpha", "", [bob.id])
    by_bob = store.update(room.id, bob, admin=False, name="bobs", topic=None, archived=None)
    assert await refused(by_bob) == (
        "not_allowed",
        "only the room's creator or an admin may do that",
    )
    by_admin = await store.update(
        room.id, world.cat, admin=True, name="admins", topic=None, archived=None
    )
    assert by_admin.name == "admins"


async def test_archiving_hides_the_room_and_frees_its_name(world: World) -> None:
    store, ann, bob = world.store, world.ann, world.bob
    room = await store.create(ann, "public", "alpha", "", [bob.id])
    archived = await store.update(room.id, ann, admin=False, name=None, topic=None, archived=True)
    assert archived.archived
    assert await world.names_of_rooms(bob) == ["general"]
    assert [r.name for r, _ in await store.browse(bob.id, "")] == ["general"]
    assert await store.is_member(room.id, bob.id)  # still a member
    other = await store.create(bob, "public", "Alpha", "", [])
    # Taken meanwhile: it cannot come back under that name...
    unarchive = store.update(room.id, ann, admin=False, name=None, topic=None, archived=False)
    assert await refused(unarchive) == ("bad_request", "name taken")
    assert (await store.get(room.id) or room).archived
    # ...but it can under another, and is listed again.
    back = await store.update(
        room.id, ann, admin=False, name="alpha two", topic=None, archived=False
    )
    assert (back.name, back.archived) == ("alpha two", False)
    assert await world.names_of_rooms(bob) == ["general", "Alpha", "alpha two"]
    assert [r.id for r, _ in await store.browse(ann.id, "alpha")] == [other.id, room.id]
    assert await world.redis.hget(keys.ROOMS_NAMES, "alpha two") == room.id.encode()


async def test_browse_filters_by_name_and_says_where_one_is_a_member(world: World) -> None:
    store, ann, bob = world.store, world.ann, world.bob
    await store.create(ann, "public", "Book club", "", [])
    await store.create(bob, "public", "cooking", "", [])
    await store.create(ann, "private", "books secret", "", [])
    found = [(r.name, member) for r, member in await store.browse(ann.id, " BOOK")]
    assert found == [("Book club", True)]
    found = [(r.name, member) for r, member in await store.browse(ann.id, "")]
    assert found == [("general", True), ("Book club", True), ("cooking", False)]
    assert await store.browse(ann.id, "nothing like it") == []


async def test_read_markers_only_move_forward(world: World) -> None:
    store, ann, bob = world.store, world.ann, world.bob
    room = await store.create(ann, "public", "alpha", "", [bob.id])
    ids = await world.post(room.id, ann, 5)
    assert await world.unread(room.id, bob) == 5
    moved = await store.mark_read(bob.id, room.id, ids[2])
    assert moved is not None and (moved.read_id, moved.read_seq) == (ids[2], 3)
    assert await world.unread(room.id, bob) == 2
    assert await store.mark_read(bob.id, room.id, ids[1]) is None
    assert await store.mark_read(bob.id, room.id, ids[2]) is None
    assert await world.unread(room.id, bob) == 2
    # An id past the newest reads everything there is, not beyond it.
    everything = await store.mark_read(bob.id, room.id, "99999999999999-0")
    assert everything is not None and everything.read_id == ids[4]
    assert await world.unread(room.id, bob) == 0
    assert await store.mark_read(bob.id, room.id, "0-1") is None
    assert await store.mark_read(bob.id, room.id, "not an id") is None


async def test_unread_counts_by_seq_up_to_99_and_never_ones_own(world: World) -> None:
    store, ann, bob = world.store, world.ann, world.bob
    room = await store.create(ann, "public", "busy", "", [bob.id])
    await world.post(room.id, ann, 120)
    assert await world.unread(room.id, bob) == 99
    assert await world.unread(room.id, ann) == 0
    await world.post(room.id, bob, 3)
    assert await world.unread(room.id, ann) == 3
    # Posting is reading: bob read up to his own message, ann up to hers.
    assert await world.unread(room.id, bob) == 0
    last = await world.post(room.id, ann, 1)
    assert await world.unread(room.id, ann) == 0
    fields = store.viewer_fields(
        await store.get(room.id) or room, (await store.read_states(ann.id, [room.id]))[room.id]
    )
    assert fields == {"unread": 0, "mentions": 0, "last_id": last[0], "read_id": last[0]}
    # Nothing posted, nothing read: nothing unread.
    empty = await store.create(ann, "public", "quiet", "", [bob.id])
    assert store.viewer_fields(empty, (await store.read_states(bob.id, [empty.id]))[empty.id]) == {
        "unread": 0,
        "mentions": 0,
        "last_id": None,
        "read_id": None,
    }
    assert await store.read_states(bob.id, []) == {}


async def test_rooms_of_lists_general_first_then_by_name_without_archived(world: World) -> None:
    store, ann = world.store, world.ann
    for name in ("zeta", "Alpha", "mid"):
        await store.create(ann, "public", name, "", [])
    old = await store.create(ann, "private", "beta", "", [])
    await store.update(old.id, ann, admin=False, name=None, topic=None, archived=True)
    assert await world.names_of_rooms(ann) == ["general", "Alpha", "mid", "zeta"]


async def test_concurrent_opens_of_one_direct_room_make_one(world: World) -> None:
    store, ann, bob, cat = world.store, world.ann, world.bob, world.cat
    opened = await asyncio.gather(
        *(
            store.open_direct(user, [o.id for o in (ann, bob, cat) if o != user])
            for user in (ann, bob, cat) * 4
        )
    )
    assert len({room.id for room, _ in opened}) == 1
    assert sum(created for _, created in opened) == 1
    assert await world.redis.hlen(keys.ROOMS_DIRECT) == 1
    assert await world.names_of_rooms(cat) == ["general", "ann, bob"]
