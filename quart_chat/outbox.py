"""The mail outbox: mail queued in Redis and sent by whichever worker gets to it.

A request never sends mail itself. It stores the rendered message in a hash
`{mail}:<id>` whose TTL is how long the mail is worth sending (a login code's
lifetime), and appends `<id>` to the stream `{mail}:outbox`. Every worker runs
`MailOutbox.run`, which reads the stream through the consumer group `mailers`:

- Each stream entry goes to one worker (XREADGROUP); it is acknowledged and
  deleted, together with the hash, in the same script that records the
  outcome, so a sent mail's text (a login code) leaves Redis at once.
- A failed attempt moves the mail to the sorted set `{mail}:retry`, due after a
  capped exponential backoff with jitter; any worker puts due mail back on the
  stream. When the next try would come after the hash expires, or the server
  refused the mail for good (a 5xx reply), the outbox gives up and deletes it.
- An entry a worker read but never settled (the worker died) is claimed by
  another with XAUTOCLAIM once it has been idle longer than one whole send may
  take. So every mail is delivered once, unless a worker dies between the SMTP
  server's "250 OK" and the acknowledgement, when it may be sent twice. A
  worker that is stopped mid-send hands the entry back at once instead.
- A mail whose hash is gone when its turn comes was replaced (a newer code
  for the same address) or expired; it is dropped.

The stream is polled every POLL_SECONDS rather than read with BLOCK: a
blocked read would wake a worker the instant a request queued a code, and the
work that follows would show in the response times of requests for addresses
that get mail (bench/login_timing.py).

Logs say queued, sent, retry, gave up and dropped with the mail's kind, id and
recipients; never its text, so a login code reaches the log only through the
console mailer.
"""

from __future__ import annotations

import asyncio
import logging
import random
import secrets
import time
from collections.abc import Mapping
from typing import Any

import aiosmtplib
from redis.asyncio import Redis
from redis.exceptions import RedisError, ResponseError

from . import keys
from .mail import Mailer, OutgoingMail
from .storage import as_text, raise_if_cancelled, script

log = logging.getLogger(__name__)

GROUP = "mailers"

POLL_SECONDS = 0.5
BATCH = 16
RETRY_BASE_SECONDS = 1.0
RETRY_CAP_SECONDS = 30.0
# Added to the longest a send may take (CHAT_SMTP_TIMEOUT_SECONDS) before an
# unsettled entry counts as abandoned by a dead worker.
CLAIM_MARGIN_SECONDS = 10.0
REDIS_BACKOFF_SECONDS = (0.5, 10.0)
# Every worker start adds a consumer to the group; one that has held nothing
# for this long is a worker that is gone (a live one reads every POLL_SECONDS).
FORGET_CONSUMER_SECONDS = 3600.0


def new_mail_id() -> str:
    return secrets.token_hex(12)


# A Lua function other scripts include (quart_chat/codes.py queues the login
# code mail in the same script that issues the code). Fields: the rendered
# mail, its kind for logs, attempts so far, and a key to delete if the outbox
# gives up (the login code's resend window).
QUEUE_MAIL_LUA = """
local function queue_mail(mail_key, stream, id, body, kind, ttl, release)
  redis.call('DEL', mail_key)
  redis.call('HSET', mail_key, 'mail', body, 'kind', kind, 'attempts', '0', 'release', release)
  redis.call('EXPIRE', mail_key, ttl)
  redis.call('XADD', stream, '*', 'id', id)
end
"""

# KEYS: mail hash, stream. ARGV: id, body, kind, ttl seconds, release key.
_QUEUE = (
    QUEUE_MAIL_LUA
    + """
queue_mail(KEYS[1], KEYS[2], ARGV[1], ARGV[2], ARGV[3], ARGV[4], ARGV[5])
"""
)

# Takes stream entry ARGV[2] off the stream (KEYS[1], group ARGV[1]) if it is
# still in consumer ARGV[3]'s pending list; false, and nothing done, once
# another worker claimed it.
_TAKE = """
local function take(stream, group, entry, consumer)
  if #redis.call('XPENDING', stream, group, entry, entry, 1, consumer) ~= 1 then
    return false
  end
  redis.call('XACK', stream, group, entry)
  redis.call('XDEL', stream, entry)
  return true
end
"""

# KEYS: stream, mail hash. ARGV: group, entry. Sent, dropped or claimed away
# after success: either way nobody should send it again.
_SETTLE = """
redis.call('XACK', KEYS[1], ARGV[1], ARGV[2])
redis.call('XDEL', KEYS[1], ARGV[2])
redis.call('DEL', KEYS[2])
return 1
"""

# KEYS: stream, mail hash, retry set. ARGV: group, entry, consumer, id, due ms, attempts.
_RETRY = (
    _TAKE
    + """
if not take(KEYS[1], ARGV[1], ARGV[2], ARGV[3]) then return 0 end
if redis.call('EXISTS', KEYS[2]) == 0 then return 0 end
redis.call('HSET', KEYS[2], 'attempts', ARGV[6])
redis.call('ZADD', KEYS[3], ARGV[5], ARGV[4])
return 1
"""
)

# KEYS: stream, mail hash, and the mail's release key if it has one (a resend
# window that should not outlive a lost mail). ARGV: group, entry, consumer.
_GIVE_UP = (
    _TAKE
    + """
if not take(KEYS[1], ARGV[1], ARGV[2], ARGV[3]) then return 0 end
redis.call('DEL', unpack(KEYS, 2))
return 1
"""
)

# KEYS: stream. ARGV: group, entry, consumer, id. Hands an entry this worker
# holds back to every worker, as a new entry: for a worker that stops mid-send.
_REQUEUE = (
    _TAKE
    + """
if not take(KEYS[1], ARGV[1], ARGV[2], ARGV[3]) then return 0 end
redis.call('XADD', KEYS[1], '*', 'id', ARGV[4])
return 1
"""
)

# KEYS: retry set, stream. ARGV: now ms, limit. Moves due mail back onto the
# stream; atomic, so two workers never both move the same one.
_PROMOTE = """
local due = redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', ARGV[1], 'LIMIT', 0, ARGV[2])
for _, id in ipairs(due) do
  redis.call('ZREM', KEYS[1], id)
  redis.call('XADD', KEYS[2], '*', 'id', id)
end
return #due
"""


async def queue_mail(
    redis: Redis, mail: OutgoingMail, *, kind: str, ttl_seconds: int, release_key: str = ""
) -> str:
    """Put `mail` in the outbox, worth sending for `ttl_seconds`; returns its id."""
    mail_id = new_mail_id()
    await script(redis, _QUEUE)(
        keys=[keys.mail(mail_id), keys.MAIL_OUTBOX],
        args=[mail_id, mail.to_json(), kind, ttl_seconds, release_key],
    )
    log.info("queued %s mail %s to %s", kind, mail_id, ", ".join(mail.to))
    return mail_id


def is_permanent(error: BaseException) -> bool:
    """A 5xx reply means the server refused this mail for good (RFC 5321 4.2.1)."""
    if isinstance(error, aiosmtplib.SMTPRecipientsRefused):
        return all(refused.code >= 500 for refused in error.recipients)
    return isinstance(error, aiosmtplib.SMTPResponseException) and error.code >= 500


def describe(error: BaseException) -> str:
    return f"{type(error).__name__}: {str(error) or 'no answer in time'}"


class MailOutbox:
    """One worker's drainer of the shared outbox; `run` loops until cancelled."""

    def __init__(
        self,
        redis: Redis,
        mailer: Mailer,
        consumer: str,
        *,
        claim_idle_seconds: float,
        poll_seconds: float = POLL_SECONDS,
        retry_base_seconds: float = RETRY_BASE_SECONDS,
        retry_cap_seconds: float = RETRY_CAP_SECONDS,
        batch: int = BATCH,
        forget_consumer_seconds: float = FORGET_CONSUMER_SECONDS,
    ) -> None:
        self.redis = redis
        self.mailer = mailer
        self.consumer = consumer
        self.claim_idle_ms = int(claim_idle_seconds * 1000)
        self.poll_seconds = poll_seconds
        self.retry_base_seconds = retry_base_seconds
        self.retry_cap_seconds = retry_cap_seconds
        self.batch = batch
        self.forget_consumer_ms = int(forget_consumer_seconds * 1000)

    async def run(self) -> None:
        pause = REDIS_BACKOFF_SECONDS[0]
        while True:
            try:
                await self.create_group()
                await self.forget_gone_consumers()
                forgot_at = time.monotonic()
                while True:
                    handled = await self.drain_once()
                    raise_if_cancelled()
                    pause = REDIS_BACKOFF_SECONDS[0]
                    if time.monotonic() - forgot_at > self.forget_consumer_ms / 1000:
                        await self.forget_gone_consumers()
                        forgot_at = time.monotonic()
                    if handled < self.batch:
                        await asyncio.sleep(self.poll_seconds)
            except (RedisError, OSError) as error:
                # NOGROUP after Redis lost its data lands here too; the group is recreated.
                log.warning("mail outbox: Redis error (%s); retrying in %.1f s", error, pause)
                await asyncio.sleep(pause)
                pause = min(pause * 2, REDIS_BACKOFF_SECONDS[1])

    async def create_group(self) -> None:
        try:
            # From id 0, so mail queued before any worker created the group is sent too.
            await self.redis.xgroup_create(keys.MAIL_OUTBOX, GROUP, id="0", mkstream=True)
        except ResponseError as error:
            if "BUSYGROUP" not in str(error):
                raise

    async def forget_gone_consumers(self) -> None:
        """Remove consumers of workers that are gone and hold nothing. (Deleting a
        consumer would drop its pending entries, hence `pending == 0`.)"""
        for consumer in await self.redis.xinfo_consumers(keys.MAIL_OUTBOX, GROUP):
            if consumer["pending"] == 0 and consumer["idle"] > self.forget_consumer_ms:
                await self.redis.xgroup_delconsumer(keys.MAIL_OUTBOX, GROUP, consumer["name"])

    async def drain_once(self) -> int:
        """Send what is due now: retries, entries a dead worker left, new mail."""
        redis = self.redis
        await script(redis, _PROMOTE)(
            keys=[keys.MAIL_RETRY, keys.MAIL_OUTBOX], args=[int(time.time() * 1000), self.batch]
        )
        claimed = await redis.xautoclaim(
            keys.MAIL_OUTBOX, GROUP, self.consumer, self.claim_idle_ms, "0-0", count=self.batch
        )
        entries: list[tuple[Any, Any]] = list(claimed[1])
        fresh: Any = await redis.xreadgroup(
            GROUP, self.consumer, {keys.MAIL_OUTBOX: ">"}, count=self.batch
        )
        for _stream, stream_entries in fresh or []:
            entries.extend(stream_entries)
        async with asyncio.TaskGroup() as group:
            for entry_id, fields in entries:
                group.create_task(self.deliver(as_text(entry_id), fields or {}))
        return len(entries)

    async def deliver(self, entry_id: str, fields: Mapping[bytes, bytes]) -> None:
        """One attempt at one entry. Redis errors are logged: the entry stays pending and
        is claimed again later, by this worker or another."""
        try:
            await self._deliver(entry_id, fields)
        except (RedisError, OSError) as error:
            log.warning(
                "mail outbox: Redis error on entry %s (%s); it will be retried", entry_id, error
            )

    async def _deliver(self, entry_id: str, fields: Mapping[bytes, bytes]) -> None:
        redis = self.redis
        mail_id = as_text(fields.get(b"id", b""))
        key = keys.mail(mail_id)
        stored = await redis.hgetall(key) if mail_id else {}
        if not stored:
            await script(redis, _SETTLE)(keys=[keys.MAIL_OUTBOX, key], args=[GROUP, entry_id])
            log.info("dropped mail %s: replaced or expired before it was sent", mail_id or "?")
            return
        kind = as_text(stored.get(b"kind", b"mail"))
        attempt = int(stored.get(b"attempts", b"0")) + 1
        release = as_text(stored.get(b"release", b""))
        recipients = "?"
        try:
            mail = OutgoingMail.from_json(stored[b"mail"])
            recipients = ", ".join(mail.to)
            await self.mailer.send(mail)
        except asyncio.CancelledError:
            # The worker is stopping: hand the mail on now rather than leave it
            # to be claimed after the timeout meant for dead workers.
            await asyncio.shield(
                script(redis, _REQUEUE)(
                    keys=[keys.MAIL_OUTBOX], args=[GROUP, entry_id, self.consumer, mail_id]
                )
            )
            log.info("handed %s mail %s to %s back to the outbox", kind, mail_id, recipients)
            raise
        except (aiosmtplib.SMTPException, OSError, TimeoutError) as error:
            await self._failed(entry_id, mail_id, kind, recipients, attempt, error, release)
            return
        except Exception as error:
            # Not a delivery problem but a bad message or a bug: trying again cannot help.
            log.exception("mail outbox: could not build %s mail %s", kind, mail_id)
            await self._give_up(entry_id, mail_id, kind, recipients, attempt, error, release)
            return
        await script(redis, _SETTLE)(keys=[keys.MAIL_OUTBOX, key], args=[GROUP, entry_id])
        log.info("sent %s mail %s to %s (attempt %d)", kind, mail_id, recipients, attempt)

    async def _failed(
        self,
        entry_id: str,
        mail_id: str,
        kind: str,
        recipients: str,
        attempt: int,
        error: BaseException,
        release: str,
    ) -> None:
        delay = min(self.retry_cap_seconds, self.retry_base_seconds * 2 ** (attempt - 1))
        delay *= random.uniform(0.8, 1.2)
        remaining_ms = await self.redis.pttl(keys.mail(mail_id))
        # A retry is picked up on a later poll, not at its due time: one due too
        # close to the expiry would find the mail gone and drop it at INFO, where
        # giving up now says so at ERROR.
        if is_permanent(error) or remaining_ms < (delay + 2 * self.poll_seconds) * 1000:
            await self._give_up(entry_id, mail_id, kind, recipients, attempt, error, release)
            return
        due_ms = int((time.time() + delay) * 1000)
        retried = await script(self.redis, _RETRY)(
            keys=[keys.MAIL_OUTBOX, keys.mail(mail_id), keys.MAIL_RETRY],
            args=[GROUP, entry_id, self.consumer, mail_id, due_ms, attempt],
        )
        if retried:
            log.warning(
                "could not send %s mail %s to %s (attempt %d): %s; retrying in %.1f s",
                kind,
                mail_id,
                recipients,
                attempt,
                describe(error),
                delay,
            )

    async def _give_up(
        self,
        entry_id: str,
        mail_id: str,
        kind: str,
        recipients: str,
        attempt: int,
        error: BaseException,
        release: str,
    ) -> None:
        mail_keys = [keys.MAIL_OUTBOX, keys.mail(mail_id)] + ([release] if release else [])
        gave_up = await script(self.redis, _GIVE_UP)(
            keys=mail_keys, args=[GROUP, entry_id, self.consumer]
        )
        if gave_up:
            log.error(
                "gave up on %s mail %s to %s after %d attempt(s): %s",
                kind,
                mail_id,
                recipients,
                attempt,
                describe(error),
            )
