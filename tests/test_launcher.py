"""`quart-chat serve` as a real process: embedded Redis, shared secret, clean shutdown."""

from __future__ import annotations

import re
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from .servers import ChatServer, process_alive, wait_for


def embedded_redis_pid(server: ChatServer) -> int:
    match = re.search(r"started the embedded Redis \(.*, pid (\d+),", server.log())
    assert match, server.log()
    return int(match.group(1))


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT])
def test_serve_starts_embedded_redis_and_stops_it(tmp_path: Path, sig: int) -> None:
    server = ChatServer(tmp_path, env={}, workers=2).start()
    try:
        assert server.healthz() == 200
        redis_pid = embedded_redis_pid(server)
        assert process_alive(redis_pid)
        log = server.log()
        assert "CHAT_REDIS_URL is not set: started the embedded Redis" in log
        assert "CHAT_SECRET_KEY is not set: generated one" in log
        assert "CHAT_SMTP_HOST is not set" in log
        assert (tmp_path / "var" / "secret_key").exists()
        assert (tmp_path / "var" / "redis" / "appendonly.aof").exists()
    finally:
        code = server.stop(sig)
    assert code == 0, server.log()
    wait_for(lambda: not process_alive(redis_pid), timeout=10, what="embedded redis to exit")
    assert "embedded Redis stopped" in server.log()


def test_killed_launcher_leaves_no_orphan_redis(tmp_path: Path) -> None:
    server = ChatServer(tmp_path, env={}, workers=1).start()
    redis_pid = embedded_redis_pid(server)
    server.stop(signal.SIGKILL)
    wait_for(lambda: not process_alive(redis_pid), timeout=10, what="orphaned redis to exit")
    # Workers notice their parent is gone too; free the port for the next test.
    server.stop()


def test_second_server_on_same_data_dir_is_refused(tmp_path: Path) -> None:
    first = ChatServer(tmp_path, env={}, workers=1).start()
    try:
        second = ChatServer(tmp_path, env={}, workers=1)
        second.log_path = tmp_path / "second.log"
        second.start(wait=False)
        assert second.process is not None
        assert second.process.wait(20) == 2
        assert "is in use by another quart-chat serve" in second.log()
        assert first.healthz() == 200
    finally:
        first.stop()


def test_bad_setting_exits_with_one_readable_line(tmp_path: Path) -> None:
    result = subprocess.run(
        [sys.executable, "-m", "quart_chat", "serve", "--workers", "1"],
        env={"PATH": "/usr/bin:/bin", "CHAT_SMTP_PORT": "abc", "CHAT_DATA_DIR": str(tmp_path)},
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert result.returncode == 2
    assert "Traceback" not in result.stderr
    assert result.stderr.strip().splitlines() == [
        "quart-chat: error: CHAT_SMTP_PORT: Input should be a valid integer, "
        "unable to parse string as an integer (got 'abc')"
    ]


def test_uses_configured_redis_url_without_embedding(tmp_path: Path, redis_url: str) -> None:
    server = ChatServer(tmp_path, env={"CHAT_REDIS_URL": redis_url}, workers=1).start()
    try:
        assert server.healthz() == 200
        assert "embedded Redis" not in server.log()
        assert not (tmp_path / "var" / "redis").exists()
    finally:
        assert server.stop() == 0
