"""The mail outbox with real Redis and a real SMTP server: queued by one worker,
sent by another, retried, given up, and delivered once with several drainers."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import re
import socket
from collections import Counter
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from redis.asyncio import Redis

from quart_chat import keys
from quart_chat.mail import OutgoingMail, SmtpMailer, code_mail
from quart_chat.outbox import GROUP, MailOutbox, queue_mail

from .conftest import make_settings
from .smtp import SmtpSink, code_in

FAST = {"poll_seconds": 0.05, "retry_base_seconds": 0.2, "retry_cap_seconds": 0.4}


def outbox_for(
    redis: Redis, sink: SmtpSink, tmp_path: Path, consumer: str, **kwargs: Any
) -> MailOutbox:
    env = sink.env()
    settings = make_settings(
        "redis://127.0.0.1:1/0",
        tmp_path,
        smtp_host=env["CHAT_SMTP_HOST"],
        smtp_port=int(env["CHAT_SMTP_PORT"]),
        smtp_security="none",
        smtp_from=env["CHAT_SMTP_FROM"],
        smtp_timeout_seconds=2,
    )
    options: dict[str, Any] = {"claim_idle_seconds": 5.0, **FAST, **kwargs}
    return MailOutbox(redis, SmtpMailer(settings), consumer, **options)


@contextlib.asynccontextmanager
async def draining(*outboxes: MailOutbox) -> AsyncIterator[None]:
    tasks = [asyncio.create_task(outbox.run()) for outbox in outboxes]
    try:
        yield
    finally:
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)


async def settled(redis: Redis, timeout: float = 15.0) -> None:
    async with asyncio.timeout(timeout):
        while await redis.xlen(keys.MAIL_OUTBOX) or await redis.zcard(keys.MAIL_RETRY):
            await asyncio.sleep(0.05)


async def wait_for_log(caplog: pytest.LogCaptureFixture, pattern: str, timeout: float = 15) -> str:
    async with asyncio.timeout(timeout):
        while not (match := re.search(pattern, caplog.text)):
            await asyncio.sleep(0.05)
    return match.group(0)


def hello(to: str) -> OutgoingMail:
    return OutgoingMail(to=(to,), subject=f"hello {to}", text="hi", html="<p>hi</p>")


async def test_mail_queued_by_one_worker_is_sent_by_another(
    redis: Redis, smtp: SmtpSink, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="quart_chat")
    # The worker that queues runs no drainer at all, as if it died right after.
    mail_id = await queue_mail(
        redis, code_mail("ada@example.com", "424242", 600), kind="login code", ttl_seconds=600
    )
    assert f"queued login code mail {mail_id} to ada@example.com" in caplog.text
    async with draining(outbox_for(redis, smtp, tmp_path, "other-worker")):
        message = await asyncio.to_thread(smtp.wait_for_message, "ada@example.com")
        await settled(redis)
    assert code_in(message) == "424242"
    assert smtp.envelope_recipients == [["ada@example.com"]]
    assert f"sent login code mail {mail_id} to ada@example.com (attempt 1)" in caplog.text
    # Sent mail leaves nothing behind: the code is gone from Redis.
    assert await redis.keys("{mail}:*") == [keys.MAIL_OUTBOX.encode()]
    assert await redis.xlen(keys.MAIL_OUTBOX) == 0


async def test_smtp_down_then_back_gets_the_mail_once(
    redis: Redis, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="quart_chat")
    sink = SmtpSink()  # its port is chosen, but nothing listens there yet
    await queue_mail(
        redis, code_mail("ada@example.com", "135790", 600), kind="login code", ttl_seconds=600
    )
    try:
        async with draining(outbox_for(redis, sink, tmp_path, "w1")):
            await wait_for_log(
                caplog,
                r"could not send login code mail \w+ to ada@example.com \(attempt 3\): SMTPConnect",
            )
            sink.start()
            message = await asyncio.to_thread(sink.wait_for_message, "ada@example.com")
            await settled(redis)
            await asyncio.sleep(1.0)  # a second copy would have arrived by now
        assert code_in(message) == "135790"
        assert len(sink.messages) == 1
        assert re.search(
            r"sent login code mail \w+ to ada@example.com \(attempt [4-9]\)", caplog.text
        )
    finally:
        sink.stop()
    outbox_lines = [r.getMessage() for r in caplog.records if r.name == "quart_chat.outbox"]
    assert outbox_lines and not any("135790" in line for line in outbox_lines)


async def test_two_drainers_deliver_each_mail_exactly_once(
    redis: Redis, smtp: SmtpSink, tmp_path: Path
) -> None:
    addresses = [f"user{n}@example.com" for n in range(60)]
    for address in addresses:
        await queue_mail(redis, hello(address), kind="test", ttl_seconds=600)
    first = outbox_for(redis, smtp, tmp_path, "w1", batch=4)
    second = outbox_for(redis, smtp, tmp_path, "w2", batch=4)
    async with draining(first, second):
        await asyncio.to_thread(smtp.wait_for_message, addresses[-1])
        await settled(redis)
        await asyncio.sleep(0.5)
    received = Counter(rcpt for rcpts in smtp.envelope_recipients for rcpt in rcpts)
    assert received == Counter(addresses)
    consumers = await redis.xinfo_consumers(keys.MAIL_OUTBOX, GROUP)
    # Both took part, and neither holds anything unsettled.
    assert sorted(c["name"].decode() for c in consumers) == ["w1", "w2"]
    assert all(c["pending"] == 0 for c in consumers)


async def test_a_dead_workers_entry_is_claimed_after_the_timeout(
    redis: Redis, smtp: SmtpSink, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="quart_chat")
    survivor = outbox_for(redis, smtp, tmp_path, "survivor", claim_idle_seconds=1.5)
    await survivor.create_group()
    await queue_mail(redis, hello("ada@example.com"), kind="test", ttl_seconds=600)
    # A worker reads the entry and dies before settling it.
    taken = await redis.xreadgroup(GROUP, "dead-worker", {keys.MAIL_OUTBOX: ">"}, count=1)
    assert len(taken[0][1]) == 1
    loop = asyncio.get_running_loop()
    started = loop.time()
    async with draining(survivor):
        await asyncio.sleep(0.8)
        assert smtp.messages == []  # not taken from a worker that may still be sending
        await asyncio.to_thread(smtp.wait_for_message, "ada@example.com")
        claimed_after = loop.time() - started
        await settled(redis)
        await asyncio.sleep(0.5)
    assert claimed_after >= 1.5
    assert len(smtp.messages) == 1
    pending = await redis.xpending(keys.MAIL_OUTBOX, GROUP)
    assert pending["pending"] == 0


async def test_refused_mail_is_given_up_at_once_and_releases_its_key(
    redis: Redis, smtp: SmtpSink, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="quart_chat")
    smtp.inbox.refused.add("nobody@example.com")
    await redis.set("window", "1", ex=60)
    await queue_mail(
        redis, hello("nobody@example.com"), kind="test", ttl_seconds=600, release_key="window"
    )
    async with draining(outbox_for(redis, smtp, tmp_path, "w1")):
        await wait_for_log(
            caplog,
            r"gave up on test mail \w+ to nobody@example.com after 1 attempt\(s\): SMTPRecipients",
        )
        await settled(redis)
    assert not await redis.exists("window")
    assert await redis.keys("{mail}:*") == [keys.MAIL_OUTBOX.encode()]
    assert smtp.messages == []


async def test_retries_stop_when_the_mail_expires(
    redis: Redis, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="quart_chat")
    sink = SmtpSink()  # never started
    await queue_mail(redis, hello("ada@example.com"), kind="test", ttl_seconds=2)
    async with draining(outbox_for(redis, sink, tmp_path, "w1")):
        sink.stop()
        await wait_for_log(
            caplog,
            r"gave up on test mail \w+ to ada@example.com after \d+ attempt\(s\): SMTPConnectError",
        )
        await settled(redis)
    assert await redis.keys("{mail}:*") == [keys.MAIL_OUTBOX.encode()]
    assert "retrying in" in caplog.text


async def test_the_drainer_survives_losing_its_group(
    redis: Redis, smtp: SmtpSink, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """Redis restarted without its data: the group is gone, and is made again."""
    async with draining(outbox_for(redis, smtp, tmp_path, "w1")):
        await asyncio.sleep(0.3)
        await redis.delete(keys.MAIL_OUTBOX)
        await asyncio.sleep(0.3)
        await queue_mail(redis, hello("ada@example.com"), kind="test", ttl_seconds=600)
        await asyncio.to_thread(smtp.wait_for_message, "ada@example.com")
    assert "mail outbox: Redis error" in caplog.text


async def test_consumers_of_gone_workers_are_forgotten(
    redis: Redis, smtp: SmtpSink, tmp_path: Path
) -> None:
    survivor = outbox_for(redis, smtp, tmp_path, "survivor", forget_consumer_seconds=0.5)
    await survivor.create_group()
    await queue_mail(redis, hello("ada@example.com"), kind="test", ttl_seconds=600)
    await redis.xreadgroup(GROUP, "gone-holding-mail", {keys.MAIL_OUTBOX: ">"}, count=1)
    await redis.xreadgroup(GROUP, "gone-idle", {keys.MAIL_OUTBOX: ">"}, count=1)
    await asyncio.sleep(0.6)
    await survivor.forget_gone_consumers()
    names = {c["name"].decode() for c in await redis.xinfo_consumers(keys.MAIL_OUTBOX, GROUP)}
    # The one that still holds a mail stays until that mail is claimed from it.
    assert names == {"gone-holding-mail"}


async def test_a_stopping_worker_hands_its_mail_on_at_once(
    redis: Redis, smtp: SmtpSink, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="quart_chat")
    with socket.socket() as silent:  # an SMTP server that never answers
        silent.bind(("127.0.0.1", 0))
        silent.listen()
        hung = SmtpSink()
        hung.port = silent.getsockname()[1]
        stopping = outbox_for(redis, hung, tmp_path, "stopping", claim_idle_seconds=30)
        hung.stop()
        await stopping.create_group()
        await queue_mail(redis, hello("ada@example.com"), kind="test", ttl_seconds=600)
        async with draining(stopping):
            async with asyncio.timeout(5):
                while not (await redis.xpending(keys.MAIL_OUTBOX, GROUP))["pending"]:
                    await asyncio.sleep(0.05)
            await asyncio.sleep(0.2)  # it is waiting for the silent server's greeting
    assert "handed test mail" in caplog.text
    # Another worker sends it now, long before the 30 s claim timeout.
    async with draining(outbox_for(redis, smtp, tmp_path, "other", claim_idle_seconds=30)):
        await asyncio.to_thread(smtp.wait_for_message, "ada@example.com", 1, 5.0)
        await settled(redis)
    assert len(smtp.messages) == 1
