"""`quart-chat serve --workers 2` as a real process, real WebSocket clients, a Redis we can restart.

Proves what one process cannot: messages cross workers, a logout on one worker
closes sockets on the other, resume after a dropped connection and after a
Redis restart loses nothing, and one slow reader cannot hold up the others.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import secrets
import shutil
import signal
import socket
from pathlib import Path
from typing import Any

import pytest
from redis.asyncio import Redis
from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed, InvalidStatus

from quart_chat import keys
from quart_chat.models.sessions import revoke_session

from .servers import Caddy, ChatServer, RedisServer, worker_pids
from .twoworkers import (
    WAIT,
    Person,
    chat_server_fixture,
    close_code,
    log_in,
    on_two_workers,
    receive,
    redis_client_fixture,
    redis_server_fixture,
    server_env,
    worker,
)

redis_server = redis_server_fixture("mw-redis", appendonly=True)
server = chat_server_fixture("mw-chat")


async def _clear_general(client: Redis) -> None:
    await client.delete(keys.room_history("general"))


redis = redis_client_fixture(_clear_general)


async def receive_type(ws: ClientConnection, kind: str) -> dict[str, Any]:
    while True:
        frame = await receive(ws)
        if frame["type"] == kind:
            return frame
        assert frame["type"] in ("presence", "unread"), frame


async def join(ws: ClientConnection, after: str | None = None) -> list[str]:
    """Join `general`; the ids of the whole backlog."""
    await ws.send(json.dumps({"type": "join", "room": "general", "after": after}))
    ids: list[str] = []
    while True:
        page = await receive_type(ws, "history")
        ids += [m["id"] for m in page["messages"]]
        if after is None or not page["has_more"]:
            return ids


async def send(ws: ClientConnection, text: str, client_id: str) -> None:
    frame = {"type": "send", "room": "general", "text": text, "client_id": client_id}
    await ws.send(json.dumps(frame))


async def drain(ws: ClientConnection) -> None:
    """Read and drop everything, as a browser tab does with its own echoes."""
    with contextlib.suppress(ConnectionClosed):
        async for _ in ws:
            pass


async def stored_ids(redis: Redis) -> list[str]:
    return [entry[0].decode() for entry in await redis.xrange(keys.room_history("general"))]


async def test_messages_cross_workers_in_stream_order_and_retries_post_once(
    server: ChatServer, redis: Redis
) -> None:
    ann, bob = await log_in(redis, server), await log_in(redis, server)
    ann_ws, bob_ws = await on_two_workers(ann, bob)
    async with ann_ws, bob_ws:
        await join(ann_ws)
        await join(bob_ws)
        for n in range(30):
            await send(ann_ws, f"ann {n}", f"a{n}")
            await send(bob_ws, f"bob {n}", f"b{n}")
        seen_by_ann = [await receive_type(ann_ws, "message") for _ in range(60)]
        seen_by_bob = [await receive_type(bob_ws, "message") for _ in range(60)]
        order = await stored_ids(redis)
        assert [m["id"] for m in seen_by_ann] == order
        assert [m["id"] for m in seen_by_bob] == order
        texts = {f"{who} {n}" for who in ("ann", "bob") for n in range(30)}
        assert {m["text"] for m in seen_by_bob} == texts

        # A retry of an acknowledged send (say, after a lost ack) posts nothing new.
        original = next(m for m in seen_by_ann if m["client_id"] == "a0")
        await send(ann_ws, "ann 0", "a0")
        assert await receive_type(ann_ws, "message") == original
        assert await redis.xlen(keys.room_history("general")) == 60
    # The workers wrote those frames to the sockets' transports themselves
    # (realtime/wire.py); a Hypercorn that moved its internals says so here.
    assert "served through the ASGI send" not in server.log()


async def test_logout_on_one_worker_closes_the_session_on_every_worker_with_4401(
    server: ChatServer, redis: Redis
) -> None:
    ann = await log_in(redis, server)
    tab1, tab2 = await on_two_workers(ann, ann)
    loop = asyncio.get_running_loop()
    started = loop.time()
    await revoke_session(redis, ann.session_id)
    codes = await asyncio.gather(close_code(tab1), close_code(tab2))
    assert codes == [4401, 4401]
    assert loop.time() - started < 5  # the contract is one second; this is a loaded CI box
    with pytest.raises(InvalidStatus) as refused:
        await ann.open()
    assert refused.value.response.status_code == 401


async def test_handshakes_without_a_session_or_from_another_site_are_refused(
    server: ChatServer, redis: Redis
) -> None:
    url = server.base_url.replace("http", "ws") + "/ws"
    with pytest.raises(InvalidStatus) as refused:
        await connect(url, proxy=None)
    assert refused.value.response.status_code == 401
    ann = await log_in(redis, server)
    with pytest.raises(InvalidStatus) as refused:
        await ann.open(origin="https://evil.example")  # type: ignore[arg-type]
    assert refused.value.response.status_code == 403
    ws = await ann.open(origin=server.base_url)  # type: ignore[arg-type]
    await ws.close()


async def test_bad_frames_get_errors_and_oversized_frames_close_1009(
    server: ChatServer, redis: Redis
) -> None:
    ann = await log_in(redis, server)
    async with await ann.open() as ws:
        await join(ws)
        for bad in ["nonsense", '{"type": "fly"}', '{"type": "send", "room": "general"}']:
            await ws.send(bad)
            assert (await receive_type(ws, "error"))["code"] == "bad_request"
        await send(ws, "x" * 4001, "long")
        assert (await receive_type(ws, "error"))["code"] == "too_long"
        await send(ws, "still fine", "ok")
        assert (await receive_type(ws, "message"))["text"] == "still fine"
        await ws.send("x" * (65 * 1024))
        assert await close_code(ws) == 1009


async def test_resume_after_a_dropped_connection_has_no_gap_and_no_duplicate(
    server: ChatServer, redis: Redis
) -> None:
    ann, bob = await log_in(redis, server), await log_in(redis, server)
    sender = await bob.open()
    reader = await ann.open()
    await join(reader)
    total = 400

    async def keep_sending() -> None:
        for n in range(total):
            await send(sender, f"bob {n}", f"b{n}")
            await asyncio.sleep(0.002)

    sending = asyncio.create_task(keep_sending())
    draining = asyncio.create_task(drain(sender))
    seen = [(await receive_type(reader, "message"))["id"] for _ in range(50)]
    reader.transport.abort()  # the network drops: no close handshake
    await asyncio.sleep(0.2)  # miss a few messages
    reader = await ann.open()
    seen += await join(reader, after=seen[-1])
    while len(seen) < total:
        seen.append((await receive_type(reader, "message"))["id"])
    await sending
    assert seen == await stored_ids(redis)
    await reader.close()
    await sender.close()
    await draining


async def test_a_slow_reader_is_closed_with_1013_while_others_keep_receiving(
    server: ChatServer, redis: Redis
) -> None:
    ann, bob, cid = [await log_in(redis, server) for _ in range(3)]
    # A tiny receive buffer and a client that stops reading: the server's
    # writes to it block, its outbox fills, and it must be let go.
    # (Set before connecting: shrinking the buffer of an open connection can
    # leave the loopback TCP window stuck shut for good.)
    raw = socket.socket()
    raw.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    raw.connect(("127.0.0.1", server.port))
    slow = await cid.open(sock=raw, max_queue=1, compression=None, ping_interval=None)
    await join(slow)
    normal = await ann.open()
    await join(normal)
    sender = await bob.open()
    draining = asyncio.create_task(drain(sender))
    sent = 0
    received = 0
    text = secrets.token_urlsafe(3000)[:3000]
    let_go_before = server.log().count("cannot keep up")
    while server.log().count("cannot keep up") == let_go_before:
        assert sent < 5000, "the slow reader was never closed"
        for _ in range(100):
            await send(sender, text, f"s{sent}")
            sent += 1
        # The normal reader keeps up with every message while the slow one stalls.
        while received < sent:
            assert (await receive_type(normal, "message"))["client_id"] == f"s{received}"
            received += 1
        await asyncio.sleep(0.1)
    assert await close_code(slow, timeout=60) == 1013
    await send(sender, "after", "after")
    assert (await receive_type(normal, "message"))["text"] == "after"
    await normal.close()
    await sender.close()
    await draining


async def test_a_redis_restart_mid_chat_loses_no_stored_message(
    server: ChatServer, redis_server: RedisServer, redis: Redis
) -> None:
    ann, bob = await log_in(redis, server), await log_in(redis, server)
    reader = await ann.open()
    sender = await bob.open()
    await join(reader)
    await join(sender)
    for n in range(20):
        await send(sender, f"before {n}", f"before{n}")
    seen = [(await receive_type(reader, "message"))["id"] for _ in range(20)]
    redis_server.restart()
    assert await close_code(reader) == 1011
    assert await close_code(sender) == 1011

    # Both come back as soon as the workers have reconnected; bob re-sends with
    # the same client_ids, as the browser does for unacknowledged messages.
    sender = await bob.open(patience=30)
    await join(sender, after=seen[-1])
    for n in range(20):
        await send(sender, f"after {n}", f"after{n}")
    for n in range(5):
        await send(sender, f"after {n}", f"after{n}")  # retries: echoed, not posted
    draining = asyncio.create_task(drain(sender))
    reader = await ann.open(patience=30)
    seen += await join(reader, after=seen[-1])
    while len(seen) < 40:
        seen.append((await receive_type(reader, "message"))["id"])
    async with Redis.from_url(redis_server.url) as fresh:  # the old connection died
        assert seen == await stored_ids(fresh)
        assert await fresh.xlen(keys.room_history("general")) == 40
    await reader.close()
    await sender.close()
    await draining


async def test_permessage_deflate_is_declined_unless_enabled(
    server: ChatServer,
    redis_server: RedisServer,
    redis: Redis,
    tmp_path_factory: pytest.TempPathFactory,
) -> None:
    """Browsers always offer compression; the server agrees only with CHAT_WS_COMPRESSION."""

    async def chat_through(ws: ClientConnection, text: str) -> str:
        await join(ws)
        await send(ws, text, secrets.token_hex(4))
        return str((await receive_type(ws, "message"))["text"])

    ann = await log_in(redis, server)
    # Patience: a worker may still be resubscribing after the Redis restart test.
    async with await ann.open(patience=30, compression="deflate") as ws:
        assert ws.response is not None
        assert "Sec-WebSocket-Extensions" not in ws.response.headers
        assert await chat_through(ws, "plain " * 50) == "plain " * 50

    compressing = ChatServer(
        tmp_path_factory.mktemp("mw-deflate"),
        env=server_env(redis_server, CHAT_WS_COMPRESSION="true"),
        workers=1,
    ).start()
    try:
        bob = await log_in(redis, compressing)
        async with await bob.open(compression="deflate") as ws:
            assert ws.response is not None
            assert ws.response.headers["Sec-WebSocket-Extensions"].startswith("permessage-deflate")
            assert await chat_through(ws, "squeezed " * 50) == "squeezed " * 50
    finally:
        compressing.stop()


async def test_a_killed_worker_is_replaced_while_chat_goes_on(
    redis_server: RedisServer, redis: Redis, tmp_path_factory: pytest.TempPathFactory
) -> None:
    chat = ChatServer(
        tmp_path_factory.mktemp("mw-crash"), env=server_env(redis_server), workers=2
    ).start()
    try:
        ann, bob = await log_in(redis, chat), await log_in(redis, chat)
        ann_ws, bob_ws = await on_two_workers(ann, bob)
        before = {worker(ann_ws), worker(bob_ws)}
        os.kill(worker_pids(chat)[0], signal.SIGKILL)
        # One of the two sockets was on the dead worker; the other chats on.
        done, pending = await asyncio.wait(
            [asyncio.create_task(close_code(ws)) for ws in (ann_ws, bob_ws)],
            return_when=asyncio.FIRST_COMPLETED,
        )
        for task in pending:
            task.cancel()
        await asyncio.gather(*pending, return_exceptions=True)
        assert [task.result() for task in done] == [1006]
        survivor = bob_ws if ann_ws.close_code is not None else ann_ws
        await join(survivor)
        await send(survivor, "still here", "still")
        assert (await receive_type(survivor, "message"))["text"] == "still here"
        async with asyncio.timeout(WAIT):
            while "was killed by SIGKILL; starting a new one" not in chat.log():
                await asyncio.sleep(0.05)

        # The dead worker is replaced: two workers serve again, one of them new,
        # and messages cross between them.
        cid = await log_in(redis, chat)
        async with asyncio.timeout(60):
            while True:
                ws = await cid.open(patience=30)
                if worker(ws) not in before:
                    break
                await ws.close()
                await asyncio.sleep(0.1)
        async with ws:
            await join(ws)
            await send(survivor, "to the new worker", "new")
            assert (await receive_type(ws, "message"))["text"] == "to the new worker"
        await survivor.close()
        assert len(worker_pids(chat)) == 2
    finally:
        assert chat.stop() == 0, chat.log()


async def presence_of(redis: Redis, worker_id: str) -> tuple[float | None, int]:
    """The worker's heartbeat expiry and how many users it counts, as Redis has them."""
    return (
        await redis.zscore(keys.PRESENCE_WORKERS, worker_id),
        await redis.hlen(keys.presence_worker(worker_id)),  # type: ignore[misc]
    )


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT])
async def test_stopping_closes_every_socket_with_1012_and_withdraws_presence(
    redis_server: RedisServer,
    redis: Redis,
    tmp_path_factory: pytest.TempPathFactory,
    sig: int,
) -> None:
    chat = ChatServer(
        tmp_path_factory.mktemp("mw-stop"), env=server_env(redis_server), workers=2
    ).start()
    people = [await log_in(redis, chat) for _ in range(3)]
    first, second = await on_two_workers(people[0], people[1])
    sockets = [first, second] + [await person.open() for person in people for _ in range(3)]
    workers = {worker(ws) for ws in sockets}
    assert len(workers) == 2
    for ws in sockets[:4]:
        await join(ws)
    for worker_id in workers:

        async def counted(worker_id: str = worker_id) -> bool:
            return (await presence_of(redis, worker_id))[1] > 0

        while not await counted():
            await asyncio.sleep(0.05)
    pids = worker_pids(chat)
    closing = [asyncio.create_task(close_code(ws)) for ws in sockets]
    try:
        assert await asyncio.to_thread(chat.stop, sig) == 0, chat.log()
    finally:
        chat.stop()
    assert await asyncio.gather(*closing) == [1012] * len(sockets)
    for worker_id in workers:
        assert await presence_of(redis, worker_id) == (None, 0)
    assert not any(Path(f"/proc/{pid}").exists() for pid in pids)


async def read_room(ws: ClientConnection, after: str, until: str) -> list[dict[str, Any]]:
    """Join `general` after `after` and read until the message with client_id `until`
    or until the server closes the socket."""
    seen: list[dict[str, Any]] = []
    with contextlib.suppress(ConnectionClosed):
        await ws.send(json.dumps({"type": "join", "room": "general", "after": after}))
        while True:
            page = await receive_type(ws, "history")
            seen += page["messages"]
            if not page["has_more"]:
                break
        while not seen or seen[-1]["client_id"] != until:
            seen.append(await receive_type(ws, "message"))
    return seen


async def test_a_rolling_restart_behind_caddy_loses_repeats_and_refuses_nothing(
    redis_server: RedisServer, redis: Redis, tmp_path_factory: pytest.TempPathFactory
) -> None:
    """Two servers share one Redis behind Caddy; one is stopped and started again
    while a sender posts and readers on both servers follow the room."""
    if shutil.which("caddy") is None:
        reason = "needs caddy on PATH (apt-get install caddy)"
        if os.environ.get("CI"):
            pytest.fail(reason)
        pytest.skip(reason)
    one, two = (
        ChatServer(tmp_path_factory.mktemp(f"mw-roll-{name}"), env=server_env(redis_server))
        for name in ("one", "two")
    )
    proxy = Caddy(tmp_path_factory.mktemp("mw-roll-caddy"), [one.port, two.port])
    close_codes: list[int | None] = []
    restarted = asyncio.Event()
    try:
        await asyncio.gather(asyncio.to_thread(one.start), asyncio.to_thread(two.start))
        proxy.start()
        eve = await log_in(redis, proxy)
        async with await eve.open() as ws:
            await send(ws, "before the restart", "start")
            start = (await receive_type(ws, "message"))["id"]

        async def follow(person: Person) -> list[str]:
            seen: list[dict[str, Any]] = []
            while not seen or seen[-1]["client_id"] != "done":
                ws = await person.open(patience=30)
                seen += await read_room(ws, seen[-1]["id"] if seen else start, until="done")
                if ws.close_code is not None:
                    close_codes.append(ws.close_code)
                await ws.close()
            return [message["id"] for message in seen]

        async def post() -> list[str]:
            """Send until the restart is over and a little after, resending what was
            not acknowledged with the same client_id, as the page does."""
            sent: list[str] = []
            last: int | None = None  # how many to send in all, once the restart is over
            ws = await eve.open(patience=30)
            while True:
                if restarted.is_set() and last is None:
                    last = len(sent) + 20
                client_id = "done" if len(sent) == last else f"m{len(sent)}"
                try:
                    await send(ws, client_id, client_id)
                    while (await receive_type(ws, "message"))["client_id"] != client_id:
                        pass
                except ConnectionClosed:
                    close_codes.append(ws.close_code)
                    ws = await eve.open(patience=30)
                    continue
                sent.append(client_id)
                if client_id == "done":
                    await ws.close()
                    return sent
                await asyncio.sleep(0.02)

        readers = [await log_in(redis, proxy) for _ in range(4)]
        following = [asyncio.create_task(follow(person)) for person in readers]
        posting = asyncio.create_task(post())
        await asyncio.sleep(0.5)
        assert await asyncio.to_thread(one.stop) == 0, one.log()
        await asyncio.to_thread(one.start)
        restarted.set()
        sent = await posting
        seen_by_readers = await asyncio.gather(*following)
    finally:
        proxy.stop()
        two.stop()
        one.stop()

    stored = [
        (entry_id.decode(), fields[b"client_id"].decode())
        for entry_id, fields in await redis.xrange(keys.room_history("general"), min=f"({start}")
    ]
    assert [client_id for _, client_id in stored] == sent  # each exactly once, in order
    for seen in seen_by_readers:
        assert seen == [entry_id for entry_id, _ in stored]
    # Everyone on the restarted server was told to reconnect, and did so at the
    # first try: nobody saw an error.
    assert close_codes
    assert set(close_codes) == {1012}
    assert [person.failed_handshakes for person in [eve, *readers]] == [0] * 5
