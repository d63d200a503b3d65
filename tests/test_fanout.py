"""The worker's fan-out, step by step: which socket gets which frame, which channels the
worker needs, and the gapless join, with no Redis and no sleeps.

Sockets are real `Outbox`es that have not sent `ready`: what they are given
stays queued, so a test reads exactly what each one would send, in order.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable

import pytest

from quart_chat.keys import room_channel, user_channel
from quart_chat.models.messages import Message
from quart_chat.models.users import User
from quart_chat.realtime.fanout import TYPING_WINDOW_SECONDS, Fanout
from quart_chat.realtime.outbox import CLOSE_LOGGED_OUT, CLOSE_TRY_AGAIN_LATER, Outbox
from quart_chat.realtime.protocol import (
    event_payload,
    message_frame,
    message_payload,
    room_frame,
    room_removed_frame,
    typing_frame,
    unread_frame,
    user_frame,
)

ANN = User(id="ann", name="Ann", email="ann@example.com")
BOB = User(id="bob", name="Bob", email="bob@example.com")
DAN = User(id="dan", name="Dan", email="dan@example.com")


class Channels:
    """The bus as the fan-out sees it: what is wanted now, and every change in order."""

    def __init__(self) -> None:
        self.wanted: set[str] = set()
        self.log: list[str] = []

    def want(self, channel: str) -> None:
        assert channel not in self.wanted, f"{channel} wanted twice"
        self.wanted.add(channel)
        self.log.append(f"+{channel}")

    def unwant(self, channel: str) -> None:
        assert channel in self.wanted, f"{channel} unwanted but not wanted"
        self.wanted.discard(channel)
        self.log.append(f"-{channel}")


async def _ignore(message: object) -> None:
    raise AssertionError("an unstarted outbox sends nothing")


def socket(fanout: Fanout, user: User, session: str = "s") -> Outbox:
    outbox = Outbox(user, f"{user.id}-{session}", _ignore)
    fanout.add(outbox)
    return outbox


def sent(outbox: Outbox) -> list[str]:
    """What the socket was given since the last call (and clears it)."""
    frames = list(outbox._frames or ())
    if outbox._frames is not None:
        outbox._frames.clear()
    return frames


def watch(fanout: Fanout, user: User, *rooms: str) -> None:
    fanout.finish_load(fanout.begin_load(user.id), rooms)


def message(room: str, message_id: str, author: str = "bob") -> tuple[str, str]:
    """A message's frame and its room channel payload, as the post script makes them."""
    frame = json.dumps({"type": "message", "room": room, "id": message_id, "text": message_id})
    return frame, message_payload(message_id, author, frame)


@pytest.fixture
def channels() -> Channels:
    return Channels()


@pytest.fixture
def fanout(channels: Channels) -> Fanout:
    return Fanout(channels, buffer_limit=4)


async def test_a_users_channel_is_wanted_while_they_have_a_socket(
    fanout: Fanout, channels: Channels
) -> None:
    first = socket(fanout, ANN, "1")
    second = socket(fanout, ANN, "2")
    assert channels.wanted == {user_channel("ann")}
    fanout.remove(first)
    assert channels.wanted == {user_channel("ann")}
    fanout.remove(second)
    fanout.remove(second)  # twice is harmless
    assert channels.wanted == set()
    assert channels.log == [f"+{user_channel('ann')}", f"-{user_channel('ann')}"]


async def test_a_rooms_channel_is_wanted_while_a_local_member_has_a_socket(
    fanout: Fanout, channels: Channels
) -> None:
    ann, bob = socket(fanout, ANN), socket(fanout, BOB)
    watch(fanout, ANN, "general", "r1")
    watch(fanout, BOB, "general")
    assert channels.wanted == {
        user_channel("ann"),
        user_channel("bob"),
        room_channel("general"),
        room_channel("r1"),
    }
    fanout.remove(ann)
    assert channels.wanted == {user_channel("bob"), room_channel("general")}
    fanout.remove(bob)
    assert channels.wanted == set()
    assert fanout.channels_of("ann") == [user_channel("ann")]


async def test_a_room_of_a_user_without_a_socket_here_is_not_watched(
    fanout: Fanout, channels: Channels
) -> None:
    assert not fanout.add_room("ann", "r1")
    assert channels.wanted == set()


async def test_joined_sockets_get_the_message_and_watching_ones_one_shared_unread_bump(
    fanout: Fanout,
) -> None:
    joined, watching = socket(fanout, ANN, "1"), socket(fanout, ANN, "2")
    other = socket(fanout, BOB)
    watch(fanout, ANN, "general")
    watch(fanout, BOB, "general")
    assert fanout.begin_join(joined, "general")
    fanout.finish_join(joined, "general", None)
    frame, payload = message("general", "5-0")
    fanout.room_payload("general", payload)
    assert sent(joined) == [frame]
    bumps = sent(watching) + sent(other)
    assert bumps == [unread_frame("general", "5-0", "bob")] * 2
    assert bumps[0] is bumps[1]  # built once per message
    assert json.loads(bumps[0]) == {"type": "unread", "room": "general", "id": "5-0", "user": "bob"}


@pytest.mark.parametrize("everyone", [False, True])
async def test_the_shared_unread_bump_carries_the_messages_mentions(
    fanout: Fanout, everyone: bool
) -> None:
    watching, other = socket(fanout, ANN), socket(fanout, DAN)
    watch(fanout, ANN, "general")
    watch(fanout, DAN, "general")
    # Text that looks like the field must not confuse the bump (it is escaped).
    stored = Message(
        "general", "7-0", "bob", "Bob", 'say "mentions":["dan"] @Ann', "c1", ("ann",), everyone
    )
    fanout.room_payload("general", message_payload("7-0", "bob", message_frame(stored)))
    bumps = sent(watching) + sent(other)
    assert bumps[0] is bumps[1]
    expected = {"type": "unread", "room": "general", "id": "7-0", "user": "bob"}
    expected["mentions"] = ["ann"]
    if everyone:
        expected["everyone"] = True
    assert [json.loads(bump) for bump in bumps] == [expected] * 2


async def test_a_change_reaches_joined_sockets_in_order_and_never_bumps_a_watching_one(
    fanout: Fanout,
) -> None:
    joined, joining, watching = (socket(fanout, ANN, str(n)) for n in (1, 2, 3))
    watch(fanout, ANN, "general")
    assert fanout.begin_join(joined, "general")
    fanout.finish_join(joined, "general", None)
    assert fanout.begin_join(joining, "general")
    posted, post = message("general", "5-0")
    edit = json.dumps({"type": "edit", "room": "general", "id": "6-0", "target": "5-0"})
    react = json.dumps({"type": "reaction", "room": "general", "id": "7-0", "target": "5-0"})
    for payload in (post, f"V 6-0 bob {edit}", f"V 7-0 bob {react}"):
        fanout.room_payload("general", payload)
    assert sent(joined) == [posted, edit, react]
    assert sent(watching) == [unread_frame("general", "5-0", "bob")]  # the message only
    # A joining socket buffers changes with messages and keeps those after its backlog.
    fanout.finish_join(joining, "general", "6-0")
    assert sent(joining) == [react]


async def test_a_message_in_a_room_without_local_members_reaches_nobody(fanout: Fanout) -> None:
    ann = socket(fanout, ANN)
    watch(fanout, ANN, "general")
    fanout.room_payload("secret", message("secret", "1-0")[1])
    assert sent(ann) == []


async def test_a_join_buffers_then_delivers_only_what_the_backlog_did_not_hold(
    fanout: Fanout,
) -> None:
    ann = socket(fanout, ANN)
    watch(fanout, ANN, "general")
    assert fanout.begin_join(ann, "general")
    frames = {}
    for n in (1, 2, 3):
        frames[n], payload = message("general", f"{n}-0")
        fanout.room_payload("general", payload)
    assert sent(ann) == []  # buffered while the backlog is read
    fanout.finish_join(ann, "general", "2-0")  # the backlog ended at 2-0
    assert sent(ann) == [frames[3]]
    assert fanout.is_joined(ann, "general")
    late, payload = message("general", "4-0")
    fanout.room_payload("general", payload)
    assert sent(ann) == [late]


async def test_frames_the_backlog_held_but_still_in_flight_are_dropped_until_a_newer_one(
    fanout: Fanout,
) -> None:
    ann = socket(fanout, ANN)
    watch(fanout, ANN, "general")
    fanout.begin_join(ann, "general")
    fanout.finish_join(ann, "general", "7-0")  # nothing arrived while reading
    assert fanout.is_joining(ann, "general")
    for n in (6, 7):
        fanout.room_payload("general", message("general", f"{n}-0")[1])
    assert sent(ann) == []
    newer, payload = message("general", "8-0")
    fanout.room_payload("general", payload)
    assert sent(ann) == [newer]
    assert not fanout.is_joining(ann, "general") and fanout.is_joined(ann, "general")


async def test_a_join_of_an_empty_room_goes_live_with_everything_buffered(
    fanout: Fanout,
) -> None:
    ann = socket(fanout, ANN)
    watch(fanout, ANN, "general")
    fanout.begin_join(ann, "general")
    first, payload = message("general", "1-0")
    fanout.room_payload("general", payload)
    fanout.finish_join(ann, "general", None)
    assert sent(ann) == [first]
    assert fanout.is_joined(ann, "general") and not fanout.is_joining(ann, "general")


async def test_a_join_buffer_that_overflows_closes_the_socket_with_1013(fanout: Fanout) -> None:
    ann = socket(fanout, ANN)
    watch(fanout, ANN, "general")
    fanout.begin_join(ann, "general")
    for n in range(1, 6):  # buffer_limit is 4
        fanout.room_payload("general", message("general", f"{n}-0")[1])
    assert ann.close_code == CLOSE_TRY_AGAIN_LATER


async def test_only_a_member_here_can_begin_a_join(fanout: Fanout) -> None:
    ann = socket(fanout, ANN)
    watch(fanout, ANN, "general")
    assert not fanout.begin_join(ann, "secret")
    assert not fanout.is_joined(ann, "secret")


async def test_removal_stops_the_rooms_frames_to_every_socket_of_that_user_at_once(
    fanout: Fanout, channels: Channels
) -> None:
    joined, joining, watching = (socket(fanout, ANN, s) for s in "123")
    bob = socket(fanout, BOB)
    watch(fanout, ANN, "general", "r1")
    watch(fanout, BOB, "r1")
    fanout.begin_join(joined, "r1")
    fanout.finish_join(joined, "r1", None)
    fanout.begin_join(joining, "r1")
    removed = room_removed_frame("r1", "removed")
    fanout.room_payload("r1", event_payload("removed", "ann", removed))
    for outbox in (joined, joining, watching):
        assert sent(outbox) == [removed]
        assert not fanout.is_joined(outbox, "r1")
    fanout.finish_join(joining, "r1", None)  # the join in progress ends: nothing
    fanout.room_payload("r1", message("r1", "9-0")[1])
    for outbox in (joined, joining, watching):
        assert sent(outbox) == []
    assert sent(bob) == [unread_frame("r1", "9-0", "bob")]
    assert not fanout.is_member("ann", "r1") and fanout.is_member("ann", "general")
    assert room_channel("r1") in channels.wanted  # Bob still needs it
    fanout.room_payload("r1", event_payload("left", "bob", room_removed_frame("r1", "left")))
    assert room_channel("r1") not in channels.wanted


async def test_removal_seen_on_both_channels_is_delivered_once(fanout: Fanout) -> None:
    ann = socket(fanout, ANN)
    watch(fanout, ANN, "r1")
    removed = room_removed_frame("r1", "removed")
    fanout.user_payload("ann", event_payload("removed", "r1", removed))
    fanout.room_payload("r1", event_payload("removed", "ann", removed))
    assert sent(ann) == [removed]


async def test_an_invite_adds_the_room_to_every_socket_of_the_user(
    fanout: Fanout, channels: Channels
) -> None:
    first, second = socket(fanout, ANN, "1"), socket(fanout, ANN, "2")
    watch(fanout, ANN, "general")
    added = room_frame({"id": "r2", "name": "plans", "unread": 0})
    fanout.user_payload("ann", event_payload("added", "r2", added))
    assert sent(first) == sent(second) == [added]
    assert room_channel("r2") in channels.wanted
    fanout.room_payload("r2", message("r2", "3-0")[1])
    assert sent(first) == sent(second) == [unread_frame("r2", "3-0", "bob")]


async def test_an_added_event_reaches_the_other_tabs_even_when_this_worker_added_the_room(
    fanout: Fanout,
) -> None:
    requester, other_tab = socket(fanout, ANN, "1"), socket(fanout, ANN, "2")
    fanout.add_room("ann", "r3")  # the connection that created it, at once
    added = room_frame({"id": "r3"})
    fanout.user_payload("ann", event_payload("added", "r3", added))
    assert sent(other_tab) == [added]
    assert sent(requester) == [added]


async def test_a_room_event_reaches_every_socket_of_every_member_whatever_its_state(
    fanout: Fanout,
) -> None:
    joined, watching = socket(fanout, ANN, "1"), socket(fanout, ANN, "2")
    joining, outsider = socket(fanout, BOB), socket(fanout, User("cy", "Cy", "cy@x"))
    watch(fanout, ANN, "r1")
    watch(fanout, BOB, "r1")
    fanout.begin_join(joined, "r1")
    fanout.finish_join(joined, "r1", None)
    fanout.begin_join(joining, "r1")
    changed = room_frame({"id": "r1", "name": "renamed"})
    fanout.room_payload("r1", event_payload("room", None, changed))
    assert sent(joined) == sent(watching) == sent(joining) == [changed]
    assert sent(outsider) == []


def typing(room: str, user: User) -> tuple[str, str]:
    """A typing frame and its room channel payload, as the connection makes them."""
    frame = typing_frame(room, user.id, user.name)
    return frame, event_payload("typing", user.id, frame)


def joined(fanout: Fanout, outbox: Outbox, room: str) -> None:
    assert fanout.begin_join(outbox, room)
    fanout.finish_join(outbox, room, None)


async def test_typing_reaches_only_other_members_sockets_that_joined_the_room(
    fanout: Fanout,
) -> None:
    ann1, ann2, ann_watching = (socket(fanout, ANN, s) for s in ("1", "2", "3"))
    bob1, bob2 = socket(fanout, BOB, "1"), socket(fanout, BOB, "2")
    cy_joining, outsider = socket(fanout, User("cy", "Cy", "cy@x")), socket(fanout, DAN)
    watch(fanout, ANN, "r1")
    watch(fanout, BOB, "r1")
    watch(fanout, User("cy", "Cy", "cy@x"), "r1")
    watch(fanout, DAN, "general")
    for outbox in (ann1, ann2, bob1, bob2):
        joined(fanout, outbox, "r1")
    assert fanout.begin_join(cy_joining, "r1")
    frame, payload = typing("r1", BOB)
    fanout.room_payload("r1", payload)
    got = sent(ann1) + sent(ann2)
    assert got == [frame, frame] and got[0] is got[1]  # one string for every socket
    assert json.loads(frame) == {
        "type": "typing",
        "room": "r1",
        "user": {"id": "bob", "name": "Bob"},
    }
    # Never the typer's own tabs; not a room merely watched or still joining; not others.
    assert sent(bob1) == sent(bob2) == sent(ann_watching) == sent(cy_joining) == []
    assert sent(outsider) == []


async def test_typing_reaches_a_socket_that_opened_a_quiet_room_with_history(
    fanout: Fanout,
) -> None:
    """After a join with a backlog a socket filters live frames against the backlog's last
    id until the room's next message; in a quiet room that can be a long time, and typing
    (which has no id) must not wait for it: someone typing is what comes first."""
    ann, bob = socket(fanout, ANN), socket(fanout, BOB)
    watch(fanout, ANN, "r1")
    watch(fanout, BOB, "r1")
    for outbox in (ann, bob):
        assert fanout.begin_join(outbox, "r1")
        fanout.finish_join(outbox, "r1", "5-0")  # history, and nothing new since
    assert fanout.is_joining(ann, "r1")
    frame, payload = typing("r1", BOB)
    fanout.room_payload("r1", payload)
    assert sent(ann) == [frame]
    assert sent(bob) == []


async def test_typing_stops_at_once_for_a_removed_member(fanout: Fanout) -> None:
    ann = socket(fanout, ANN)
    watch(fanout, ANN, "r1")
    joined(fanout, ann, "r1")
    removed = room_removed_frame("r1", "removed")
    fanout.room_payload("r1", event_payload("removed", "ann", removed))
    assert sent(ann) == [removed]
    fanout.room_payload("r1", typing("r1", BOB)[1])
    assert sent(ann) == []


async def test_typing_during_a_join_leaves_the_gapless_join_as_it_was(fanout: Fanout) -> None:
    """Typing carries no stream id: not buffered, not compared with the backlog's last id,
    and it neither ends the join's filtering nor is taken for the first newer message."""
    ann = socket(fanout, ANN)
    watch(fanout, ANN, "general")
    fanout.begin_join(ann, "general")
    frames = {}
    for n in (1, 2):
        frames[n], payload = message("general", f"{n}-0")
        fanout.room_payload("general", payload)
        fanout.room_payload("general", typing("general", BOB)[1])
    assert sent(ann) == []
    fanout.finish_join(ann, "general", "1-0")
    assert sent(ann) == [frames[2]]
    assert fanout.is_joined(ann, "general")

    other = socket(fanout, ANN, "2")
    fanout.begin_join(other, "general")
    fanout.finish_join(other, "general", "7-0")  # still filtering in-flight old messages
    for n in (6, 7):
        fanout.room_payload("general", typing("general", BOB)[1])
        fanout.room_payload("general", message("general", f"{n}-0")[1])
    # Its backlog is sent: typing reaches it; the old messages are still filtered out.
    typed_early = typing("general", BOB)[0]
    assert sent(other) == [typed_early, typed_early]
    assert fanout.is_joining(other, "general")
    newer, payload = message("general", "8-0")
    fanout.room_payload("general", payload)
    typed, payload = typing("general", BOB)
    fanout.room_payload("general", payload)
    assert sent(other) == [newer, typed]


async def test_typing_in_a_big_room_goes_out_at_once_then_a_windows_typers_in_one_frame() -> None:
    """Past TYPING_COALESCE_SOCKETS joined sockets a typing event costs a frame per socket
    like a message: the first goes out at once, the rest of its window in one frame."""
    timers: list[tuple[float, Callable[[], None]]] = []
    fanout = Fanout(Channels(), later=lambda delay, callback: timers.append((delay, callback)))
    users = [ANN, BOB, DAN] + [User(f"u{n}", f"U{n}", f"u{n}@x") for n in range(50)]
    outboxes = {}
    for user in users:
        outboxes[user.id] = socket(fanout, user)
        watch(fanout, user, "general")
        joined(fanout, outboxes[user.id], "general")
    ann, bob, dan, other = (outboxes[u] for u in ("ann", "bob", "dan", "u0"))

    bob_typing, payload = typing("general", BOB)
    fanout.room_payload("general", payload)
    assert sent(other) == sent(ann) == sent(dan) == [bob_typing] and sent(bob) == []
    assert [delay for delay, _ in timers] == [TYPING_WINDOW_SECONDS]
    for user in (BOB, DAN, ANN):
        fanout.room_payload("general", typing("general", user)[1])
    posted, payload = message("general", "1-0", author="dan")
    fanout.room_payload("general", payload)  # Dan's message ends Dan's typing
    assert sent(other) == sent(ann) == sent(bob) == sent(dan) == [posted]

    timers.pop()[1]()
    both = json.loads(sent(other)[0])
    assert both == {
        "type": "typing",
        "room": "general",
        "user": {"id": "ann", "name": "Ann"},
        "users": [{"id": "bob", "name": "Bob"}, {"id": "ann", "name": "Ann"}],
    }
    assert sent(dan) == [json.dumps(both, separators=(",", ":"))]
    # Each typer hears only of the other, in the one-typer frame.
    assert sent(bob) == [typing("general", ANN)[0]]
    assert sent(ann) == [bob_typing]
    # Another window is open; when it ends with nobody typing, the next one goes out at once.
    fanout.room_payload("general", typing("general", DAN)[1])
    assert sent(other) == []
    timers.pop()[1]()
    assert sent(other) == [typing("general", DAN)[0]] and sent(dan) == []
    timers.pop()[1]()
    assert timers == [] and sent(other) == []
    fanout.room_payload("general", typing("general", ANN)[1])
    assert sent(other) == [typing("general", ANN)[0]]
    assert len(timers) == 1


async def test_archiving_drops_the_room_for_every_local_member(
    fanout: Fanout, channels: Channels
) -> None:
    ann, bob = socket(fanout, ANN), socket(fanout, BOB)
    watch(fanout, ANN, "r1")
    watch(fanout, BOB, "r1")
    archived = room_removed_frame("r1", "archived")
    fanout.room_payload("r1", event_payload("archived", None, archived))
    assert sent(ann) == sent(bob) == [archived]
    assert room_channel("r1") not in channels.wanted
    fanout.room_payload("r1", message("r1", "1-0")[1])
    assert sent(ann) == sent(bob) == []


async def test_a_removal_during_the_rooms_read_wins_over_the_stale_read(fanout: Fanout) -> None:
    socket(fanout, ANN)
    load = fanout.begin_load("ann")
    fanout.user_payload("ann", event_payload("removed", "r1", room_removed_frame("r1", "left")))
    fanout.finish_load(load, ["general", "r1"])  # read before the removal
    assert fanout.rooms_of("ann") == {"general"}


async def test_a_removal_then_re_invite_during_the_read_keeps_the_room(fanout: Fanout) -> None:
    socket(fanout, ANN)
    load = fanout.begin_load("ann")
    fanout.user_payload("ann", event_payload("removed", "r1", room_removed_frame("r1", "left")))
    fanout.user_payload("ann", event_payload("added", "r1", room_frame({"id": "r1"})))
    fanout.finish_load(load, ["general"])  # read before the re-invite
    assert fanout.rooms_of("ann") == {"general", "r1"}


async def test_a_frame_event_reaches_every_socket_of_the_user_only(fanout: Fanout) -> None:
    first, second, bob = socket(fanout, ANN, "1"), socket(fanout, ANN, "2"), socket(fanout, BOB)
    read = json.dumps({"type": "read", "room": "general", "id": "1-0"})
    fanout.user_payload("ann", event_payload("frame", None, read))
    assert sent(first) == sent(second) == [read]
    assert sent(bob) == []


async def test_unknown_events_and_payloads_are_ignored_with_a_log_line(
    fanout: Fanout, caplog: pytest.LogCaptureFixture
) -> None:
    ann = socket(fanout, ANN)
    watch(fanout, ANN, "general")
    with caplog.at_level(logging.WARNING):
        fanout.room_payload("general", event_payload("sparkle", "bob", "{}"))
        fanout.room_payload("general", "1-0 {}")  # the old format
        fanout.user_payload("ann", event_payload("sparkle", None, "{}"))
        fanout.user_payload("ann", "nonsense")
    assert sent(ann) == []
    assert len(caplog.records) == 4


async def test_a_rename_reaches_started_sockets_and_changes_the_users_own_outboxes(
    fanout: Fanout,
) -> None:
    ann, bob = socket(fanout, ANN), socket(fanout, BOB)
    renamed = user_frame({"id": "ann", "name": "Annie"})
    fanout.user_changed(renamed)
    assert ann.user.name == "Annie" and ann.user.email == ANN.email
    assert bob.user.name == "Bob"
    assert sent(ann) == sent(bob) == []  # not started: their `ready` will carry it


async def test_a_revoked_session_closes_only_its_sockets(fanout: Fanout) -> None:
    first, second = socket(fanout, ANN, "1"), socket(fanout, ANN, "2")
    fanout.close_session("ann-1")
    assert first.close_code == CLOSE_LOGGED_OUT and second.close_code is None


async def test_once_closing_every_new_socket_is_closed_too(fanout: Fanout) -> None:
    ann = socket(fanout, ANN)
    fanout.close_all(1012)
    assert fanout.closing and ann.close_code == 1012
    assert socket(fanout, BOB).close_code == 1012
