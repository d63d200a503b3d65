"""Dead peers are closed: a client that stops answering (a laptop that slept) goes offline.

Against a real `quart-chat serve`: a raw TCP client completes the WebSocket
handshake, joins, and then neither reads nor writes again, like a peer that
vanished without a FIN (the kernel still acknowledges, as it would for a
stopped process). A client that pings stays.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import json
import os

from redis.asyncio import Redis
from websockets.asyncio.client import ClientConnection

from bench.wsclient import encode_frame

from .servers import ChatServer
from .twoworkers import (
    Person,
    chat_server_fixture,
    log_in,
    receive,
    redis_client_fixture,
    redis_server_fixture,
)

IDLE_TIMEOUT_SECONDS = 2.0
CLOSE_IDLE = (4408).to_bytes(2, "big")


redis_server = redis_server_fixture("hb-redis")
server = chat_server_fixture("hb-chat", CHAT_WS_IDLE_TIMEOUT_SECONDS=str(IDLE_TIMEOUT_SECONDS))
redis = redis_client_fixture()


async def open_then_go_silent(
    person: Person,
) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    """Handshake, read `ready`, join; then never read or write again. The connection
    stays open on this side (keep the writer referenced: collecting it closes it)."""
    port = person.server.port
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    key = base64.b64encode(os.urandom(16)).decode()
    writer.write(
        f"GET /ws HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nUpgrade: websocket\r\n"
        f"Connection: Upgrade\r\nSec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n"
        f"Cookie: {person.cookie}\r\n\r\n".encode()
    )
    head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 15)
    assert head.startswith(b"HTTP/1.1 101"), head
    first = await asyncio.wait_for(reader.read(4096), 15)
    assert b'"type":"ready"' in first, first
    writer.write(encode_frame(json.dumps({"type": "join", "room": "general"}).encode()))
    await writer.drain()
    return reader, writer


async def presence_of(ws: ClientConnection, user_id: str, timeout: float) -> str:
    """The next presence status announced for this user."""
    async with asyncio.timeout(timeout):
        while True:
            frame = await receive(ws, timeout)
            if frame["type"] == "presence" and frame["user"]["id"] == user_id:
                return str(frame["status"])


async def keep_pinging(ws: ClientConnection) -> None:
    with contextlib.suppress(Exception):
        while True:
            await ws.send(json.dumps({"type": "ping"}))
            await asyncio.sleep(IDLE_TIMEOUT_SECONDS / 4)


async def test_a_silent_peer_is_closed_and_goes_offline_while_a_pinging_one_stays(
    server: ChatServer, redis: Redis
) -> None:
    ann, bob = await log_in(redis, server), await log_in(redis, server)
    bob_ws = await bob.open()
    pinger = asyncio.create_task(keep_pinging(bob_ws))
    try:
        silent, silent_writer = await open_then_go_silent(ann)
        assert await presence_of(bob_ws, ann.user_id, 15) == "online"
        # Within the timeout and one sweep (a quarter of it), with slack for a busy machine.
        assert await presence_of(bob_ws, ann.user_id, IDLE_TIMEOUT_SECONDS * 5) == "offline"
        # What the peer would have read, had it been there: a close frame with 4408.
        sent = await asyncio.wait_for(silent.read(1 << 20), 5)
        assert b"\x88\x02" + CLOSE_IDLE in sent
        # And the server let go of the connection: it does not wait forever for
        # a closing handshake from a peer that is gone.
        while await asyncio.wait_for(silent.read(1 << 20), 30):
            pass
        # Bob, who pinged all along, still has a working socket.
        frames = []
        while not frames or frames[-1]["type"] != "pong":
            frames.append(await receive(bob_ws, 5))
        assert bob_ws.close_code is None
        silent_writer.close()
    finally:
        pinger.cancel()
        await bob_ws.close()
