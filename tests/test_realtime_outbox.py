"""A socket's outbox: bounded, sent in order, and without a task while there is nothing to send."""

from __future__ import annotations

import asyncio
from typing import Any

from quart_chat.models.users import User
from quart_chat.realtime.outbox import CLOSE_SERVER_ERROR, CLOSE_TRY_AGAIN_LATER, Outbox

ANN = User(id="ann", name="Ann", email="ann@example.com")


class Client:
    """The ASGI `send` of one socket: records text frames; `stalled` makes it block like
    a client that stopped reading."""

    def __init__(self) -> None:
        self.frames: list[str] = []
        self.stalled = False
        self._unstalled = asyncio.Event()

    async def send(self, message: Any) -> None:
        assert message["type"] == "websocket.send"
        while self.stalled:
            await self._unstalled.wait()
        self.frames.append(message["text"])

    def stall(self) -> None:
        self.stalled = True
        self._unstalled.clear()

    def resume(self) -> None:
        self.stalled = False
        self._unstalled.set()


async def settle() -> None:
    for _ in range(5):
        await asyncio.sleep(0)


async def serving_task() -> asyncio.Task[None]:
    task = asyncio.create_task(asyncio.Event().wait())  # type: ignore[arg-type]
    await asyncio.sleep(0)
    return task


async def test_a_full_outbox_closes_only_that_outbox_with_1013() -> None:
    slow_client, fast_client = Client(), Client()
    slow_client.stall()
    slow = Outbox(ANN, "s1", slow_client.send, limit=3)
    fast = Outbox(ANN, "s2", fast_client.send, limit=3)
    slow_task = await serving_task()
    slow.attach(slow_task)
    for outbox in (slow, fast):
        outbox.start("ready")
    for n in range(10):
        for outbox in (slow, fast):
            outbox.deliver(f"frame {n}")  # never awaits
        await settle()
    assert fast_client.frames == ["ready"] + [f"frame {n}" for n in range(10)]
    assert slow.close_code == CLOSE_TRY_AGAIN_LATER
    assert fast.close_code is None
    await asyncio.gather(slow_task, return_exceptions=True)
    assert slow_task.cancelled()  # the task serving the socket ends with it


async def test_frames_wait_for_start_and_then_go_in_order() -> None:
    client = Client()
    outbox = Outbox(ANN, "s", client.send)
    outbox.deliver("early")
    await settle()
    assert client.frames == []
    outbox.start("ready")  # `ready` goes first
    outbox.deliver("later")
    await settle()
    assert client.frames == ["ready", "early", "later"]


async def test_an_idle_outbox_holds_no_task_and_no_buffer() -> None:
    client = Client()
    outbox = Outbox(ANN, "s", client.send)
    outbox.start("ready")
    await settle()
    assert client.frames == ["ready"]
    before = len(asyncio.all_tasks())
    client.stall()
    for n in range(3):
        outbox.deliver(f"frame {n}")
    await settle()
    assert len(asyncio.all_tasks()) == before + 1  # one sender for the burst
    client.resume()
    await settle()
    assert client.frames == ["ready", "frame 0", "frame 1", "frame 2"]
    assert len(asyncio.all_tasks()) == before
    outbox.deliver("again")  # a new burst gets a new sender
    await settle()
    assert client.frames[-1] == "again"
    assert len(asyncio.all_tasks()) == before


async def test_a_failing_send_closes_the_socket_with_1011() -> None:
    async def broken(message: Any) -> None:
        raise RuntimeError("transport gone")

    outbox = Outbox(ANN, "s", broken)
    owner = await serving_task()
    outbox.attach(owner)
    outbox.start("ready")
    outbox.deliver("hello")
    await asyncio.gather(owner, return_exceptions=True)
    assert owner.cancelled()
    assert outbox.close_code == CLOSE_SERVER_ERROR


async def test_a_producer_waits_until_the_outbox_is_half_empty() -> None:
    client = Client()
    client.stall()
    outbox = Outbox(ANN, "s", client.send, limit=4)
    outbox.start("ready")
    await settle()  # the sender took `ready` and waits on the stalled client
    for n in range(4):
        outbox.deliver(f"frame {n}")
    waiter = asyncio.create_task(outbox.wait_half_empty())
    await settle()
    assert not waiter.done()
    client.resume()
    await asyncio.wait_for(waiter, 5)
    await settle()
    assert client.frames == ["ready"] + [f"frame {n}" for n in range(4)]


class FakeWire:
    """A socket's transport as the outbox sees it (quart_chat/realtime/wire.py): what was
    written, frame by frame, and a switch for a reader that stopped reading."""

    def __init__(self) -> None:
        self.writes: list[bytes] = []
        self.open = True
        self.congested = False
        self._drained = asyncio.Event()
        self._drained.set()

    def write(self, data: bytes) -> None:
        self.writes.append(data)

    def frames(self) -> list[str]:
        return [text for data in self.writes for text in _texts(data)]

    def stall(self) -> None:
        self.congested = True
        self._drained.clear()

    def resume(self) -> None:
        self.congested = False
        self._drained.set()

    async def drained(self) -> None:
        await self._drained.wait()


def _texts(data: bytes) -> list[str]:
    """The payloads of the unmasked text frames in `data` (all short here)."""
    texts = []
    while data:
        assert data[0] == 0x81 and data[1] < 126
        size = data[1]
        texts.append(data[2 : 2 + size].decode())
        data = data[2 + size :]
    return texts


def _unused_send() -> Any:
    async def send(message: Any) -> None:
        raise AssertionError("a socket with a wire never uses the ASGI send")

    return send


async def test_with_a_wire_frames_are_written_at_once_without_a_task() -> None:
    wire = FakeWire()
    outbox = Outbox(ANN, "s", _unused_send(), wire=wire)  # type: ignore[arg-type]
    outbox.deliver("early")
    assert wire.writes == []  # nothing before `ready`
    before = len(asyncio.all_tasks())
    outbox.start("ready")
    assert wire.frames() == ["ready", "early"]
    assert len(wire.writes) == 1  # one write for what waited
    outbox.deliver("now")
    assert wire.frames() == ["ready", "early", "now"]  # synchronously
    assert len(asyncio.all_tasks()) == before
    assert outbox._frames is None  # nothing held while idle


async def test_with_a_congested_wire_frames_queue_and_go_in_one_write_once_drained() -> None:
    wire = FakeWire()
    outbox = Outbox(ANN, "s", _unused_send(), wire=wire)  # type: ignore[arg-type]
    outbox.start("ready")
    wire.stall()
    for n in range(3):
        outbox.deliver(f"frame {n}")
    await settle()
    assert wire.frames() == ["ready"]
    wire.resume()
    outbox.deliver("frame 3")  # still behind the queued ones
    await settle()
    assert wire.frames() == ["ready"] + [f"frame {n}" for n in range(4)]
    assert len(wire.writes) == 2
    outbox.deliver("after")
    assert wire.frames()[-1] == "after"


async def test_with_a_congested_wire_a_full_outbox_closes_with_1013() -> None:
    wire = FakeWire()
    outbox = Outbox(ANN, "s", _unused_send(), limit=3, wire=wire)  # type: ignore[arg-type]
    owner = await serving_task()
    outbox.attach(owner)
    outbox.start("ready")
    wire.stall()
    for n in range(4):
        outbox.deliver(f"frame {n}")
    assert outbox.close_code == CLOSE_TRY_AGAIN_LATER
    await asyncio.gather(owner, return_exceptions=True)
    assert owner.cancelled()
    wire.resume()
    await settle()
    assert wire.frames() == ["ready"]  # what was queued is dropped


async def test_a_wire_that_is_closing_gets_nothing_more() -> None:
    wire = FakeWire()
    outbox = Outbox(ANN, "s", _unused_send(), wire=wire)  # type: ignore[arg-type]
    outbox.start("ready")
    wire.open = False  # the client's close frame arrived
    outbox.deliver("late")
    assert wire.frames() == ["ready"]
    assert outbox.close_code is None  # the serving task hears the disconnect
