"""One chat WebSocket after its handshake: the `ready` frame, then its frames one at a time.

The task the server runs the socket in reads and serves client frames; frames
to the client go through the socket's `Outbox`, whose queue is drained by a
task that exists only while there is something to send. A server-side close
(`Outbox.close`: logout, a full outbox, Redis lost) cancels the serving task,
which then returns the close code; the client leaving ends the loop. Cleanup
is synchronous and in `finally`, so it runs on every path.

Every frame about a room is authorised against Redis when it arrives (like a
Campfire channel subscription, but per frame): a user removed a moment ago
gets `not_allowed`, with the same text whether or not the room exists.
Models change Redis; the frames that tell other sockets are published here,
after the model call, on the room's channel, the users' channels or
`chat:users`.
"""

from __future__ import annotations

import asyncio
import logging
import math
import time
from collections.abc import Awaitable, Callable, Iterable
from typing import Any, TypeVar

from hypercorn.typing import ASGIReceiveCallable, ASGISendCallable
from redis.exceptions import RedisError

from .. import keys
from ..models.changes import DELETE, EDIT, REACT, ChangeRefused
from ..models.messages import JOIN_BACKLOG_MAX, JOIN_LAST, JOIN_PAGE, Message, NotMember
from ..models.rooms import GENERAL, ReadState, Room, RoomError
from ..models.sessions import revoke_user_sessions, session_exists
from ..models.users import (
    InvalidName,
    User,
    is_admin,
    search_people,
    set_deactivated,
    set_name,
)
from ..ratelimit import hit_limit
from ..storage import is_refusal, raise_if_cancelled
from .announce import room_changed
from .hub import ChatHub
from .outbox import CLOSE_LOGGED_OUT, CLOSE_SERVER_ERROR, Outbox
from .protocol import (
    BAD_REQUEST,
    EVENT_ADDED,
    EVENT_ARCHIVED,
    EVENT_FRAME,
    EVENT_LEFT,
    EVENT_REMOVED,
    EVENT_TYPING,
    NO_SUCH_ROOM,
    NOT_ALLOWED,
    RATE_LIMITED,
    UNAVAILABLE,
    ClientFrame,
    Delete,
    DmOpen,
    Edit,
    FrameError,
    History,
    Join,
    Members,
    People,
    Ping,
    Profile,
    React,
    Read,
    RoomCreate,
    RoomInvite,
    RoomJoin,
    RoomLeave,
    RoomRemove,
    RoomsBrowse,
    RoomUpdate,
    Send,
    Typing,
    UserDeactivate,
    UserReactivate,
    event_payload,
    history_frame,
    members_frame,
    ok_frame,
    parse_frame,
    people_frame,
    pong_frame,
    read_frame,
    ready_frame,
    room_frame,
    room_removed_frame,
    rooms_frame,
    typing_frame,
    user_frame,
)
from .wire import Wire

log = logging.getLogger(__name__)
T = TypeVar("T")
ONLY_ADMINS = "only admins may do this"
SEND_WINDOW_SECONDS = 60
# `join` and `history` answer with up to ~100 messages each: limited per user
# (CHAT_BACKLOG_REQUESTS_PER_MINUTE, across tabs and workers). `history` and
# the lists are also limited per socket, so one runaway tab cannot use up its
# user's other tabs' share; the socket's count is in memory, so a flood from
# one socket costs no Redis call. `join` is not counted per socket: it is
# refused a second time for the same room anyway, so a socket's joins are
# bounded by its rooms, and a page that reconnects rejoins every room it had
# open at once (the page opens rooms one by one; 20 a minute is not many).
BACKLOG_WINDOW_SECONDS = 60
BACKLOG_REQUESTS_PER_SOCKET = 20
# At most one pong per this interval on a socket; pings in between are dropped
# without a word, so a ping flood costs a JSON parse each and amplifies nothing.
PONG_INTERVAL_SECONDS = 0.25
# Frames that change rooms or names publish to other users' sockets: they count
# against the user's message limit (CHAT_MESSAGES_PER_MINUTE), like a message.
WRITES = (
    Edit,
    Delete,
    React,
    RoomCreate,
    RoomJoin,
    RoomLeave,
    RoomInvite,
    RoomRemove,
    RoomUpdate,
    DmOpen,
    Profile,
    UserDeactivate,
    UserReactivate,
)
# Frames answered with a list of rooms or people: cheap reads, but answered
# with up to 50-200 entries, so limited per socket (in memory, no Redis call);
# the page searches people as one types.
LISTS = (Members, People, RoomsBrowse)
LIST_REQUESTS_PER_SOCKET = 60
# At most one `typing` published per socket per room per this interval, checked
# before any Redis call (the page sends one every 3 s, so jitter never refuses
# one of those). The first extra one in an interval is answered `rate_limited`,
# the rest are dropped without a word: a flood is not answered with a flood.
# Typing events are never stored.
TYPING_INTERVAL_SECONDS = 2.0


# (kind, refusal reason) -> the error frame's code and message.
_REFUSED: dict[tuple[str, str], tuple[str, str]] = {
    **{(kind, "not_member"): (NOT_ALLOWED, NO_SUCH_ROOM) for kind in (EDIT, DELETE, REACT)},
    **{(kind, "no_message"): (BAD_REQUEST, "no such message") for kind in (EDIT, DELETE, REACT)},
    **{
        (kind, "deleted"): (BAD_REQUEST, "the message was deleted")
        for kind in (EDIT, DELETE, REACT)
    },
    (EDIT, "not_yours"): (NOT_ALLOWED, "only its author can edit a message"),
    (DELETE, "not_yours"): (NOT_ALLOWED, "only its author or an admin can delete a message"),
    (REACT, "too_many"): (BAD_REQUEST, "a message has at most 20 different reactions"),
}


class Window:
    """A fixed-window counter in memory: at most `limit` hits per `seconds`."""

    __slots__ = ("count", "ends", "limit", "seconds")

    def __init__(self, limit: int, seconds: float) -> None:
        self.limit, self.seconds = limit, seconds
        self.count, self.ends = 0, 0.0

    def hit(self) -> int | None:
        """Count one; None if within the limit, else the seconds until the window ends."""
        now = asyncio.get_running_loop().time()
        if now >= self.ends:
            self.ends, self.count = now + self.seconds, 0
        self.count += 1
        if self.count <= self.limit:
            return None
        return max(1, math.ceil(self.ends - now))


class ChatConnection:
    __slots__ = (
        "_backlog_budget",
        "_list_budget",
        "_ponged",
        "_receive",
        "_typed",
        "admin",
        "hub",
        "outbox",
        "session_id",
    )

    def __init__(
        self,
        hub: ChatHub,
        user: User,
        session_id: str,
        send: ASGISendCallable,
        receive: ASGIReceiveCallable,
        wire: Wire | None = None,
    ) -> None:
        self.hub = hub
        self.session_id = session_id
        self.admin = is_admin(hub.settings, user)
        self._receive = receive
        self._ponged = 0.0
        self.outbox = Outbox(user, session_id, send, wire=wire)
        # Per-socket budgets, made on first use (most sockets never ask).
        self._backlog_budget: Window | None = None
        self._list_budget: Window | None = None
        # room -> when this socket's last `typing` there was published
        # (time.monotonic()), and whether one was refused since; made on the
        # first `typing`: most sockets never type.
        self._typed: dict[str, tuple[float, bool]] | None = None

    @property
    def user(self) -> User:
        """The user as of now: a rename on any tab reaches this socket's outbox."""
        return self.outbox.user

    async def serve(self) -> int | None:
        """Run until the server closes the socket (returns the close code) or the client leaves."""
        hub, outbox = self.hub, self.outbox
        user = outbox.user
        task = asyncio.current_task()
        assert task is not None
        outbox.attach(task)
        hub.fanout.add(outbox)
        if not hub.bus.subscribed:
            outbox.close(CLOSE_SERVER_ERROR)  # this worker has lost Redis
        hub.presence.add(user)
        try:
            await self._send_ready()
            # The loop is here rather than in a method of its own: an idle socket
            # waits in it, and each coroutine it waits under is a frame kept alive.
            max_chars = self.hub.settings.message_max_chars
            receive = self._receive
            while outbox.close_code is None:
                event: Any = await receive()
                kind = event["type"]
                if kind == "websocket.disconnect":
                    break
                if kind == "websocket.receive":  # not `websocket.connect`, sent first
                    await self._received(event, max_chars)
        except asyncio.CancelledError:
            # `Outbox.close` cancelled us; any other cancellation goes on up.
            if outbox.close_code is None or task.uncancel() > 0:
                raise
        finally:
            hub.fanout.remove(outbox)
            hub.presence.remove(user)
            if not hub.presence.has(user.id):
                # Their last socket here: maybe away now (the notifier re-checks).
                hub.notifier.mark_away(user.id)
            outbox.stop()
        return outbox.close_code

    # -- ready --------------------------------------------------------------------

    async def _send_ready(self) -> None:
        """`ready` once the user's channel and their rooms' channels are confirmed, so
        nothing published after the counts in it were read can be missed."""
        outbox = self.outbox
        if outbox.close_code is not None:
            return
        try:
            rooms = await self._watch_rooms()
            if rooms is None:
                return
            online = await self.hub.presence.online_json()
        except (RedisError, OSError):
            outbox.close(CLOSE_SERVER_ERROR)
            return
        raise_if_cancelled()
        user = {**self.user.public(), "admin": self.admin}
        outbox.start(ready_frame(user, rooms, online))

    async def _watch_rooms(self) -> list[dict[str, Any]] | None:
        """Subscribe what the user's sockets need, then read their rooms as of then."""
        hub, user = self.hub, self.user
        await hub.bus.ensure([keys.user_channel(user.id)])
        # A logout announced between the handshake and `add` was missed.
        if not await session_exists(hub.pipelined, self.session_id):
            self.outbox.close(CLOSE_LOGGED_OUT)
            return None
        await self._tracked(hub.rooms.rooms_of(user), lambda rooms: [room.id for room in rooms])
        # Read again once the rooms' channels are confirmed: a message posted in
        # between is then in the counts or bumps the client (or both: the client
        # ignores a bump at or below the room's `last_id`), never in neither.
        await hub.bus.ensure(hub.fanout.channels_of(user.id))
        rooms = await hub.rooms.rooms_of(user)
        states = await hub.rooms.read_states(user.id, [room.id for room in rooms])
        return [self._viewed(room, states.get(room.id)) for room in rooms]

    def _viewed(self, room: Room, state: ReadState | None) -> dict[str, Any]:
        """The room object as this user sees it, with their own fields (`unread`,
        `read_id`, ...); without a read state, everything counts as read."""
        if state is None:
            state = ReadState(room.last_id, room.seq)
        return {**room.public(self.user), **self.hub.rooms.viewer_fields(room, state)}

    # -- frames -------------------------------------------------------------------

    async def _received(self, event: Any, max_chars: int) -> None:
        """Serve one frame from the client."""
        outbox = self.outbox
        outbox.heard = time.monotonic()
        raw = event.get("text")
        if raw is None:
            raw = event.get("bytes") or b""
        try:
            await self._handle(parse_frame(raw, max_chars))
        except FrameError as error:
            outbox.deliver(error.frame())
        raise_if_cancelled()
        # Frames that arrived together are read without yielding, so
        # answers to a flood would fill the outbox (closing it with 1013)
        # before the first is sent. Waiting here instead leaves the rest
        # unread, and TCP slows the client down.
        await outbox.wait_half_empty()

    async def _handle(self, frame: ClientFrame) -> None:
        if isinstance(frame, Ping):
            self._pong(frame.ref)
            return
        client_id = frame.client_id if isinstance(frame, Send) else None
        try:
            await self._serve(frame)
        except RoomError as error:
            raise FrameError(error.code, error.message, client_id, frame.ref) from None
        except InvalidName as error:
            raise FrameError(BAD_REQUEST, str(error), ref=frame.ref) from None
        except (RedisError, OSError) as error:
            if isinstance(error, RedisError) and is_refusal(error):
                # The frame passed validation, so this is a gap in it: worth a look.
                log.warning("Redis refused a %s frame: %s", type(frame).__name__, error)
                raise FrameError(
                    BAD_REQUEST, "the server cannot serve this request", client_id, frame.ref
                ) from None
            raise FrameError(
                UNAVAILABLE, "storage is unavailable, try again", client_id, frame.ref
            ) from None

    async def _serve(self, frame: ClientFrame) -> None:
        if isinstance(frame, WRITES):
            await self._limit_writes(frame.ref)
        elif isinstance(frame, LISTS):
            self._limit_lists(frame.ref)
        match frame:
            case Send():
                await self._post(frame)
            case Join():
                await self._join(frame)
            case History():
                await self._history(frame)
            case Typing():
                await self._typing(frame)
            case Edit() | Delete() | React():
                await self._change(frame)
            case Read():
                await self._read(frame)
            case Members():
                await self._authorise(frame.room, frame.ref)
                users = await self.hub.rooms.members(frame.room)
                self.outbox.deliver(
                    members_frame(frame.room, [u.public() for u in users], frame.ref)
                )
            case RoomCreate():
                await self._room_create(frame)
            case RoomJoin():
                await self._room_join(frame)
            case RoomLeave():
                await self._room_leave(frame)
            case RoomInvite():
                await self._room_invite(frame)
            case RoomRemove():
                await self._room_remove(frame)
            case RoomUpdate():
                await self._room_update(frame)
            case DmOpen():
                await self._dm_open(frame)
            case RoomsBrowse():
                await self._rooms_browse(frame)
            case People():
                await self._people(frame)
            case Profile():
                await self._profile(frame)
            case UserDeactivate() | UserReactivate():
                await self._set_deactivated(frame)
            case Ping():
                self._pong(frame.ref)

    def _pong(self, ref: str | None) -> None:
        now = self.outbox.heard
        if now - self._ponged >= PONG_INTERVAL_SECONDS:
            self._ponged = now
            self.outbox.deliver(pong_frame(ref))

    async def _authorise(self, room: str, ref: str | None, client_id: str | None = None) -> None:
        """Redis says the user is a member of `room` (which exists), or `not_allowed`.

        Also records the membership here (`_tracked`).
        """
        member = await self._tracked(
            self.hub.rooms.is_member(room, self.user.id), lambda member: [room] if member else []
        )
        if not member:
            raise FrameError(NOT_ALLOWED, NO_SUCH_ROOM, client_id, ref)

    async def _authorise_unless_admin(self, room: str, ref: str | None) -> None:
        """Admins may change and remove members of rooms they are not in (the models
        answer `not_allowed "no such room"` for one that does not exist)."""
        if not self.admin:
            await self._authorise(room, ref)

    async def _publish(self, *messages: tuple[str, str]) -> None:
        """(channel, payload) pairs, in order, in one round trip."""
        async with self.hub.redis.pipeline(transaction=False) as pipe:
            for channel, payload in messages:
                pipe.publish(channel, payload)
            await pipe.execute()

    # -- messages -------------------------------------------------------------------

    async def _limit_writes(self, ref: str | None, client_id: str | None = None) -> None:
        """Count a message, or a change other users hear of, against the user's limit."""
        retry_after = await hit_limit(
            self.hub.redis,
            keys.user_rate_limit(self.user.id, "send"),
            self.hub.settings.messages_per_minute,
            SEND_WINDOW_SECONDS,
        )
        if retry_after is not None:
            raise FrameError(
                RATE_LIMITED, "too many messages", client_id, ref, retry_after=retry_after
            )

    async def _post(self, frame: Send) -> None:
        hub = self.hub
        await self._limit_writes(frame.ref, frame.client_id)
        # Membership is checked by the post script, in the same step as the store.
        try:
            posted = await hub.history.post(frame.room, self.user, frame.text, frame.client_id)
        except NotMember:
            raise FrameError(NOT_ALLOWED, NO_SUCH_ROOM, frame.client_id, frame.ref) from None
        # A new message reaches its sender through the room like everyone else's;
        # a retry, or a socket that has not joined the room, gets the echo directly.
        if not posted.created or not hub.fanout.is_joined(self.outbox, frame.room):
            self.outbox.deliver(posted.frame)
        if posted.created:
            await hub.notifier.posted(frame.room, self.user.id, posted.mentions)

    async def _history(self, frame: History) -> None:
        await self._authorise(frame.room, frame.ref)
        await self._limit_backlog(frame.ref)
        page = await self.hub.history.before(frame.room, frame.before, frame.limit)
        self.outbox.deliver(
            await self._history_frame(frame.room, page.messages, page.has_more, ref=frame.ref)
        )

    async def _history_frame(
        self,
        room: str,
        messages: list[Message],
        has_more: bool,
        *,
        reset: bool = False,
        ref: str | None = None,
    ) -> str:
        """A history frame with each message in its current state (edited, deleted,
        reactions), read from the room's state hash for just these ids."""
        states = await self.hub.changes.states(room, [m.id for m in messages])
        return history_frame(
            room, messages, has_more, reset=reset, ref=ref, states=states, viewer=self.user.id
        )

    async def _change(self, frame: Edit | Delete | React) -> None:
        """Edit, delete or react to a message: stored as an event in the room's stream
        and published by the change script (models/changes.py). Membership, the
        message, its author and its state are checked there, in the same step."""
        match frame:
            case Edit():
                kind, value, on = EDIT, frame.text, True
            case Delete():
                kind, value, on = DELETE, "", True
            case React():
                kind, value, on = REACT, frame.emoji, frame.on
        try:
            changed = await self.hub.changes.change(
                frame.room, self.user, frame.id, kind, value, on=on, admin=self.admin
            )
        except ChangeRefused as refused:
            raise FrameError(*_REFUSED[kind, refused.reason], ref=frame.ref) from None
        # Like a message: to the sender through the room once joined, else directly.
        if changed is not None and not self.hub.fanout.is_joined(self.outbox, frame.room):
            self.outbox.deliver(changed)
        self.outbox.deliver(ok_frame(frame.ref))

    async def _typing(self, frame: Typing) -> None:
        """Tell the room's other members with it open, unless this socket did so lately.

        An ephemeral room event: no stream id, nothing stored, so a join never
        replays it. The frame is built once here; fanout passes the text on.
        Both Redis calls go through the pipeline (one round trip for many sockets;
        a PUBLISH sent twice after a reconnect only shows the same line again).
        """
        now, room = self.outbox.heard, frame.room
        typed = self._typed
        if typed is None:
            typed = self._typed = {}
        last, refused = typed.get(room, (None, False))
        if last is not None and now - last < TYPING_INTERVAL_SECONDS:
            if refused:
                return  # a flood gets one error per window, not one per frame
            typed[room] = (last, True)
            retry_after = max(1, math.ceil(last + TYPING_INTERVAL_SECONDS - now))
            raise FrameError(
                RATE_LIMITED,
                f"typing at most once every {TYPING_INTERVAL_SECONDS:g} s per room",
                ref=frame.ref,
                retry_after=retry_after,
            )
        await self._authorise(room, frame.ref)
        typed[room] = (now, False)
        user = self.user
        payload = event_payload(EVENT_TYPING, user.id, typing_frame(room, user.id, user.name))
        await self.hub.pipelined.execute_command("PUBLISH", keys.room_channel(room), payload)

    def _limit_lists(self, ref: str | None) -> None:
        """Count a `members`, `people` or `rooms_browse` against the socket's own limit."""
        if self._list_budget is None:
            self._list_budget = Window(LIST_REQUESTS_PER_SOCKET, BACKLOG_WINDOW_SECONDS)
        retry_after = self._list_budget.hit()
        if retry_after is not None:
            raise FrameError(
                RATE_LIMITED,
                f"too many lookups; try again in {retry_after} s",
                ref=ref,
                retry_after=retry_after,
            )

    async def _limit_backlog(self, ref: str | None, *, per_socket: bool = True) -> None:
        """Count a backlog-producing request against the user's limit (and the socket's,
        unless it is a `join`)."""
        retry_after: int | None = None
        if per_socket:
            if self._backlog_budget is None:
                self._backlog_budget = Window(BACKLOG_REQUESTS_PER_SOCKET, BACKLOG_WINDOW_SECONDS)
            retry_after = self._backlog_budget.hit()
        if retry_after is None:
            # Through the pipeline: after a restart every socket joins at once.
            retry_after = await hit_limit(
                self.hub.pipelined,
                keys.user_rate_limit(self.user.id, "backlog"),
                self.hub.settings.backlog_requests_per_minute,
                BACKLOG_WINDOW_SECONDS,
            )
        if retry_after is not None:
            raise FrameError(
                RATE_LIMITED,
                f"too many join and history requests; try again in {retry_after} s",
                ref=ref,
                retry_after=retry_after,
            )

    async def _join(self, frame: Join) -> None:
        """Backlog, then live, with nothing lost or repeated in between.

        The room's channel is confirmed first, then live frames are buffered
        from before the backlog is read; once it is sent, those not already in
        it are delivered and the room goes live.
        """
        fanout, outbox, room = self.hub.fanout, self.outbox, frame.room
        await self._authorise(room, frame.ref)
        if fanout.is_joined(outbox, room):
            # It would only send the backlog again: the amplification of issue 12.
            raise FrameError(
                BAD_REQUEST, "already joined; use history for older messages", ref=frame.ref
            )
        await self._limit_backlog(frame.ref, per_socket=False)
        if not await self.hub.bus.ensure([keys.room_channel(room)]) or not fanout.begin_join(
            outbox, room
        ):
            raise FrameError(NOT_ALLOWED, NO_SUCH_ROOM, ref=frame.ref)  # removed meanwhile
        try:
            last_id = await self._backlog(frame)
        except BaseException:
            fanout.abandon_join(outbox, room)
            raise
        fanout.finish_join(outbox, room, last_id)

    async def _backlog(self, frame: Join) -> str | None:
        """Send the backlog of a join; the id of its last entry (or `after`).

        Without `after`: the newest messages in their current state. With it:
        the messages since, in their current state, then every change since
        (edit, delete, reaction frames) in stream order. A change applies as a
        "set" (text, deleted, a user's reaction on or off), so changes the
        current state already holds leave it as it is and the client ends with
        exactly the final state, whether the message is in the backlog or older.
        """
        history, room, ref = self.hub.history, frame.room, frame.ref
        if frame.after is None:
            page = await history.before(room, None, JOIN_LAST)
            self._deliver_joining(
                room, await self._history_frame(room, page.messages, page.has_more, ref=ref)
            )
            return page.last_id
        backlog = await history.entries_after(room, frame.after, JOIN_BACKLOG_MAX + 1)
        if backlog.entries > JOIN_BACKLOG_MAX:
            # Too far behind to replay: start over from the newest, like a fresh join.
            page = await history.before(room, None, JOIN_LAST)
            self._deliver_joining(
                room, await self._history_frame(room, page.messages, True, reset=True, ref=ref)
            )
            return backlog.last_id
        await self._deliver_pages(room, backlog.messages, ref)
        if backlog.changes:
            states = await self.hub.changes.states(room, [c.target for c in backlog.changes])
            for change in backlog.changes:
                state = states.get(change.target)
                # A deleted message's edits are not replayed: its text is gone.
                if state is None or not state.deleted or change.kind == DELETE:
                    self._deliver_joining(room, change.frame())
        return backlog.last_id or frame.after

    def _deliver_joining(self, room: str, frame: str) -> None:
        """Only while the join is on: a user removed meanwhile gets no more of the room."""
        if self.hub.fanout.is_joining(self.outbox, room):
            self.outbox.deliver(frame)

    async def _deliver_pages(self, room: str, messages: list[Message], ref: str | None) -> None:
        """`messages` as history frames of up to JOIN_PAGE, `has_more` on all but the last;
        paced so live frames still fit in the outbox."""
        starts = range(0, len(messages), JOIN_PAGE) if messages else range(1)
        for start in starts:
            if start:
                await self.outbox.wait_half_empty()
            end = start + JOIN_PAGE
            page = messages[start:end]
            self._deliver_joining(
                room, await self._history_frame(room, page, end < len(messages), ref=ref)
            )

    async def _read(self, frame: Read) -> None:
        """Move the read marker forward; the user's every socket hears it (this one too)."""
        await self._authorise(frame.room, frame.ref)
        rooms, user_id = self.hub.rooms, self.user.id
        state = await rooms.mark_read(user_id, frame.room, frame.id)
        room = await rooms.get(frame.room) if state is not None else None
        if state is not None and room is not None:
            fields = rooms.viewer_fields(room, state)
            read = read_frame(
                frame.room, state.read_id or frame.id, fields["unread"], fields["mentions"]
            )
            await self._publish(
                (keys.user_channel(user_id), event_payload(EVENT_FRAME, None, read))
            )
            self.outbox.deliver(ok_frame(frame.ref))
        elif frame.ref is not None:
            # Not moved: nothing to tell the other tabs, but a request that asked
            # for an answer (`ref`) gets one.
            self.outbox.deliver(ok_frame(frame.ref))

    # -- rooms --------------------------------------------------------------------

    async def _tracked(self, call: Awaitable[T], rooms: Callable[[T], Iterable[str]]) -> T:
        """Run a Redis call whose answer tells rooms this user is a member of (`rooms`),
        and watch them here at once: channel events may still be on their way. Removals
        that arrive while Redis is asked win over its answer (`Fanout.begin_load`)."""
        fanout = self.hub.fanout
        load = fanout.begin_load(self.user.id)
        try:
            result = await call
        except BaseException:
            fanout.abandon_load(load)
            raise
        fanout.finish_load(load, rooms(result))
        return result

    async def _becoming_member(self, change: Awaitable[Room]) -> Room:
        """Run a model call that makes this user a member of the room it returns."""
        return await self._tracked(change, lambda room: [room.id])

    def _added(self, room: Room, user: User | None, user_id: str) -> tuple[str, str]:
        """The user-channel payload that adds `room` to a new member's sockets."""
        viewed = {
            **room.public(user),
            **self.hub.rooms.viewer_fields(room, ReadState(room.last_id, room.seq)),
        }
        return keys.user_channel(user_id), event_payload(EVENT_ADDED, room.id, room_frame(viewed))

    def _room_changed(self, room: Room) -> tuple[str, str]:
        """To the room's members: its new name, topic or member count (no viewer fields)."""
        return room_changed(room)

    async def _reply_room(self, room: Room, ref: str | None) -> None:
        states = await self.hub.rooms.read_states(self.user.id, [room.id])
        self.outbox.deliver(room_frame(self._viewed(room, states.get(room.id)), ref))

    async def _room_create(self, frame: RoomCreate) -> None:
        rooms, user = self.hub.rooms, self.user
        room = await self._becoming_member(
            rooms.create(user, frame.kind, frame.name, frame.topic, frame.members)
        )
        member_ids = await rooms.member_ids(room.id)
        await self._publish(*(self._added(room, None, m) for m in sorted(member_ids)))
        self.outbox.deliver(room_frame(self._viewed(room, None), frame.ref))

    async def _room_join(self, frame: RoomJoin) -> None:
        user = self.user
        room = await self._becoming_member(self.hub.rooms.join(frame.room, user))
        await self._publish(self._added(room, None, user.id), self._room_changed(room))
        await self._reply_room(room, frame.ref)

    async def _dm_open(self, frame: DmOpen) -> None:
        room, created = await self._tracked(
            self.hub.rooms.open_direct(self.user, frame.users), lambda opened: [opened[0].id]
        )
        if created:
            await self._publish(*(self._added(room, m, m.id) for m in room.members))
        await self._reply_room(room, frame.ref)

    async def _room_leave(self, frame: RoomLeave) -> None:
        user_id = self.user.id
        await self._authorise(frame.room, frame.ref)
        room = await self.hub.rooms.leave(frame.room, self.user)
        await self._drop_member(room, user_id, EVENT_LEFT, "left")
        self.outbox.deliver(ok_frame(frame.ref))

    async def _room_remove(self, frame: RoomRemove) -> None:
        await self._authorise_unless_admin(frame.room, frame.ref)
        room = await self.hub.rooms.remove(frame.room, self.user, frame.user, admin=self.admin)
        await self._drop_member(room, frame.user, EVENT_REMOVED, "removed")
        self.outbox.deliver(ok_frame(frame.ref))

    async def _drop_member(self, room: Room, user_id: str, event: str, reason: str) -> None:
        """Stop the room's frames to that user's sockets here now, elsewhere by their
        channels; the other members get the new member count."""
        removed = room_removed_frame(room.id, reason)
        room_event = event_payload(event, user_id, removed)
        self.hub.fanout.room_payload(room.id, room_event)
        await self._publish(
            (keys.room_channel(room.id), room_event),
            (keys.user_channel(user_id), event_payload(EVENT_REMOVED, room.id, removed)),
            self._room_changed(room),
        )

    async def _room_invite(self, frame: RoomInvite) -> None:
        await self._authorise(frame.room, frame.ref)
        room = await self.hub.rooms.invite(frame.room, self.user, frame.user)
        await self._publish(self._added(room, None, frame.user), self._room_changed(room))
        self.outbox.deliver(ok_frame(frame.ref))

    async def _room_update(self, frame: RoomUpdate) -> None:
        await self._authorise_unless_admin(frame.room, frame.ref)
        room = await self.hub.rooms.update(
            frame.room,
            self.user,
            admin=self.admin,
            name=frame.name,
            topic=frame.topic,
            archived=frame.archived,
        )
        if room.archived:
            archived = event_payload(EVENT_ARCHIVED, None, room_removed_frame(room.id, "archived"))
            self.hub.fanout.room_payload(room.id, archived)
            await self._publish((keys.room_channel(room.id), archived))
        elif frame.archived is False and room.id != GENERAL:
            await self._unarchived(room)
        else:
            await self._publish(self._room_changed(room))
        self.outbox.deliver(ok_frame(frame.ref))

    async def _unarchived(self, room: Room) -> None:
        """Back in every member's list, with their own unread counts."""
        rooms = self.hub.rooms
        member_ids = sorted(await rooms.member_ids(room.id))
        states = await asyncio.gather(*(rooms.read_states(m, [room.id]) for m in member_ids))
        payloads = []
        for member_id, state in zip(member_ids, states, strict=True):
            viewed = {
                **room.public(),
                **rooms.viewer_fields(room, state.get(room.id) or ReadState(None, 0)),
            }
            payloads.append(
                (
                    keys.user_channel(member_id),
                    event_payload(EVENT_ADDED, room.id, room_frame(viewed)),
                )
            )
        await self._publish(*payloads)

    async def _rooms_browse(self, frame: RoomsBrowse) -> None:
        """Public rooms to join (or just the one a link names), or (`archived`) the
        archived rooms this user may restore."""
        rooms = self.hub.rooms
        if frame.archived:
            found = await rooms.browse_archived(self.user, frame.q, admin=self.admin)
        elif frame.room is not None:
            found = await rooms.browse_one(self.user.id, frame.room)
        else:
            found = await rooms.browse(self.user.id, frame.q)
        listed = [{**room.public(self.user), "member": member} for room, member in found]
        self.outbox.deliver(rooms_frame(listed, frame.ref))

    # -- people -------------------------------------------------------------------

    async def _people(self, frame: People) -> None:
        """The directory; deactivated people (to reactivate them) for admins only."""
        if frame.deactivated and not self.admin:
            raise FrameError(NOT_ALLOWED, ONLY_ADMINS, ref=frame.ref)
        users = await search_people(self.hub.pipelined, frame.q, deactivated=frame.deactivated)
        listed: list[dict[str, Any]] = [u.public() for u in users]
        if frame.deactivated:
            listed = [{**user, "deactivated": True} for user in listed]
        self.outbox.deliver(people_frame(listed, frame.ref))

    async def _profile(self, frame: Profile) -> None:
        user = await set_name(self.hub.redis, self.user, frame.name)
        self.outbox.user = user
        await self._publish((keys.USERS_CHANNEL, user_frame(user.public())))
        self.outbox.deliver(user_frame(user.public(), frame.ref))

    async def _set_deactivated(self, frame: UserDeactivate | UserReactivate) -> None:
        """Every page stops offering a deactivated user (`user` with `deactivated`)
        and offers them again once reactivated; general's member count changes."""
        if not self.admin:
            raise FrameError(NOT_ALLOWED, ONLY_ADMINS, ref=frame.ref)
        deactivate = isinstance(frame, UserDeactivate)
        if deactivate and frame.user == self.user.id:
            # Nobody would be left to undo it if this is the only admin.
            raise FrameError(BAD_REQUEST, "you cannot deactivate yourself", ref=frame.ref)
        target = await set_deactivated(self.hub.redis, frame.user, deactivate)
        if target is None:
            raise FrameError(BAD_REQUEST, "no such user", ref=frame.ref)
        if deactivate:
            # Every session deleted and announced: sockets close 4401 on every worker.
            await revoke_user_sessions(self.hub.redis, frame.user)
        general = await self.hub.rooms.get(GENERAL)
        news = [(keys.USERS_CHANNEL, user_frame({**target.public(), "deactivated": deactivate}))]
        if general is not None:
            news.append(self._room_changed(general))
        await self._publish(*news)
        self.outbox.deliver(ok_frame(frame.ref))
