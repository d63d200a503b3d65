"""A reconnect storm is absorbed: every client of a restarted worker comes back at once.

2,000 distinct users open a socket each, 1 ms apart, against one worker of a
real `quart-chat serve`; every one must get `ready` and its join's history,
none refused with 503 and none answered `unavailable`.
"""

from __future__ import annotations

import asyncio
import resource
import secrets
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis
from quart_auth.extension import _AuthSerializer

from bench.wsclient import Hub, storm
from quart_chat import keys

from .servers import ChatServer, RedisServer
from .twoworkers import SECRET, server_env

SOCKETS = 2000
INTERVAL_SECONDS = 0.001
GIVE_UP_SECONDS = 600  # a hang, not a speed limit: 2 shared cores took 90 s


@pytest.fixture
def many_files() -> Iterator[None]:
    """Both ends of 2,000 sockets in this process and the server's (which inherits it)."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (max(soft, min(hard, 3 * SOCKETS + 1000)), hard))
    try:
        yield
    finally:
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))


def create_sessions(url: str, count: int) -> list[str]:
    """`count` users with a session each, written straight to Redis: the cookies."""
    serializer = _AuthSerializer(SECRET, "quart auth salt")
    client = redis.Redis.from_url(url)
    cookies = []
    try:
        with client.pipeline(transaction=False) as pipe:
            for index in range(count):
                user_id, session_id = secrets.token_hex(8), secrets.token_urlsafe(32)
                email = f"storm-{index}@example.com"
                pipe.hset(keys.USERS_BY_EMAIL, email, user_id)
                pipe.hset(
                    keys.user_profile(user_id), mapping={"email": email, "name": f"storm{index}"}
                )
                pipe.set(keys.session(session_id), user_id, ex=3600)
                cookies.append(f"QUART_AUTH={serializer.dumps(session_id)}")
            pipe.execute()
    finally:
        client.close()
    return cookies


async def test_2000_sockets_opened_within_2s_on_one_worker_all_get_ready_and_history(
    tmp_path: Path, many_files: None
) -> None:
    redis_server = RedisServer(tmp_path / "redis", appendonly=False).start()
    # These clients send no heartbeat, and a loaded machine may take minutes; they
    # all come from 127.0.0.1, as a whole office behind one NAT would.
    env = server_env(
        redis_server,
        CHAT_WS_IDLE_TIMEOUT_SECONDS="3600",
        CHAT_MAX_SOCKETS_PER_ADDRESS=str(SOCKETS),
    )
    server = ChatServer(tmp_path / "chat", env=env, workers=1)
    try:
        server.start()
        cookies = create_sessions(redis_server.url, SOCKETS)
        async with asyncio.timeout(GIVE_UP_SECONDS):
            seen = await storm(Hub(), "127.0.0.1", server.port, cookies, SOCKETS, INTERVAL_SECONDS)
        for client in seen.clients:
            client.close()
        log = server.log()
        assert dict(seen.refused) == {}, log[-3000:]
        assert dict(seen.failed) == {}, log[-3000:]
        assert len(seen.ready_s) == SOCKETS
        assert len(seen.history_s) == SOCKETS
        assert "Traceback" not in log, log[log.index("Traceback") - 200 :][:4000]
    finally:
        if server.process is not None:
            server.stop()
        redis_server.stop()
