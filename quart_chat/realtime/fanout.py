"""Who on this worker gets which frame: pure, synchronous bookkeeping and dispatch.

No Redis and no tasks here, so every rule is unit-tested step by step
(tests/test_fanout.py). The worker's sockets are indexed by session and by user;
each local user has the set of rooms they are a member of (as far as this worker
knows: loaded at `ready`, then kept current by room and user channel events);
each room has its local member users. A socket, per room of its user, is
- watching: gets an `unread` bump per message and the room's events;
- joining: live messages are buffered while its backlog is read (gapless join);
- joined: gets every `message` frame, and `typing` frames of the other members.
Changes to messages (edit, delete, reaction: `V` payloads) are ordered and
buffered exactly like messages for joined and joining sockets; watching
sockets get nothing for them (they are not messages: no `unread` bump).
Which channels the worker needs follows from that: a room's channel while it
has a local member, a user's channel while the user has a local socket. Every
change is told to a `ChannelListener` (the bus) at once, synchronously.

Removal takes effect here the moment its event is dispatched: the user's
sockets leave the room's sets before the next payload is looked at, so no later
frame of that room reaches them.

Typing in a room with many joined sockets here is coalesced: the first `typing`
goes out at once and opens a window of `TYPING_WINDOW_SECONDS`; whoever else
types in it is sent at its end in one frame per socket (`users`), and a typer
whose message arrived meanwhile is left out (the page ends their typing line on
the message anyway). Each typing event otherwise costs one frame per socket, as
much as a message: in a busy room of a thousand, typing alone would cost a third
more CPU than the messages (bench/mixed.py).
"""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import Callable, Collection, Iterable
from dataclasses import replace
from typing import Protocol, TypeVar

from ..keys import room_channel, user_channel
from .outbox import CLOSE_LOGGED_OUT, CLOSE_TRY_AGAIN_LATER, OUTBOX_FRAMES, Outbox
from .protocol import (
    EVENT_ADDED,
    EVENT_ARCHIVED,
    EVENT_FRAME,
    EVENT_LEFT,
    EVENT_REMOVED,
    EVENT_ROOM,
    EVENT_TYPING,
    EventPayload,
    MessagePayload,
    encode,
    mention_fields,
    parse_payload,
    stream_id_key,
    unread_frame,
)

log = logging.getLogger(__name__)
K = TypeVar("K")
V = TypeVar("V")

# Rooms with at least this many joined sockets on the worker coalesce typing.
TYPING_COALESCE_SOCKETS = 50
# The page shows a typer for 5 s and hears from them every 3 s: a second's delay
# leaves the line steady.
TYPING_WINDOW_SECONDS = 1.0
# `later(delay, callback)`: loop.call_later by default; the tests pass their own.
Later = Callable[[float, Callable[[], None]], object]


class ChannelListener(Protocol):
    """Told when a channel becomes needed and when it no longer is."""

    def want(self, channel: str) -> None: ...

    def unwant(self, channel: str) -> None: ...


class _Joining:
    """A join in progress: live frames buffered while the backlog is read, then the
    backlog's last id, below which late-arriving live frames are dropped."""

    __slots__ = ("buffer", "floor")

    def __init__(self) -> None:
        self.buffer: list[tuple[str, str]] | None = []
        self.floor: tuple[int, int] | None = None


class RoomLoad:
    """A user's rooms being read from Redis for a `ready`: membership events that arrive
    meanwhile are noted, so a stale read cannot bring back a room the user just left."""

    __slots__ = ("events", "user_id")

    def __init__(self, user_id: str) -> None:
        self.user_id = user_id
        # room -> True (added) / False (removed), the last event seen during the load.
        self.events: dict[str, bool] = {}


class Fanout:
    def __init__(
        self,
        channels: ChannelListener,
        buffer_limit: int = OUTBOX_FRAMES,
        later: Later | None = None,
    ) -> None:
        self.channels = channels
        self.buffer_limit = buffer_limit
        self._later = later
        # Rooms in a typing window: typer id -> their `user` object, in arrival order.
        self._typers: dict[str, dict[str, dict[str, str]]] = {}
        self.outboxes: set[Outbox] = set()
        self._sessions: dict[str, set[Outbox]] = {}
        self._users: dict[str, set[Outbox]] = {}
        self._user_rooms: dict[str, set[str]] = {}
        self._room_users: dict[str, set[str]] = {}
        self._joined: dict[str, set[Outbox]] = {}
        self._joining: dict[str, dict[Outbox, _Joining]] = {}
        self._loads: dict[str, list[RoomLoad]] = {}
        # Set by `close_all`: the code every socket added from then on is closed with.
        self._closing: int | None = None

    # -- sockets ----------------------------------------------------------------

    @property
    def closing(self) -> bool:
        """True once `close_all` ran: the worker is stopping and takes no new sockets."""
        return self._closing is not None

    def add(self, outbox: Outbox) -> None:
        self.outboxes.add(outbox)
        self._sessions.setdefault(outbox.session_id, set()).add(outbox)
        user_id = outbox.user_id
        same_user = self._users.get(user_id)
        if same_user is None:
            self._users[user_id] = {outbox}
            self._user_rooms[user_id] = set()
            self.channels.want(user_channel(user_id))
        else:
            same_user.add(outbox)
        if self._closing is not None:
            outbox.close(self._closing)

    def remove(self, outbox: Outbox) -> None:
        if outbox not in self.outboxes:
            return
        self.outboxes.discard(outbox)
        _discard(self._sessions, outbox.session_id, outbox)
        user_id = outbox.user_id
        for room in self._user_rooms.get(user_id, ()):
            _discard(self._joined, room, outbox)
            self._leave_joining(outbox, room)
        if _discard(self._users, user_id, outbox):
            for room in list(self._user_rooms[user_id]):
                self._drop_room(user_id, room)
            del self._user_rooms[user_id]
            self.channels.unwant(user_channel(user_id))

    def close_all(self, code: int) -> None:
        """The worker is going away: close every socket with `code`, now and from now on."""
        self._closing = code
        self.close_every(code)

    def close_every(self, code: int) -> None:
        for outbox in list(self.outboxes):
            outbox.close(code)

    def close_session(self, session_id: str, code: int = CLOSE_LOGGED_OUT) -> None:
        for outbox in list(self._sessions.get(session_id, ())):
            outbox.close(code)

    def sessions(self) -> list[str]:
        return list(self._sessions)

    def close_idle(self, deadline: float, code: int) -> int:
        """Close started sockets not heard from since `deadline` (time.monotonic())."""
        silent = [o for o in self.outboxes if o.started and o.heard < deadline]
        for outbox in silent:
            outbox.close(code)
        return len(silent)

    # -- membership ---------------------------------------------------------------

    def begin_load(self, user_id: str) -> RoomLoad:
        """Call before reading the user's rooms from Redis (after its channel is subscribed)."""
        load = RoomLoad(user_id)
        self._loads.setdefault(user_id, []).append(load)
        return load

    def finish_load(self, load: RoomLoad, room_ids: Iterable[str]) -> None:
        """Watch the rooms read, except those the user was removed from meanwhile."""
        loads = self._loads.get(load.user_id)
        if loads is None or load not in loads:
            return
        loads.remove(load)
        if not loads:
            del self._loads[load.user_id]
        for room in room_ids:
            if load.events.get(room, True):
                self.add_room(load.user_id, room)

    def abandon_load(self, load: RoomLoad) -> None:
        loads = self._loads.get(load.user_id)
        if loads is not None and load in loads:
            loads.remove(load)
            if not loads:
                del self._loads[load.user_id]

    def add_room(self, user_id: str, room: str) -> bool:
        """The user is a member of `room`: their local sockets watch it. False if the user
        has no socket here (nothing to do) or already had it."""
        rooms = self._user_rooms.get(user_id)
        if rooms is None or room in rooms:
            return False
        rooms.add(room)
        users = self._room_users.get(room)
        if users is None:
            self._room_users[room] = {user_id}
            self.channels.want(room_channel(room))
        else:
            users.add(user_id)
        return True

    def is_member(self, user_id: str, room: str) -> bool:
        """As far as this worker knows; authorisation always asks Redis."""
        return room in self._user_rooms.get(user_id, ())

    def rooms_of(self, user_id: str) -> set[str]:
        return set(self._user_rooms.get(user_id, ()))

    def channels_of(self, user_id: str) -> list[str]:
        """The channels a socket of this user needs confirmed before it is `ready`."""
        return [user_channel(user_id)] + [
            room_channel(r) for r in self._user_rooms.get(user_id, ())
        ]

    def _note(self, user_id: str, room: str, added: bool) -> None:
        for load in self._loads.get(user_id, ()):
            load.events[room] = added

    def _drop_room(self, user_id: str, room: str) -> bool:
        """The user is no longer a member here: none of their sockets gets the room's frames."""
        rooms = self._user_rooms.get(user_id)
        if rooms is None or room not in rooms:
            return False
        rooms.discard(room)
        for outbox in self._users.get(user_id, ()):
            _discard(self._joined, room, outbox)
            self._leave_joining(outbox, room)
        if _discard(self._room_users, room, user_id):
            self.channels.unwant(room_channel(room))
        return True

    # -- joins --------------------------------------------------------------------

    def is_joined(self, outbox: Outbox, room: str) -> bool:
        """Joined or joining: a second `join` would only send the backlog again."""
        return outbox in self._joined.get(room, ()) or outbox in self._joining.get(room, {})

    def is_joining(self, outbox: Outbox, room: str) -> bool:
        return outbox in self._joining.get(room, {})

    def begin_join(self, outbox: Outbox, room: str) -> bool:
        """Buffer the room's live messages for this socket; call once the room's channel is
        confirmed and before reading the backlog. False if the user is not a member here."""
        if not self.is_member(outbox.user_id, room):
            return False
        _discard(self._joined, room, outbox)
        self._joining.setdefault(room, {})[outbox] = _Joining()
        return True

    def finish_join(self, outbox: Outbox, room: str, last_id: str | None) -> None:
        """Deliver buffered frames newer than the backlog's last id, then go live.

        A frame the backlog already held may still be on its way from Redis
        (it was published before the backlog was read, but not yet received),
        so until the first newer frame arrives, live frames are filtered too.
        Pub/sub order is stream order, so after that first one none can be old.
        """
        state = self._joining.get(room, {}).get(outbox)
        if state is None or state.buffer is None:
            return  # closed or removed meanwhile
        buffered, state.buffer = state.buffer, None
        if last_id is None:
            newer = [frame for _, frame in buffered]
        else:
            state.floor = stream_id_key(last_id)
            newer = [frame for i, frame in buffered if stream_id_key(i) > state.floor]
        for frame in newer:
            outbox.deliver(frame)
        if newer or last_id is None:
            self._go_live(outbox, room)

    def abandon_join(self, outbox: Outbox, room: str) -> None:
        self._leave_joining(outbox, room)

    def _go_live(self, outbox: Outbox, room: str) -> None:
        self._leave_joining(outbox, room)
        self._joined.setdefault(room, set()).add(outbox)

    def _leave_joining(self, outbox: Outbox, room: str) -> None:
        joining = self._joining.get(room)
        if joining is not None:
            joining.pop(outbox, None)
            if not joining:
                del self._joining[room]

    # -- dispatch -------------------------------------------------------------------

    def room_payload(self, room: str, data: str) -> None:
        payload = parse_payload(data)
        if isinstance(payload, MessagePayload):
            self._message(room, payload)
        elif isinstance(payload, EventPayload):
            self._room_event(room, payload)
        else:
            log.warning("ignored a payload on room %s's channel: %.60r", room, data)

    def user_payload(self, user_id: str, data: str) -> None:
        payload = parse_payload(data)
        if not isinstance(payload, EventPayload):
            log.warning("ignored a payload on a user channel: %.60r", data)
            return
        kind, room, frame = payload.kind, payload.arg, payload.frame
        if kind == EVENT_FRAME:
            self._to_user(user_id, frame)
        elif kind == EVENT_ADDED and room is not None:
            self._note(user_id, room, True)
            self.add_room(user_id, room)
            # Also when this worker added it already (the requesting socket): the
            # user's other sockets learn of the room only from this frame.
            self._to_user(user_id, frame)
        elif kind == EVENT_REMOVED and room is not None:
            self._note(user_id, room, False)
            if self._drop_room(user_id, room):
                self._to_user(user_id, frame)
        else:
            log.warning("ignored a %r event on a user channel", kind)

    def broadcast(self, frame: str) -> None:
        """To every started socket (presence, renames): a socket still to send `ready`
        gets the current state in it."""
        for outbox in self.outboxes:
            if outbox.started:
                outbox.deliver(frame)

    def user_changed(self, frame: str) -> None:
        """A `user` frame from `chat:users`: every socket hears it, and the user's own
        sockets post under the new name from now on."""
        try:
            user = json.loads(frame)["user"]
            user_id, name = user["id"], user["name"]
        except (ValueError, KeyError, TypeError):
            log.warning("ignored a malformed user frame: %.60r", frame)
            return
        for outbox in self._users.get(user_id, ()):
            outbox.user = replace(outbox.user, name=name)
        self.broadcast(frame)

    def _to_user(self, user_id: str, frame: str) -> None:
        for outbox in self._users.get(user_id, ()):
            outbox.deliver(frame)

    def _to_members(self, room: str, frame: str) -> None:
        for user_id in self._room_users.get(room, ()):
            self._to_user(user_id, frame)

    def _room_event(self, room: str, event: EventPayload) -> None:
        kind, frame = event.kind, event.frame
        if kind == EVENT_TYPING:
            self._typing(room, event.arg, frame)
        elif kind == EVENT_ROOM:
            self._to_members(room, frame)
        elif kind in (EVENT_LEFT, EVENT_REMOVED) and event.arg is not None:
            self._note(event.arg, room, False)
            if self._drop_room(event.arg, room):
                self._to_user(event.arg, frame)
        elif kind == EVENT_ARCHIVED:
            for user_id in list(self._room_users.get(room, ())):
                self._note(user_id, room, False)
                self._drop_room(user_id, room)
                self._to_user(user_id, frame)
        else:
            log.warning("ignored a %r event on room %s's channel", kind, room)

    def _viewers(self, room: str) -> Collection[Outbox]:
        """Sockets with the room open and its backlog sent: joined ones, and joining
        ones past their backlog that still filter live frames against it (until the
        room's next message, which may be a long time in a quiet room)."""
        joined = self._joined.get(room, set())
        joining = self._joining.get(room)
        if not joining:
            return joined
        past = [outbox for outbox, state in joining.items() if state.buffer is None]
        return [*joined, *past] if past else joined

    def _typing(self, room: str, typer: str | None, frame: str) -> None:
        """Only to sockets with the room open, never to any of the typer's.

        It has no stream id and is never stored: a socket still reading its
        backlog does not get it (a typing line shown before the backlog would be
        stale or wrong), and watching sockets have no room view to show it in.
        """
        joined = self._viewers(room)
        if not joined:
            return
        pending = self._typers.get(room)
        if pending is not None:
            if typer is not None:
                pending.pop(typer, None)  # in arrival order: the newest last
                pending[typer] = _typing_user(frame)
            return
        for outbox in joined:
            if outbox.user_id != typer:
                outbox.deliver(frame)
        if len(joined) >= TYPING_COALESCE_SOCKETS:
            self._open_typing_window(room)

    def _open_typing_window(self, room: str) -> None:
        self._typers[room] = {}
        later = self._later or asyncio.get_running_loop().call_later
        later(TYPING_WINDOW_SECONDS, lambda: self.flush_typing(room))

    def flush_typing(self, room: str) -> None:
        """End the room's typing window: one frame per joined socket naming who typed in
        it (never the socket's own user), then another window if anyone had."""
        pending = self._typers.pop(room, None)
        joined = self._viewers(room)
        if not pending or not joined:
            return
        frames: dict[str | None, str | None] = {}
        for outbox in joined:
            own = outbox.user_id if outbox.user_id in pending else None
            frame = frames.get(own, "")
            if frame == "":
                frame = frames[own] = _typing_frame(room, pending, own)
            if frame is not None:
                outbox.deliver(frame)
        self._open_typing_window(room)

    def _message(self, room: str, message: MessagePayload) -> None:
        users = self._room_users.get(room)
        if not users:
            return  # a message in flight when the last member here went
        pending = self._typers.get(room)
        if pending and not message.change:
            pending.pop(message.author, None)  # their message ends their typing
        joined = self._joined.get(room, ())
        joining = self._joining.get(room)
        frame = message.frame
        unread: str | None = None
        caught_up: list[Outbox] = []
        for user_id in users:
            for outbox in self._users[user_id]:
                if outbox in joined:
                    outbox.deliver(frame)
                elif joining is not None and outbox in joining:
                    if self._joining_message(outbox, joining[outbox], message):
                        caught_up.append(outbox)
                elif not message.change:
                    if unread is None:
                        unread = unread_frame(
                            room, message.id, message.author, mention_fields(frame)
                        )
                    outbox.deliver(unread)
        for outbox in caught_up:
            self._go_live(outbox, room)

    def _joining_message(self, outbox: Outbox, state: _Joining, message: MessagePayload) -> bool:
        """Buffer or deliver a message to a joining socket; True once it is caught up."""
        if state.buffer is not None:
            if len(state.buffer) >= self.buffer_limit:
                outbox.close(CLOSE_TRY_AGAIN_LATER)
            else:
                state.buffer.append((message.id, message.frame))
            return False
        if state.floor is None or stream_id_key(message.id) > state.floor:
            outbox.deliver(message.frame)
            return True
        return False


def _typing_user(frame: str) -> dict[str, str]:
    user: dict[str, str] = json.loads(frame)["user"]
    return user


def _typing_frame(room: str, typers: dict[str, dict[str, str]], own: str | None) -> str | None:
    """Who typed, for a socket of `own` (left out): the one-typer frame when one did,
    with `users` when several did, None when nobody else."""
    users = [user for user_id, user in typers.items() if user_id != own]
    if not users:
        return None
    if len(users) == 1:
        return encode({"type": "typing", "room": room, "user": users[0]})
    return encode({"type": "typing", "room": room, "user": users[-1], "users": users})


def _discard(index: dict[K, set[V]], key: K, value: V) -> bool:
    """Remove `value` from `index[key]`; True if that left the set empty (and gone)."""
    values = index.get(key)
    if values is None or value not in values:
        return False
    values.discard(value)
    if values:
        return False
    del index[key]
    return True
