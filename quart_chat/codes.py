"""One-time login codes: issued, verified and burned in Redis.

Only an HMAC of each code is stored, so a Redis dump does not hand out logins.
Every check that must be atomic across workers (issue-or-wait, consume once,
count a wrong try and burn) runs as one Lua script; the comparison of the
HMACs themselves happens here, in constant time. Scripts use Redis 6.2
commands only.
"""

from __future__ import annotations

import enum
import hashlib
import hmac
import logging
import re
import secrets
from dataclasses import dataclass

from redis.asyncio import Redis

from .config import Settings

log = logging.getLogger(__name__)

CODE_DIGITS = 6
FAILURE_WINDOW_SECONDS = 24 * 3600

# ASCII digits only: `\d` would also accept other scripts' digits.
_CODE_PATTERN = re.compile(r"[0-9]{6}")
# Deliberately loose (the mail server is the real judge), but one address,
# no whitespace or control characters that could reach a mail header.
_EMAIL_PATTERN = re.compile(r"[^@\s\x00-\x1f\x7f]+@[^@\s\x00-\x1f\x7f.]+(\.[^@\s\x00-\x1f\x7f.]+)+")
MAX_EMAIL_LENGTH = 254


def _code_key(email: str) -> str:
    return f"login-code:{email}"


def _resend_key(email: str) -> str:
    return f"login-code-resend:{email}"


def _failures_key(email: str) -> str:
    return f"login-code-failures:{email}"


class IssueOutcome(enum.StrEnum):
    ISSUED = "issued"
    RESEND_WAIT = "resend_wait"
    NOT_ALLOWED = "not_allowed"
    LOCKED = "locked"


@dataclass(frozen=True, slots=True)
class IssuedCode:
    outcome: IssueOutcome
    # The code to mail; set only when `outcome` is ISSUED.
    code: str | None = None


# KEYS: code, resend, failures. ARGV: mac, ttl, resend seconds, failure limit, allowed (1/0).
# The lockout is checked first so a locked address behaves the same whether or not it is allowed.
_ISSUE = """
local failures = tonumber(redis.call('GET', KEYS[3]) or '0')
if failures >= tonumber(ARGV[4]) then return 'locked' end
if ARGV[5] ~= '1' then return 'not_allowed' end
if tonumber(ARGV[3]) > 0 and not redis.call('SET', KEYS[2], '1', 'NX', 'EX', ARGV[3]) then
  return 'resend_wait'
end
redis.call('DEL', KEYS[1])
redis.call('HSET', KEYS[1], 'mac', ARGV[1], 'attempts', '0')
redis.call('EXPIRE', KEYS[1], ARGV[2])
return 'issued'
"""

# KEYS: code. ARGV: the mac that was checked. Deletes only the code that was
# compared, so of two concurrent logins with it exactly one gets 1.
_CONSUME = """
if redis.call('HGET', KEYS[1], 'mac') == ARGV[1] then
  redis.call('DEL', KEYS[1])
  return 1
end
return 0
"""

# KEYS: code, failures. ARGV: max attempts, failure window seconds.
# Returns the address's failure count in the current window.
_FAIL = """
if redis.call('EXISTS', KEYS[1]) == 1 then
  local attempts = redis.call('HINCRBY', KEYS[1], 'attempts', 1)
  if attempts >= tonumber(ARGV[1]) then redis.call('DEL', KEYS[1]) end
end
local failures = redis.call('INCR', KEYS[2])
if failures == 1 or redis.call('TTL', KEYS[2]) < 0 then
  redis.call('EXPIRE', KEYS[2], ARGV[2])
end
return failures
"""


def normalize_email(raw: str) -> str | None:
    """The address in the form codes and users are keyed by, or None if it is not one."""
    email = raw.strip().lower()
    if len(email) > MAX_EMAIL_LENGTH or not _EMAIL_PATTERN.fullmatch(email):
        return None
    return email


def is_well_formed_code(code: str) -> bool:
    return _CODE_PATTERN.fullmatch(code) is not None


def is_email_allowed(settings: Settings, email: str) -> bool:
    """Whether `email` may log in; with both lists empty, anyone may."""
    if not settings.allowed_emails and not settings.allowed_email_domains:
        return True
    domain = email.rpartition("@")[2]
    return email in settings.allowed_emails or domain in settings.allowed_email_domains


def code_mac(settings: Settings, email: str, code: str) -> str:
    message = f"login-code\0{email}\0{code}".encode()
    return hmac.new(settings.secret().encode(), message, hashlib.sha256).hexdigest()


def generate_code() -> str:
    return f"{secrets.randbelow(10**CODE_DIGITS):0{CODE_DIGITS}d}"


async def issue_code(redis: Redis, settings: Settings, email: str) -> IssuedCode:
    """Store a fresh code for `email` unless it is not allowed, locked or was sent one just now.

    Every outcome does the same work (one code, one HMAC, one script) so the
    caller's response time does not tell them apart. A new code replaces the
    previous one.
    """
    code = generate_code()
    result = await redis.eval(
        _ISSUE,
        3,
        _code_key(email),
        _resend_key(email),
        _failures_key(email),
        code_mac(settings, email, code),
        settings.code_ttl_seconds,
        settings.code_resend_seconds,
        settings.code_failures_per_email_day,
        "1" if is_email_allowed(settings, email) else "0",
    )
    outcome = IssueOutcome(result.decode() if isinstance(result, bytes) else result)
    if outcome is IssueOutcome.LOCKED:
        log.warning(
            "login code not sent to %s: the address is locked after %d wrong codes within 24 h "
            "(CHAT_CODE_FAILURES_PER_EMAIL_DAY)",
            email,
            settings.code_failures_per_email_day,
        )
    elif outcome is IssueOutcome.NOT_ALLOWED:
        log.info(
            "login code not sent to %s: not in CHAT_ALLOWED_EMAILS / CHAT_ALLOWED_EMAIL_DOMAINS",
            email,
        )
    return IssuedCode(outcome, code if outcome is IssueOutcome.ISSUED else None)


async def verify_code(redis: Redis, settings: Settings, email: str, code: str) -> bool:
    """True once for the right, unexpired, unburned code of an address that is not locked.

    A wrong code counts towards burning the current code (CHAT_CODE_MAX_ATTEMPTS)
    and towards the address's daily lockout (CHAT_CODE_FAILURES_PER_EMAIL_DAY).
    """
    if not is_well_formed_code(code):
        return False
    pipe = redis.pipeline(transaction=False)
    pipe.hget(_code_key(email), "mac")
    pipe.get(_failures_key(email))
    stored, failures = await pipe.execute()
    limit = settings.code_failures_per_email_day
    if failures is not None and int(failures) >= limit:
        log.warning(
            "login refused for %s: the address is locked (CHAT_CODE_FAILURES_PER_EMAIL_DAY)", email
        )
        return False
    expected = code_mac(settings, email, code).encode()
    # Compare against a stand-in when there is no code, so both paths take the same time.
    matches = hmac.compare_digest(stored or b"\0" * len(expected), expected)
    if stored is not None and matches and await redis.eval(_CONSUME, 1, _code_key(email), expected):
        return True
    failures = int(
        await redis.eval(
            _FAIL,
            2,
            _code_key(email),
            _failures_key(email),
            settings.code_max_attempts,
            FAILURE_WINDOW_SECONDS,
        )
    )
    if failures == limit:
        log.warning(
            "login code for %s locked for 24 h: %d wrong codes (CHAT_CODE_FAILURES_PER_EMAIL_DAY)",
            email,
            failures,
        )
    return False
