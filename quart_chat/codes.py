"""One-time login codes: issued, verified and burned in Redis.

Only an HMAC of each code is stored, so a Redis dump does not hand out logins;
the code itself is in Redis only inside its queued mail (quart_chat/outbox.py),
until that mail is sent or the code expires. Every check that must be atomic
across workers (issue-and-queue-or-wait, reserve a try against the daily
limit, consume once, burn) runs as one Lua script; the comparison of the
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

from redis.asyncio import Redis

from . import keys
from .config import Settings
from .mail import code_mail
from .outbox import QUEUE_MAIL_LUA, new_mail_id
from .storage import script

log = logging.getLogger(__name__)

CODE_DIGITS = 6
FAILURE_WINDOW_SECONDS = 24 * 3600
CODE_MAIL_KIND = "login code"

# ASCII digits only: `\d` would also accept other scripts' digits.
_CODE_PATTERN = re.compile(r"[0-9]{6}")


class IssueOutcome(enum.StrEnum):
    ISSUED = "issued"
    RESEND_WAIT = "resend_wait"
    NOT_ALLOWED = "not_allowed"
    LOCKED = "locked"
    DEACTIVATED = "deactivated"


# KEYS: code, resend, failures, code mail pointer, new mail hash, outbox stream,
# deactivated flag.
# ARGV: mac, ttl, resend seconds, failure limit, allowed (1/0), mail id, mail, kind.
# The lockout is checked first so a locked address behaves the same whether or
# not it is allowed. A deactivated user's address gets nothing. The mail is
# queued here, not by the caller, so the caller does the same work whatever the
# outcome. The address's keys share a slot; the
# mail hash and the outbox stream are in the outbox's own (see keys.py).
_ISSUE = (
    QUEUE_MAIL_LUA
    + """
local failures = tonumber(redis.call('GET', KEYS[3]) or '0')
if failures >= tonumber(ARGV[4]) then return 'locked' end
if ARGV[5] ~= '1' then return 'not_allowed' end
if redis.call('EXISTS', KEYS[7]) == 1 then return 'deactivated' end
if tonumber(ARGV[3]) > 0 and not redis.call('SET', KEYS[2], '1', 'NX', 'EX', ARGV[3]) then
  return 'resend_wait'
end
redis.call('DEL', KEYS[1])
redis.call('HSET', KEYS[1], 'mac', ARGV[1], 'attempts', '0')
redis.call('EXPIRE', KEYS[1], ARGV[2])
-- The previous code no longer works: its mail, if still queued, is not sent.
local previous = redis.call('GET', KEYS[4])
if previous then redis.call('DEL', previous) end
local release = ''
if tonumber(ARGV[3]) > 0 then release = KEYS[2] end
queue_mail(KEYS[5], KEYS[6], ARGV[6], ARGV[7], ARGV[8], ARGV[2], release)
redis.call('SET', KEYS[4], KEYS[5], 'EX', ARGV[2])
return 'issued'
"""
)

# KEYS: code, failures, deactivated flag. ARGV: failure limit, failure window seconds.
# Counts this try against the address's daily limit *before* it is checked, so
# concurrent tries cannot all pass a limit they read before any was counted.
# A try over the limit is refused and not kept, so the count stops at the
# limit; a right code gives its count back (_CONSUME). Returns the count, or
# -1 when locked, and the stored mac.
_RESERVE = """
local failures = redis.call('INCR', KEYS[2])
if failures == 1 or redis.call('TTL', KEYS[2]) < 0 then
  redis.call('EXPIRE', KEYS[2], ARGV[2])
end
if failures > tonumber(ARGV[1]) then
  redis.call('DECR', KEYS[2])
  return {-1, false}
end
if redis.call('EXISTS', KEYS[3]) == 1 then return {failures, false} end
return {failures, redis.call('HGET', KEYS[1], 'mac')}
"""

# KEYS: code, failures. ARGV: the mac that was checked. Deletes only the code
# that was compared, so of two concurrent logins with it exactly one gets 1.
_CONSUME = """
if redis.call('HGET', KEYS[1], 'mac') == ARGV[1] then
  redis.call('DEL', KEYS[1])
  redis.call('DECR', KEYS[2])
  return 1
end
return 0
"""

# KEYS: code. ARGV: max attempts. A wrong try also counts towards burning the code.
_FAIL = """
if redis.call('EXISTS', KEYS[1]) == 1 then
  local attempts = redis.call('HINCRBY', KEYS[1], 'attempts', 1)
  if attempts >= tonumber(ARGV[1]) then redis.call('DEL', KEYS[1]) end
end
return 1
"""


def is_well_formed_code(code: str) -> bool:
    return _CODE_PATTERN.fullmatch(code) is not None


def is_email_allowed(settings: Settings, email: str) -> bool:
    """Whether `email` (normalised, as the lists are) may log in; with both lists
    empty, anyone may."""
    if not settings.allowed_emails and not settings.allowed_email_domains:
        return True
    domain = email.rpartition("@")[2]
    return email in settings.allowed_emails or domain in settings.allowed_email_domains


def code_mac(settings: Settings, email: str, code: str) -> str:
    message = f"login-code\0{email}\0{code}".encode()
    return hmac.new(settings.secret().encode(), message, hashlib.sha256).hexdigest()


def generate_code() -> str:
    return f"{secrets.randbelow(10**CODE_DIGITS):0{CODE_DIGITS}d}"


async def issue_code(redis: Redis, settings: Settings, email: str) -> IssueOutcome:
    """Store a fresh code for `email` and queue its mail, unless the address is not
    allowed, locked, or was sent one just now.

    Every outcome does the same work (one code, its mail rendered, one HMAC, one
    script, one log line) so the caller's response time does not tell them
    apart. A new code replaces the previous one. `email` must be normalised.
    """
    code = generate_code()
    mail = code_mail(email, code, settings.code_ttl_seconds)
    mail_id = new_mail_id()
    result = await script(redis, _ISSUE)(
        keys=[
            keys.login_code(email),
            keys.login_code_resend(email),
            keys.login_code_failures(email),
            keys.login_code_mail(email),
            keys.mail(mail_id),
            keys.MAIL_OUTBOX,
            keys.login_deactivated(email),
        ],
        args=[
            code_mac(settings, email, code),
            settings.code_ttl_seconds,
            settings.code_resend_seconds,
            settings.code_failures_per_email_day,
            "1" if is_email_allowed(settings, email) else "0",
            mail_id,
            mail.to_json(),
            CODE_MAIL_KIND,
        ],
    )
    outcome = IssueOutcome(result.decode() if isinstance(result, bytes) else result)
    if outcome is IssueOutcome.ISSUED:
        log.info("queued %s mail %s to %s", CODE_MAIL_KIND, mail_id, email)
    elif outcome is IssueOutcome.RESEND_WAIT:
        log.info("login code not sent to %s: one was sent within CHAT_CODE_RESEND_SECONDS", email)
    elif outcome is IssueOutcome.LOCKED:
        log.warning(
            "login code not sent to %s: the address is locked after %d wrong codes within 24 h "
            "(CHAT_CODE_FAILURES_PER_EMAIL_DAY)",
            email,
            settings.code_failures_per_email_day,
        )
    elif outcome is IssueOutcome.DEACTIVATED:
        log.info("login code not sent to %s: the user is deactivated", email)
    else:
        log.info(
            "login code not sent to %s: not in CHAT_ALLOWED_EMAILS / CHAT_ALLOWED_EMAIL_DOMAINS",
            email,
        )
    return outcome


async def verify_code(redis: Redis, settings: Settings, email: str, code: str) -> bool:
    """True once for the right, unexpired, unburned code of an address that is not locked.

    Every well-formed try counts towards the address's daily lockout
    (CHAT_CODE_FAILURES_PER_EMAIL_DAY) before it is checked, and only a right
    one is given back; a wrong one also counts towards burning the current
    code (CHAT_CODE_MAX_ATTEMPTS).
    """
    if not is_well_formed_code(code):
        return False
    limit = settings.code_failures_per_email_day
    code_key, failures_key = keys.login_code(email), keys.login_code_failures(email)
    failures, stored = await script(redis, _RESERVE)(
        keys=[code_key, failures_key, keys.login_deactivated(email)],
        args=[limit, FAILURE_WINDOW_SECONDS],
    )
    if int(failures) < 0:
        log.warning(
            "login refused for %s: the address is locked (CHAT_CODE_FAILURES_PER_EMAIL_DAY)", email
        )
        return False
    expected = code_mac(settings, email, code).encode()
    # Compare against a stand-in when there is no code, so both paths take the same time.
    matches = hmac.compare_digest(stored or b"\0" * len(expected), expected)
    if (
        stored is not None
        and matches
        and await script(redis, _CONSUME)(keys=[code_key, failures_key], args=[expected])
    ):
        return True
    await script(redis, _FAIL)(keys=[code_key], args=[settings.code_max_attempts])
    if int(failures) == limit:
        log.warning(
            "login code for %s locked for 24 h: %d wrong codes (CHAT_CODE_FAILURES_PER_EMAIL_DAY)",
            email,
            failures,
        )
    return False
