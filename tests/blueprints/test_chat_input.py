"""Hostile WebSocket input (issue 12): every bad frame gets one `error` frame, the socket stays
open, nothing is logged at ERROR, and good frames still work afterwards.

The corpus below holds the frames that once ended a socket with 1011 or logged
a traceback; tests/blueprints/test_chat_fuzz.py explores the rest of the grammar.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from redis.asyncio import Redis

from quart_chat import keys
from quart_chat.app import create_app
from quart_chat.base import ChatApp
from quart_chat.realtime.connection import ChatConnection
from quart_chat.realtime.protocol import FrameError, History, Send

from ..chatting import log_in, receive_type, send_text, start
from ..conftest import make_settings
from ..servers import RedisServer

DEEP = 2000
# (frame, error code, client_id echoed on the error)
HOSTILE = [
    # Nested past the JSON decoder's recursion limit: once a RecursionError and 1011.
    ("[" * DEEP + "]" * DEEP, "bad_request", None),
    ('{"a":' * DEEP + "1" + "}" * DEEP, "bad_request", None),
    ("[" * 30000, "bad_request", None),
    (
        '{"type":"join","room":"general","after":' + "[" * DEEP + "]" * DEEP + "}",
        "bad_request",
        None,
    ),
    (
        '{"type":"send","room":"general","client_id":"c","text":' + "[" * DEEP + "]" * DEEP + "}",
        "bad_request",
        None,  # refused before it is decoded: the client_id is not known
    ),
    ("[" * 65 + "]" * 65, "bad_request", None),
    # Lone surrogates: once a UnicodeEncodeError storing the message.
    ('{"type":"send","room":"general","text":"\\ud800","client_id":"c"}', "bad_request", "c"),
    ('{"type":"send","room":"general","text":"a\\udfffb","client_id":"c"}', "bad_request", "c"),
    ('{"type":"send","room":"general","text":"hi","client_id":"\\ud800"}', "bad_request", None),
    ('{"type":"send","room":"general","text":"hi","client_id":"\\udc00x"}', "bad_request", None),
    ('{"type":"join","room":"general\\ud800"}', "bad_request", None),
    ('{"type":"history","room":"general","before":"\\ud800"}', "bad_request", None),
    ('{"type":"dance\\ud800"}', "bad_request", None),
    ('{"type":"typing","room":"general","x\\ud800":1}', "bad_request", None),
    # Stream ids Redis refuses: once reported as "storage unavailable".
    ('{"type":"history","room":"general","before":"99999999999999999999-0"}', "bad_request", None),
    ('{"type":"history","room":"general","before":"1-99999999999999999999"}', "bad_request", None),
    ('{"type":"history","room":"general","before":"0-0"}', "bad_request", None),
    ('{"type":"join","room":"general","after":"18446744073709551616-0"}', "bad_request", None),
    (
        '{"type":"join","room":"general","after":"18446744073709551615-18446744073709551615"}',
        "bad_request",
        None,
    ),
]


def errors_logged(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.levelno >= logging.ERROR]


@pytest.mark.parametrize(("frame", "code", "client_id"), HOSTILE)
async def test_hostile_frames_get_one_error_and_the_socket_stays_usable(
    app: ChatApp,
    redis: Redis,
    caplog: pytest.LogCaptureFixture,
    frame: str,
    code: str,
    client_id: str | None,
) -> None:
    ann = await log_in(app, redis, "ann@example.com")
    async with ann.socket() as ws:
        await start(ws)
        await ws.send(frame)
        error = await receive_type(ws, "error")
        assert (error["code"], error.get("client_id")) == (code, client_id)
        assert error["message"]
        # The very next frame is the answer to this one: there was exactly one error.
        assert (await send_text(ws, "still here", "c-after"))["text"] == "still here"
    assert errors_logged(caplog) == []
    assert [e[1][b"text"] for e in await redis.xrange(keys.room_history("general"))] == [
        b"still here"
    ]


async def test_a_surrogate_pair_is_a_character_not_an_error(app: ChatApp, redis: Redis) -> None:
    ann = await log_in(app, redis, "ann@example.com")
    async with ann.socket() as ws:
        await start(ws)
        await ws.send('{"type":"send","room":"general","text":"\\ud83d\\ude00","client_id":"e"}')
        assert (await receive_type(ws, "message"))["text"] == "\N{GRINNING FACE}"


async def test_a_rate_limited_user_with_a_surrogate_client_id_gets_an_error_frame(
    redis_url: str, redis: Redis, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """Echoing its client_id in `rate_limited` once failed in the send path: 1011, a traceback."""
    app = create_app(make_settings(redis_url, tmp_path, messages_per_minute=1))
    async with app.test_app():
        ann = await log_in(app, redis, "ann@example.com")
        async with ann.socket() as ws:
            await start(ws)
            await send_text(ws, "one", "c1")
            await ws.send('{"type":"send","room":"general","text":"two","client_id":"\\ud800"}')
            error = await receive_type(ws, "error")
            assert error["code"] == "bad_request"
            assert "client_id" not in error
            await ws.send_json({"type": "send", "room": "general", "text": "3", "client_id": "c3"})
            error = await receive_type(ws, "error")
            assert (error["code"], error["client_id"]) == ("rate_limited", "c3")
    assert errors_logged(caplog) == []


@pytest.fixture
async def own_redis(tmp_path: Path) -> AsyncIterator[RedisServer]:
    server = RedisServer(tmp_path / "redis", appendonly=False).start()
    try:
        yield server
    finally:
        server.stop()


async def test_redis_refusing_a_request_is_a_bad_request_and_an_outage_is_unavailable(
    app: ChatApp, redis: Redis, own_redis: RedisServer, tmp_path: Path
) -> None:
    """Frames built past the parser: what a gap in its checks would send to Redis."""
    ann = await log_in(app, redis, "ann@example.com")
    connection = ChatConnection(app.hub, ann.user, ann.session_id, ignore_send, ignore_receive)
    with pytest.raises(FrameError) as refused:
        await connection._handle(History("general", "0-0", 10))  # Redis: ERR invalid end ID
    assert refused.value.code == "bad_request"

    outage_app = create_app(make_settings(own_redis.url, tmp_path / "outage"))
    async with outage_app.test_app():
        connection = ChatConnection(
            outage_app.hub, ann.user, ann.session_id, ignore_send, ignore_receive
        )
        own_redis.stop()
        with pytest.raises(FrameError) as lost:
            await connection._handle(History("general", None, 10))
        assert lost.value.code == "unavailable"
        with pytest.raises(FrameError) as lost:
            await connection._handle(Send("general", "hi", "c1"))
        assert (lost.value.code, lost.value.client_id) == ("unavailable", "c1")


async def ignore_send(message: object) -> None:
    pass


async def ignore_receive() -> dict[str, str]:
    return {"type": "websocket.disconnect"}
