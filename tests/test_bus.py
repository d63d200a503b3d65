"""The worker's pub/sub connection against a real Redis: channels come and go as wanted,
a subscription counts once Redis confirms it, and a lost connection is rebuilt with
the channels still wanted."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable

import pytest
from redis.asyncio import Redis

from quart_chat.realtime.bus import Bus, BusDown
from quart_chat.realtime.channels import FIXED


class Heard:
    """What the bus told its owner: messages, and each time it went up or down."""

    def __init__(self) -> None:
        self.messages: list[tuple[str, str]] = []
        self.events: list[str] = []

    def message(self, channel: str, data: str) -> None:
        self.messages.append((channel, data))

    def up(self) -> None:
        self.events.append("up")

    def down(self) -> None:
        self.events.append("down")


@pytest.fixture
def heard() -> Heard:
    return Heard()


@pytest.fixture
async def bus(redis_url: str, redis: Redis, heard: Heard) -> AsyncIterator[Bus]:
    bus = Bus(redis_url, "test-worker", heard.message, heard.up, heard.down)
    listener = asyncio.create_task(bus.listen())
    try:
        await asyncio.wait_for(bus.wait_subscribed(), 10)
        yield bus
    finally:
        listener.cancel()
        await asyncio.gather(listener, return_exceptions=True)


async def eventually(check: Callable[[], Awaitable[bool]]) -> None:
    async with asyncio.timeout(10):
        while not await check():
            await asyncio.sleep(0.02)


async def numsub(redis: Redis, channel: str) -> int:
    return int(dict(await redis.pubsub_numsub(channel))[channel.encode()])


async def test_a_wanted_channel_is_subscribed_once_confirmed(
    bus: Bus, redis: Redis, heard: Heard
) -> None:
    assert {c.decode() for c in await redis.pubsub_channels()} >= set(FIXED)
    bus.want("{room:r1}:live")
    assert await bus.ensure(["{room:r1}:live"])
    assert await redis.publish("{room:r1}:live", "M 1-0 u1 {}") == 1
    await eventually(lambda: _true(bool(heard.messages)))
    assert heard.messages == [("{room:r1}:live", "M 1-0 u1 {}")]


async def test_subscribe_unsubscribe_subscribe_ends_subscribed(bus: Bus, redis: Redis) -> None:
    channel = "{user:u1}:events"
    bus.want(channel)
    bus.unwant(channel)
    bus.want(channel)  # all before the bus could send anything
    assert await bus.ensure([channel])
    assert await numsub(redis, channel) == 1
    for _ in range(20):  # and as fast as the commands can go
        bus.unwant(channel)
        await asyncio.sleep(0)
        bus.want(channel)
        await asyncio.sleep(0)
    assert await bus.ensure([channel])
    assert bus.confirmed(channel)
    assert await numsub(redis, channel) == 1


async def test_an_unwanted_channel_is_unsubscribed_and_not_ensured(bus: Bus, redis: Redis) -> None:
    channel = "{room:r2}:live"
    bus.want(channel)
    assert await bus.ensure([channel])
    bus.unwant(channel)
    assert not await bus.ensure([channel])
    await eventually(lambda: _true(not bus.confirmed(channel)))
    assert await numsub(redis, channel) == 0


async def test_a_wait_for_a_channel_dropped_meanwhile_ends_false(bus: Bus) -> None:
    channel = "{room:r3}:live"
    bus.want(channel)
    waiting = asyncio.create_task(bus.ensure([channel]))
    bus.unwant(channel)
    assert await waiting is False


async def test_a_lost_connection_comes_back_with_the_channels_still_wanted(
    bus: Bus, redis: Redis, heard: Heard
) -> None:
    channel = "{user:u2}:events"
    bus.want(channel)
    assert await bus.ensure([channel])
    assert heard.events == ["up"]
    killed = await redis.execute_command("CLIENT", "KILL", "TYPE", "pubsub")
    assert int(killed) >= 1
    await eventually(lambda: _true(heard.events == ["up", "down", "up"]))
    assert await bus.ensure([channel])
    assert heard.events == ["up", "down", "up"]
    assert await numsub(redis, channel) == 1
    names = [c.get("name") for c in await redis.client_list()]
    assert "chat-bus-test-worker" in names


async def test_ensure_refuses_while_the_bus_is_down(redis_url: str, heard: Heard) -> None:
    bus = Bus(redis_url, "never-started", heard.message, heard.up, heard.down)
    bus.want("{room:r4}:live")
    with pytest.raises(BusDown):
        await bus.ensure(["{room:r4}:live"])


async def _true(value: bool) -> bool:
    return value
