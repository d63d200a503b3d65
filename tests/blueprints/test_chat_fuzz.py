"""The whole frame grammar, fuzzed against one real socket (Quart's in-process route, a real
Redis): every bad frame gets exactly one `error` frame with a SPEC code, good frames their
answer, the socket stays open, and nothing is logged at ERROR."""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from hypothesis import HealthCheck, assume, example, given, settings
from quart.typing import TestWebsocketConnectionProtocol as Socket
from redis.asyncio import Redis

from quart_chat.app import create_app
from quart_chat.realtime import connection

from ..chatting import WAIT, log_in, send_text, start
from ..conftest import make_settings
from ..frames import MAX_CHARS, SPEC_ERROR_CODES, deep, expected_answer, raw_frames
from .test_chat_input import HOSTILE

SENTINEL = {"type": "send", "room": "general", "text": "", "client_id": "sentinel"}
UNLIMITED = 10**9
# Notices that may come any time, and the `read` a moved marker sends to every tab.
IGNORED = ("presence", "unread", "read")


@pytest.fixture
async def joined(
    redis_url: str, redis: Redis, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> AsyncIterator[Socket]:
    """One socket for every example: bad frames must leave it usable for the next."""
    monkeypatch.setattr(connection, "BACKLOG_REQUESTS_PER_SOCKET", UNLIMITED)
    # Examples come faster than the pong throttle: answer every ping here.
    monkeypatch.setattr(connection, "PONG_INTERVAL_SECONDS", 0.0)
    # Likewise typing (its throttle has its own test, test_chat_typing.py).
    monkeypatch.setattr(connection, "TYPING_INTERVAL_SECONDS", 0.0)
    app = create_app(
        make_settings(
            redis_url,
            tmp_path,
            message_max_chars=MAX_CHARS,
            messages_per_minute=UNLIMITED,
            backlog_requests_per_minute=UNLIMITED,
        )
    )
    async with app.test_app():
        ann = await log_in(app, redis, "ann@example.com")
        async with ann.socket() as ws:
            await start(ws)
            await send_text(ws, "the room is not empty", "first")
            yield ws
            assert (await send_text(ws, "still here", "last"))["text"] == "still here"


async def answers(ws: Socket, raw: str | bytes, want: str) -> list[dict[str, object]]:
    """The frames that answer `raw`: everything before the sentinel's own error, and for
    a new message its echo, which comes through the room (Redis pub/sub), so later."""
    await ws.send(raw)
    await ws.send_json(SENTINEL)
    frames: list[dict[str, object]] = []
    sentinel_seen = False
    while not sentinel_seen or (want == "message" and not frames):
        frame = json.loads(await asyncio.wait_for(ws.receive(), WAIT))
        if frame.get("client_id") == "sentinel":
            sentinel_seen = True
        elif frame["type"] not in IGNORED:
            frames.append(frame)
    return frames


@settings(
    max_examples=300,
    derandomize=True,
    database=None,
    deadline=None,
    suppress_health_check=[
        HealthCheck.function_scoped_fixture,  # one socket across examples, on purpose
        HealthCheck.too_slow,
        HealthCheck.data_too_large,
    ],
)
@given(raw=raw_frames)
@example(raw=deep(2000))
@example(raw='{"type":"typing","room":"general"}')
@example(raw='{"type":"history","room":"general","limit":1}')
@example(raw='{"type":"send","room":"general","text":"\\ud83d\\ude00","client_id":"ok"}')
async def test_fuzzed_frames_get_one_answer_and_leave_the_socket_open(
    joined: Socket, caplog: pytest.LogCaptureFixture, raw: str | bytes
) -> None:
    want = expected_answer(raw)
    assume(want != "skip")
    got = await answers(joined, raw, want)
    if want == "none":
        assert got == []
    elif want == "ok?":
        assert [frame["type"] for frame in got] in ([], ["ok"])
    elif want == "error":
        assert len(got) == 1 and got[0]["type"] == "error", got
        assert got[0]["code"] in SPEC_ERROR_CODES
        assert got[0]["message"]
    else:
        assert [frame["type"] for frame in got] == [want]
    assert [r.getMessage() for r in caplog.records if r.levelno >= logging.ERROR] == []


@pytest.mark.parametrize(("frame", "code", "client_id"), HOSTILE)
async def test_the_known_hostile_frames_are_in_the_fuzzers_grammar(
    frame: str, code: str, client_id: str | None
) -> None:
    assert expected_answer(frame) == "error"
