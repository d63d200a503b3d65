"""Caps on open sockets per user and per address, in one process against a real Redis.

tests/test_socketcaps_multiworker.py proves the same across two worker processes.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import AsyncIterator
from contextlib import AsyncExitStack
from pathlib import Path

import pytest
from quart.testing import WebsocketResponseError
from redis.asyncio import Redis

from quart_chat import keys
from quart_chat.app import create_app
from quart_chat.base import ChatApp
from quart_chat.socketcaps import SocketCaps, address_key

from .chatting import Person, log_in, receive
from .conftest import make_settings


@pytest.fixture
async def capped(redis_url: str, redis: Redis, tmp_path: Path) -> AsyncIterator[ChatApp]:
    app = create_app(
        make_settings(redis_url, tmp_path, max_sockets_per_user=3, max_sockets_per_address=5)
    )
    async with app.test_app():
        yield app


async def open_socket(stack: AsyncExitStack, person: Person, address: str = "192.0.2.1") -> None:
    """Open a socket from `address` and read `ready`, or raise WebsocketResponseError."""
    ws = await stack.enter_async_context(
        person.client.websocket(
            "/ws", headers={"Cookie": person.cookie}, scope_base={"client": (address, 50000)}
        )
    )
    assert (await receive(ws))["type"] == "ready"


async def refusal(person: Person, address: str = "192.0.2.1") -> tuple[int, dict[str, object], str]:
    async with AsyncExitStack() as stack:
        with pytest.raises(WebsocketResponseError) as refused:
            await open_socket(stack, person, address)
    response = refused.value.response
    body = json.loads(await response.get_data(as_text=True))
    return response.status_code, body, response.headers.get("Retry-After", "")


async def eventually_opens(
    stack: AsyncExitStack, person: Person, address: str = "192.0.2.1"
) -> None:
    """A closed socket is written to Redis by a background task, a moment after it closes."""
    for _ in range(100):
        try:
            await open_socket(stack, person, address)
            return
        except WebsocketResponseError:
            await asyncio.sleep(0.05)
    raise AssertionError("a closed socket never made room for a new one")


async def test_a_user_over_the_cap_is_refused_429_until_a_socket_closes(
    capped: ChatApp, redis: Redis
) -> None:
    ann = await log_in(capped, redis, "ann@example.com")
    bob = await log_in(capped, redis, "bob@example.com")
    async with AsyncExitStack() as stack:
        async with AsyncExitStack() as first:
            await open_socket(first, ann)
            for _ in range(2):
                await open_socket(stack, ann)
            status, body, retry_after = await refusal(ann)
            assert status == 429
            assert body == {"error": "too_many_sockets", "retry_after": 30}
            assert retry_after == "30"
            # Another session of the same user counts too; another user does not.
            other_session = await log_in(capped, redis, "ann@example.com")
            assert (await refusal(other_session))[0] == 429
            await open_socket(stack, bob)
        await eventually_opens(stack, ann)
        assert (await refusal(ann))[0] == 429


async def test_an_address_over_the_cap_is_refused_429(capped: ChatApp, redis: Redis) -> None:
    people = [await log_in(capped, redis, f"p{n}@example.com") for n in range(4)]
    async with AsyncExitStack() as stack:
        for person in people[:2]:
            for _ in range(2):
                await open_socket(stack, person, "2001:db8::1")
        await open_socket(stack, people[2], "2001:db8::2")  # the same /64: 5 in all
        status, body, retry_after = await refusal(people[3], "2001:db8::3")
        assert (status, body["error"], retry_after) == (429, "too_many_sockets_from_address", "30")
        await open_socket(stack, people[3], "2001:db8:0:1::1")  # another /64
        await open_socket(stack, people[3], "192.0.2.7")


def test_addresses_are_counted_by_ip_and_ipv6_slash_64() -> None:
    assert address_key("192.0.2.1") == "192.0.2.1"
    assert address_key("2001:db8::1") == address_key("2001:db8::ffff:1") == "2001:db8::/64"
    assert address_key("::ffff:192.0.2.1") == "192.0.2.1"
    assert address_key("") is None
    assert address_key("not-an-ip" * 20) == ("not-an-ip" * 20)[:64]


async def test_a_crashed_workers_sockets_stop_counting_when_its_heartbeat_expires(
    capped: ChatApp, redis: Redis
) -> None:
    ann = await log_in(capped, redis, "ann@example.com")
    crashed = SocketCaps(redis, "crashed-worker", 3, 5)
    crashed.ttl_seconds = 1.0
    heartbeat = asyncio.create_task(crashed.run())
    while await redis.zscore(keys.SOCKET_WORKERS, "crashed-worker") is None:
        await asyncio.sleep(0.01)
    for _ in range(3):
        await crashed.admit(ann.user.id, "192.0.2.1")
    heartbeat.cancel()  # the worker dies without withdrawing
    with contextlib.suppress(asyncio.CancelledError):
        await heartbeat
    assert (await refusal(ann))[0] == 429
    async with AsyncExitStack() as stack:
        await eventually_opens(stack, ann)  # after about a second
    assert not await redis.exists(keys.socket_worker("crashed-worker"))


async def test_a_socket_closed_on_one_worker_makes_room_on_another(
    redis_url: str, redis: Redis, tmp_path: Path
) -> None:
    settings = make_settings(redis_url, tmp_path, max_sockets_per_user=1)
    other_worker = create_app(settings)
    async with other_worker.test_app():
        ann = await log_in(other_worker, redis, "ann@example.com")
        stack = AsyncExitStack()
        await open_socket(stack, ann)
        this_worker = create_app(settings)
        async with this_worker.test_app():
            ann_here = await log_in(this_worker, redis, "ann@example.com")
            assert (await refusal(ann_here))[0] == 429
            await stack.aclose()
            async with AsyncExitStack() as here:
                await eventually_opens(here, ann_here)
