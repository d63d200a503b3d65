"""Socket caps across the workers of a real `quart-chat serve --workers 2`, behind one trusted
proxy hop (X-Forwarded-For), with real WebSocket clients; and the 64 KiB frame limit."""

from __future__ import annotations

import asyncio
import json
from contextlib import AsyncExitStack

import pytest
from redis.asyncio import Redis
from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed, InvalidStatus

from .servers import ChatServer
from .twoworkers import (
    Person,
    chat_server_fixture,
    log_in,
    redis_client_fixture,
    redis_server_fixture,
    worker,
)

WAIT = 15.0
PER_ADDRESS = 30


redis_server = redis_server_fixture("caps-redis")
server = chat_server_fixture(
    "caps-chat",
    CHAT_TRUSTED_PROXY_HOPS="1",
    CHAT_MAX_SOCKETS_PER_ADDRESS=str(PER_ADDRESS),
    # CHAT_MAX_SOCKETS_PER_USER is left at its default, 20.
)
redis = redis_client_fixture()


async def open_from(person: Person, address: str) -> ClientConnection:
    ws = await connect(
        person.server.base_url.replace("http", "ws") + "/ws",
        additional_headers={"Cookie": person.cookie, "X-Forwarded-For": address},
        proxy=None,
        open_timeout=WAIT,
    )
    ready = json.loads(await asyncio.wait_for(ws.recv(), WAIT))
    assert ready["type"] == "ready"
    return ws


async def refused(person: Person, address: str) -> InvalidStatus:
    with pytest.raises(InvalidStatus) as refusal:
        await open_from(person, address)
    return refusal.value


async def eventually_open(person: Person, address: str) -> ClientConnection:
    """The close is written to Redis by the worker's background task a moment later."""
    for _ in range(100):
        try:
            return await open_from(person, address)
        except InvalidStatus:
            await asyncio.sleep(0.05)
    raise AssertionError("a closed socket never made room for a new one")


async def test_the_21st_socket_of_a_user_is_refused_across_workers(
    server: ChatServer, redis: Redis
) -> None:
    ann = await log_in(redis, server)
    async with AsyncExitStack() as stack:
        sockets = [await open_from(ann, "198.51.100.1") for _ in range(20)]
        for ws in sockets:
            stack.push_async_callback(ws.close)
        workers = {worker(ws) for ws in sockets}
        # Both workers must take part, holding sockets or refusing one (the kernel
        # may hand most connections to one of them).
        for _ in range(100):
            response = (await refused(ann, "198.51.100.2")).response
            assert response.status_code == 429
            assert response.headers["Retry-After"] == "30"
            assert json.loads(response.body) == {"error": "too_many_sockets", "retry_after": 30}
            workers.add(response.headers["X-Chat-Worker"])
            if len(workers) == 2:
                break
        else:
            raise AssertionError("the kernel never handed a connection to the second worker")
        await sockets[0].close()
        stack.push_async_callback((await eventually_open(ann, "198.51.100.1")).close)
        assert (await refused(ann, "198.51.100.1")).response.status_code == 429


async def test_an_address_over_its_cap_is_refused_and_another_address_is_not(
    server: ChatServer, redis: Redis
) -> None:
    people = [await log_in(redis, server) for _ in range(4)]
    address = "203.0.113.9"
    async with AsyncExitStack() as stack:
        for person in people[:3]:
            for _ in range(PER_ADDRESS // 3):
                stack.push_async_callback((await open_from(person, address)).close)
        refusal = await refused(people[3], address)
        assert refusal.response.status_code == 429
        assert json.loads(refusal.response.body)["error"] == "too_many_sockets_from_address"
        # The proxy's own address is not what counts: another client behind it gets in.
        other = await open_from(people[3], "203.0.113.10")
        await other.close()
        last = await open_from(people[0], "203.0.113.10")
        stack.push_async_callback(last.close)


async def test_frames_up_to_64_kib_are_read_and_bigger_ones_close_1009(
    server: ChatServer, redis: Redis
) -> None:
    ann = await log_in(redis, server)
    ws = await open_from(ann, "198.51.100.50")
    padding = '{"type":"typing","room":"general","pad":"'
    biggest = padding + "x" * (64 * 1024 - len(padding) - 2) + '"}'
    assert len(biggest.encode()) == 64 * 1024
    await ws.send(biggest)
    await ws.send('{"type":"send","room":"general","text":"","client_id":"probe"}')
    answer = json.loads(await asyncio.wait_for(ws.recv(), WAIT))
    while answer["type"] == "presence":
        answer = json.loads(await asyncio.wait_for(ws.recv(), WAIT))
    assert (answer["type"], answer["client_id"]) == ("error", "probe")  # typing has no answer
    await ws.send(biggest[:-2] + 'x"}')
    with pytest.raises(ConnectionClosed):
        while True:
            await asyncio.wait_for(ws.recv(), WAIT)
    assert ws.close_code == 1009
