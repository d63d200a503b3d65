"""The one-time code policy, called directly against a real Redis."""

from __future__ import annotations

import asyncio
import logging

import pytest
from redis.asyncio import Redis

from quart_chat import keys
from quart_chat.codes import (
    IssueOutcome,
    generate_code,
    is_email_allowed,
    issue_code,
    verify_code,
)
from quart_chat.config import Settings
from quart_chat.mail import OutgoingMail
from quart_chat.storage import as_text, open_redis

EMAIL = "ada@example.com"


def tuned(settings: Settings, **changes: object) -> Settings:
    # model_copy skips validation, which lets a test use a TTL below the 10 s floor.
    return settings.model_copy(update=changes)


async def queued_mail(redis: Redis, email: str) -> OutgoingMail | None:
    """The code mail waiting in the outbox for `email` (no drainer runs in these tests)."""
    key = await redis.get(keys.login_code_mail(email))
    body = await redis.hget(as_text(key), "mail") if key else None
    return None if body is None else OutgoingMail.from_json(body)


async def issued(redis: Redis, settings: Settings, email: str = EMAIL) -> str:
    assert await issue_code(redis, settings, email) is IssueOutcome.ISSUED
    mail = await queued_mail(redis, email)
    assert mail is not None and mail.to == (email,)
    code = mail.subject.rsplit(" ", 1)[1]
    assert code in mail.text
    return code


def wrong(code: str) -> str:
    return f"{(int(code) + 1) % 1_000_000:06d}"


def test_codes_are_six_ascii_digits_and_vary() -> None:
    codes = {generate_code() for _ in range(200)}
    assert all(len(code) == 6 and code.isascii() and code.isdigit() for code in codes)
    assert len(codes) > 190


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


async def test_the_code_is_stored_only_as_a_keyed_hash_and_in_its_mail(
    redis: Redis, settings: Settings
) -> None:
    code = await issued(redis, settings)
    mail_key = as_text(await redis.get(keys.login_code_mail("ada@example.com")))
    # The queued mail holds the code until it is sent, and no longer than the code lives.
    assert 0 < await redis.ttl(mail_key) <= settings.code_ttl_seconds
    for key in await redis.keys("*"):
        assert code.encode() not in key
        if key == mail_key.encode():
            continue
        if await redis.type(key) == b"hash":
            assert all(code.encode() not in v for v in (await redis.hgetall(key)).values())
        elif await redis.type(key) == b"string":
            assert code.encode() not in (await redis.get(key) or b"")
        elif await redis.type(key) == b"stream":
            entries = await redis.xrange(key)
            assert all(code.encode() not in v for _, f in entries for v in f.values())


async def test_a_new_code_drops_the_old_codes_queued_mail(redis: Redis, settings: Settings) -> None:
    eager = tuned(settings, code_resend_seconds=0)
    await issued(redis, eager)
    first_key = await redis.get(keys.login_code_mail("ada@example.com"))
    new = await issued(redis, eager)
    assert not await redis.exists(first_key)
    mail = await queued_mail(redis, EMAIL)
    assert mail is not None and new in mail.text


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
    assert await issue_code(redis, settings, EMAIL) is IssueOutcome.RESEND_WAIT
    assert await redis.xlen(keys.MAIL_OUTBOX) == 1
    assert await verify_code(redis, settings, EMAIL, code)


async def test_not_allowed_address_gets_no_code(redis: Redis, settings: Settings) -> None:
    limited = tuned(settings, allowed_email_domains=["corp.test"])
    assert await issue_code(redis, limited, EMAIL) is IssueOutcome.NOT_ALLOWED
    assert await redis.keys("{login:*}:code") == []
    assert await redis.keys("{mail}:*") == []


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
    assert await issue_code(redis, eager, EMAIL) is IssueOutcome.LOCKED
    # Another address is not affected, and the lock lasts for the 24 h window.
    assert await verify_code(
        redis, strict, "bob@example.com", await issued(redis, strict, "bob@example.com")
    )
    assert 86000 < await redis.ttl(keys.login_code_failures("ada@example.com")) <= 86400


async def test_concurrent_wrong_guesses_cannot_pass_the_daily_limit(
    redis: Redis, redis_url: str, settings: Settings
) -> None:
    """250 wrong guesses at once, from two worker-sized connection pools: exactly the
    limit of them are checked and counted, the rest refused as locked."""
    strict = tuned(settings, code_failures_per_email_day=100, code_max_attempts=10**6)
    code = await issued(redis, strict)
    guesses = [f"{n:06d}" for n in range(251) if f"{n:06d}" != code][:250]
    pools = [open_redis(redis_url), open_redis(redis_url)]
    try:
        results = await asyncio.gather(
            *(verify_code(pools[n % 2], strict, EMAIL, guess) for n, guess in enumerate(guesses))
        )
    finally:
        for pool in pools:
            await pool.aclose()
    assert not any(results)
    assert int(await redis.get(keys.login_code_failures("ada@example.com"))) == 100
    # Locked now: even the right code is refused, and the count stays at the limit.
    assert not await verify_code(redis, strict, EMAIL, code)
    assert int(await redis.get(keys.login_code_failures("ada@example.com"))) == 100


async def test_a_right_code_does_not_count_towards_the_daily_limit(
    redis: Redis, settings: Settings
) -> None:
    strict = tuned(settings, code_failures_per_email_day=2, code_resend_seconds=0)
    for _ in range(5):
        assert await verify_code(redis, strict, EMAIL, await issued(redis, strict))
    assert int(await redis.get(keys.login_code_failures("ada@example.com")) or 0) == 0
