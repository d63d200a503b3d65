"""The frame parser on its own, fuzzed: it answers everything with a frame or a FrameError
whose error frame can be sent; tests/blueprints/test_chat_fuzz.py drives a real socket."""

from __future__ import annotations

import json
from typing import Any

import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from quart_chat.realtime.protocol import (
    MAX_CONTAINERS,
    MAX_NESTING,
    MAX_REF,
    SHORT_NAMES,
    Delete,
    DmOpen,
    Edit,
    EventPayload,
    FrameError,
    History,
    Members,
    MessagePayload,
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
    is_emoji,
    message_payload,
    parse_frame,
    parse_payload,
    typing_frame,
)

from .frames import MAX_CHARS, SPEC_ERROR_CODES, deep, expected_answer, junk, raw_frames, shape

# Derandomized, so CI sees the same examples on every run; no example database on disk.
FUZZ = settings(
    max_examples=1000,
    derandomize=True,
    database=None,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
SHAPES = settings(FUZZ, max_examples=300)


def parse(raw: str | bytes) -> Any:
    try:
        return parse_frame(raw, MAX_CHARS)
    except FrameError as error:
        return error


# What a parsed frame of each type is answered with when it names `general`.
ANSWERS = {
    Send: "message",
    History: "history",
    Typing: "none",
    Members: "members",
    Read: "ok?",
    RoomJoin: "skip",
}


@FUZZ
@given(raw_frames)
@example(deep(2000))
@example('{"type":"send","room":"general","text":"\\ud800","client_id":"c"}')
@example('{"type":"history","room":"general","before":"99999999999999999999-0"}')
@example('{"type":"history","room":"general","before":"0-0"}')
@example('{"type":"members","room":"general","ref":"' + "r" * 65 + '"}')
def test_every_frame_parses_or_is_refused_with_a_spec_code(raw: str | bytes) -> None:
    result = parse(raw)
    want = expected_answer(raw)
    if isinstance(result, FrameError):
        assert result.code in SPEC_ERROR_CODES
        sent = result.frame()
        sent.encode("utf-8")  # what the socket would send: never fails to encode
        error = json.loads(sent)
        assert error["type"] == "error"
        assert want == "error"
        if "ref" in error:
            assert error["ref"] == json.loads(raw)["ref"]
        return
    assert result.ref is None or len(result.ref) <= MAX_REF
    if isinstance(result, Send):
        (result.text + result.client_id).encode("utf-8")
    if isinstance(result, Ping):
        assert want == "pong"
    elif isinstance(result, RoomsBrowse | People):
        assert want == ("rooms" if isinstance(result, RoomsBrowse) else "people")
    elif isinstance(result, RoomCreate | Profile):
        assert want == "skip"
    elif getattr(result, "room", None) == "general" and type(result) in ANSWERS:
        assert want == ANSWERS[type(result)]
    else:
        # Well-formed, and refused by what the server knows: not a member, no such
        # user, not an admin, already joined.
        assert want == "error"


@pytest.mark.parametrize(
    ("frame", "expected"),
    [
        ({"type": "ping", "ref": "p1"}, Ping("p1")),
        ({"type": "members", "room": "general", "ref": None}, Members("general")),
        (
            {"type": "room_create", "kind": "private", "name": "plans", "members": ["u1"]},
            RoomCreate("private", "plans", "", ("u1",)),
        ),
        (
            {"type": "room_update", "room": "r1", "archived": False, "ref": "u"},
            RoomUpdate("r1", None, None, False, "u"),
        ),
        ({"type": "dm_open", "users": ["u1", "u2"]}, DmOpen(("u1", "u2"))),
        ({"type": "people"}, People("")),
        ({"type": "rooms_browse", "q": "pl"}, RoomsBrowse("pl")),
        ({"type": "read", "room": "general", "id": "5-1"}, Read("general", "5-1")),
        ({"type": "room_invite", "room": "r1", "user": "u1"}, RoomInvite("r1", "u1")),
        ({"type": "room_remove", "room": "r1", "user": "u1"}, RoomRemove("r1", "u1")),
        ({"type": "room_leave", "room": "r1"}, RoomLeave("r1")),
        ({"type": "room_join", "room": "r1"}, RoomJoin("r1")),
        ({"type": "profile", "name": "Ann"}, Profile("Ann")),
        ({"type": "user_deactivate", "user": "u1"}, UserDeactivate("u1")),
        ({"type": "user_reactivate", "user": "u1"}, UserReactivate("u1")),
    ],
)
def test_the_new_frames_parse(frame: dict[str, Any], expected: Any) -> None:
    assert parse(json.dumps(frame)) == expected


@pytest.mark.parametrize(
    ("frame", "message"),
    [
        ({"type": "members", "room": "x" * 65}, "room must be an id"),
        ({"type": "members", "room": "a:b"}, "room must be an id"),
        ({"type": "dm_open", "users": []}, "users must be a list of 1 to 8"),
        ({"type": "dm_open", "users": ["u"] * 9}, "users must be a list of 1 to 8"),
        ({"type": "room_create", "kind": "public", "name": "n", "members": ["u"] * 51}, "members"),
        ({"type": "room_create", "kind": "direct", "name": "n"}, "kind must be public or private"),
        ({"type": "room_update", "room": "r", "archived": 1}, "archived must be true or false"),
        ({"type": "read", "room": "general"}, "id must be a message id"),
    ],
)
def test_bad_new_frames_are_refused_with_their_ref(frame: dict[str, Any], message: str) -> None:
    error = parse(json.dumps({**frame, "ref": "r7"}))
    assert isinstance(error, FrameError) and error.code == "bad_request"
    assert error.message.startswith(message)
    assert json.loads(error.frame())["ref"] == "r7"


@pytest.mark.parametrize("ref", ["r" * 65, 5, ["r"], {"r": 1}])
def test_a_bad_ref_is_refused_without_echoing_it(ref: object) -> None:
    error = parse(json.dumps({"type": "ping", "ref": ref}))
    assert isinstance(error, FrameError) and error.code == "bad_request"
    assert "ref" not in json.loads(error.frame())


def test_payloads_split_without_parsing_their_json() -> None:
    frame = '{"type":"message","text":"a b c"}'
    assert parse_payload(message_payload("1-0", "u1", frame)) == MessagePayload("1-0", "u1", frame)
    assert parse_payload(event_payload("removed", "u1", frame)) == EventPayload(
        "removed", "u1", frame
    )
    assert parse_payload(event_payload("archived", None, frame)) == EventPayload(
        "archived", None, frame
    )
    # A name with spaces, quotes and non-ASCII survives the split and stays JSON.
    typing = typing_frame("r1", "u1", 'Zoë "Z" O\'Neil')
    assert parse_payload(event_payload("typing", "u1", typing)) == EventPayload(
        "typing", "u1", typing
    )
    assert json.loads(typing) == {
        "type": "typing",
        "room": "r1",
        "user": {"id": "u1", "name": 'Zoë "Z" O\'Neil'},
    }
    assert parse_payload("1-0 " + frame) is None  # the first release's format
    assert parse_payload("M 1-0") is None


@SHAPES
@given(junk, st.booleans())
def test_nesting_is_refused_exactly_past_the_bounds(value: Any, ascii_only: bool) -> None:
    frame = {"type": "typing", "room": "general", "x": value}
    result = parse(json.dumps(frame, ensure_ascii=ascii_only))
    deepest, containers = shape(frame)
    too_big = deepest > MAX_NESTING or containers > MAX_CONTAINERS
    refused_for_shape = isinstance(result, FrameError) and (
        "nested" in result.message or "arrays and objects" in result.message
    )
    assert refused_for_shape == too_big


@SHAPES
@given(st.integers(1, 100), st.integers(0, 3), st.sampled_from(['"[{"', '"\\\\"', '"\\"["']))
def test_brackets_inside_strings_do_not_count(depth: int, strings: int, inside: str) -> None:
    nested = "[" * depth + ",".join([inside] * strings) + "]" * depth
    result = parse('{"type":"typing","room":"general","x":' + nested + "}")
    assert isinstance(result, Typing) == (depth + 1 <= MAX_NESTING)


def test_edit_delete_and_react_frames_parse_with_their_fields() -> None:
    room = '"room": "general", "id": "5-1", "ref": "r"'
    assert parse(f'{{"type": "edit", {room}, "text": "new"}}') == Edit("general", "5-1", "new", "r")
    assert parse(f'{{"type": "delete", {room}}}') == Delete("general", "5-1", "r")
    assert parse(f'{{"type": "react", {room}, "emoji": "👍"}}') == React(
        "general", "5-1", "👍", True, "r"
    )
    flag = '"emoji": "🏳️‍🌈", "on": false'
    assert parse(f'{{"type": "react", {room}, {flag}}}') == React(
        "general", "5-1", "🏳️‍🌈", False, "r"
    )


@pytest.mark.parametrize(
    "fields",
    [
        '"id": "5-1"',  # edit without text
        '"id": "5-1", "text": "  "',
        '"id": "x", "text": "t"',
        '"text": "t"',
        f'"id": "5-1", "text": "{"x" * (MAX_CHARS + 1)}"',
    ],
)
def test_bad_edits_are_refused_with_their_ref(fields: str) -> None:
    error = parse(f'{{"type": "edit", "room": "general", "ref": "r", {fields}}}')
    assert isinstance(error, FrameError) and error.ref == "r"
    assert error.code in ("bad_request", "too_long")


@pytest.mark.parametrize(
    "emoji",
    [
        *("", "a", "👍a", "<b>", "\u200d", "👍" * 33, 1, None, ["👍"], "👍 ", "\u202e👍"),
        *("👍👍", "🇫", "🇫🇷🇩🇪", "🏻", "👍\u200d", "1", ":nope:", "::", ":thumbsup", "〰"),
    ],
)
def test_reactions_must_be_one_emoji_or_a_known_short_name(emoji: object) -> None:
    frame = {"type": "react", "room": "general", "id": "5-1", "emoji": emoji, "ref": "r"}
    error = parse(json.dumps(frame))
    assert isinstance(error, FrameError) and error.code == "bad_request" and error.ref == "r"


def test_react_on_must_be_a_boolean() -> None:
    frame = {"type": "react", "room": "general", "id": "5-1", "emoji": "👍", "on": 1}
    assert isinstance(parse(json.dumps(frame)), FrameError)


def test_a_change_payload_is_ordered_like_a_message_but_marked_as_a_change() -> None:
    assert parse_payload('V 6-0 bob {"type":"edit"}') == MessagePayload(
        "6-0", "bob", '{"type":"edit"}', change=True
    )
    assert parse_payload('M 6-0 bob {"type":"message"}') == MessagePayload(
        "6-0", "bob", '{"type":"message"}'
    )


@pytest.mark.parametrize(
    "emoji",
    [
        "🏳️‍🌈",
        "👨‍👩‍👧",
        "🧑🏽‍💻",
        "🇫🇷",
        "1️⃣",
        "❤️",
        "👍🏽",
        "🏴\U000e0067\U000e0062\U000e0073\U000e0063\U000e0074\U000e007f",
    ],
)
def test_one_emoji_of_many_code_points_is_one_reaction(emoji: str) -> None:
    frame = {"type": "react", "room": "general", "id": "5-1", "emoji": emoji}
    assert parse(json.dumps(frame)) == React("general", "5-1", emoji, True, None)


def test_short_names_are_stored_as_their_emoji() -> None:
    assert len(SHORT_NAMES) >= 50
    assert all(is_emoji(emoji) for emoji in SHORT_NAMES.values())
    for name, emoji in (("thumbsup", "👍"), ("+1", "👍"), ("TADA", "🎉"), ("heart", "❤️")):
        frame = {"type": "react", "room": "general", "id": "5-1", "emoji": f":{name}:"}
        assert parse(json.dumps(frame)) == React("general", "5-1", emoji, True, None)
