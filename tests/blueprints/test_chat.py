"""The chat page and the WebSocket protocol (SPEC §5), through the Quart test client."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path

import pytest
from quart.testing import QuartClient, WebsocketResponseError
from quart.testing.connections import WebsocketDisconnectError
from redis.asyncio import Redis

from quart_chat import keys
from quart_chat.app import create_app
from quart_chat.base import ChatApp
from quart_chat.models.messages import RoomHistory
from quart_chat.models.sessions import revoke_session
from quart_chat.models.users import get_or_create_user
from quart_chat.realtime import bus, sweeps

from ..chatting import log_in, receive, receive_type, send_text, start
from ..conftest import make_settings
from ..servers import RedisServer

# -- the page -------------------------------------------------------------------


async def test_page_redirects_to_login_without_a_session(client: QuartClient) -> None:
    response = await client.get("/")
    assert response.status_code == 302
    assert response.headers["Location"] == "/login?next=/"


async def test_page_renders_for_a_logged_in_user(app: ChatApp, redis: Redis) -> None:
    ann = await log_in(app, redis, "ann@example.com")
    response = await ann.client.get("/", headers={"Cookie": ann.cookie})
    assert response.status_code == 200
    body = await response.get_data(as_text=True)
    assert "ann" in body
    assert "ann@example.com" not in body
    assert "Content-Security-Policy" in response.headers


# -- the handshake ----------------------------------------------------------------


async def test_handshake_without_a_session_is_401(client: QuartClient) -> None:
    async with client.websocket("/ws") as ws:
        with pytest.raises(WebsocketResponseError) as refused:
            await ws.receive()
    assert refused.value.response.status_code == 401


async def test_handshake_with_a_revoked_session_is_401(app: ChatApp, redis: Redis) -> None:
    ann = await log_in(app, redis, "ann@example.com")
    await revoke_session(redis, ann.session_id)
    async with ann.socket() as ws:
        with pytest.raises(WebsocketResponseError) as refused:
            await ws.receive()
    assert refused.value.response.status_code == 401


async def test_handshake_from_another_site_is_403(app: ChatApp, redis: Redis) -> None:
    ann = await log_in(app, redis, "ann@example.com")
    async with ann.socket(Origin="https://evil.example") as ws:
        with pytest.raises(WebsocketResponseError) as refused:
            await ws.receive()
    assert refused.value.response.status_code == 403
    async with ann.socket(**{"Origin": "http://localhost", "Sec-Fetch-Site": "cross-site"}) as ws:
        with pytest.raises(WebsocketResponseError) as refused:
            await ws.receive()
    assert refused.value.response.status_code == 403


async def test_own_and_configured_origins_are_accepted(
    redis_url: str, redis: Redis, tmp_path: Path
) -> None:
    settings = make_settings(redis_url, tmp_path, allowed_origins="https://chat.example.com")
    app = create_app(settings)
    async with app.test_app():
        ann = await log_in(app, redis, "ann@example.com")
        for origin in ["http://localhost", "https://chat.example.com"]:
            async with ann.socket(Origin=origin) as ws:
                assert (await receive(ws))["type"] == "ready"


async def test_ready_is_the_first_frame_and_never_shows_emails(app: ChatApp, redis: Redis) -> None:
    ann = await log_in(app, redis, "ann@example.com")
    bob = await log_in(app, redis, "bob@example.com")
    async with ann.socket() as ann_ws:
        await start(ann_ws, join=False)
        async with bob.socket() as ws:
            raw = await asyncio.wait_for(ws.receive(), 10)
            ready = json.loads(raw)
    assert ready["type"] == "ready"
    assert ready["user"] == {"id": bob.user.id, "name": "bob", "admin": False}
    [general] = ready["rooms"]
    assert general["id"] == "general" and general["kind"] == "public"
    assert general["member_count"] == 2 and general["unread"] == 0
    assert sorted(u["name"] for u in ready["online"]) == ["ann", "bob"]
    assert "@" not in str(raw)


# -- messages -------------------------------------------------------------------------


async def test_a_message_reaches_everyone_in_the_room(app: ChatApp, redis: Redis) -> None:
    ann = await log_in(app, redis, "ann@example.com")
    bob = await log_in(app, redis, "bob@example.com")
    async with ann.socket() as ann_ws, bob.socket() as bob_ws:
        await start(ann_ws)
        await start(bob_ws)
        echoed = await send_text(ann_ws, "hello <b>bob</b>", "c-1")
        seen = await receive_type(bob_ws, "message")
    assert echoed == seen
    assert seen["room"] == "general"
    assert seen["user"] == {"id": ann.user.id, "name": "ann"}
    assert seen["text"] == "hello <b>bob</b>"
    assert seen["client_id"] == "c-1"
    ms, seq = seen["id"].split("-")
    assert seen["ts"] == int(ms) and seq.isdigit()


async def test_messages_arrive_in_stream_order(app: ChatApp, redis: Redis) -> None:
    ann = await log_in(app, redis, "ann@example.com")
    bob = await log_in(app, redis, "bob@example.com")
    async with ann.socket() as ann_ws, bob.socket() as bob_ws:
        await start(ann_ws)
        await start(bob_ws)
        for n in range(20):
            sender = ann_ws if n % 2 else bob_ws
            await sender.send_json(
                {"type": "send", "room": "general", "text": f"m{n}", "client_id": f"c{n}"}
            )
        got = [await receive_type(bob_ws, "message") for _ in range(20)]
    stored = await redis.xrange(keys.room_history("general"))
    assert [m["id"] for m in got] == [entry[0].decode() for entry in stored]


async def test_joining_sends_the_last_50_and_history_pages_back(app: ChatApp, redis: Redis) -> None:
    ann = await log_in(app, redis, "ann@example.com")
    history = RoomHistory(redis, 10000)
    ids = [(await history.post("general", ann.user, f"m{n}", f"c{n}")).id for n in range(120)]
    async with ann.socket() as ws:
        await receive(ws)
        await ws.send_json({"type": "join", "room": "general"})
        page = await receive_type(ws, "history")
        assert [m["id"] for m in page["messages"]] == ids[-50:]
        assert page["has_more"] is True
        older = []
        before = page["messages"][0]["id"]
        while True:
            await ws.send_json(
                {"type": "history", "room": "general", "before": before, "limit": 100}
            )
            page = await receive_type(ws, "history")
            older = page["messages"] + older
            if not page["has_more"]:
                break
            before = page["messages"][0]["id"]
    assert [m["id"] for m in older] == ids[:-50]
    assert older[0]["text"] == "m0"


async def test_join_after_sends_everything_after_in_pages_then_live(
    app: ChatApp, redis: Redis
) -> None:
    ann = await log_in(app, redis, "ann@example.com")
    history = RoomHistory(redis, 10000)
    ids = [(await history.post("general", ann.user, f"m{n}", f"c{n}")).id for n in range(260)]
    async with ann.socket() as ws:
        await receive(ws)
        await ws.send_json({"type": "join", "room": "general", "after": ids[9]})
        pages = [await receive_type(ws, "history")]
        while pages[-1]["has_more"]:
            pages.append(await receive_type(ws, "history"))
        assert [len(p["messages"]) for p in pages] == [100, 100, 50]
        assert [m["id"] for p in pages for m in p["messages"]] == ids[10:]
        live = await send_text(ws, "now", "c-live")
    assert live["text"] == "now"


async def test_join_while_others_send_has_no_gap_and_no_duplicate(
    app: ChatApp, redis: Redis
) -> None:
    ann = await log_in(app, redis, "ann@example.com")
    bob = await get_or_create_user(redis, "bob@example.com")
    history = RoomHistory(redis, 10000)
    first = (await history.post("general", bob, "first", "b-first")).id

    async def flood() -> str:
        last = ""
        for n in range(400):
            last = (await history.post("general", bob, f"b{n}", f"b{n}")).id
        return last

    async with ann.socket() as ws:
        await receive(ws)
        sender = asyncio.create_task(flood())
        await asyncio.sleep(0.01)  # join while the flood is under way
        await ws.send_json({"type": "join", "room": "general", "after": first})
        last = await sender
        seen: list[str] = []
        while not seen or seen[-1] != last:
            frame = await receive_type(ws, "history") if not seen else await receive(ws)
            if frame["type"] == "history":
                seen += [m["id"] for m in frame["messages"]]
            elif frame["type"] == "message":
                seen.append(frame["id"])
    stored = [entry[0].decode() for entry in await redis.xrange(keys.room_history("general"))]
    assert seen == stored[1:]


async def test_a_retried_send_posts_once_and_echoes_the_original(
    app: ChatApp, redis: Redis
) -> None:
    ann = await log_in(app, redis, "ann@example.com")
    async with ann.socket() as ws:
        await start(ws)
        first = await send_text(ws, "once", "same-id")
        retry = await send_text(ws, "once", "same-id")
    assert retry == first
    assert await redis.xlen(keys.room_history("general")) == 1


async def test_the_sender_gets_an_echo_without_joining(app: ChatApp, redis: Redis) -> None:
    ann = await log_in(app, redis, "ann@example.com")
    async with ann.socket() as ws:
        await start(ws, join=False)
        echoed = await send_text(ws, "hi", "c-1")
    assert echoed["client_id"] == "c-1"


# -- bad input ------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("frame", "code", "client_id"),
    [
        ("not json", "bad_request", None),
        ("[1, 2]", "bad_request", None),
        ('{"type": "dance"}', "bad_request", None),
        ('{"room": "general"}', "bad_request", None),
        ('{"type": "join"}', "bad_request", None),
        ('{"type": "join", "room": 7}', "bad_request", None),
        ('{"type": "join", "room": "secret"}', "not_allowed", None),
        ('{"type": "join", "room": "no/such"}', "bad_request", None),
        ('{"type": "join", "room": "general", "after": "yesterday"}', "bad_request", None),
        ('{"type": "send", "room": "general", "text": "hi"}', "bad_request", None),
        ('{"type": "send", "room": "general", "text": "hi", "client_id": 5}', "bad_request", None),
        ('{"type": "send", "room": "general", "client_id": "c"}', "bad_request", "c"),
        ('{"type": "send", "room": "general", "text": "  ", "client_id": "c"}', "bad_request", "c"),
        ('{"type": "send", "room": "general", "text": [], "client_id": "c"}', "bad_request", "c"),
        ('{"type": "send", "room": "x", "text": "hi", "client_id": "c"}', "not_allowed", "c"),
        ('{"type": "history", "room": "general", "limit": 101}', "bad_request", None),
        ('{"type": "history", "room": "general", "limit": true}', "bad_request", None),
        ('{"type": "history", "room": "general", "before": 5}', "bad_request", None),
    ],
)
async def test_bad_frames_get_an_error_and_the_socket_stays_usable(
    app: ChatApp, redis: Redis, frame: str, code: str, client_id: str | None
) -> None:
    ann = await log_in(app, redis, "ann@example.com")
    async with ann.socket() as ws:
        await start(ws)
        await ws.send(frame)
        error = await receive_type(ws, "error")
        assert error["code"] == code
        assert error.get("client_id") == client_id
        assert error["message"]
        assert (await send_text(ws, "still here", "c-after"))["text"] == "still here"


async def test_binary_frames_are_bad_requests(app: ChatApp, redis: Redis) -> None:
    ann = await log_in(app, redis, "ann@example.com")
    async with ann.socket() as ws:
        await start(ws)
        await ws.send(b'{"type": "join", "room": "general"}')
        assert (await receive_type(ws, "error"))["code"] == "bad_request"


async def test_too_long_text_is_refused(redis_url: str, redis: Redis, tmp_path: Path) -> None:
    app = create_app(make_settings(redis_url, tmp_path, message_max_chars=10))
    async with app.test_app():
        ann = await log_in(app, redis, "ann@example.com")
        async with ann.socket() as ws:
            await start(ws)
            await ws.send_json(
                {"type": "send", "room": "general", "text": "x" * 11, "client_id": "long"}
            )
            error = await receive_type(ws, "error")
            assert (error["code"], error["client_id"]) == ("too_long", "long")
            assert (await send_text(ws, "x" * 10, "short"))["text"] == "x" * 10
    assert await redis.xlen(keys.room_history("general")) == 1


async def test_flooding_is_rate_limited_per_user_not_per_socket(
    redis_url: str, redis: Redis, tmp_path: Path
) -> None:
    app = create_app(make_settings(redis_url, tmp_path, messages_per_minute=3))
    async with app.test_app():
        ann = await log_in(app, redis, "ann@example.com")
        bob = await log_in(app, redis, "bob@example.com")
        async with ann.socket() as tab1, ann.socket() as tab2, bob.socket() as bob_ws:
            for ws in (tab1, tab2, bob_ws):
                await start(ws, join=False)  # only their own echoes arrive
            await send_text(tab1, "1", "a1")
            await send_text(tab2, "2", "a2")
            await send_text(tab1, "3", "a3")
            await tab2.send_json(
                {"type": "send", "room": "general", "text": "4", "client_id": "a4"}
            )
            error = await receive_type(tab2, "error")
            assert (error["code"], error["client_id"]) == ("rate_limited", "a4")
            assert 1 <= error["retry_after"] <= 60
            assert (await send_text(bob_ws, "bob is fine", "b1"))["text"] == "bob is fine"
    assert await redis.xlen(keys.room_history("general")) == 4


# -- closing --------------------------------------------------------------------------


async def test_logout_closes_every_socket_of_the_session_with_4401(
    app: ChatApp, redis: Redis
) -> None:
    ann = await log_in(app, redis, "ann@example.com")
    other_session = await log_in(app, redis, "ann@example.com")
    async with ann.socket() as tab1, ann.socket() as tab2, other_session.socket() as other:
        for ws in (tab1, tab2, other):
            await start(ws)
        await revoke_session(redis, ann.session_id)
        for ws in (tab1, tab2):
            with pytest.raises(WebsocketDisconnectError) as closed:
                while True:
                    await asyncio.wait_for(ws.receive(), 1.0)
            assert closed.value.args[0] == 4401
        assert (await send_text(other, "still in", "o1"))["text"] == "still in"


async def test_an_expired_session_is_closed_with_4401(
    redis_url: str, redis: Redis, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(sweeps, "SESSION_SWEEP_SECONDS", 0.2)
    app = create_app(make_settings(redis_url, tmp_path))
    async with app.test_app():
        ann = await log_in(app, redis, "ann@example.com")
        async with ann.socket() as ws:
            await start(ws)
            await redis.delete(keys.session(ann.session_id))  # what expiry does
            with pytest.raises(WebsocketDisconnectError) as closed:
                while True:
                    await asyncio.wait_for(ws.receive(), 5.0)
    assert closed.value.args[0] == 4401


async def idle_for_a_second() -> None:
    await asyncio.sleep(1.0)  # several idle periods, each answered by a PING


async def busy_for_a_second() -> None:
    for _ in range(3):
        # Other work holds the loop for longer than the watchdog's whole
        # window: Redis stayed quiet meanwhile, but it has not failed.
        time.sleep(0.35)
        await asyncio.sleep(0.15)


@pytest.mark.parametrize("meanwhile", [idle_for_a_second, busy_for_a_second])
async def test_a_quiet_pubsub_connection_is_kept_with_pings_and_never_taken_for_dead(
    redis_url: str,
    redis: Redis,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    meanwhile: Callable[[], Awaitable[None]],
) -> None:
    """Only an unanswered PING counts: a quiet room or a loop that runs late drops nothing."""
    monkeypatch.setattr(bus, "PUBSUB_IDLE_SECONDS", 0.1)
    app = create_app(make_settings(redis_url, tmp_path))
    async with app.test_app():
        ann = await log_in(app, redis, "ann@example.com")
        bob = await log_in(app, redis, "bob@example.com")
        async with ann.socket() as ann_ws, bob.socket() as bob_ws:
            await start(ann_ws)
            await start(bob_ws)
            await meanwhile()
            await send_text(ann_ws, "still connected?", "c1")
            assert (await receive_type(bob_ws, "message"))["text"] == "still connected?"


# -- heartbeat ------------------------------------------------------------------------


async def test_a_ping_is_answered_with_a_pong_on_that_socket_only(
    app: ChatApp, redis: Redis
) -> None:
    ann = await log_in(app, redis, "ann@example.com")
    async with ann.socket() as pinging, ann.socket() as other:
        await start(pinging, join=False)
        await start(other, join=False)
        await pinging.send_json({"type": "ping"})
        assert await receive_type(pinging, "pong") == {"type": "pong"}
        # The other tab hears nothing but presence: a request it can tell apart.
        await other.send_json({"type": "history", "room": "general"})
        assert (await receive_type(other, "history"))["messages"] == []


async def test_pings_do_not_count_against_the_send_limit(
    redis_url: str, redis: Redis, tmp_path: Path
) -> None:
    app = create_app(make_settings(redis_url, tmp_path, messages_per_minute=1))
    async with app.test_app():
        ann = await log_in(app, redis, "ann@example.com")
        async with ann.socket() as ws:
            await start(ws, join=False)
            for _ in range(3):
                await ws.send_json({"type": "ping"})
                assert await receive_type(ws, "pong") == {"type": "pong"}
                await asyncio.sleep(0.3)  # past the pong interval: each one answered
            assert (await send_text(ws, "still allowed", "c-1"))["text"] == "still allowed"


async def test_a_ping_flood_gets_a_few_pongs_not_one_each(app: ChatApp, redis: Redis) -> None:
    ann = await log_in(app, redis, "ann@example.com")
    async with ann.socket() as ws:
        await start(ws, join=False)
        for _ in range(200):
            await ws.send_json({"type": "ping"})
        # A request after the flood: its answer comes after every pong sent for it.
        await ws.send_json({"type": "history", "room": "general"})
        pongs = 0
        while (frame := await receive(ws))["type"] != "history":
            assert frame["type"] in {"pong", "presence"}, frame
            pongs += frame["type"] == "pong"
        assert 1 <= pongs < 20


# -- presence -------------------------------------------------------------------------


async def test_presence_is_announced_once_per_user_not_per_tab(app: ChatApp, redis: Redis) -> None:
    ann = await log_in(app, redis, "ann@example.com")
    bob = await log_in(app, redis, "bob@example.com")
    cid = await log_in(app, redis, "cid@example.com")

    async def next_presence(ws: object) -> tuple[str, str]:
        while True:
            frame = await receive(ws)  # type: ignore[arg-type]
            if frame["type"] == "presence":
                assert set(frame["user"]) == {"id", "name"}
                assert frame["room"] == "general"
                return frame["user"]["name"], frame["status"]

    async with ann.socket() as watcher:
        ready = await start(watcher, join=False)
        # Her own first tab: in `ready` at once; its announcement follows only if
        # it was received after `ready` went out (before, `ready` reflects it).
        assert [user["name"] for user in ready["online"]] == ["ann"]
        async with bob.socket() as bob1:
            await start(bob1, join=False)
            news = await next_presence(watcher)
            if news == ("ann", "online"):
                news = await next_presence(watcher)
            assert news == ("bob", "online")
            async with bob.socket() as bob2:
                await start(bob2, join=False)
                async with cid.socket() as cid1:
                    await start(cid1, join=False)
                    # bob's second tab announced nothing: the next news is cid.
                    assert await next_presence(watcher) == ("cid", "online")
                assert await next_presence(watcher) == ("cid", "offline")
            async with cid.socket() as cid2:
                await start(cid2, join=False)
                # Closing bob's second tab announced nothing either.
                assert await next_presence(watcher) == ("cid", "online")
            assert await next_presence(watcher) == ("cid", "offline")
        assert await next_presence(watcher) == ("bob", "offline")


# -- Redis outage ---------------------------------------------------------------------


@pytest.fixture
async def own_redis(tmp_path: Path) -> AsyncIterator[RedisServer]:
    server = RedisServer(tmp_path / "redis", appendonly=True).start()
    try:
        yield server
    finally:
        server.stop()


async def test_losing_redis_closes_sockets_1011_and_rejoining_loses_nothing(
    own_redis: RedisServer, tmp_path: Path
) -> None:
    app = create_app(make_settings(own_redis.url, tmp_path / "var"))
    redis = Redis.from_url(own_redis.url)
    try:
        async with app.test_app():
            ann = await log_in(app, redis, "ann@example.com")
            async with ann.socket() as ws:
                await start(ws)
                last = (await send_text(ws, "before", "c1"))["id"]
                own_redis.stop()
                with pytest.raises(WebsocketDisconnectError) as closed:
                    while True:
                        await asyncio.wait_for(ws.receive(), 10.0)
                assert closed.value.args[0] == 1011
            async with ann.socket() as ws:
                with pytest.raises(WebsocketResponseError) as refused:
                    await ws.receive()
                assert refused.value.response.status_code == 503
            own_redis.start()
            # A message stored while this worker is still reconnecting.
            async with Redis.from_url(own_redis.url) as fresh:
                posted = await RoomHistory(fresh, 10000).post("general", ann.user, "during", "c2")
                later = posted.id
            await asyncio.wait_for(app.hub.bus.wait_subscribed(), 15)
            async with ann.socket() as ws:
                await receive(ws)
                await ws.send_json({"type": "join", "room": "general", "after": last})
                page = await receive_type(ws, "history")
                assert [m["id"] for m in page["messages"]] == [later]
                assert (await send_text(ws, "after", "c3"))["text"] == "after"
    finally:
        await redis.aclose()
