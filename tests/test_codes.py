"""The one-time code policy, called directly against a real Redis."""

from __future__ import annotations

import asyncio
import logging

import pytest
from redis.asyncio import Redis

from quart_chat.codes import (
    IssueOutcome,
    generate_code,
    is_email_allowed,
    issue_code,
    normalize_email,
    verify_code,
)
from quart_chat.config import Settings

EMAIL = "ada@example.com"


def tuned(settings: Settings, **changes: object) -> Settings:
    # model_copy skips validation, which lets a test use a TTL below the 10 s floor.
    return settings.model_copy(update=changes)


async def issued(redis: Redis, settings: Settings, email: str = EMAIL) -> str:
    result = await issue_code(redis, settings, email)
    assert result.outcome is IssueOutcome.ISSUED and result.code is not None
    return result.code


def wrong(code: str) -> str:
    return f"{(int(code) + 1) % 1_000_000:06d}"


def test_codes_are_six_ascii_digits_and_vary() -> None:
    codes = {generate_code() for _ in range(200)}
    assert all(len(code) == 6 and code.isascii() and code.isdigit() for code in codes)
    assert len(codes) > 190


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        (" Ada@Example.COM ", "ada@example.com"),
        ("a.b+tag@sub.example.org", "a.b+tag@sub.example.org"),
        ("", None),
        ("ada", None),
        ("ada@example", None),
        ("ada@@example.com", None),
        ("a da@example.com", None),
        ("ada@example.com\r\nBcc: eve@example.com", None),
        ("x" * 250 + "@example.com", None),
    ],
)
def test_normalize_email(raw: str, expected: str | None) -> None:
    assert normalize_email(raw) == expected


def test_allow_lists(settings: Settings) -> None:
    assert is_email_allowed(settings, "anyone@anywhere.example")
    limited = tuned(
        settings, allowed_emails=["ada@example.com"], allowed_email_domains=["corp.test"]
    )
    assert is_email_allowed(limited, "ada@example.com")
    assert is_email_allowed(limited, "bob@corp.test")
    assert not is_email_allowed(limited, "eve@example.com")
    assert not is_email_allowed(limited, "eve@evilcorp.test")


async def test_right_code_works_once(redis: Redis, settings: Settings) -> None:
    code = await issued(redis, settings)
    assert await verify_code(redis, settings, EMAIL, code)
    assert not await verify_code(redis, settings, EMAIL, code)


async def test_code_is_bound_to_its_address(redis: Redis, settings: Settings) -> None:
    code = await issued(redis, settings)
    assert not await verify_code(redis, settings, "bob@example.com", code)
    assert await verify_code(redis, settings, EMAIL, code)


async def test_only_a_keyed_hash_is_stored(redis: Redis, settings: Settings) -> None:
    code = await issued(redis, settings)
    for key in await redis.keys("*"):
        assert code.encode() not in key
        if await redis.type(key) == b"hash":
            assert all(code.encode() not in v for v in (await redis.hgetall(key)).values())
        elif await redis.type(key) == b"string":
            assert code.encode() not in (await redis.get(key) or b"")


async def test_code_expires(redis: Redis, settings: Settings) -> None:
    short = tuned(settings, code_ttl_seconds=1)
    code = await issued(redis, short)
    await asyncio.sleep(2.1)
    assert not await verify_code(redis, short, EMAIL, code)


async def test_wrong_tries_below_the_limit_leave_the_code_usable(
    redis: Redis, settings: Settings
) -> None:
    code = await issued(redis, settings)
    for _ in range(settings.code_max_attempts - 1):
        assert not await verify_code(redis, settings, EMAIL, wrong(code))
    assert await verify_code(redis, settings, EMAIL, code)


async def test_max_attempts_burn_the_code(redis: Redis, settings: Settings) -> None:
    code = await issued(redis, settings)
    for _ in range(settings.code_max_attempts):
        assert not await verify_code(redis, settings, EMAIL, wrong(code))
    assert not await verify_code(redis, settings, EMAIL, code)


@pytest.mark.parametrize("bad", ["", "12345", "1234567", "abcdef", "12 345", "١٢٣٤٥٦", "123456\n"])
async def test_malformed_input_is_rejected_without_counting(
    redis: Redis, settings: Settings, bad: str
) -> None:
    code = await issued(redis, settings)
    for _ in range(settings.code_max_attempts + 1):
        assert not await verify_code(redis, settings, EMAIL, bad)
    # Had any of those reached Redis as a try, the code would be burned by now.
    assert await verify_code(redis, settings, EMAIL, code)


async def test_new_code_replaces_the_old(redis: Redis, settings: Settings) -> None:
    eager = tuned(settings, code_resend_seconds=0)
    old = await issued(redis, eager)
    new = await issued(redis, eager)
    if old != new:  # one in a million they coincide
        assert not await verify_code(redis, eager, EMAIL, old)
    assert await verify_code(redis, eager, EMAIL, new)


async def test_resend_within_the_window_issues_nothing(redis: Redis, settings: Settings) -> None:
    code = await issued(redis, settings)
    again = await issue_code(redis, settings, EMAIL)
    assert again.outcome is IssueOutcome.RESEND_WAIT and again.code is None
    assert await verify_code(redis, settings, EMAIL, code)


async def test_not_allowed_address_gets_no_code(redis: Redis, settings: Settings) -> None:
    limited = tuned(settings, allowed_email_domains=["corp.test"])
    result = await issue_code(redis, limited, EMAIL)
    assert result.outcome is IssueOutcome.NOT_ALLOWED and result.code is None
    assert await redis.keys("login-code:*") == []


async def test_concurrent_use_of_one_code_succeeds_once(redis: Redis, settings: Settings) -> None:
    code = await issued(redis, settings)
    results = await asyncio.gather(*(verify_code(redis, settings, EMAIL, code) for _ in range(20)))
    assert results.count(True) == 1


async def test_daily_failures_lock_the_address(
    redis: Redis, settings: Settings, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="quart_chat")
    strict = tuned(settings, code_failures_per_email_day=3, code_max_attempts=10)
    code = await issued(redis, strict)
    for _ in range(3):
        assert not await verify_code(redis, strict, EMAIL, wrong(code))
    assert "locked for 24 h" in caplog.text and EMAIL in caplog.text
    assert not await verify_code(redis, strict, EMAIL, code)
    eager = tuned(strict, code_resend_seconds=0)
    assert (await issue_code(redis, eager, EMAIL)).outcome is IssueOutcome.LOCKED
    # Another address is not affected, and the lock lasts for the 24 h window.
    assert await verify_code(
        redis, strict, "bob@example.com", await issued(redis, strict, "bob@example.com")
    )
    assert 86000 < await redis.ttl("login-code-failures:ada@example.com") <= 86400
