"""The WebSocket protocol (SPEC §5): client frames parsed into dataclasses, server frames encoded.

Parsing never raises anything but `FrameError`, which the connection turns into
an `error` frame; a bad frame never closes the socket.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from typing import Any, TypeGuard

DEFAULT_ROOM = "general"
ROOMS = (DEFAULT_ROOM,)
MAX_CLIENT_ID = 64
MAX_HISTORY_LIMIT = 100
DEFAULT_HISTORY_LIMIT = 50
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


@dataclass(frozen=True, slots=True)
class Join:
    room: str
    after: str | None


@dataclass(frozen=True, slots=True)
class Send:
    room: str
    text: str
    client_id: str


@dataclass(frozen=True, slots=True)
class History:
    room: str
    before: str | None
    limit: int


@dataclass(frozen=True, slots=True)
class Typing:
    room: str


@dataclass(frozen=True, slots=True)
class Ping:
    """The client's heartbeat: answered with `pong` on the same socket, without Redis."""


ClientFrame = Join | Send | History | Typing | Ping


class FrameError(Exception):
    """A client frame that cannot be served; becomes an `error` frame."""

    def __init__(self, code: str, message: str, client_id: str | None = None, **extra: Any) -> None:
        super().__init__(message)
        self.code = code
        self.message = message
        self.client_id = client_id
        self.extra = extra

    def frame(self) -> str:
        return error_frame(self.code, self.message, self.client_id, **self.extra)


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
        )
    kind = data.get("type")
    if kind == "send":
        return _parse_send(data, max_chars)
    if kind == "join":
        return Join(_room(data), _after_id(data))
    if kind == "history":
        return History(_room(data), _before_id(data), _limit(data))
    if kind == "typing":
        return Typing(_room(data))
    if kind == "ping":
        return Ping()
    raise FrameError(BAD_REQUEST, "unknown frame type")


def _parse_send(data: dict[str, Any], max_chars: int) -> Send:
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
    return Send(room, text, client_id)


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


def _room(data: dict[str, Any]) -> str:
    room = data.get("room")
    if not isinstance(room, str):
        raise FrameError(BAD_REQUEST, "room must be a string")
    if room not in ROOMS:
        raise FrameError(NOT_ALLOWED, "no such room")
    return room


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


def encode(frame: Any) -> str:
    return json.dumps(frame, ensure_ascii=False, separators=(",", ":"))


PONG = encode({"type": "pong"})


def error_frame(code: str, message: str, client_id: str | None = None, **extra: Any) -> str:
    frame: dict[str, Any] = {"type": "error", "code": code, "message": message, **extra}
    if client_id is not None:
        frame["client_id"] = client_id
    return encode(frame)


def stream_id_key(stream_id: str) -> tuple[int, int]:
    """Stream ids compare as (milliseconds, sequence), not as strings."""
    ms, _, seq = stream_id.partition("-")
    return int(ms), int(seq or 0)
