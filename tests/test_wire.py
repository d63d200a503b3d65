"""The one seam into Hypercorn and wsproto (quart_chat/realtime/wire.py), checked against a
real Hypercorn server: if a release moves what it reaches for, these fail, loudly."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator
from importlib import metadata
from typing import Any

import pytest
from hypercorn.asyncio import serve
from hypercorn.asyncio.task_group import TaskGroup
from hypercorn.asyncio.worker_context import WorkerContext
from hypercorn.config import Config
from websockets.asyncio.client import connect
from wsproto.frame_protocol import FrameProtocol

from quart_chat.realtime import wire as wire_module
from quart_chat.realtime.wire import (
    WRITTEN_FOR,
    Wire,
    encode_text,
    open_wire,
    text_frame,
    use_lean_connections,
    use_permessage_deflate,
)
from tests.servers import free_port


def test_the_installed_hypercorn_and_wsproto_are_the_ones_wire_was_written_for() -> None:
    """A new Hypercorn or wsproto may move its internals: read wire.py against it, then
    update WRITTEN_FOR and the pins in pyproject.toml together."""
    installed = {name: metadata.version(name) for name in WRITTEN_FOR}
    assert installed == WRITTEN_FOR


@pytest.mark.parametrize("size", [0, 1, 125, 126, 127, 1000, 65535, 65536, 70000])
def test_a_text_frame_is_the_bytes_wsproto_would_send(size: int) -> None:
    text = ("é" * size)[:size] if size % 2 else "x" * size
    expected = bytes(FrameProtocol(client=False, extensions=[]).send_data(text, fin=True))
    assert text_frame(text.encode()) == expected
    assert encode_text(text) == expected
    assert encode_text(text) == expected  # from the cache


def test_a_frame_is_encoded_once_for_every_socket() -> None:
    text = '{"type":"message","text":"hi"}'
    first = encode_text(text)
    assert encode_text(text) is first
    encode_text(text + " ")
    assert encode_text(text) is first  # still kept after another frame


class Served:
    """A real Hypercorn serving a tiny ASGI app that hands its sockets' wires to the test."""

    def __init__(self) -> None:
        self.port = free_port()
        self.sockets: asyncio.Queue[tuple[Wire | None, Any, asyncio.Queue[Any]]] = asyncio.Queue()

    async def app(self, scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] != "websocket":
            return
        await receive()  # websocket.connect
        await send({"type": "websocket.accept"})
        events: asyncio.Queue[Any] = asyncio.Queue()
        await self.sockets.put((open_wire(send), send, events))
        while True:
            event = await receive()
            await events.put(event)
            if event["type"] == "websocket.disconnect":
                return

    @property
    def url(self) -> str:
        return f"ws://127.0.0.1:{self.port}/"


@pytest.fixture
async def served(monkeypatch: pytest.MonkeyPatch) -> AsyncIterator[Served]:
    """As a worker runs it: with `use_lean_connections` (undone after the test)."""
    monkeypatch.setattr(TaskGroup, "spawn_app", TaskGroup.spawn_app)
    monkeypatch.setattr(WorkerContext, "event_class", WorkerContext.event_class)
    use_lean_connections()
    served = Served()
    config = Config()
    config.bind = [f"127.0.0.1:{served.port}"]
    config.accesslog = None
    stop = asyncio.Event()
    task = asyncio.create_task(serve(served.app, config, shutdown_trigger=stop.wait))  # type: ignore[arg-type]
    for _ in range(200):
        try:
            _, writer = await asyncio.open_connection("127.0.0.1", served.port)
        except OSError:
            await asyncio.sleep(0.02)
        else:
            writer.close()
            break
    try:
        yield served
    finally:
        stop.set()
        await asyncio.wait_for(task, 10)


async def test_frames_written_to_the_wire_arrive_in_order_with_hypercorns_own(
    served: Served,
) -> None:
    use_permessage_deflate(False)
    try:
        async with connect(served.url, compression="deflate", ping_interval=None) as ws:
            wire, send, events = await asyncio.wait_for(served.sockets.get(), 5)
            assert isinstance(wire, Wire)
            assert wire.open and not wire.congested
            assert_handshake_let_go(wire)
            wire.write(encode_text("one"))
            await send({"type": "websocket.send", "text": "two"})  # through Hypercorn
            wire.write(encode_text("thrée") + encode_text("four"))
            assert [await ws.recv() for _ in range(4)] == ["one", "two", "thrée", "four"]
            # Hypercorn answers pings itself, on the same transport.
            await asyncio.wait_for(await ws.ping(), 5)
            await ws.send("from the client")
            assert (await events.get())["text"] == "from the client"
        # The client's close frame: Hypercorn answers it and the wire stops writing.
        assert (await asyncio.wait_for(events.get(), 5))["type"] == "websocket.disconnect"
        assert not wire.open
    finally:
        use_permessage_deflate(True)


async def test_a_socket_that_stops_reading_congests_its_wire_until_drained(
    served: Served,
) -> None:
    async with connect(served.url, compression=None, ping_interval=None, max_queue=1) as ws:
        wire, _, _ = await asyncio.wait_for(served.sockets.get(), 5)
        assert wire is not None
        frame = encode_text("x" * 60_000)
        written = 0
        while not wire.congested:
            wire.write(frame)
            written += 1
            assert written < 2000, "the transport never reached its high-water mark"
            await asyncio.sleep(0)
        drained = asyncio.create_task(wire.drained())
        await asyncio.sleep(0.1)
        assert not drained.done()
        for _ in range(written):
            assert len(await ws.recv()) == 60_000
        await asyncio.wait_for(drained, 5)
        assert not wire.congested


async def test_a_socket_that_agreed_to_deflate_keeps_the_asgi_send(
    served: Served, caplog: pytest.LogCaptureFixture
) -> None:
    use_permessage_deflate(True)
    async with connect(served.url, compression="deflate", ping_interval=None) as ws:
        wire, send, _ = await asyncio.wait_for(served.sockets.get(), 5)
        assert ws.response.headers["Sec-WebSocket-Extensions"].startswith("permessage-deflate")
        assert wire is None
        await send({"type": "websocket.send", "text": "compressed by wsproto"})
        assert await ws.recv() == "compressed by wsproto"
    assert not [r for r in caplog.records if r.name == wire_module.__name__]


async def test_another_server_is_served_through_the_asgi_send_with_one_loud_line(
    caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(wire_module, "_warned", False)

    async def send(message: Any) -> None:
        pass

    with caplog.at_level(logging.ERROR, logger=wire_module.__name__):
        assert open_wire(send) is None
        assert open_wire(send) is None
    lines = [r for r in caplog.records if r.name == wire_module.__name__]
    assert len(lines) == 1
    assert "served through the ASGI send" in lines[0].getMessage()


def assert_handshake_let_go(wire: Wire) -> None:
    """What `open_wire` drops or shrinks is where it looked for it (else it silently
    stops saving memory)."""
    stream = wire._stream
    protocol = stream.send.__self__
    assert protocol.connection.h11_connection is None
    assert type(stream.connection._events).__name__ == "_Events"
    assert type(wire._transport.get_protocol()._drain_waiters) is list


async def test_lean_connections_are_the_ones_hypercorn_makes(served: Served) -> None:
    async with connect(served.url, compression=None, ping_interval=None) as ws:
        wire, _, _ = await asyncio.wait_for(served.sockets.get(), 5)
        assert wire is not None
        protocol = wire._stream.send.__self__
        assert type(protocol.can_read).__name__ == "_LazyEvent"
        queue = wire._stream.app_put.__self__
        assert type(queue).__name__ == "_AppQueue"
        await ws.close()


async def test_the_app_queue_is_a_bounded_fifo() -> None:
    queue = wire_module._AppQueue(2)
    getter = queue.get()
    await queue.put("a")  # straight to the waiting get
    assert await getter == "a"
    await queue.put("b")
    await queue.put("c")
    blocked = asyncio.create_task(queue.put("d"))
    await asyncio.sleep(0)
    assert not blocked.done()  # full at 2
    cancelled = asyncio.create_task(queue.put("never"))
    await asyncio.sleep(0)
    cancelled.cancel()
    assert await queue.get() == "b"
    await asyncio.wait_for(blocked, 1)
    assert [await queue.get() for _ in range(2)] == ["c", "d"]
    late = queue.get()
    late.cancel()  # a receive whose task was cancelled
    await queue.put("e")
    assert await queue.get() == "e"


async def test_the_lazy_event_waits_until_set() -> None:
    event = wire_module._LazyEvent()
    assert not event.is_set()
    waiter = asyncio.create_task(event.wait())
    await asyncio.sleep(0)
    assert not waiter.done()
    await event.set()
    await asyncio.wait_for(waiter, 1)
    await event.wait()  # set: returns at once
    await event.clear()
    assert not event.is_set()
