"""Users against a real Redis: the directory, display names, deactivation, admins."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest
from redis.asyncio import Redis

from quart_chat import keys
from quart_chat.models.messages import RoomHistory
from quart_chat.models.rooms import GENERAL, ensure_general
from quart_chat.models.users import (
    InvalidName,
    User,
    claim_user,
    count_active_users,
    get_or_create_user,
    get_user,
    get_users,
    is_admin,
    search_people,
    set_deactivated,
    set_name,
)
from quart_chat.storage import Pipelined

from .conftest import make_settings


async def people(redis: Redis, prefix: str, limit: int = 50) -> list[str]:
    return [user.name for user in await search_people(redis, prefix, limit)]


async def test_a_new_user_is_in_the_directory_by_the_name_from_their_address(
    redis: Redis,
) -> None:
    ann = await get_or_create_user(redis, "Ann.Lee@Example.com")
    assert (ann.name, ann.email, ann.deactivated) == ("ann.lee", "ann.lee@example.com", False)
    assert ann.public() == {"id": ann.id, "name": "ann.lee"}
    assert await get_user(redis, ann.id) == ann
    assert await people(redis, "ANN") == ["ann.lee"]
    assert await count_active_users(redis) == 1
    # A second login finds the same user, says it is not new, and does not index them twice.
    assert await claim_user(redis, "ann.lee@example.com") == (ann, False)
    assert (await claim_user(redis, "cy@example.com"))[1] is True
    assert await get_or_create_user(redis, "ann.lee@example.com") == ann
    assert await redis.zcard(keys.USERS_NAMES) == 2


async def test_search_is_a_casefolded_prefix_sorted_by_name_and_capped(redis: Redis) -> None:
    for email in ["zoe@x.org", "Bob@x.org", "bobby@x.org", "böb@x.org", "al@x.org"]:
        await get_or_create_user(redis, email)
    bea = await get_or_create_user(redis, "bea@x.org")
    await set_name(redis, bea, "Straße")
    assert await people(redis, "") == ["al", "bob", "bobby", "böb", "Straße", "zoe"]
    assert await people(redis, "bob") == ["bob", "bobby"]
    assert await people(redis, " BÖ") == ["böb"]
    assert await people(redis, "STRASSE") == ["Straße"]  # casefold, not lower
    assert await people(redis, "q") == []
    assert await people(redis, "", limit=2) == ["al", "bob"]
    for n in range(60):
        await get_or_create_user(redis, f"many{n}@x.org")
    assert len(await search_people(redis, "many")) == 50


async def test_get_users_keeps_order_and_skips_unknown_ids(redis: Redis) -> None:
    ann = await get_or_create_user(redis, "ann@x.org")
    bob = await get_or_create_user(redis, "bob@x.org")
    ids = [bob.id, "nobody", ann.id, bob.id]
    assert await get_users(redis, ids) == [bob, ann, bob]
    pipelined = Pipelined(redis)
    assert await get_users(pipelined, ids) == [bob, ann, bob]
    assert await get_users(redis, []) == []


@pytest.mark.parametrize(
    ("name", "message"),
    [
        ("", "name must be 1 to 64 characters"),
        ("   ", "name must be 1 to 64 characters"),
        ("x" * 65, "name must be 1 to 64 characters"),
        ("a\nb", "name must not contain control characters"),
        ("tab\there", "name must not contain control characters"),
        ("nul\x00", "name must not contain control characters"),
        ("line\u2028sep", "name must not contain control characters"),
    ],
)
async def test_invalid_names_are_refused_and_change_nothing(
    redis: Redis, name: str, message: str
) -> None:
    ann = await get_or_create_user(redis, "ann@x.org")
    with pytest.raises(InvalidName) as refused:
        await set_name(redis, ann, name)
    assert refused.value.message == message
    assert await get_user(redis, ann.id) == ann
    assert await people(redis, "") == ["ann"]


async def test_a_rename_moves_the_directory_entry(redis: Redis) -> None:
    ann = await get_or_create_user(redis, "ann@x.org")
    renamed = await set_name(redis, ann, "  Ann Lee 🙂 " + "x" * 50)
    assert renamed.name == "Ann Lee 🙂 " + "x" * 50
    assert len(renamed.name) == 60
    assert await get_user(redis, ann.id) == renamed
    assert await people(redis, "ann lee") == [renamed.name]
    assert await redis.zcard(keys.USERS_NAMES) == 1
    # 64 characters exactly is fine.
    assert (await set_name(redis, renamed, "y" * 64)).name == "y" * 64
    assert await people(redis, "") == ["y" * 64]


async def test_concurrent_renames_leave_one_directory_entry(redis: Redis) -> None:
    ann = await get_or_create_user(redis, "ann@x.org")
    await asyncio.gather(*(set_name(redis, ann, f"name {n}") for n in range(10)))
    final = await get_user(redis, ann.id)
    assert final is not None
    assert await people(redis, "") == [final.name]


async def test_renaming_an_unknown_user_is_refused(redis: Redis) -> None:
    with pytest.raises(InvalidName):
        await set_name(redis, User("nobody", "x", "x@x.org"), "new")
    assert await redis.zcard(keys.USERS_NAMES) == 0


async def test_deactivation_hides_from_the_directory_and_the_count(redis: Redis) -> None:
    ann = await get_or_create_user(redis, "ann@x.org")
    bob = await get_or_create_user(redis, "bob@x.org")
    gone = await set_deactivated(redis, bob.id, True)
    assert gone == User(bob.id, "bob", "bob@x.org", deactivated=True)
    assert await get_user(redis, bob.id) == gone
    assert await people(redis, "") == ["ann"]
    assert await count_active_users(redis) == 1
    # Admins find them among the deactivated, by the same prefix search.
    assert await search_people(redis, "B", deactivated=True) == [gone]
    assert await search_people(redis, "a", deactivated=True) == []
    # A deactivated user who renames stays out of the directory, found by the new name.
    await set_name(redis, gone, "robert")
    assert await people(redis, "") == ["ann"]
    assert [u.name for u in await search_people(redis, "", deactivated=True)] == ["robert"]
    # Their next login finds the same, still deactivated, user.
    assert (await get_or_create_user(redis, "bob@x.org")).deactivated
    back = await set_deactivated(redis, bob.id, False)
    assert back == User(bob.id, "robert", "bob@x.org", deactivated=False)
    assert await people(redis, "") == ["ann", "robert"]
    assert await search_people(redis, "", deactivated=True) == []
    assert await redis.zcard(keys.USERS_DEACTIVATED) == 0
    assert await count_active_users(redis) == 2
    assert await set_deactivated(redis, "nobody", True) is None
    assert await get_user(redis, ann.id) == ann


def test_admins_are_matched_by_normalised_email(tmp_path: Path) -> None:
    settings = make_settings(
        "redis://127.0.0.1:6379/0", tmp_path, admin_emails=["Boss@Example.com"]
    )
    assert is_admin(settings, User("1", "boss", "boss@example.com"))
    assert not is_admin(settings, User("2", "ann", "ann@example.com"))


async def test_a_new_user_starts_having_read_general(redis: Redis) -> None:
    await ensure_general(redis)
    ann = await get_or_create_user(redis, "ann@x.org")
    history = RoomHistory(redis, 1000)
    posted = [await history.post(GENERAL, ann, f"m{n}", f"c{n}") for n in range(3)]
    bob = await get_or_create_user(redis, "bob@x.org")
    marker = await redis.hget(keys.user_read(bob.id), GENERAL)
    assert marker == f"{posted[-1].id} 3".encode()
