"""Frames written straight to a WebSocket's transport, each encoded once; lean connections.

Server-to-client frames are not masked, so every socket that gets a message
gets the same bytes: an unmasked text frame is a 2-10 byte header and the
UTF-8 payload, built once per frame (`encode_text`) and written with one
`transport.write`. Through the ASGI `send` each recipient paid, per frame,
Hypercorn's per-connection send lock and `drain`, its WebSocket stream, h11
and wsproto framing, about a third of a worker's CPU in a big room.

ASGI offers no way to the transport, so this is the one module that reaches
into Hypercorn and wsproto, for exactly the versions pinned in pyproject.toml
(`WRITTEN_FOR`); tests/test_wire.py checks every attribute used here against
a real Hypercorn server and fails if a release moves them. When the seam is
missing (another server, HTTP/2, a changed Hypercorn) `open_wire` logs it once,
loudly, and the socket is served through the ASGI `send` as before. Sockets
that agreed to permessage-deflate always are: their frames are compressed per
socket, by wsproto.

The worker's other dealings with Hypercorn's internals are here too: whether
it agrees to permessage-deflate (`use_permessage_deflate`), and what each
connection keeps (`use_lean_connections`, and `open_wire` dropping what an
upgraded connection no longer uses), about a quarter of an idle socket.

Writing next to Hypercorn is safe because every write, its own and these, is
one whole frame handed to `transport.write` synchronously, so frames never
interleave; Hypercorn's lock only serialises its `drain`. What is not safe is
writing after a close frame: `Wire.open` is checked before every write and
turns false the moment wsproto has a close frame to send or the transport is
closing.
"""

from __future__ import annotations

import asyncio
import logging
import struct
from collections import deque
from collections.abc import Awaitable, Callable
from functools import partial
from importlib import metadata
from typing import Any

log = logging.getLogger(__name__)

# The versions whose internals this module was written against (pyproject.toml pins them).
WRITTEN_FOR = {"hypercorn": "0.18.0", "wsproto": "1.3.2"}

_TEXT = 0x81  # FIN + opcode 1 (text); no RSV bits: no extension applies
# Frames up to this long are kept once encoded (`encode_text`): messages,
# presence and unread frames, sent to many. History pages are one socket's own.
CACHED_CHARS = 2048
CACHED_FRAMES = 64


def text_frame(payload: bytes) -> bytes:
    """An unmasked, final text frame (RFC 6455 §5.2) carrying `payload`."""
    size = len(payload)
    if size < 126:
        header = bytes((_TEXT, size))
    elif size < 1 << 16:
        header = struct.pack("!BBH", _TEXT, 126, size)
    else:
        header = struct.pack("!BBQ", _TEXT, 127, size)
    return header + payload


_encoded: dict[str, bytes] = {}
_last: tuple[str, bytes] = ("", text_frame(b""))


def encode_text(text: str) -> bytes:
    """`text` as a frame's bytes, encoded once for every socket it goes to.

    A message goes to every socket of its room one after the other, so the
    last frame encoded is nearly always the one asked for; a few more are kept
    (oldest out first) for sockets that drain a burst later.
    """
    global _last
    last_text, last_wire = _last
    if text is last_text:
        return last_wire
    wire = _encoded.get(text)
    if wire is None:
        wire = text_frame(text.encode())
        if len(text) <= CACHED_CHARS:
            if len(_encoded) >= CACHED_FRAMES:
                del _encoded[next(iter(_encoded))]
            _encoded[text] = wire
    _last = (text, wire)
    return wire


class Wire:
    """One accepted, uncompressed WebSocket's way to its transport."""

    __slots__ = ("_connection", "_high", "_stream", "_transport", "_writer")

    def __init__(self, stream: Any, connection: Any, writer: asyncio.StreamWriter) -> None:
        self._stream = stream
        self._connection = connection
        self._writer = writer
        self._transport = writer.transport
        # Above the transport's high-water mark its protocol is paused and
        # `drain` waits: the socket is congested and frames queue in the outbox.
        self._high = self._transport.get_write_buffer_limits()[1]

    @property
    def open(self) -> bool:
        """Frames may still be written: no close frame sent or queued, transport not closing."""
        return (
            self._connection.state is _OPEN
            and not self._stream.closed
            and not self._transport.is_closing()
        )

    @property
    def congested(self) -> bool:
        return self._transport.get_write_buffer_size() > self._high

    def write(self, data: bytes) -> None:
        self._transport.write(data)

    async def drained(self) -> None:
        """Until the transport is below its low-water mark; `ConnectionError` if it is lost."""
        await self._writer.drain()


try:
    from hypercorn.asyncio import task_group
    from hypercorn.asyncio.tcp_server import TCPServer
    from hypercorn.asyncio.worker_context import WorkerContext
    from hypercorn.protocol import ws_stream
    from hypercorn.protocol.h11 import H11Protocol, H11WSConnection
    from hypercorn.protocol.ws_stream import WSStream
    from wsproto.connection import ConnectionState
    from wsproto.extensions import PerMessageDeflate

    _OPEN: Any = ConnectionState.OPEN
    _IMPORTED = True
except ImportError:  # pragma: no cover - a server without these modules
    _OPEN = object()
    _IMPORTED = False

_warned = False


def _missing(what: str) -> None:
    """Say once per worker, loudly, that sockets take the slow path, and why."""
    global _warned
    if not _warned:
        _warned = True
        installed = {name: _version(name) for name in WRITTEN_FOR}
        log.error(
            "WebSockets are served through the ASGI send, about half as fast: %s "
            "(quart_chat/realtime/wire.py was written for %s; installed: %s)",
            what,
            WRITTEN_FOR,
            installed,
        )


def _version(name: str) -> str | None:
    try:
        return metadata.version(name)
    except metadata.PackageNotFoundError:
        return None


class _Events(list[Any]):
    """wsproto's queue of received events, nearly always empty: a list (56 bytes)
    with the one deque method wsproto calls, instead of a deque (~760)."""

    __slots__ = ()

    def popleft(self) -> Any:
        return self.pop(0)


def _let_go_of_the_handshake(protocol: Any, stream: Any, writer: Any) -> None:
    """Drop what an accepted HTTP/1.1 WebSocket keeps but never uses again (bench/
    measures an idle socket: about 2 KiB of its 16 went here).

    Once upgraded, Hypercorn's connection object only passes bytes through;
    the h11 state machine it wraps sent the handshake's response and is not
    used after it. Two queues that are empty nearly all the time, wsproto's
    received events and asyncio's `drain` waiters (appended, removed and
    iterated: a list does), become lists.
    """
    wrapper = getattr(protocol, "connection", None)
    if type(wrapper) is H11WSConnection and wrapper.h11_connection is not None:
        wrapper.h11_connection = None  # type: ignore[assignment]
    connection = getattr(stream, "connection", None)
    events = getattr(connection, "_events", None)
    if connection is not None and type(events) is deque and not events:
        connection._events = _Events()
    flow = writer.transport.get_protocol()
    waiters = getattr(flow, "_drain_waiters", None)
    if type(waiters) is deque and not waiters:
        flow._drain_waiters = []


def open_wire(send: Any) -> Wire | None:
    """The transport behind an accepted WebSocket's ASGI `send`, or None to keep using `send`.

    None without a log line for a socket that agreed to permessage-deflate
    (whose handshake state is still let go of) or runs over HTTP/2; None and
    one loud line per worker when the server is not the Hypercorn this was
    written for (another server or version).
    """
    if not _IMPORTED:
        _missing("Hypercorn's or wsproto's modules are not where expected")
        return None
    # Hypercorn hands the app `WSStream.app_send`; the stream's `send` is its
    # HTTP/1.1 protocol's `stream_send`, whose `send` is the connection's
    # `TCPServer.protocol_send`, which holds the StreamWriter.
    stream = getattr(send, "__self__", None)
    if type(stream) is not WSStream:
        _missing("the ASGI send is not a Hypercorn WSStream's")
        return None
    protocol = getattr(stream.send, "__self__", None)
    if type(protocol) is not H11Protocol:
        # RFC 8441 WebSockets over HTTP/2 share one transport among streams.
        return None
    server = getattr(protocol.send, "__self__", None)
    if type(server) is not TCPServer:
        _missing("the HTTP/1.1 protocol's send is not a TCPServer's")
        return None
    connection = getattr(stream, "connection", None)
    proto = getattr(connection, "_proto", None)
    extensions = getattr(proto, "extensions", None)
    writer = getattr(server, "writer", None)
    if not isinstance(extensions, list) or not isinstance(writer, asyncio.StreamWriter):
        _missing("wsproto's connection or Hypercorn's writer is not where expected")
        return None
    _let_go_of_the_handshake(protocol, stream, writer)
    if extensions:
        return None  # permessage-deflate: wsproto compresses each frame for this socket
    return Wire(stream, connection, writer)


# -- the worker's Hypercorn, set up once before it serves


def use_permessage_deflate(enabled: bool) -> None:
    """Agree to permessage-deflate when clients offer it (browsers always do), or not.

    Hypercorn always agrees and has no setting for it (pgjones/hypercorn#307):
    its handshake builds a `PerMessageDeflate` by the module-level name in
    `ws_stream`, which is swapped here for the whole worker process.
    tests/test_multiworker.py and tests/test_wire.py check both ways against a
    real server.
    """
    extension = PerMessageDeflate if enabled else _DeclinedDeflate
    ws_stream.PerMessageDeflate = extension  # type: ignore[attr-defined]


def use_lean_connections() -> None:
    """Make each connection's receive queue and read gate cost nothing until used.

    Hypercorn gives every connection an `asyncio.Queue` for the app's
    `receive` and an `asyncio.Event` for its reader: five deques of ~760 B
    allocated up front, a quarter of an idle chat socket. The replacements
    below behave the same (one bounded FIFO, one flag) and allocate their
    waiters only when something waits.
    """
    task_group.TaskGroup.spawn_app = _spawn_app  # type: ignore[method-assign]
    WorkerContext.event_class = _LazyEvent


if _IMPORTED:

    class _DeclinedDeflate(PerMessageDeflate):
        """permessage-deflate that is never agreed to: the socket runs uncompressed."""

        def accept(self, offer: str) -> None:
            return None


class _AppQueue:
    """asyncio.Queue's `get` and bounded `put`, as Hypercorn uses them between a
    connection's reader and the app, with no deques: lists of waiters appear
    only once someone waits. `get` is a plain function that returns a future
    (the ASGI `receive` need only be awaitable), so an idle socket waits in
    one future rather than under two more coroutine frames.

    Unlike asyncio.Queue, an event handed to a `get` whose task is cancelled
    before it runs is dropped: the only caller, the app's task, ends then.
    """

    __slots__ = ("_getters", "_items", "_maxsize", "_putters")

    def __init__(self, maxsize: int) -> None:
        self._maxsize = maxsize
        self._items: list[Any] = []
        self._getters: list[asyncio.Future[Any]] | None = None
        self._putters: list[asyncio.Future[None]] | None = None

    async def put(self, item: Any) -> None:
        getters = self._getters
        while getters:
            getter = getters.pop(0)
            if not getter.done():
                getter.set_result(item)
                return
        while 0 < self._maxsize <= len(self._items):
            if self._putters is None:
                self._putters = []
            putter = asyncio.get_running_loop().create_future()
            self._putters.append(putter)
            try:
                await putter
            except BaseException:
                if putter in self._putters:
                    self._putters.remove(putter)
                elif not putter.cancelled():
                    _wake_one(self._putters)  # woken, but cannot take the turn: pass it on
                raise
        self._items.append(item)

    def get(self) -> asyncio.Future[Any]:
        getter: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        if self._items:
            getter.set_result(self._items.pop(0))
            _wake_one(self._putters)
        else:
            if self._getters is None:
                self._getters = []
            self._getters.append(getter)
        return getter


class _LazyEvent:
    """Hypercorn's asyncio event wrapper, with the `asyncio.Event` made on the first wait."""

    __slots__ = ("_event", "_set")

    def __init__(self) -> None:
        self._set = False
        self._event: asyncio.Event | None = None

    async def clear(self) -> None:
        self._set = False
        if self._event is not None:
            self._event.clear()

    async def wait(self) -> None:
        if self._set:
            return
        if self._event is None:
            self._event = asyncio.Event()
        await self._event.wait()

    async def set(self) -> None:
        self._set = True
        if self._event is not None:
            self._event.set()

    def is_set(self) -> bool:
        return self._set


def _wake_one(waiters: list[asyncio.Future[None]] | None) -> None:
    """Wake the first of `waiters` still waiting."""
    while waiters:
        waiter = waiters.pop(0)
        if not waiter.done():
            waiter.set_result(None)
            return


_Executors = tuple[asyncio.AbstractEventLoop, Callable[..., Any], Callable[..., Any]]
_executors: _Executors | None = None


def _executors_of(loop: asyncio.AbstractEventLoop) -> tuple[Callable[..., Any], Callable[..., Any]]:
    """Hypercorn's `sync_spawn` and `call_soon` for ASGI apps, made once for the worker's
    loop rather than as a partial and a closure per connection."""
    global _executors
    if _executors is None or _executors[0] is not loop:

        def call_soon(func: Callable[..., Any], *args: Any) -> Any:
            return asyncio.run_coroutine_threadsafe(func(*args), loop).result()

        _executors = (loop, partial(loop.run_in_executor, None), call_soon)
    return _executors[1], _executors[2]


async def _spawn_app(
    self: Any,
    app: Any,
    config: Any,
    scope: Any,
    send: Callable[[Any], Awaitable[None]],
) -> Callable[[Any], Awaitable[None]]:
    """Hypercorn 0.18's `TaskGroup.spawn_app`, with `_AppQueue` for its `asyncio.Queue`."""
    app_queue = _AppQueue(config.max_app_queue_size)
    sync_spawn, call_soon = _executors_of(self._loop)
    self.spawn(task_group._handle, app, config, scope, app_queue.get, send, sync_spawn, call_soon)
    return app_queue.put
