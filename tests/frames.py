"""Hypothesis strategies over the client frame grammar (SPEC §5), good and bad alike, and
an oracle that says from the SPEC alone whether a frame is one the server must serve."""

from __future__ import annotations

import json
import re
from typing import Any

from hypothesis import strategies as st

SPEC_ERROR_CODES = {"bad_request", "too_long", "rate_limited", "not_allowed"}
MAX_CHARS = 50  # the fuzzed app's CHAT_MESSAGE_MAX_CHARS: small, so too_long is common
U64 = 2**64 - 1

# Every code point, lone surrogates included: the JSON text carries them as \udXXX.
any_text = st.text(st.characters(exclude_categories=()), max_size=80)
junk = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(min_value=-(2**70), max_value=2**70)
    | st.floats(allow_nan=True, allow_infinity=True)
    | any_text,
    lambda children: (
        st.lists(children, max_size=3) | st.dictionaries(any_text, children, max_size=3)
    ),
    max_leaves=8,
)
id_part = st.one_of(
    st.integers(0, 3),
    st.integers(0, 2**66),
    st.sampled_from([U64, U64 + 1, 10**19, 10**20 - 1]),
)
stream_id = st.builds(lambda ms, seq: f"{ms}-{seq}", id_part, id_part)
room = st.one_of(
    st.just("general"), st.sampled_from(["", "General", "secret", "x" * 65]), any_text, junk
)
message_id = st.one_of(stream_id, st.sampled_from(["0-0", f"{U64}-{U64}", "1", "-1-1"]), junk)
limit = st.one_of(st.integers(-5, 110), st.integers(), st.sampled_from([True, 1.0, "5"]), junk)
text = st.one_of(
    any_text,
    st.sampled_from(["\ud800", "a\udfffb", "\ud83d\ude00", " ", "x" * MAX_CHARS]),
    st.text(min_size=MAX_CHARS - 2, max_size=MAX_CHARS + 2),
    junk,
)
client_id = st.one_of(
    st.text(min_size=1, max_size=8),
    st.sampled_from(["", "\ud800", "c" * 64, "c" * 65]),
    any_text,
    junk,
)
KINDS = [
    "join",
    "send",
    "history",
    "typing",
    "edit",
    "delete",
    "react",
    "ping",
    "room_create",
    "room_join",
    "room_leave",
    "room_invite",
    "room_remove",
    "room_update",
    "dm_open",
    "rooms_browse",
    "members",
    "people",
    "profile",
    "read",
    "user_deactivate",
    "user_reactivate",
]
kind = st.one_of(st.sampled_from(KINDS), any_text, junk)
# Room and user ids: `general`, well-formed ids of no room or user, and bad ones.
an_id = st.from_regex(r"[A-Za-z0-9_-]{1,64}", fullmatch=True)
some_id = st.one_of(an_id, st.sampled_from(["", "x" * 65, "a b", "{room}"]), any_text, junk)
ids = st.one_of(st.lists(an_id, max_size=10), st.lists(some_id, max_size=3), junk)
ref = st.one_of(
    st.text(max_size=64), st.sampled_from(["", "r" * 64, "r" * 65]), st.none(), any_text, junk
)
short_text = st.one_of(st.text(max_size=20), st.sampled_from(["", " ", "x" * 1001]), junk)
MISSING = object()
# Mostly general (the fuzzed user's one room); a well-formed id of no room answers
# exactly like a room the user may not see.
ROOMS = ["general", "general", "general", "r0123456789abcdef"]


def optional(values: st.SearchStrategy[Any]) -> st.SearchStrategy[Any]:
    return st.one_of(st.just(MISSING), values)


FIELDS = {
    "type": kind,
    "room": room,
    "after": message_id,
    "before": message_id,
    "limit": limit,
    "text": text,
    "client_id": client_id,
    "ref": ref,
    "kind": st.one_of(st.sampled_from(["public", "private", "direct"]), junk),
    "name": short_text,
    "topic": short_text,
    "members": ids,
    "users": ids,
    "user": some_id,
    "archived": st.one_of(st.booleans(), junk),
    "deactivated": st.one_of(st.booleans(), junk),
    "q": short_text,
    "id": message_id,
}
valid_id = st.builds(lambda ms, seq: f"{ms}-{seq}", st.integers(0, U64), st.integers(1, U64))
VALID = {
    "join": {"after": optional(st.one_of(valid_id, message_id))},
    "send": {
        "text": st.text(min_size=1, max_size=MAX_CHARS).filter(str.strip),
        "client_id": st.text(min_size=1, max_size=64),
    },
    "history": {
        "before": optional(st.one_of(valid_id, message_id)),
        "limit": optional(st.integers(1, 100)),
    },
    "typing": {},
    # Ids drawn at random name no message: each of these is refused ("no such message").
    "edit": {"id": st.one_of(valid_id, message_id), "text": text},
    "delete": {"id": st.one_of(valid_id, message_id)},
    "react": {
        "id": st.one_of(valid_id, message_id),
        "emoji": st.one_of(st.sampled_from(["👍", "🎉", "x", ""]), any_text, junk),
        "on": optional(st.one_of(st.booleans(), junk)),
    },
    "ping": {},
    "room_create": {
        "kind": st.sampled_from(["public", "private"]),
        "name": st.text(min_size=1, max_size=20),
        "topic": optional(st.text(max_size=20)),
        "members": optional(st.lists(an_id, max_size=3)),
    },
    "room_join": {},
    "room_leave": {},
    "room_invite": {"user": an_id},
    "room_remove": {"user": an_id},
    "room_update": {
        "name": optional(st.text(max_size=20)),
        "topic": optional(st.text(max_size=20)),
        "archived": optional(st.booleans()),
    },
    "dm_open": {"users": st.lists(an_id, min_size=1, max_size=8)},
    "rooms_browse": {
        "q": optional(st.text(max_size=20)),
        "archived": optional(st.booleans()),
        "room": optional(st.one_of(an_id, st.just("general"), st.text(max_size=5))),
    },
    "members": {},
    "people": {"q": optional(st.text(max_size=20)), "deactivated": optional(st.just(False))},
    "profile": {"name": st.text(min_size=1, max_size=20)},
    "read": {"id": st.one_of(valid_id, message_id)},
    "user_deactivate": {"user": an_id},
    "user_reactivate": {"user": an_id},
}
surrogates = st.characters(min_codepoint=0xD800, max_codepoint=0xDFFF)


@st.composite
def frame_objects(draw: st.DrawFn) -> dict[str, Any]:
    """A JSON object shaped like a client frame: a valid one of some type with up to two
    fields replaced (by anything), removed, or broken with a lone surrogate, and
    sometimes unknown keys."""
    kind_name = draw(st.sampled_from(sorted(VALID)))
    frame: dict[str, Any] = {"type": kind_name, "room": draw(st.sampled_from(ROOMS))}
    for name, values in VALID[kind_name].items():
        frame[name] = draw(values)
    frame["ref"] = draw(optional(st.text(max_size=64)))
    mutations = st.tuples(st.sampled_from(sorted(FIELDS)), st.sampled_from(["set", "del", "bad"]))
    for name, how in draw(st.lists(mutations, max_size=2)):
        if how == "set":
            frame[name] = draw(FIELDS[name])
        elif how == "del":
            frame.pop(name, None)
        elif isinstance(frame.get(name), str):
            value = frame[name]
            at = draw(st.integers(0, len(value)))
            frame[name] = value[:at] + draw(surrogates) + value[at:]
    frame = {name: value for name, value in frame.items() if value is not MISSING}
    frame.update(draw(st.dictionaries(any_text, junk, max_size=1)))
    return frame


def deep(depth: int) -> str:
    return "[" * depth + "]" * depth


structured = st.builds(
    lambda frame, ascii_only: json.dumps(frame, ensure_ascii=ascii_only),
    frame_objects(),
    st.booleans(),
)


unstructured = st.one_of(
    any_text,
    st.binary(max_size=40),
    st.integers(1, 3000).map(deep),
    st.integers(1, 3000).map(lambda n: '{"a":' * n + "1" + "}" * n),
    st.builds(lambda n, frame: frame[:n], st.integers(0, 60), frame_objects().map(json.dumps)),
    junk.map(lambda value: json.dumps(value, ensure_ascii=False)),
)
# Mostly near-valid frames, which reach the handlers and Redis; some anything.
raw_frames = st.integers(0, 3).flatmap(lambda pick: unstructured if pick == 0 else structured)

_STREAM_ID = re.compile(r"[0-9]{1,20}-[0-9]{1,20}")
_ROOM_ID = re.compile(r"[A-Za-z0-9_-]{1,64}")
_SURROGATE = re.compile("[\ud800-\udfff]")


def has_surrogate(value: Any) -> bool:
    if isinstance(value, str):
        return bool(_SURROGATE.search(value))
    if isinstance(value, list):
        return any(map(has_surrogate, value))
    if isinstance(value, dict):
        return any(has_surrogate(k) or has_surrogate(v) for k, v in value.items())
    return False


def shape(value: Any) -> tuple[int, int]:
    """(deepest nesting, number of arrays and objects) of a decoded JSON value."""
    deepest = containers = 0
    stack = [(value, 1)]
    while stack:
        item, depth = stack.pop()
        if isinstance(item, dict):
            item = list(item.values())
        if isinstance(item, list):
            deepest, containers = max(deepest, depth), containers + 1
            stack.extend((child, depth + 1) for child in item)
    return deepest, containers


def _is_id(value: Any, *, not_equal: tuple[int, int]) -> bool:
    if not isinstance(value, str) or not _STREAM_ID.fullmatch(value):
        return False
    ms, seq = (int(part) for part in value.split("-"))
    return ms <= U64 and seq <= U64 and (ms, seq) != not_equal


def _ok_ref(frame: dict[str, Any]) -> bool:
    value = frame.get("ref")
    return value is None or (isinstance(value, str) and len(value) <= 64)


def _is_room_id(value: Any) -> bool:
    return isinstance(value, str) and _ROOM_ID.fullmatch(value) is not None


def _is_text(frame: dict[str, Any], field: str, limit: int, *, optional: bool) -> bool:
    value = frame.get(field)
    if value is None:
        return optional
    return isinstance(value, str) and len(value) <= limit


def _is_ids(value: Any, low: int, high: int) -> bool:
    return isinstance(value, list) and low <= len(value) <= high and all(map(_is_room_id, value))


def expected_answer(raw: str | bytes) -> str:
    """What the SPEC says a socket of a user who is in `general` only, has joined it and
    is no admin gets back: "error", "history", "message", "pong", "members", "people",
    "rooms", "none", "ok?" (an `ok`, or nothing when a read marker did not move), or
    "skip" for frames whose answer depends on what earlier ones did (a room created,
    a name changed), which the socket test leaves out."""
    if isinstance(raw, bytes):
        return "error"
    try:
        frame = json.loads(raw)
    except (ValueError, RecursionError):
        return "error"
    deepest, containers = shape(frame)
    if deepest > 16 or containers > 64 or not isinstance(frame, dict):
        return "error"
    if has_surrogate(frame) or not _ok_ref(frame):
        return "error"
    kind = frame.get("type")
    if kind == "ping":
        return "pong"  # the heartbeat names no room; other fields are ignored
    if isinstance(kind, str) and kind in _UNROOMED:
        return _UNROOMED[kind](frame)
    if frame.get("room") != "general":
        # Not an id, or an id of a room this user is not in: refused either way.
        return "error"
    if kind == "typing":
        return "none"
    if kind == "members":
        return "members"
    if kind == "read":
        return "ok?" if _is_id(frame.get("id"), not_equal=(-1, -1)) else "error"
    if kind == "room_join":
        return "skip"  # general: already a member; what it answers is the models' call
    if kind == "history":
        limit = frame.get("limit", 50)
        before = frame.get("before")
        if before is not None and not _is_id(before, not_equal=(0, 0)):
            return "error"
        if type(limit) is not int or not 1 <= limit <= 100:
            return "error"
        return "history"
    if kind == "send":
        cid, body = frame.get("client_id"), frame.get("text")
        if not isinstance(cid, str) or not 1 <= len(cid) <= 64:
            return "error"
        if not isinstance(body, str) or not body.strip() or len(body) > MAX_CHARS:
            return "error"
        return "message"
    # Unknown types; `join` (joined already); edits, deletions and reactions of
    # messages that do not exist (the fuzz never names a real one); leaving general, inviting to it,
    # removing from it and changing it, which only an admin may.
    return "error"


def _room_create(frame: dict[str, Any]) -> str:
    members = frame.get("members")
    if (
        frame.get("kind") not in ("public", "private")
        or not _is_text(frame, "name", 1000, optional=False)
        or not _is_text(frame, "topic", 1000, optional=True)
        or not (members is None or _is_ids(members, 0, 50))
    ):
        return "error"
    return "skip"


def _search(answer: str, flag: str, *, admins_only: bool) -> Any:
    """A search answers unless `q` or the optional boolean `flag` is wrong, or (for
    `admins_only`) the flag is set."""

    def expected(frame: dict[str, Any]) -> str:
        value = frame.get(flag)
        if not _is_text(frame, "q", 100, optional=True):
            return "error"
        if value is not None and not isinstance(value, bool):
            return "error"
        return "error" if admins_only and value else answer

    return expected


# Frames that name no room, or whose room does not decide the answer.
_UNROOMED = {
    "room_create": _room_create,
    "profile": lambda frame: "skip" if _is_text(frame, "name", 1000, optional=False) else "error",
    "people": _search("people", "deactivated", admins_only=True),
    "rooms_browse": lambda frame: (
        "error"
        if frame.get("room") is not None
        and not (isinstance(frame["room"], str) and _ROOM_ID.fullmatch(frame["room"]))
        else _search("rooms", "archived", admins_only=False)(frame)
    ),
    # No such users (or not an admin): refused whatever the ids.
    "dm_open": lambda frame: "error",
    "user_deactivate": lambda frame: "error",
    "user_reactivate": lambda frame: "error",
}
