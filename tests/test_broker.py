"""A socket's outbox is bounded: a subscriber that cannot keep up is closed, never waited for."""

from __future__ import annotations

import asyncio

from quart_chat.broker import CLOSE_TRY_AGAIN_LATER, Subscriber


async def test_a_full_outbox_closes_only_that_subscriber_with_1013() -> None:
    slow = Subscriber("s1", limit=3)
    fast = Subscriber("s2", limit=3)

    async def forever() -> None:
        await asyncio.Event().wait()

    slow_task = asyncio.create_task(forever())
    slow.attach([slow_task])
    received = []
    for n in range(10):
        frame = f"frame {n}"
        for subscriber in (slow, fast):
            subscriber.deliver(frame)  # never awaits
        received.append(await fast.next_frame())
    assert received == [f"frame {n}" for n in range(10)]
    assert slow.close_code == CLOSE_TRY_AGAIN_LATER
    assert fast.close_code is None
    await asyncio.gather(slow_task, return_exceptions=True)
    assert slow_task.cancelled()  # the socket's tasks end with it


async def test_a_waiting_sender_wakes_for_the_next_frame() -> None:
    subscriber = Subscriber("s")
    waiting = asyncio.create_task(subscriber.next_frame())
    await asyncio.sleep(0)
    subscriber.deliver("hello")
    assert await asyncio.wait_for(waiting, 5) == "hello"
