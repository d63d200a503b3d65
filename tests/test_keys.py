"""Every Redis name comes from quart_chat/keys.py, and a script's keys share a hash slot."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import pytest
from redis.asyncio import Redis
from redis.crc import key_slot

from quart_chat import keys
from quart_chat.app import create_app
from quart_chat.migrations import migrate

from .blueprints.test_auth import log_in, smtp_settings
from .chatting import receive_type, send_text, start
from .conftest import make_settings
from .smtp import SmtpSink

WEIRD = ["ann@example.com", "{a}@b.c", "}{@x", "", "ünï@côdé.de", "a{b}c@{}", "x" * 300]


def slot(name: str) -> int:
    return key_slot(name.encode())


@pytest.mark.parametrize("email", WEIRD)
def test_an_addresses_login_keys_share_one_slot_and_never_show_it(email: str) -> None:
    names = [
        keys.login_code(email),
        keys.login_code_resend(email),
        keys.login_code_failures(email),
        keys.login_code_mail(email),
    ]
    assert len({slot(name) for name in names}) == 1
    assert all(keys.is_known_key(name) for name in names)
    if email:
        assert not any(email in name for name in names)


@pytest.mark.parametrize("ident", ["general", "0123456789abcdef", "r-1", "ü"])
def test_a_rooms_and_a_users_keys_share_one_slot(ident: str) -> None:
    room = [
        keys.room_history(ident),
        keys.room_channel(ident),
        keys.sent_message(ident, "u1", "client {id}"),
        keys.sent_message(ident, "u2", ""),
        keys.room_meta(ident),
        keys.room_members(ident),
    ]
    assert len({slot(name) for name in room}) == 1
    assert keys.room_of_channel(keys.room_channel(ident)) == ident
    assert keys.room_of_channel(keys.user_channel(ident)) is None
    user = [
        keys.user_profile(ident),
        *(keys.user_rate_limit(ident, a) for a in ("send", "x")),
        keys.user_rooms(ident),
        keys.user_read(ident),
        keys.user_sessions(ident),
        keys.user_channel(ident),
    ]
    assert len({slot(name) for name in user}) == 1
    assert keys.user_of_channel(keys.user_channel(ident)) == ident
    assert keys.user_of_channel(keys.room_channel(ident)) is None
    stored = [*room[:1], *room[2:], *user[:-1]]
    assert all(keys.is_known_key(name) for name in stored)
    # Channels are not keys: nothing stored may be named like one.
    assert not keys.is_known_key(keys.room_channel(ident))
    assert not keys.is_known_key(keys.user_channel(ident))


def test_global_indexes_are_known_names() -> None:
    for name in (
        keys.USERS_NAMES,
        keys.USERS_DEACTIVATED,
        keys.ROOMS_PUBLIC,
        keys.ROOMS_ARCHIVED,
        keys.ROOMS_NAMES,
        keys.ROOMS_DIRECT,
    ):
        assert keys.is_known_key(name)
    assert not keys.is_known_key(keys.USERS_CHANNEL)


def test_shared_structures_share_their_slots() -> None:
    assert slot(keys.MAIL_OUTBOX) == slot(keys.MAIL_RETRY) == slot(keys.mail("ab12"))
    assert (
        slot(keys.PRESENCE_WORKERS) == slot(keys.PRESENCE_NAMES) == slot(keys.presence_worker("w1"))
    )
    assert slot(keys.SOCKET_WORKERS) == slot(keys.socket_worker("w1"))


def kind(name: str) -> str:
    """Which group a name belongs to, for naming the scripts allowed to span slots."""
    if name.startswith("{"):
        return name[1:].split(":", 1)[0].split("}", 1)[0]
    return name


# Scripts that touch more than one slot today, by the groups of what they touch
# (see keys.py's docstring and issue 16): a code is issued and its mail
# queued in one step; a first login claims the address in the global index,
# indexes the name and starts the read marker at general's newest message;
# presence announces on the global presence channel.
CROSS_SLOT = {
    frozenset({"login", "mail"}),
    frozenset({keys.USERS_BY_EMAIL, "user", keys.USERS_NAMES, "room"}),
    frozenset({"presence", keys.PRESENCE_CHANNEL}),
}
# Commands whose every argument is a key; for the rest, the first argument is.
ALL_KEYS = {"DEL", "EXISTS", "UNLINK"}
NO_KEYS = {"TIME", "ECHO", "PING", "HELLO", "CLIENT", "SELECT", "INFO", "SCRIPT", "SCAN"}


def names_of(args: list[str]) -> list[str]:
    command = args[0].upper()
    if command in NO_KEYS or command.startswith("EVAL") or len(args) < 2:
        return []
    if command in ALL_KEYS:
        return args[1:]
    if command in {"XGROUP", "XINFO"}:
        return [args[2]]
    if command == "XREADGROUP":
        streams = [a.upper() for a in args].index("STREAMS")
        rest = args[streams + 1 :]
        return rest[: len(rest) // 2]
    return [args[1]]


def is_channel(name: str) -> bool:
    return (
        name in {keys.PRESENCE_CHANNEL, keys.SESSION_REVOKED_CHANNEL, keys.USERS_CHANNEL}
        or keys.room_of_channel(name) is not None
        or keys.user_of_channel(name) is not None
    )


async def test_a_session_of_activity_uses_only_names_from_keys_py(
    redis: Redis, redis_url: str, tmp_path: Path, smtp: SmtpSink
) -> None:
    """Log two people in by mail, chat, page history, fail a code, log out: every
    name the app touches is declared in keys.py, and each script call stays in one
    slot unless it is one of the CROSS_SLOT groups."""
    seen: list[dict[str, Any]] = []
    monitoring = asyncio.Event()

    async def watch() -> None:
        async with redis.monitor() as monitor:
            monitoring.set()
            while True:
                seen.append(await monitor.next_command())

    # The migration reads old names by design; here it finds none and records that.
    await migrate(redis)
    watcher = asyncio.create_task(watch())
    await monitoring.wait()
    try:
        app = create_app(make_settings(redis_url, tmp_path / "var", **smtp_settings(smtp)))
        async with app.test_app():
            ann, bob = app.test_client(), app.test_client()
            await log_in(ann, smtp, "ann@example.com")
            await log_in(bob, smtp, "bob@example.com")
            wrong = await ann.post("/login", json={"email": "eve@example.com", "code": "000000"})
            assert wrong.status_code == 400
            async with ann.websocket("/ws") as ann_ws, bob.websocket("/ws") as bob_ws:
                await start(ann_ws)
                await start(bob_ws)
                assert (await send_text(ann_ws, "hello bob", "c-1"))["text"] == "hello bob"
                assert (await receive_type(bob_ws, "message"))["text"] == "hello bob"
                assert (await send_text(bob_ws, "hi ann", "c-2"))["text"] == "hi ann"
                assert (await receive_type(ann_ws, "message"))["text"] == "hi ann"
                await ann_ws.send_json({"type": "history", "room": "general", "limit": 10})
                assert len((await receive_type(ann_ws, "history"))["messages"]) == 2
            assert (await bob.post("/logout")).status_code in {302, 303}
    finally:
        await redis.echo("end-of-activity")
        async with asyncio.timeout(10):
            while not any(c["command"] == "ECHO end-of-activity" for c in seen):
                await asyncio.sleep(0.05)
        watcher.cancel()
        await asyncio.gather(watcher, return_exceptions=True)

    unknown: set[str] = set()
    scripts: list[list[str]] = []
    for command in seen:
        args = str(command["command"]).split(" ")
        if command["client_type"] == "lua":
            touched = names_of(args)
            if scripts:
                scripts[-1].extend(touched)
        else:
            touched = names_of(args)
            if args[0].upper().startswith("EVAL"):
                scripts.append([])
        unknown.update(n for n in touched if not (keys.is_known_key(n) or is_channel(n)))
    assert unknown == set()
    assert len(scripts) > 20
    spanning = [
        frozenset(kind(n) for n in names) for names in scripts if len({slot(n) for n in names}) > 1
    ]
    assert set(spanning) <= CROSS_SLOT, spanning
    names_left = [key.decode() for key in await redis.keys("*")]
    assert [name for name in names_left if not keys.is_known_key(name)] == []
    assert any(name.startswith("{room:general}") for name in names_left)
