"""The frame parser on its own, fuzzed: it answers everything with a frame or a FrameError
whose error frame can be sent; tests/blueprints/test_chat_fuzz.py drives a real socket."""

from __future__ import annotations

import json
from typing import Any

from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from quart_chat.realtime.protocol import (
    MAX_CONTAINERS,
    MAX_NESTING,
    FrameError,
    History,
    Join,
    Ping,
    Send,
    Typing,
    parse_frame,
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


@FUZZ
@given(raw_frames)
@example(deep(2000))
@example('{"type":"send","room":"general","text":"\\ud800","client_id":"c"}')
@example('{"type":"history","room":"general","before":"99999999999999999999-0"}')
@example('{"type":"history","room":"general","before":"0-0"}')
def test_every_frame_parses_or_is_refused_with_a_spec_code(raw: str | bytes) -> None:
    result = parse(raw)
    if isinstance(result, FrameError):
        assert result.code in SPEC_ERROR_CODES
        sent = result.frame()
        sent.encode("utf-8")  # what the socket would send: never fails to encode
        assert json.loads(sent)["type"] == "error"
        want = expected_answer(raw)
        # A join is refused on a joined socket, never by the parser alone.
        assert want == "error" or json.loads(raw)["type"] == "join"
    else:
        assert isinstance(result, Join | Send | History | Typing | Ping)
        if isinstance(result, Send):
            (result.text + result.client_id).encode("utf-8")
            assert expected_answer(raw) == "message"
        elif isinstance(result, History):
            assert expected_answer(raw) == "history"
        elif isinstance(result, Typing):
            assert expected_answer(raw) == "none"
        elif isinstance(result, Ping):
            assert expected_answer(raw) == "pong"


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
