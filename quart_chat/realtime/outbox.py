"""A socket's outbox: every frame to one WebSocket goes through it, bounded and never waited on.

Live frames, `ready`, history pages and errors alike are queued here without
the producer ever awaiting; a client that cannot keep up is closed with 1013
and resumes later with `join after`.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import deque

from hypercorn.typing import ASGISendCallable

from ..models.users import User
from .wire import Wire, encode_text

log = logging.getLogger(__name__)

# WebSocket close codes.
CLOSE_SERVER_ERROR = 1011
CLOSE_TRY_AGAIN_LATER = 1013
CLOSE_LOGGED_OUT = 4401
# Like HTTP 408: the client sent nothing, not even its heartbeat, for too long.
CLOSE_IDLE = 4408

# Frames waiting for one socket; the frames themselves are shared, so a full
# outbox costs a few KB of pointers, not copies.
OUTBOX_FRAMES = 512


class Outbox:
    """One WebSocket as the worker sees it: its user, session, bounded outbox, a way to close it.

    An idle socket holds no task and no buffer: the first frame delivered
    creates the outbox and a task that sends until it is empty, then both go.
    That keeps the many idle sockets of a worker small (bench/ measures it),
    while a busy one drains whole bursts in one task without waiting per frame.

    With a `Wire` (an uncompressed socket on the Hypercorn it was written for)
    a frame is written to the transport the moment it is delivered, encoded
    once for all its recipients, and nothing is queued and no task made; only
    when the transport is above its high-water mark (a slow reader) do frames
    queue here, and one task writes each batch of them once the transport has
    drained. Without one, every frame goes through the ASGI `send`.
    """

    __slots__ = (
        "_drained",
        "_frames",
        "_limit",
        "_owner",
        "_send",
        "_sender",
        "_started",
        "_wire",
        "close_code",
        "heard",
        "session_id",
        "user",
    )

    def __init__(
        self,
        user: User,
        session_id: str,
        send: ASGISendCallable,
        limit: int = OUTBOX_FRAMES,
        wire: Wire | None = None,
    ) -> None:
        # Replaced when the user renames themselves (`chat:users`): messages
        # this socket posts then carry the new name.
        self.user = user
        self.session_id = session_id
        self.close_code: int | None = None
        # When the client last sent a frame (time.monotonic()); the serving task
        # sets it and one sweep per worker reads it: no timer per socket.
        self.heard = time.monotonic()
        self._send = send
        self._wire = wire
        self._limit = limit
        self._frames: deque[str] | None = None
        self._sender: asyncio.Task[None] | None = None
        self._started = False
        self._drained: asyncio.Future[None] | None = None
        self._owner: asyncio.Task[object] | None = None

    @property
    def user_id(self) -> str:
        return self.user.id

    @property
    def started(self) -> bool:
        """True once the `ready` frame is queued: from then on it gets presence news."""
        return self._started

    def attach(self, owner: asyncio.Task[object]) -> None:
        """The task serving this socket: `close` from any other task cancels it."""
        self._owner = owner

    def start(self, first: str) -> None:
        """Begin sending: `first` (the `ready` frame), then whatever was delivered before."""
        if self.close_code is not None:
            return
        frames = self._frames
        if frames is None:
            frames = self._frames = deque()
        frames.appendleft(first)
        self._started = True
        # Silence counts from `ready`: until then the client has nothing to say,
        # and a worker busy with a burst may take a while to send it.
        self.heard = time.monotonic()
        wire = self._wire
        if wire is None:
            self._sender = asyncio.create_task(self._drain(frames))
        elif wire.congested:
            self._sender = asyncio.create_task(self._drain_wire(frames, wire))
        else:
            self._frames = None
            if wire.open:
                wire.write(b"".join([encode_text(frame) for frame in frames]))

    def deliver(self, frame: str) -> None:
        """Queue a frame without ever waiting; a full outbox closes the socket instead."""
        if self.close_code is not None:
            return
        frames = self._frames
        if frames is None:
            wire = self._wire
            if wire is not None and self._started and not wire.congested:
                # A client that is going away gets nothing more; Hypercorn tells
                # the serving task it left.
                if wire.open:
                    wire.write(encode_text(frame))
                return
            frames = self._frames = deque((frame,))
        elif len(frames) >= self._limit:
            log.info("closing a WebSocket that cannot keep up (%d frames queued)", self._limit)
            self.close(CLOSE_TRY_AGAIN_LATER)
            return
        else:
            frames.append(frame)
        if self._sender is None and self._started:
            wire = self._wire
            if wire is None:
                self._sender = asyncio.create_task(self._drain(frames))
            else:
                self._sender = asyncio.create_task(self._drain_wire(frames, wire))

    async def _drain(self, frames: deque[str]) -> None:
        send, half = self._send, self._limit // 2
        try:
            while frames:
                frame = frames.popleft()
                drained = self._drained
                if drained is not None and len(frames) <= half and not drained.done():
                    drained.set_result(None)
                await send({"type": "websocket.send", "bytes": None, "text": frame})
        except Exception:
            log.exception("sending to a WebSocket failed")
            self.close(CLOSE_SERVER_ERROR)
        finally:
            # Nothing can be delivered between the loop's last check and here.
            if self._frames is frames:
                self._frames = None
            self._sender = None

    async def _drain_wire(self, frames: deque[str], wire: Wire) -> None:
        """Write what queued while the transport was congested, a batch per drain."""
        try:
            while frames:
                await wire.drained()
                if not wire.open:
                    break
                batch = [encode_text(frame) for frame in frames]
                frames.clear()
                drained = self._drained
                if drained is not None and not drained.done():
                    drained.set_result(None)
                wire.write(b"".join(batch))
        except ConnectionError:
            pass  # the client is gone: Hypercorn tells the serving task
        except Exception:
            log.exception("sending to a WebSocket failed")
            self.close(CLOSE_SERVER_ERROR)
        finally:
            if self._frames is frames:
                self._frames = None
            self._sender = None

    async def wait_half_empty(self) -> None:
        """Pace a producer that may wait (a long backlog) so live frames still fit."""
        while (
            self._frames is not None
            and len(self._frames) > self._limit // 2
            and self.close_code is None
        ):
            self._drained = asyncio.get_running_loop().create_future()
            await self._drained

    def close(self, code: int) -> None:
        """Stop sending, and stop the serving task unless it is the caller (it checks
        `close_code` itself); the code is what the socket is then closed with."""
        if self.close_code is not None:
            return
        self.close_code = code
        self._discard(self._sender, self._owner)

    def stop(self) -> None:
        """The socket is gone: drop what was not sent."""
        self._discard(self._sender)
        self._owner = None

    def _discard(self, *tasks: asyncio.Task[object] | None) -> None:
        """Drop the unsent frames and cancel these tasks, except the one calling."""
        if self._frames is not None:
            self._frames.clear()
            self._frames = None
        current = asyncio.current_task()
        for task in tasks:
            if task is not None and task is not current:
                task.cancel()
