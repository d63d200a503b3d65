"""A lean WebSocket chat client for the load generator.

One asyncio Protocol per connection parses server frames straight out of
`data_received`: no task, future or queue per message, so a single core can
keep up with a thousand sockets. It speaks exactly the quart-chat protocol
(SPEC §5) and checks every delivery of a benchmark message against the
schedule: latency from the scheduled send time, duplicates, order per sender.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import random
import time
import zlib
from array import array
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

try:
    import orjson

    loads = orjson.loads

    def dumps(value: Any) -> bytes:
        return orjson.dumps(value)

except ImportError:  # the benchmark still runs, only its own CPU cost is higher
    import json

    loads = json.loads

    def dumps(value: Any) -> bytes:
        return json.dumps(value, separators=(",", ":")).encode()


WS_GUID = b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11"
OP_CONTINUATION, OP_TEXT, OP_BINARY, OP_CLOSE, OP_PING, OP_PONG = 0, 1, 2, 8, 9, 10
STAMP = "B"  # first field of every benchmark message text
ROOM_STAMP = "R"  # first field of the rooms phase's message texts
MIXED_STAMP = "X"  # first field of the mixed phase's message and edit texts
# Frames the mixed phase's observer (bench/mixed.py) checks besides its messages.
MIXED_FRAMES = frozenset(("edit", "reaction", "typing"))
monotonic = time.monotonic


def encode_frame(payload: bytes, opcode: int = OP_TEXT) -> bytes:
    """A masked client frame (RFC 6455 §5.3)."""
    length = len(payload)
    if length < 126:
        header = bytes((0x80 | opcode, 0x80 | length))
    elif length < 1 << 16:
        header = bytes((0x80 | opcode, 0x80 | 126)) + length.to_bytes(2, "big")
    else:
        header = bytes((0x80 | opcode, 0x80 | 127)) + length.to_bytes(8, "big")
    mask = random.randbytes(4)
    if not length:
        return header + mask
    keystream = (mask * (length // 4 + 1))[:length]
    masked = int.from_bytes(payload, "big") ^ int.from_bytes(keystream, "big")
    return header + mask + masked.to_bytes(length, "big")


def _retrieved(future: asyncio.Future[Any]) -> None:
    """A socket refused or lost early is counted where it is awaited, not logged by asyncio."""
    if not future.cancelled():
        future.exception()


def message_text(step: int, index: int, sender: int, seq: int, scheduled: float, size: int) -> str:
    """A benchmark message of exactly `size` characters that says who, which and when."""
    stamp = f"{STAMP}|{step}|{index}|{sender}|{seq}|{int(scheduled * 1e6)}|"
    return stamp + "x" * max(0, size - len(stamp))


@dataclass
class Step:
    """One load step: its schedule and everything the receivers observed."""

    index: int
    senders: int
    rate: float
    messages: int  # scheduled in this step, warm-up included
    window_start: float
    window_end: float
    delivered: int = 0
    delivered_in_window: int = 0
    latencies: array[float] = field(default_factory=lambda: array("d"))
    duplicates: int = 0
    reordered: int = 0
    stale: int = 0
    rejected: set[int] = field(default_factory=set)
    errors: Counter[str] = field(default_factory=Counter)


@dataclass
class Hub:
    """State shared by all connections of one generator."""

    step: Step | None = None
    probe: str | None = None
    probe_seen: int = 0
    probe_done: asyncio.Event = field(default_factory=asyncio.Event)
    probe_target: int = 0
    frames: Counter[str] = field(default_factory=Counter)
    close_codes: Counter[int] = field(default_factory=Counter)
    protocol_errors: Counter[str] = field(default_factory=Counter)
    delivered: int = 0  # all steps, for drain waits
    # The rooms phase's observer (bench/rooms.py): gets its `R|` messages and `unread` bumps.
    rooms: Any = None
    # The mixed phase's observer (bench/mixed.py): its `X|` messages, edits, reactions,
    # typing and the errors answering its frames.
    mixed: Any = None


class ChatClient(asyncio.Protocol):
    def __init__(
        self, hub: Hub, index: int, host: str, port: int, cookie: str, deflate: bool = False
    ) -> None:
        self.hub = hub
        self.deflate = deflate
        # Set when the server accepted permessage-deflate (RFC 7692); it then
        # compresses every message it sends, and we inflate them here.
        self.inflater: Any = None
        self.fresh_inflater_per_message = False
        self.fragments_compressed = False
        self.index = index
        self.host = host
        self.port = port
        self.cookie = cookie
        loop = asyncio.get_running_loop()
        self.opened: asyncio.Future[None] = loop.create_future()
        self.ready: asyncio.Future[dict[str, Any]] = loop.create_future()
        self.ready.add_done_callback(_retrieved)
        # The first `history` frame: the answer to the join that `connect` sends.
        self.joined: asyncio.Future[dict[str, Any]] = loop.create_future()
        self.joined.add_done_callback(_retrieved)
        self.closed: asyncio.Future[int] = loop.create_future()
        self.transport: asyncio.Transport | None = None
        self.buffer = b""
        self.handshaking = True
        self.fragments: list[bytes] = []
        self.key = base64.b64encode(random.randbytes(16))
        self.probed = False
        self.seen = bytearray()
        self.last_by_sender: list[int] = []
        # The handshake's X-Chat-Worker: which worker serves this socket.
        self.worker: str | None = None
        self.local_port = 0
        self.user_id: str | None = None
        # Direct replies awaited by `request`, by the `ref` the server copies onto them.
        self.replies: dict[str, asyncio.Future[dict[str, Any]]] = {}
        self.refs = 0
        # `room` frames this socket received (rooms it was added to), by room id.
        self.rooms_seen: set[str] = set()

    # -- asyncio.Protocol

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]  # uvloop's is no asyncio.Transport
        sockname = transport.get_extra_info("sockname")
        self.local_port = int(sockname[1]) if sockname else 0
        origin = f"http://{self.host}:{self.port}"
        request = (
            f"GET /ws HTTP/1.1\r\nHost: {self.host}:{self.port}\r\n"
            "Upgrade: websocket\r\nConnection: Upgrade\r\n"
            f"Sec-WebSocket-Key: {self.key.decode()}\r\nSec-WebSocket-Version: 13\r\n"
            f"Origin: {origin}\r\nCookie: {self.cookie}\r\n"
        )
        if self.deflate:
            request += "Sec-WebSocket-Extensions: permessage-deflate; client_max_window_bits\r\n"
        request += "\r\n"
        transport.write(request.encode())

    def connection_lost(self, exc: Exception | None) -> None:
        if not self.opened.done():
            self.opened.set_exception(ConnectionError(f"connection lost in handshake: {exc}"))
        if not self.ready.done():
            self.ready.set_exception(ConnectionError("connection lost before ready"))
        if not self.joined.done():
            self.joined.set_exception(ConnectionError("connection lost before history"))
        for reply in self.replies.values():
            if not reply.done():
                reply.set_exception(ConnectionError("connection lost before the reply"))
        if not self.closed.done():
            self.hub.close_codes[1006] += 1
            self.closed.set_result(1006)

    def data_received(self, data: bytes) -> None:
        now = monotonic()
        buffer = self.buffer + data if self.buffer else data
        if self.handshaking:
            end = buffer.find(b"\r\n\r\n")
            if end < 0:
                self.buffer = buffer
                return
            self._handshake_done(buffer[:end])
            buffer = buffer[end + 4 :]
        pos, size = 0, len(buffer)
        while size - pos >= 2:
            first, second = buffer[pos], buffer[pos + 1]
            length, header = second & 0x7F, 2
            if length == 126:
                if size - pos < 4:
                    break
                length, header = int.from_bytes(buffer[pos + 2 : pos + 4], "big"), 4
            elif length == 127:
                if size - pos < 10:
                    break
                length, header = int.from_bytes(buffer[pos + 2 : pos + 10], "big"), 10
            end = pos + header + length
            if end > size:
                break
            payload = buffer[pos + header : end]
            pos = end
            if first == 0x81:  # FIN, text, uncompressed: the hot path
                self._on_text(payload, now)
            elif first == 0xC1:  # FIN, RSV1 (compressed), text
                self._on_text(self._inflate(payload), now)
            else:
                self._on_other(first, first & 0x0F, payload, now)
        self.buffer = buffer[pos:]

    # -- frames

    def _handshake_done(self, head: bytes) -> None:
        status, _, _ = head.partition(b"\r\n")
        if not status.startswith(b"HTTP/1.1 101"):
            error = ConnectionRefusedError(f"handshake refused: {status.decode(errors='replace')}")
            self.opened.set_exception(error)
            assert self.transport is not None
            self.transport.close()
            return
        accept = base64.b64encode(hashlib.sha1(self.key + WS_GUID).digest())
        if b"sec-websocket-accept: " + accept.lower() not in head.lower():
            self.hub.protocol_errors["bad_accept"] += 1
        for line in head.lower().split(b"\r\n"):
            if line.startswith(b"sec-websocket-extensions:") and b"permessage-deflate" in line:
                self.inflater = zlib.decompressobj(-zlib.MAX_WBITS)
                self.fresh_inflater_per_message = b"server_no_context_takeover" in line
            elif line.startswith(b"x-chat-worker:"):
                self.worker = line.partition(b":")[2].strip().decode()
        self.handshaking = False
        self.opened.set_result(None)

    def _inflate(self, payload: bytes) -> bytes:
        if self.inflater is None:
            self.hub.protocol_errors["compressed_without_deflate"] += 1
            return payload
        if self.fresh_inflater_per_message:
            self.inflater = zlib.decompressobj(-zlib.MAX_WBITS)
        return bytes(self.inflater.decompress(payload + b"\x00\x00\xff\xff"))

    def _on_other(self, first: int, opcode: int, payload: bytes, now: float) -> None:
        if opcode == OP_PING:
            self.send_raw(encode_frame(payload, OP_PONG))
        elif opcode == OP_CLOSE:
            code = int.from_bytes(payload[:2], "big") if len(payload) >= 2 else 1005
            if not self.closed.done():
                self.hub.close_codes[code] += 1
                self.closed.set_result(code)
            self.send_raw(encode_frame(payload[:2], OP_CLOSE))
            assert self.transport is not None
            self.transport.close()
        elif opcode in (OP_TEXT, OP_CONTINUATION):
            if opcode == OP_TEXT:
                self.fragments_compressed = bool(first & 0x40)
            self.fragments.append(payload)
            if first & 0x80:
                whole, self.fragments = b"".join(self.fragments), []
                self._on_text(self._inflate(whole) if self.fragments_compressed else whole, now)
        elif opcode != OP_PONG:
            self.hub.protocol_errors[f"opcode_{opcode}"] += 1

    def _on_text(self, payload: bytes, now: float) -> None:
        message = loads(payload)
        kind = message.get("type")
        hub = self.hub
        if kind == "message":
            text = message.get("text", "")
            if text.startswith("B|"):
                self._on_bench_message(text, now)
                return
            if text.startswith("R|"):
                hub.rooms.on_message(self, message, text, len(payload), now)
                return
            if text.startswith("X|"):
                hub.mixed.on_message(self, message, text, now)
                return
            if text == hub.probe and not self.probed:
                self.probed = True
                hub.probe_seen += 1
                if hub.probe_seen >= hub.probe_target:
                    hub.probe_done.set()
            hub.frames["message"] += 1
        elif kind == "unread":
            hub.frames["unread"] += 1
            if hub.rooms is not None:
                hub.rooms.on_unread(self, message, now)
        elif kind == "ready":
            hub.frames["ready"] += 1
            user = message.get("user")
            if isinstance(user, dict):
                self.user_id = user.get("id")
            if not self.ready.done():
                self.ready.set_result(message)
        elif kind == "history":
            hub.frames["history"] += 1
            if not self._replied(message) and not self.joined.done():
                self.joined.set_result(message)
        elif kind == "error":
            hub.frames["error"] += 1
            if self._replied(message):
                return
            if hub.mixed is not None and hub.mixed.on_error(self, message):
                return
            if hub.rooms is not None and str(message.get("client_id") or "").startswith("R"):
                hub.rooms.on_error(self, message)
                return
            if not self.joined.done() and message.get("client_id") is None:
                # Anything but a send's error is the join's answer here.
                self.joined.set_exception(RuntimeError(f"join answered {message}"))
            step = hub.step
            code = str(message.get("code"))
            if step is not None:
                step.errors[code] += 1
                client_id = str(message.get("client_id") or "")
                if client_id.startswith(f"b{step.index}-"):
                    step.rejected.add(int(client_id.partition("-")[2]))
        else:
            if hub.mixed is not None and kind in MIXED_FRAMES:
                hub.mixed.on_frame(self, kind, message, now)
                return
            hub.frames[str(kind)] += 1
            if kind == "room":
                room = message.get("room")
                if isinstance(room, dict) and isinstance(room.get("id"), str):
                    self.rooms_seen.add(room["id"])
            self._replied(message)

    def _replied(self, message: dict[str, Any]) -> bool:
        """Hand a direct reply (it carries our `ref`) to the `request` awaiting it."""
        ref = message.get("ref")
        if ref is None or not self.replies:
            return False
        reply = self.replies.pop(ref, None)
        if reply is None:
            return False
        if not reply.done():
            reply.set_result(message)
        return True

    def _on_bench_message(self, text: str, now: float) -> None:
        hub = self.hub
        hub.delivered += 1
        step = hub.step
        _, step_index, index, sender, _seq, scheduled, _ = text.split("|", 6)
        if step is None or int(step_index) != step.index:
            if step is not None:
                step.stale += 1
            return
        g, s = int(index), int(sender)
        step.delivered += 1
        if step.window_start <= now < step.window_end:
            step.delivered_in_window += 1
        seen = self.seen
        if seen[g]:
            step.duplicates += 1
            return
        seen[g] = 1
        if g < self.last_by_sender[s]:
            step.reordered += 1
        else:
            self.last_by_sender[s] = g
        sent_at = int(scheduled) / 1e6
        if step.window_start <= sent_at < step.window_end:
            step.latencies.append(now - sent_at)

    # -- sending

    def start_step(self, step: Step) -> None:
        self.seen = bytearray(step.messages)
        self.last_by_sender = [-1] * step.senders

    def send_raw(self, frame: bytes) -> None:
        if self.transport is not None and not self.transport.is_closing():
            self.transport.write(frame)

    def send_json(self, value: dict[str, Any]) -> None:
        self.send_raw(encode_frame(dumps(value)))

    async def request(self, value: dict[str, Any], timeout: float = 60) -> dict[str, Any]:
        """Send a frame with a fresh `ref` and wait for the direct reply or error carrying it."""
        self.refs += 1
        ref = f"r{self.refs}"
        reply: asyncio.Future[dict[str, Any]] = asyncio.get_running_loop().create_future()
        self.replies[ref] = reply
        self.send_json({**value, "ref": ref})
        try:
            return await asyncio.wait_for(reply, timeout)
        finally:
            self.replies.pop(ref, None)

    def close(self) -> None:
        if self.transport is not None and not self.transport.is_closing():
            self.transport.write(encode_frame((1000).to_bytes(2, "big"), OP_CLOSE))
            self.transport.close()


async def connect(
    hub: Hub,
    index: int,
    host: str,
    port: int,
    cookie: str,
    deflate: bool = False,
    wait_joined: bool = True,
) -> ChatClient:
    """Open a socket, complete the handshake, wait for `ready`, then join `general` and
    (unless `wait_joined` is false) wait for its backlog: a message stored earlier would
    arrive in the backlog, not live."""
    loop = asyncio.get_running_loop()
    _, client = await loop.create_connection(
        lambda: ChatClient(hub, index, host, port, cookie, deflate), host, port
    )
    await client.opened
    await client.ready
    client.send_json({"type": "join", "room": "general"})
    if wait_joined:
        await client.joined
    return client


@dataclass
class Storm:
    """What a reconnect storm saw: per socket, seconds from its start to `ready` and to history."""

    count: int
    spread_s: float
    ready_s: list[float] = field(default_factory=list)
    history_s: list[float] = field(default_factory=list)
    refused: Counter[str] = field(default_factory=Counter)
    failed: Counter[str] = field(default_factory=Counter)
    all_ready_s: float = 0.0
    all_history_s: float = 0.0
    clients: list[ChatClient] = field(default_factory=list)


async def storm(
    hub: Hub, host: str, port: int, cookies: list[str], count: int, interval: float
) -> Storm:
    """Open `count` sockets `interval` seconds apart, none waiting for another, each joining
    `general` once ready: what every client of a restarted server does at once."""
    result = Storm(count, interval * count)
    started = monotonic()

    async def one(index: int) -> None:
        await asyncio.sleep(max(0.0, started + index * interval - monotonic()))
        begun = monotonic()
        try:
            client = await connect(
                hub, index, host, port, cookies[index % len(cookies)], wait_joined=False
            )
        except ConnectionRefusedError as error:
            result.refused[str(error)] += 1
            return
        except (ConnectionError, OSError) as error:
            result.failed[f"before ready: {error}"] += 1
            return
        result.clients.append(client)
        ready = monotonic()
        result.ready_s.append(ready - begun)
        result.all_ready_s = max(result.all_ready_s, ready - started)
        try:
            await client.joined
        except (ConnectionError, RuntimeError) as error:
            result.failed[str(error)] += 1
            return
        joined = monotonic()
        result.history_s.append(joined - begun)
        result.all_history_s = max(result.all_history_s, joined - started)

    await asyncio.gather(*(one(i) for i in range(count)))
    return result
