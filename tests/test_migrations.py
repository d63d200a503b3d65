"""A Redis written by the first release (keys without hash tags) keeps its data."""

from __future__ import annotations

import asyncio

from quart_auth import generate_auth_token
from redis.asyncio import Redis

from quart_chat import keys
from quart_chat.app import create_app
from quart_chat.config import Settings
from quart_chat.migrations import migrate

from .chatting import receive_type, start

USER_ID = "0123456789abcdef"
SESSION_ID = "old-session-id-from-the-first-release-0123456789"


async def write_first_release_data(redis: Redis) -> str:
    """Keys as the first release named them; returns the stored message's id."""
    await redis.hset(f"user:{USER_ID}", mapping={"email": "ann@example.com", "name": "ann"})
    await redis.hset("users:by-email", "ann@example.com", USER_ID)
    await redis.set(f"session:{SESSION_ID}", USER_ID, ex=3600)
    message_id = (
        await redis.xadd(
            "history:general",
            {"user": USER_ID, "name": "ann", "text": "before the upgrade", "client_id": "c-old"},
        )
    ).decode()
    await redis.set(f"sent:{USER_ID}:c-old", message_id, ex=86400)
    await redis.set("login-code-failures:bob@example.com", 3, ex=86400)
    await redis.set(f"ratelimit:send:{USER_ID}", 2, ex=60)
    await redis.set("ratelimit:request-code:ip:127.0.0.1", 1, ex=3600)
    return message_id


async def test_an_upgraded_redis_keeps_history_sessions_users_and_lockouts(
    settings: Settings, redis: Redis
) -> None:
    message_id = await write_first_release_data(redis)
    app = create_app(settings)
    async with app.test_app():
        client = app.test_client()
        cookie = f"QUART_AUTH={generate_auth_token(client, SESSION_ID)}"
        # The old session still logs its user in: the chat page, not the login page.
        page = await client.get("/", headers={"Cookie": cookie, "Accept": "text/html"})
        assert page.status_code == 200
        async with client.websocket("/ws", headers={"Cookie": cookie}) as ws:
            ready = await start(ws, join=False)
            assert ready["user"] == {"id": USER_ID, "name": "ann", "admin": False}
            await ws.send_json({"type": "join", "room": "general"})
            backlog = await receive_type(ws, "history")
            assert [(m["id"], m["text"]) for m in backlog["messages"]] == [
                (message_id, "before the upgrade")
            ]
            # A retry of a send made before the upgrade is still recognised.
            await ws.send_json(
                {"type": "send", "room": "general", "text": "again", "client_id": "c-old"}
            )
            echo = await receive_type(ws, "message")
            assert (echo["id"], echo["text"]) == (message_id, "before the upgrade")
    assert int(await redis.get(keys.login_code_failures("bob@example.com")) or 0) == 3
    assert 0 < await redis.ttl(keys.login_code_failures("bob@example.com")) <= 86400
    assert int(await redis.get(keys.user_rate_limit(USER_ID, "send")) or 0) >= 2
    assert await redis.xlen(keys.room_history("general")) == 1
    # Schema 3: ann is in the directory, general counts the message stored
    # before and ann has read it.
    assert await redis.zrange(keys.USERS_NAMES, 0, -1) == [f"ann\x00{USER_ID}".encode()]
    meta = await redis.hgetall(keys.room_meta("general"))
    assert (meta[b"kind"], meta[b"name"], meta[b"archived"]) == (b"public", b"general", b"0")
    assert (meta[b"seq"], meta[b"last_id"]) == (b"1", message_id.encode())
    assert await redis.hget(keys.user_read(USER_ID), "general") == f"{message_id} 1".encode()
    names = sorted(key.decode() for key in await redis.keys("*"))
    assert [name for name in names if not keys.is_known_key(name)] == []
    assert int(await redis.get(keys.SCHEMA_VERSION_KEY) or 0) == keys.SCHEMA_VERSION


async def test_concurrent_starts_migrate_once_and_queued_mail_keeps_its_names(
    redis: Redis,
) -> None:
    email = "bob@example.com"
    await redis.xgroup_create("mail:outbox", "mailers", id="0", mkstream=True)
    await redis.hset(
        "mail:abc123",
        mapping={"mail": "{}", "kind": "login code", "attempts": "0", "release": ""},
    )
    await redis.hset("mail:abc123", "release", f"login-code-resend:{email}")
    await redis.expire("mail:abc123", 600)
    await redis.xadd("mail:outbox", {"id": "abc123"})
    await redis.set(f"login-code-mail:{email}", "mail:abc123", ex=600)
    await redis.set(f"login-code-resend:{email}", "1", ex=60)
    await redis.hset(f"login-code:{email}", mapping={"mac": "x", "attempts": "0"})
    await redis.zadd("presence:workers", {"gone-worker": 1})
    await redis.hset("presence:worker:gone-worker", USER_ID, 1)

    await asyncio.gather(migrate(redis), migrate(redis), migrate(redis))

    assert await redis.xlen(keys.MAIL_OUTBOX) == 1
    assert [g["name"] for g in await redis.xinfo_groups(keys.MAIL_OUTBOX)] == [b"mailers"]
    mail = keys.mail("abc123")
    assert (await redis.hget(mail, "release")).decode() == keys.login_code_resend(email)
    assert 0 < await redis.ttl(mail) <= 600
    assert (await redis.get(keys.login_code_mail(email))).decode() == mail
    assert 0 < await redis.ttl(keys.login_code_mail(email)) <= 600
    assert await redis.exists(keys.login_code(email), keys.login_code_resend(email)) == 2
    assert await redis.zscore(keys.PRESENCE_WORKERS, "gone-worker") == 1
    assert await redis.hget(keys.presence_worker("gone-worker"), USER_ID) == b"1"
    names = [key.decode() for key in await redis.keys("*")]
    assert [name for name in names if not keys.is_known_key(name)] == []
    assert not await redis.exists(keys.MIGRATION_LOCK_KEY)

    # Recorded as done: a later start renames nothing, whatever it finds.
    await redis.set("history:general", "not ours")
    await migrate(redis)
    assert await redis.get("history:general") == b"not ours"


async def test_a_schema_2_redis_gets_the_directory_and_generals_meta(redis: Redis) -> None:
    """Users and messages written under schema 2 (hash-tagged names, no rooms)."""
    await redis.set(keys.SCHEMA_VERSION_KEY, 2)
    people = {"0000000000000001": "ann", "0000000000000002": "Bob"}
    for user_id, name in people.items():
        email = f"{name.lower()}@example.com"
        await redis.hset(keys.user_profile(user_id), mapping={"email": email, "name": name})
        await redis.hset(keys.USERS_BY_EMAIL, email, user_id)
    history = keys.room_history("general")
    ids = [
        (await redis.xadd(history, {"user": "0000000000000001", "name": "ann", "text": f"m{n}"}))
        for n in range(3)
    ]
    # Bob read the first message under a later release that crashed half-way: kept.
    await redis.hset(keys.user_read("0000000000000002"), "general", f"{ids[0].decode()} 1")

    await asyncio.gather(migrate(redis), migrate(redis))

    assert await redis.zrange(keys.USERS_NAMES, 0, -1) == [
        b"ann\x000000000000000001",
        b"bob\x000000000000000002",
    ]
    assert await redis.hmget(keys.room_meta("general"), ["seq", "last_id"]) == [b"3", ids[-1]]
    assert await redis.hget(keys.user_read("0000000000000001"), "general") == ids[-1] + b" 3"
    assert await redis.hget(keys.user_read("0000000000000002"), "general") == ids[0] + b" 1"
    assert await redis.hget(keys.ROOMS_NAMES, "general") == b"general"
    assert await redis.smembers(keys.ROOMS_PUBLIC) == {b"general"}
    assert int(await redis.get(keys.SCHEMA_VERSION_KEY) or 0) == keys.SCHEMA_VERSION
    names = [key.decode() for key in await redis.keys("*")]
    assert [name for name in names if not keys.is_known_key(name)] == []
