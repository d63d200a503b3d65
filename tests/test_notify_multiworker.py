"""Notification emails across `quart-chat serve --workers 2` with a real SMTP server:
both workers run the notifier, and a DM to someone away still makes exactly one email."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Iterator
from typing import Any

import pytest
from redis.asyncio import Redis
from websockets.asyncio.client import ClientConnection

from .servers import ChatServer, RedisServer
from .smtp import SmtpSink
from .twoworkers import (
    log_in,
    on_two_workers,
    receive,
    redis_client_fixture,
    redis_server_fixture,
    server_env,
)

redis_server = redis_server_fixture("notify-redis")
redis = redis_client_fixture()


@pytest.fixture(scope="module")
def server(
    redis_server: RedisServer, smtp_sink: SmtpSink, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[ChatServer]:
    env = server_env(
        redis_server,
        **smtp_sink.env(),
        CHAT_NOTIFY_EMAIL_AFTER_MINUTES="0.02",
        CHAT_SMTP_TIMEOUT_SECONDS="2",
    )
    chat = ChatServer(tmp_path_factory.mktemp("notify-chat"), env=env, workers=2).start()
    try:
        yield chat
    finally:
        chat.stop()


async def answer(ws: ClientConnection, ref: str) -> dict[str, Any]:
    while True:
        frame = await receive(ws)
        if frame.get("ref") == ref or frame.get("client_id") == ref:
            return frame


async def test_a_dm_to_someone_away_makes_exactly_one_email_with_two_workers(
    server: ChatServer, redis: Redis, smtp_sink: SmtpSink
) -> None:
    ann, bob, cy = [await log_in(redis, server, name) for name in ("ann", "bob", "cy")]
    # Ann and Cy keep sockets on both workers, so both workers are serving.
    ann_ws, cy_ws = await on_two_workers(ann, cy)
    await ann_ws.send(json.dumps({"type": "dm_open", "users": [bob.user_id], "ref": "open"}))
    opened = await answer(ann_ws, "open")
    room = opened["room"]["id"]
    for text in ("first secret", "second secret"):
        frame = {"type": "send", "room": room, "text": text, "client_id": text}
        await ann_ws.send(json.dumps(frame))
        await answer(ann_ws, text)
    message = await asyncio.to_thread(smtp_sink.wait_for_message, "bob@example.com", 1, 30)
    plain = message.get_body(("plain",))
    assert plain is not None
    text = str(plain.get_content())
    assert "2 unread direct messages" in text
    assert "secret" not in text and "ann@example.com" not in text
    # Both workers keep polling; still only the one email.
    await asyncio.sleep(3)
    assert len(smtp_sink.messages_to("bob@example.com")) == 1
    assert smtp_sink.messages_to("ann@example.com") == smtp_sink.messages_to("cy@example.com") == []
    for ws in (ann_ws, cy_ws):
        await ws.close()


async def test_a_dm_seen_while_online_is_emailed_only_after_the_last_socket_closes(
    server: ChatServer, redis: Redis, smtp_sink: SmtpSink
) -> None:
    eve, dan = [await log_in(redis, server, name) for name in ("eve", "dan")]
    eve_ws, dan_ws = await on_two_workers(eve, dan)
    await eve_ws.send(json.dumps({"type": "dm_open", "users": [dan.user_id], "ref": "open"}))
    room = (await answer(eve_ws, "open"))["room"]["id"]
    frame = {"type": "send", "room": room, "text": "psst", "client_id": "psst"}
    await eve_ws.send(json.dumps(frame))
    await answer(eve_ws, "psst")
    # Dan is online well past the delay: no email.
    await asyncio.sleep(3)
    assert smtp_sink.messages_to("dan@example.com") == []
    # His socket closes with the DM unread: the email follows.
    await dan_ws.close()
    message = await asyncio.to_thread(smtp_sink.wait_for_message, "dan@example.com", 1, 30)
    plain = message.get_body(("plain",))
    assert plain is not None and "1 unread direct message" in str(plain.get_content())
    await eve_ws.close()
