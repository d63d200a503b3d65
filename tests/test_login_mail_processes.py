"""Login mail outlives the worker that queued it: real `quart-chat serve` processes,
a real Redis and a real SMTP server that is down at first."""

from __future__ import annotations

import json
import secrets
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

from redis.asyncio import Redis

from .servers import ChatServer, wait_for
from .smtp import SmtpSink

EMAIL = "ada@example.com"


def post(server: ChatServer, path: str, body: dict[str, str]) -> tuple[int, Any]:
    request = urllib.request.Request(
        server.base_url + path,
        data=json.dumps(body).encode(),
        method="POST",
        headers={"Content-Type": "application/json", "Origin": server.base_url},
    )
    try:
        with urllib.request.urlopen(request, timeout=10) as response:
            return response.status, json.load(response)
    except urllib.error.HTTPError as error:
        return error.code, json.load(error)


async def test_code_mail_is_sent_after_the_worker_that_queued_it_is_gone(
    redis: Redis, redis_url: str, tmp_path: Path
) -> None:
    sink = SmtpSink()  # its port is set, but the SMTP server is down for now
    env = {
        **sink.env(),
        "CHAT_REDIS_URL": redis_url,
        "CHAT_SECRET_KEY": secrets.token_urlsafe(48),
        "CHAT_COOKIE_SECURE": "false",
        "CHAT_SMTP_TIMEOUT_SECONDS": "1",
    }
    first = ChatServer(tmp_path / "first", env, workers=1).start()
    try:
        assert post(first, "/login/code", {"email": EMAIL}) == (
            202,
            {"status": "sent", "resend_after": 60},
        )
        wait_for(
            lambda: "could not send" in first.log(),
            what="a failed first attempt in the log",
        )
    finally:
        assert first.stop() == 0
    sink.start()
    second = ChatServer(tmp_path / "second", env, workers=2).start()
    try:
        code = sink.wait_for_code(EMAIL, timeout=30)
        assert post(second, "/login", {"email": EMAIL, "code": code})[0] == 200
        assert len(sink.messages) == 1
        assert "sent login code mail" in second.log()
        assert code not in first.log() + second.log()
    finally:
        second.stop()
        sink.stop()
