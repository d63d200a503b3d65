"""The WebSocket protocol (SPEC §5, §8): client frames parsed into dataclasses, EVERY server
frame built here, and the pub/sub payloads the workers exchange.

Parsing never raises anything but `FrameError`, which the connection turns into
an `error` frame; a bad frame never closes the socket. Every client frame may
carry `ref` (a string of at most 64 chars), copied onto its direct reply or error.

Pub/sub payloads (one format, built and parsed only here, and by the post
script in models/messages.py, which is the one place a message is first made):
- room channel `M <stream id> <author id> <message frame JSON>`: a stored message;
- room channel `V <stream id> <user id> <frame JSON>`: a stored change to a message
  (`edit`, `delete`, `reaction`; models/changes.py), ordered like a message but
  only for sockets with the room open (never an `unread` bump);
- room channel `E <kind> <user id or -> <frame JSON>`: a room event
  (`room`, `left`, `removed`, `archived`, and `typing`: ephemeral, never stored,
  with the typer's id so fanout skips their sockets without parsing the JSON);
- user channel `E <kind> <room id or -> <frame JSON>` (`added`, `removed`, `frame`);
- `chat:users`: a `user` frame; `chat:presence`: a `presence` frame;
  `chat:session-revoked`: a session id.
Ids never contain spaces, so a payload splits without parsing its JSON.
"""

from __future__ import annotations

import json
import re
import unicodedata
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, TypeGuard

if TYPE_CHECKING:
    from ..models.changes import MessageState
    from ..models.messages import Message

DEFAULT_ROOM = "general"
MAX_CLIENT_ID = 64
MAX_REF = 64
MAX_HISTORY_LIMIT = 100
DEFAULT_HISTORY_LIMIT = 50
# Room and user ids in frames: `general` or server-made ids.
ID = re.compile(r"[A-Za-z0-9_-]{1,64}")
MAX_CREATE_MEMBERS = 50
MAX_DM_OTHERS = 8
# Names and topics are checked by the models (trimmed lengths); these only bound
# what a frame may make the server look at.
MAX_NAME_CHARS = 1000
MAX_QUERY_CHARS = 100
MAX_EMOJI_CHARS = 32
ROOM_KINDS = ("public", "private")
# A Redis stream id: milliseconds, a dash, a sequence number, each a 64-bit
# unsigned integer.
STREAM_ID = re.compile(r"[0-9]{1,20}-[0-9]{1,20}")
MAX_ID_PART = 2**64 - 1
# A frame is a flat object today (a list of ids at most, later); these bound
# what the JSON decoder recurses into, far below Python's recursion limit.
MAX_NESTING = 16
MAX_CONTAINERS = 64
# What nesting depth is read from: the UTF-8 bytes of a frame reduced to
# quotes and brackets, with `{}` read as `[]`.
_BRACKETS = bytes.maketrans(b"{}", b"[]")
_NOT_STRUCTURE = bytes(byte for byte in range(256) if byte not in b'"[]{}')
# Over the wire a lone surrogate can only come from a \uD800-\uDFFF escape (a
# WebSocket text frame is valid UTF-8; an ASGI server or test client handing
# over a `str` might not check); decoded strings hold one only when unpaired.
_SURROGATE_ESCAPE = re.compile(r"\\u[dD][89abcdefABCDEF]")
_SURROGATE = re.compile("[\ud800-\udfff]")

BAD_REQUEST = "bad_request"
TOO_LONG = "too_long"
RATE_LIMITED = "rate_limited"
NOT_ALLOWED = "not_allowed"
# Not in the SPEC's list: Redis could not be reached; the client may retry.
UNAVAILABLE = "unavailable"
# The one answer for a room the user may not use, whether or not it exists:
# a private room's existence is not leaked.
NO_SUCH_ROOM = "no such room"


# -- client frames ------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Join:
    room: str
    after: str | None
    ref: str | None = None


@dataclass(frozen=True, slots=True)
class Send:
    room: str
    text: str
    client_id: str
    ref: str | None = None


@dataclass(frozen=True, slots=True)
class History:
    room: str
    before: str | None
    limit: int
    ref: str | None = None


@dataclass(frozen=True, slots=True)
class Typing:
    room: str
    ref: str | None = None


@dataclass(frozen=True, slots=True)
class Edit:
    room: str
    id: str
    text: str
    ref: str | None = None


@dataclass(frozen=True, slots=True)
class Delete:
    room: str
    id: str
    ref: str | None = None


@dataclass(frozen=True, slots=True)
class React:
    room: str
    id: str
    emoji: str
    on: bool
    ref: str | None = None


@dataclass(frozen=True, slots=True)
class Ping:
    """The client's heartbeat: answered with `pong` on the same socket, without Redis."""

    ref: str | None = None


@dataclass(frozen=True, slots=True)
class RoomCreate:
    kind: str
    name: str
    topic: str
    members: tuple[str, ...]
    ref: str | None = None


@dataclass(frozen=True, slots=True)
class RoomJoin:
    room: str
    ref: str | None = None


@dataclass(frozen=True, slots=True)
class RoomLeave:
    room: str
    ref: str | None = None


@dataclass(frozen=True, slots=True)
class RoomInvite:
    room: str
    user: str
    ref: str | None = None


@dataclass(frozen=True, slots=True)
class RoomRemove:
    room: str
    user: str
    ref: str | None = None


@dataclass(frozen=True, slots=True)
class RoomUpdate:
    room: str
    name: str | None
    topic: str | None
    archived: bool | None
    ref: str | None = None


@dataclass(frozen=True, slots=True)
class DmOpen:
    users: tuple[str, ...]
    ref: str | None = None


@dataclass(frozen=True, slots=True)
class RoomsBrowse:
    q: str
    archived: bool = False  # archived rooms the caller may restore, instead of public ones
    ref: str | None = None
    # Only this room, if it is public and not archived (a link to it, /r/<id>).
    room: str | None = None


@dataclass(frozen=True, slots=True)
class Members:
    room: str
    ref: str | None = None


@dataclass(frozen=True, slots=True)
class People:
    q: str
    deactivated: bool = False  # deactivated people instead (admins only)
    ref: str | None = None


@dataclass(frozen=True, slots=True)
class Profile:
    name: str
    ref: str | None = None


@dataclass(frozen=True, slots=True)
class Read:
    room: str
    id: str
    ref: str | None = None


@dataclass(frozen=True, slots=True)
class UserDeactivate:
    user: str
    ref: str | None = None


@dataclass(frozen=True, slots=True)
class UserReactivate:
    user: str
    ref: str | None = None


ClientFrame = (
    Join
    | Send
    | History
    | Typing
    | Edit
    | Delete
    | React
    | Ping
    | RoomCreate
    | RoomJoin
    | RoomLeave
    | RoomInvite
    | RoomRemove
    | RoomUpdate
    | DmOpen
    | RoomsBrowse
    | Members
    | People
    | Profile
    | Read
    | UserDeactivate
    | UserReactivate
)
# Frames about one room: each is authorised against Redis (membership) per frame.
RoomFrame = (
    Join
    | Send
    | History
    | Typing
    | Edit
    | Delete
    | React
    | RoomLeave
    | RoomInvite
    | RoomRemove
    | RoomUpdate
    | Members
    | Read
)


class FrameError(Exception):
    """A client frame that cannot be served; becomes an `error` frame."""

    def __init__(
        self,
        code: str,
        message: str,
        client_id: str | None = None,
        ref: str | None = None,
        **extra: Any,
    ) -> None:
        super().__init__(message)
        self.code = code
        self.message = message
        self.client_id = client_id
        self.ref = ref
        self.extra = extra

    def frame(self) -> str:
        return error_frame(self.code, self.message, self.client_id, self.ref, **self.extra)


def parse_frame(raw: str | bytes, max_chars: int) -> ClientFrame:
    if not isinstance(raw, str):
        raise FrameError(BAD_REQUEST, "frames must be JSON text, not binary")
    _check_structure(raw)
    try:
        data = json.loads(raw)
    except ValueError:
        raise FrameError(BAD_REQUEST, "frame is not valid JSON") from None
    if not isinstance(data, dict):
        raise FrameError(BAD_REQUEST, "frame must be a JSON object")
    if (_SURROGATE_ESCAPE.search(raw) or _SURROGATE.search(raw)) and _has_surrogate(data):
        # Such a string cannot be stored or sent back: refuse the whole frame,
        # naming the send it belongs to when its client_id is sound.
        client_id = data.get("client_id") if data.get("type") == "send" else None
        raise FrameError(
            BAD_REQUEST,
            "frame contains invalid Unicode (an unpaired surrogate)",
            client_id if _is_client_id(client_id) and not _has_surrogate(client_id) else None,
            _sound_ref(data),
        )
    ref = _ref(data)
    kind = data.get("type")
    try:
        if kind == "send":
            return _parse_send(data, max_chars, ref)
        if kind == "edit":
            return _parse_edit(data, max_chars, ref)
        parse = _PARSERS.get(kind) if isinstance(kind, str) else None
        if parse is None:
            raise FrameError(BAD_REQUEST, "unknown frame type")
        return parse(data, ref)
    except FrameError as error:
        error.ref = ref
        raise


def _ref(data: dict[str, Any]) -> str | None:
    """The frame's `ref`; a bad one is answered without it (it cannot be trusted to echo)."""
    ref = data.get("ref")
    if ref is None or (isinstance(ref, str) and len(ref) <= MAX_REF):
        return ref
    raise FrameError(BAD_REQUEST, f"ref must be a string of at most {MAX_REF} chars")


def _sound_ref(data: dict[str, Any]) -> str | None:
    ref = data.get("ref")
    if isinstance(ref, str) and len(ref) <= MAX_REF and not _has_surrogate(ref):
        return ref
    return None


def _parse_send(data: dict[str, Any], max_chars: int, ref: str | None) -> Send:
    client_id = data.get("client_id")
    if not _is_client_id(client_id):
        raise FrameError(BAD_REQUEST, f"client_id must be a string of 1 to {MAX_CLIENT_ID} chars")
    try:
        room = _room(data)
    except FrameError as error:
        error.client_id = client_id
        raise
    text = data.get("text")
    if not isinstance(text, str) or not text.strip():
        raise FrameError(BAD_REQUEST, "text must be a non-empty string", client_id)
    if len(text) > max_chars:
        raise FrameError(TOO_LONG, f"text is longer than {max_chars} characters", client_id)
    return Send(room, text, client_id, ref)


def _parse_edit(data: dict[str, Any], max_chars: int, ref: str | None) -> Edit:
    room, target = _room(data), _message_id(data)
    text = data.get("text")
    if not isinstance(text, str) or not text.strip():
        raise FrameError(BAD_REQUEST, "text must be a non-empty string")
    if len(text) > max_chars:
        raise FrameError(TOO_LONG, f"text is longer than {max_chars} characters")
    return Edit(room, target, text, ref)


def _message_id(data: dict[str, Any]) -> str:
    value = _optional_id(data, "id")
    if value is None:
        raise FrameError(BAD_REQUEST, "id must be a message id")
    return value


# `:short_name:` reactions (SPEC §9: a fixed list of at least 50), stored as
# the emoji itself, so `:thumbsup:` and 👍 are one reaction.
SHORT_NAMES: dict[str, str] = {
    "+1": "👍", "thumbsup": "👍", "-1": "👎", "thumbsdown": "👎", "ok_hand": "👌",
    "clap": "👏", "wave": "👋", "pray": "🙏", "raised_hands": "🙌", "muscle": "💪",
    "point_up": "☝️", "v": "✌️", "handshake": "🤝", "eyes": "👀", "heart": "❤️",
    "broken_heart": "💔", "blue_heart": "💙", "green_heart": "💚", "sparkles": "✨",
    "fire": "🔥", "star": "⭐", "tada": "🎉", "rocket": "🚀", "100": "💯", "boom": "💥",
    "zap": "⚡", "bulb": "💡", "white_check_mark": "✅", "heavy_check_mark": "✔️",
    "x": "❌", "warning": "⚠️", "question": "❓", "exclamation": "❗", "smile": "😄",
    "smiley": "😃", "grinning": "😀", "joy": "😂", "rofl": "🤣", "wink": "😉",
    "blush": "😊", "slightly_smiling_face": "🙂", "upside_down_face": "🙃",
    "heart_eyes": "😍", "thinking": "🤔", "neutral_face": "😐", "expressionless": "😑",
    "unamused": "😒", "roll_eyes": "🙄", "grimacing": "😬", "relieved": "😌",
    "sleeping": "😴", "sob": "😭", "cry": "😢", "scream": "😱", "open_mouth": "😮",
    "astonished": "😲", "confused": "😕", "sweat_smile": "😅", "sunglasses": "😎",
    "nerd_face": "🤓", "partying_face": "🥳", "shrug": "🤷", "facepalm": "🤦",
    "coffee": "☕", "beer": "🍺", "pizza": "🍕", "cake": "🍰", "trophy": "🏆",
    "bug": "🐛", "memo": "📝", "calendar": "📅", "lock": "🔒", "link": "🔗",
    "hourglass": "⌛", "ship": "🚢", "construction": "🚧", "rotating_light": "🚨",
    "see_no_evil": "🙈", "skull": "💀", "ghost": "👻", "robot": "🤖",
}  # fmt: skip

_ZWJ = "\u200d"
_VARIATION = "\ufe0e\ufe0f"
_KEYCAP_BASES = frozenset("0123456789#*")
_REGIONAL_INDICATORS = range(0x1F1E6, 0x1F200)
_SKIN_TONES = range(0x1F3FB, 0x1F400)
_TAG_END = "\U000e007f"
_TAGS = range(0xE0020, 0xE007F)


def _react(data: dict[str, Any], ref: str | None) -> React:
    room, target = _room(data), _message_id(data)
    emoji = data.get("emoji")
    if isinstance(emoji, str) and emoji.startswith(":") and emoji.endswith(":"):
        emoji = SHORT_NAMES.get(emoji[1:-1].lower(), emoji)
    if not isinstance(emoji, str) or not is_emoji(emoji):
        raise FrameError(BAD_REQUEST, "emoji must be one emoji or a :short_name: the server knows")
    on = data.get("on", True)
    if not isinstance(on, bool):
        raise FrameError(BAD_REQUEST, "on must be true or false")
    return React(room, target, emoji, on, ref)


def is_emoji(text: str) -> bool:
    """One emoji as people see it (one grapheme): a flag (two regional
    indicators), a keycap (``1️⃣``), or symbols joined by zero-width joiners,
    each with an optional variation selector, skin tone and tag sequence
    (subdivision flags). Words, markup, invisible text and rows of emoji are not.

    Structural on purpose: no table of every emoji sequence to keep current.
    """
    if not 1 <= len(text) <= MAX_EMOJI_CHARS:
        return False
    codes = [ord(char) for char in text]
    if len(codes) == 2 and all(code in _REGIONAL_INDICATORS for code in codes):
        return True
    if text[0] in _KEYCAP_BASES:
        return text[1:] in ("\u20e3", "\ufe0f\u20e3")
    return all(_is_emoji_element(element) for element in text.split(_ZWJ))


def _is_emoji_element(element: str) -> bool:
    if not element:
        return False
    base, rest = element[0], element[1:]
    if unicodedata.category(base) != "So" or ord(base) in _REGIONAL_INDICATORS:
        return False
    if rest[:1] and rest[0] in _VARIATION:
        rest = rest[1:]
    if rest[:1] and ord(rest[0]) in _SKIN_TONES:
        rest = rest[1:]
    if not rest:
        return True
    # A tag sequence (🏴 + tags + cancel tag: England, Scotland, Wales).
    return rest[-1] == _TAG_END and len(rest) > 1 and all(ord(c) in _TAGS for c in rest[:-1])


def _id(data: dict[str, Any], field: str) -> str:
    value = data.get(field)
    if not isinstance(value, str) or not ID.fullmatch(value):
        raise FrameError(BAD_REQUEST, f"{field} must be an id (1 to 64 of A-Z a-z 0-9 _ -)")
    return value


def _room(data: dict[str, Any]) -> str:
    return _id(data, "room")


def _ids(data: dict[str, Any], field: str, low: int, high: int) -> tuple[str, ...]:
    value = data.get(field)
    if (
        not isinstance(value, list)
        or not low <= len(value) <= high
        or not all(isinstance(item, str) and ID.fullmatch(item) for item in value)
    ):
        raise FrameError(BAD_REQUEST, f"{field} must be a list of {low} to {high} user ids")
    return tuple(value)


def _text(data: dict[str, Any], field: str, limit: int, default: str | None = None) -> str:
    """A string field; with a `default`, absent or null means the default."""
    value = data.get(field)
    if value is None:
        value = default
    if not isinstance(value, str):
        raise FrameError(BAD_REQUEST, f"{field} must be a string")
    if len(value) > limit:
        raise FrameError(TOO_LONG, f"{field} is longer than {limit} characters")
    return value


def _flag(data: dict[str, Any], field: str) -> bool:
    """An optional boolean field: absent or null is false."""
    value = data.get(field)
    if value is None:
        return False
    if not isinstance(value, bool):
        raise FrameError(BAD_REQUEST, f"{field} must be true or false")
    return value


def _optional_text(data: dict[str, Any], field: str) -> str | None:
    return None if data.get(field) is None else _text(data, field, MAX_NAME_CHARS)


def _room_create(data: dict[str, Any], ref: str | None) -> RoomCreate:
    kind = data.get("kind")
    if kind not in ROOM_KINDS:
        raise FrameError(BAD_REQUEST, "kind must be public or private")
    members = () if data.get("members") is None else _ids(data, "members", 0, MAX_CREATE_MEMBERS)
    return RoomCreate(
        kind,
        _text(data, "name", MAX_NAME_CHARS),
        _text(data, "topic", MAX_NAME_CHARS, ""),
        members,
        ref,
    )


def _room_update(data: dict[str, Any], ref: str | None) -> RoomUpdate:
    archived = data.get("archived")
    if archived is not None and not isinstance(archived, bool):
        raise FrameError(BAD_REQUEST, "archived must be true or false")
    return RoomUpdate(
        _room(data), _optional_text(data, "name"), _optional_text(data, "topic"), archived, ref
    )


def _read(data: dict[str, Any], ref: str | None) -> Read:
    message_id = _optional_id(data, "id")
    if message_id is None:
        raise FrameError(BAD_REQUEST, "id must be a message id")
    return Read(_room(data), message_id, ref)


_PARSERS: dict[str, Callable[[dict[str, Any], str | None], ClientFrame]] = {
    "join": lambda d, ref: Join(_room(d), _after_id(d), ref),
    "history": lambda d, ref: History(_room(d), _before_id(d), _limit(d), ref),
    "typing": lambda d, ref: Typing(_room(d), ref),
    "delete": lambda d, ref: Delete(_room(d), _message_id(d), ref),
    "react": _react,
    "ping": lambda d, ref: Ping(ref),
    "room_create": _room_create,
    "room_join": lambda d, ref: RoomJoin(_room(d), ref),
    "room_leave": lambda d, ref: RoomLeave(_room(d), ref),
    "room_invite": lambda d, ref: RoomInvite(_room(d), _id(d, "user"), ref),
    "room_remove": lambda d, ref: RoomRemove(_room(d), _id(d, "user"), ref),
    "room_update": _room_update,
    "dm_open": lambda d, ref: DmOpen(_ids(d, "users", 1, MAX_DM_OTHERS), ref),
    "rooms_browse": lambda d, ref: RoomsBrowse(
        _text(d, "q", MAX_QUERY_CHARS, ""),
        _flag(d, "archived"),
        ref,
        _id(d, "room") if d.get("room") is not None else None,
    ),
    "members": lambda d, ref: Members(_room(d), ref),
    "people": lambda d, ref: People(
        _text(d, "q", MAX_QUERY_CHARS, ""), _flag(d, "deactivated"), ref
    ),
    "profile": lambda d, ref: Profile(_text(d, "name", MAX_NAME_CHARS), ref),
    "read": _read,
    "user_deactivate": lambda d, ref: UserDeactivate(_id(d, "user"), ref),
    "user_reactivate": lambda d, ref: UserReactivate(_id(d, "user"), ref),
}


def _is_client_id(value: object) -> TypeGuard[str]:
    return isinstance(value, str) and 1 <= len(value) <= MAX_CLIENT_ID


def _check_structure(raw: str) -> None:
    """Refuse JSON text nested more than MAX_NESTING deep or with too many arrays and objects.

    Checked before decoding because the decoder recurses once per level and
    a 4 KB frame can nest past Python's recursion limit. The brackets outside
    strings are found with byte operations only (about 1 ms for the worst
    64 KiB frame), then peeled a level of empty pairs at a time.
    """
    if raw.count("[") + raw.count("{") <= MAX_NESTING:
        return
    # Without escaped backslashes and quotes, every quote left opens or closes
    # a string, so the even pieces between quotes are outside strings. Where
    # the JSON is invalid this may misjudge the rest, but never the valid part
    # before it, which is all the decoder recurses into.
    unescaped = raw.replace("\\\\", "").replace('\\"', "")
    skeleton = unescaped.encode("utf-8", "surrogatepass").translate(_BRACKETS, _NOT_STRUCTURE)
    skeleton = b"".join(skeleton.split(b'"')[::2])
    if skeleton.count(b"[") > MAX_CONTAINERS:
        raise FrameError(BAD_REQUEST, f"frame has more than {MAX_CONTAINERS} arrays and objects")
    for _ in range(MAX_NESTING):
        peeled = skeleton.replace(b"[]", b"")
        if len(peeled) == len(skeleton):
            break  # unbalanced: the decoder will refuse it without recursing far
        skeleton = peeled
    else:
        if skeleton:
            raise FrameError(BAD_REQUEST, f"frame is nested more than {MAX_NESTING} levels deep")


def _has_surrogate(value: object) -> bool:
    if isinstance(value, str):
        return _SURROGATE.search(value) is not None
    if isinstance(value, dict):
        return any(_has_surrogate(k) or _has_surrogate(v) for k, v in value.items())
    if isinstance(value, list):
        return any(_has_surrogate(item) for item in value)
    return False


def _optional_id(data: dict[str, Any], field: str) -> str | None:
    value = data.get(field)
    if value is None:
        return None
    if not isinstance(value, str) or not STREAM_ID.fullmatch(value):
        raise FrameError(BAD_REQUEST, f"{field} must be a message id")
    ms, seq = stream_id_key(value)
    if ms > MAX_ID_PART or seq > MAX_ID_PART:
        raise FrameError(BAD_REQUEST, f"{field} must be a message id (64-bit parts)")
    return value


def _before_id(data: dict[str, Any]) -> str | None:
    """Nothing is before 0-0; Redis refuses the exclusive range."""
    value = _optional_id(data, "before")
    if value is not None and stream_id_key(value) == (0, 0):
        raise FrameError(BAD_REQUEST, "before must be a message id after 0-0")
    return value


def _after_id(data: dict[str, Any]) -> str | None:
    """Nothing is after the largest id; Redis refuses the exclusive range."""
    value = _optional_id(data, "after")
    if value is not None and stream_id_key(value) == (MAX_ID_PART, MAX_ID_PART):
        raise FrameError(BAD_REQUEST, "after must be a message id below the largest one")
    return value


def _limit(data: dict[str, Any]) -> int:
    limit = data.get("limit", DEFAULT_HISTORY_LIMIT)
    # bool is an int in Python but not a number in the protocol.
    if not isinstance(limit, int) or isinstance(limit, bool):
        raise FrameError(BAD_REQUEST, "limit must be an integer")
    if not 1 <= limit <= MAX_HISTORY_LIMIT:
        raise FrameError(BAD_REQUEST, f"limit must be between 1 and {MAX_HISTORY_LIMIT}")
    return limit


# -- server frames --------------------------------------------------------------


def encode(frame: Any) -> str:
    return json.dumps(frame, ensure_ascii=False, separators=(",", ":"))


PONG = encode({"type": "pong"})


def _with_ref(frame: dict[str, Any], ref: str | None) -> str:
    if ref is not None:
        frame["ref"] = ref
    return encode(frame)


def pong_frame(ref: str | None = None) -> str:
    return PONG if ref is None else _with_ref({"type": "pong"}, ref)


def error_frame(
    code: str,
    message: str,
    client_id: str | None = None,
    ref: str | None = None,
    **extra: Any,
) -> str:
    frame: dict[str, Any] = {"type": "error", "code": code, "message": message, **extra}
    if client_id is not None:
        frame["client_id"] = client_id
    return _with_ref(frame, ref)


def ready_frame(user: dict[str, Any], rooms: Sequence[dict[str, Any]], online_json: str) -> str:
    """`online` is spliced in as text: the list is encoded once per change, not per socket."""
    head = encode({"type": "ready", "user": user, "rooms": list(rooms)})
    return f'{head[:-1]},"online":{online_json}}}'


def room_frame(room: dict[str, Any], ref: str | None = None) -> str:
    """A room created, changed, or joined: with the viewer fields, or without (to all members)."""
    return _with_ref({"type": "room", "room": room}, ref)


def room_removed_frame(room_id: str, reason: str) -> str:
    return encode({"type": "room_removed", "room": room_id, "reason": reason})


def rooms_frame(rooms: Sequence[dict[str, Any]], ref: str | None = None) -> str:
    return _with_ref({"type": "rooms", "rooms": list(rooms)}, ref)


def members_frame(room_id: str, users: Sequence[dict[str, str]], ref: str | None = None) -> str:
    return _with_ref({"type": "members", "room": room_id, "users": list(users)}, ref)


def people_frame(users: Sequence[dict[str, Any]], ref: str | None = None) -> str:
    return _with_ref({"type": "people", "users": list(users)}, ref)


def user_frame(user: dict[str, Any], ref: str | None = None) -> str:
    return _with_ref({"type": "user", "user": user}, ref)


def read_frame(room_id: str, message_id: str, unread: int, mentions: int) -> str:
    return encode(
        {"type": "read", "room": room_id, "id": message_id, "unread": unread, "mentions": mentions}
    )


def ok_frame(ref: str | None) -> str:
    return _with_ref({"type": "ok"}, ref)


def typing_frame(room_id: str, user_id: str, name: str) -> str:
    """Built once per typing event, by the worker that publishes it."""
    return encode({"type": "typing", "room": room_id, "user": {"id": user_id, "name": name}})


# The server frame type of each kind of change (SPEC §9).
CHANGE_FRAME_TYPES = {"edit": "edit", "delete": "delete", "react": "reaction"}


def change_frame_parts(
    room_id: str, kind: str, target: str, user_id: str, name: str, value: str, on: bool
) -> tuple[str, str]:
    """An edit, delete or reaction frame without its id and ts, which only XADD knows:
    the text before `,"id":..,"ts":..` and the text after (the change script and a
    replay both put them together, so a live and a replayed frame are the same)."""
    head = encode({"type": CHANGE_FRAME_TYPES[kind], "room": room_id})[:-1]
    rest: dict[str, Any] = {"target": target, "user": {"id": user_id, "name": name}}
    if kind == "edit":
        rest["text"] = value
    elif kind == "react":
        rest["emoji"] = value
        rest["on"] = on
    return head, "," + encode(rest)[1:]


def unread_frame(room_id: str, message_id: str, author_id: str, mentions: str = "") -> str:
    """Built once per message per worker, for every socket watching the room;
    `mentions` is the message frame's mention fields (see `mention_fields`), so
    each page counts its own user's mentions."""
    tail = f",{mentions}" if mentions else ""
    return f'{{"type":"unread","room":"{room_id}","id":"{message_id}","user":"{author_id}"{tail}}}'


_MENTIONS_FIELD = '"mentions":['
_EVERYONE_FIELD = ',"everyone":true'


def mention_fields(frame: str) -> str:
    """The `"mentions":[...]` (and `"everyone":true`) fields of a message frame as
    they are, or "" without mentions. No JSON parse: in a JSON text every quote
    inside a string is escaped, so the only `"mentions":[` is the field's."""
    start = frame.find(_MENTIONS_FIELD)
    if start < 0:
        return ""
    end = frame.find("]", start) + 1
    if frame.startswith(_EVERYONE_FIELD, end):
        end += len(_EVERYONE_FIELD)
    return frame[start:end]


def message_object(message: Message) -> dict[str, Any]:
    """A stored message as frames carry it (the post script writes the same shape,
    with the mention fields, when there are any, before the author)."""
    obj: dict[str, Any] = {"room": message.room, "id": message.id, "ts": message.ts}
    if message.mentions or message.everyone:
        obj["mentions"] = list(message.mentions)
        if message.everyone:
            obj["everyone"] = True
    obj["user"] = {"id": message.user_id, "name": message.user_name}
    obj["text"] = message.text
    obj["client_id"] = message.client_id
    return obj


def message_frame(message: Message) -> str:
    return encode({"type": "message", **message_object(message)})


def history_frame(
    room_id: str,
    messages: Sequence[Message],
    has_more: bool,
    *,
    reset: bool = False,
    ref: str | None = None,
    states: Mapping[str, MessageState] | None = None,
    viewer: str | None = None,
) -> str:
    """`states`: the current state of the changed ones among `messages` (SPEC §9),
    with `me` in reactions as `viewer` sees them."""
    objects = [message_object(message) for message in messages]
    if states:
        for obj in objects:
            state = states.get(obj["id"])
            if state is not None:
                obj.update(state.fields(viewer))
    frame: dict[str, Any] = {
        "type": "history",
        "room": room_id,
        "messages": objects,
        "has_more": has_more,
    }
    if reset:
        frame["reset"] = True
    return _with_ref(frame, ref)


# -- pub/sub payloads ------------------------------------------------------------

# Room channel events.
EVENT_ROOM = "room"
EVENT_LEFT = "left"
EVENT_REMOVED = "removed"
EVENT_ARCHIVED = "archived"
# Someone is typing (arg: their user id): to joined sockets of the other members only.
EVENT_TYPING = "typing"
# User channel events (and EVENT_REMOVED).
EVENT_ADDED = "added"
EVENT_FRAME = "frame"
NO_ARG = "-"


@dataclass(frozen=True, slots=True)
class MessagePayload:
    id: str
    author: str
    frame: str
    # A change to a message (`V`): in stream order for sockets with the room open,
    # but no `unread` bump for the others.
    change: bool = False


@dataclass(frozen=True, slots=True)
class EventPayload:
    kind: str
    arg: str | None
    frame: str


def message_payload(message_id: str, author_id: str, frame: str) -> str:
    """What the post script publishes (it builds the same text in Lua)."""
    return f"M {message_id} {author_id} {frame}"


def event_payload(kind: str, arg: str | None, frame: str) -> str:
    return f"E {kind} {arg or NO_ARG} {frame}"


def parse_payload(payload: str) -> MessagePayload | EventPayload | None:
    """A room or user channel payload, or None when it is not one (the caller logs it)."""
    parts = payload.split(" ", 3)
    if len(parts) != 4:
        return None
    tag, first, second, frame = parts
    if tag == "M":
        return MessagePayload(first, second, frame)
    if tag == "V":
        return MessagePayload(first, second, frame, change=True)
    if tag == "E":
        return EventPayload(first, None if second == NO_ARG else second, frame)
    return None


def stream_id_key(stream_id: str) -> tuple[int, int]:
    """Stream ids compare as (milliseconds, sequence), not as strings."""
    ms, _, seq = stream_id.partition("-")
    return int(ms), int(seq or 0)
