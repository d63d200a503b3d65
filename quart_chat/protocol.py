"""The WebSocket protocol (SPEC §5): client frames parsed into dataclasses, server frames encoded.

Parsing never raises anything but `FrameError`, which the connection turns into
an `error` frame; a bad frame never closes the socket.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from typing import Any

DEFAULT_ROOM = "general"
ROOMS = (DEFAULT_ROOM,)
MAX_CLIENT_ID = 64
MAX_HISTORY_LIMIT = 100
DEFAULT_HISTORY_LIMIT = 50
# A Redis stream id: milliseconds, a dash, a sequence number.
STREAM_ID = re.compile(r"[0-9]{1,20}-[0-9]{1,20}")

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
    try:
        data = json.loads(raw)
    except ValueError:
        raise FrameError(BAD_REQUEST, "frame is not valid JSON") from None
    if not isinstance(data, dict):
        raise FrameError(BAD_REQUEST, "frame must be a JSON object")
    kind = data.get("type")
    if kind == "send":
        return _parse_send(data, max_chars)
    if kind == "join":
        return Join(_room(data), _optional_id(data, "after"))
    if kind == "history":
        return History(_room(data), _optional_id(data, "before"), _limit(data))
    if kind == "typing":
        return Typing(_room(data))
    if kind == "ping":
        return Ping()
    raise FrameError(BAD_REQUEST, "unknown frame type")


def _parse_send(data: dict[str, Any], max_chars: int) -> Send:
    client_id = data.get("client_id")
    if not isinstance(client_id, str) or not 1 <= len(client_id) <= MAX_CLIENT_ID:
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
