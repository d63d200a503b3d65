"""`quart-chat serve` as a real process: embedded Redis, shared secret, clean shutdown."""

from __future__ import annotations

import contextlib
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from .servers import (
    ChatServer,
    accepts_connections,
    free_port,
    process_alive,
    wait_for,
    worker_pids,
)


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


def test_killed_launcher_leaves_no_orphan_redis_and_no_worker_serving(tmp_path: Path) -> None:
    server = ChatServer(tmp_path, env={}, workers=2).start()
    redis_pid = embedded_redis_pid(server)
    workers = worker_pids(server)
    assert len(workers) == 2
    server.stop(signal.SIGKILL)
    try:
        wait_for(lambda: not process_alive(redis_pid), timeout=10, what="orphaned redis to exit")
        wait_for(
            lambda: not any(process_alive(pid) for pid in workers),
            timeout=20,
            what="orphaned workers to exit",
        )
        assert not accepts_connections(server.port)
    finally:
        for pid in [redis_pid, *workers]:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)


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


def test_a_killed_worker_is_replaced_and_the_other_keeps_serving(tmp_path: Path) -> None:
    server = ChatServer(tmp_path, env={}, workers=2).start()
    try:
        first, second = worker_pids(server)
        os.kill(first, signal.SIGKILL)
        # The other worker answers while the dead one is replaced.
        wait_for(lambda: f"worker pid {first} was killed by SIGKILL" in server.log(), timeout=10)
        assert server.healthz() == 200
        wait_for(lambda: len(worker_pids(server)) == 2, timeout=30, what="a new worker")
        replacement = next(pid for pid in worker_pids(server) if pid != second)
        assert replacement != first
        assert second in worker_pids(server)
        assert f"worker pid {replacement} started" in server.log()
        assert server.healthz() == 200
    finally:
        assert server.stop() == 0, server.log()


def test_workers_dying_over_and_over_make_the_launcher_give_up_non_zero(tmp_path: Path) -> None:
    server = ChatServer(tmp_path, env={}, workers=1).start()
    assert server.process is not None
    killed: list[int] = []
    try:
        while server.process.poll() is None:
            assert len(killed) < 20, server.log()
            pids = [pid for pid in worker_pids(server) if pid not in killed]
            for pid in pids:
                os.kill(pid, signal.SIGKILL)
                killed.append(pid)
            time.sleep(0.05)
    finally:
        server.stop()
    assert server.process.wait() == 1
    assert "giving up" in server.log()
    assert len(killed) == 6
    wait_for(lambda: not accepts_connections(server.port), timeout=10, what="port closed")


def test_a_worker_that_cannot_start_stops_the_launcher_non_zero(tmp_path: Path) -> None:
    server = ChatServer(tmp_path, env={}, workers=2).start()
    assert server.process is not None
    # The stored key is damaged while the server runs: a new worker cannot
    # start, and restarting it in a loop would not help.
    (tmp_path / "var" / "secret_key").write_text("short\n")
    os.kill(worker_pids(server)[0], signal.SIGKILL)
    try:
        assert server.process.wait(30) == 1
    finally:
        server.stop()
    log = server.log()
    assert "the stored secret key is too weak" in log
    assert "failed to start; stopping" in log
    assert not worker_pids(server)


def test_a_second_server_on_a_taken_port_exits_with_one_line(tmp_path: Path) -> None:
    first = ChatServer(tmp_path / "first", env={}, workers=2).start()
    second = ChatServer(tmp_path / "second", env={}, workers=2)
    second.port = first.port
    try:
        second.start(wait=False)
        assert second.process is not None
        assert second.process.wait(30) == 1
        assert second.log().strip().splitlines() == [
            f"quart-chat: error: cannot serve on 127.0.0.1:{first.port}: the port is already in use"
        ]
        # Every connection still reaches the first server.
        for _ in range(20):
            assert first.healthz() == 200
    finally:
        second.stop()
        assert first.stop() == 0


# Root binds any port and writes anywhere; without these capabilities it
# meets the errors everyone else does.
ROOT_POWERS = "-net_bind_service,-dac_override,-dac_read_search"


def serve_command(
    tmp_path: Path, *args: str, as_user: bool = False, **env: str
) -> subprocess.CompletedProcess[str]:
    command = [sys.executable, "-m", "quart_chat", "serve", "--workers", "1", *args]
    if as_user and os.geteuid() == 0:
        if shutil.which("setpriv") is None:
            pytest.skip("running as root without setpriv to drop root's powers")
        command = ["setpriv", "--bounding-set", ROOT_POWERS, *command]
    return subprocess.run(
        command,
        env={"PATH": "/usr/bin:/bin", "CHAT_DATA_DIR": str(tmp_path / "var"), **env},
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=30,
    )


@pytest.mark.parametrize(
    ("bind", "error"),
    [
        ("127.0.0.1:99999", "--bind 127.0.0.1:99999: the port must be a number from 1 to 65535"),
        ("127.0.0.1:http", "--bind 127.0.0.1:http: the port must be a number from 1 to 65535"),
        ("127.0.0.1", "--bind 127.0.0.1: expected HOST:PORT, like 127.0.0.1:9990"),
        ("192.0.2.1:9990", "--bind: 192.0.2.1 is not an address of this machine"),
    ],
)
def test_a_bad_bind_exits_2_with_one_line(tmp_path: Path, bind: str, error: str) -> None:
    result = serve_command(tmp_path, "--bind", bind)
    assert result.returncode == 2
    assert result.stderr.strip().splitlines() == [f"quart-chat: error: {error}"]


def test_a_privileged_port_says_why_it_cannot_bind(tmp_path: Path) -> None:
    if int(Path("/proc/sys/net/ipv4/ip_unprivileged_port_start").read_text()) <= 80:
        pytest.skip("port 80 is not privileged on this machine")
    result = serve_command(tmp_path, "--bind", "127.0.0.1:80", as_user=True)
    assert result.returncode == 1
    assert result.stderr.strip().splitlines() == [
        "quart-chat: error: cannot serve on 127.0.0.1:80: permission denied (ports below 1024 "
        "need root or CAP_NET_BIND_SERVICE; use a higher port behind a proxy)"
    ]


def test_an_unusable_data_dir_exits_2_naming_it(tmp_path: Path) -> None:
    port = f"127.0.0.1:{free_port()}"
    a_file = tmp_path / "a-file"
    a_file.write_text("")
    read_only = tmp_path / "read-only"
    read_only.mkdir(mode=0o555)
    cases = {
        str(a_file): f"CHAT_DATA_DIR: {a_file} exists and is not a directory",
        str(a_file / "var"): f"CHAT_DATA_DIR: cannot write to {a_file / 'var'}: Not a directory",
        "/proc/chat": "CHAT_DATA_DIR: cannot write to /proc/chat: No such file or directory",
    }
    for data_dir, error in cases.items():
        result = serve_command(tmp_path, "--bind", port, CHAT_DATA_DIR=data_dir)
        assert result.returncode == 2, data_dir
        assert result.stderr.strip().splitlines() == [f"quart-chat: error: {error}"]
    # Not writable for the user the server runs as.
    result = serve_command(tmp_path, "--bind", port, as_user=True, CHAT_DATA_DIR=str(read_only))
    assert result.returncode == 2
    assert result.stderr.strip().splitlines() == [
        f"quart-chat: error: CHAT_DATA_DIR: cannot write to {read_only}: Permission denied"
    ]
