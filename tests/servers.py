"""Real servers for tests: a private redis-server and `quart-chat serve` as a subprocess."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

import redis

from quart_chat.launcher import find_redis_server


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def wait_for(predicate, timeout: float = 15.0, interval: float = 0.05, what: str = "condition"):  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        result = predicate()
        if result:
            return result
        time.sleep(interval)
    raise TimeoutError(f"timed out after {timeout}s waiting for {what}")


class RedisServer:
    """A private redis-server on a fixed TCP port, so it can be stopped and restarted in place."""

    def __init__(self, directory: Path, port: int | None = None, appendonly: bool = True) -> None:
        self.directory = directory
        self.port = port or free_port()
        self.appendonly = appendonly
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> RedisServer:
        self.directory.mkdir(parents=True, exist_ok=True)
        self.process = subprocess.Popen(
            [
                find_redis_server(),
                "--port",
                str(self.port),
                "--bind",
                "127.0.0.1",
                "--dir",
                str(self.directory),
                "--save",
                "",
                "--appendonly",
                "yes" if self.appendonly else "no",
                "--appendfsync",
                "always",
                "--logfile",
                str(self.directory / "redis.log"),
            ],
            stdin=subprocess.DEVNULL,
        )
        client = redis.Redis(port=self.port, socket_timeout=1)

        def answers() -> bool:
            try:
                return bool(client.ping())
            except (redis.ConnectionError, redis.BusyLoadingError):
                return False

        try:
            wait_for(answers, what=f"redis on port {self.port}")
        finally:
            client.close()
        return self

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            self.process.wait(10)
        self.process = None

    def restart(self) -> None:
        self.stop()
        self.start()


def process_alive(pid: int) -> bool:
    try:
        status = Path(f"/proc/{pid}/status").read_text()
    except FileNotFoundError:
        return False
    return "\nState:\tZ" not in status  # a zombie has exited


class ChatServer:
    """`quart-chat serve` as a real subprocess with its own environment and log file."""

    def __init__(self, workdir: Path, env: dict[str, str], workers: int = 2) -> None:
        self.workdir = workdir
        self.port = free_port()
        self.workers = workers
        self.env = {
            **{k: v for k, v in os.environ.items() if not k.startswith("CHAT_")},
            "CHAT_DATA_DIR": str(workdir / "var"),
            **env,
        }
        self.log_path = workdir / "server.log"
        self.python = sys.executable
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self, wait: bool = True) -> ChatServer:
        self.workdir.mkdir(parents=True, exist_ok=True)
        log = open(self.log_path, "ab")  # noqa: SIM115 - the child owns it
        log_start = log.tell()
        self.process = subprocess.Popen(
            [
                self.python,
                "-m",
                "quart_chat",
                "serve",
                "--bind",
                f"127.0.0.1:{self.port}",
                "--workers",
                str(self.workers),
            ],
            cwd=self.workdir,
            env=self.env,
            stdout=log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
        )
        log.close()
        if wait:
            try:
                self.wait_healthy()
                # /healthz answers from the first worker up; wait for all of them.
                wait_for(
                    lambda: (
                        self.log_path.read_bytes()[log_start:].count(b"Running on http://")
                        >= self.workers
                    ),
                    timeout=30,
                    what=f"{self.workers} workers serving",
                )
            except BaseException:
                # A fixture that fails here never reaches its `stop()`: without
                # this, the process outlives the test and its Popen warns later,
                # in whichever test the garbage collector happens to run.
                self.stop()
                raise
        return self

    def healthz(self) -> int:
        try:
            with urllib.request.urlopen(self.base_url + "/healthz", timeout=2) as response:
                return int(response.status)
        except urllib.error.HTTPError as error:
            return error.code
        except OSError:
            return 0

    def wait_healthy(self, timeout: float = 30.0) -> None:
        def ready() -> bool:
            if self.process is not None and self.process.poll() is not None:
                raise RuntimeError(f"server exited early:\n{self.log()}")
            return self.healthz() == 200

        wait_for(ready, timeout=timeout, what="quart-chat /healthz")

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 20.0) -> int | None:
        """Stop it if it runs; its exit status (None if it was never started)."""
        if self.process is None:
            return None
        if self.process.poll() is None:
            self.process.send_signal(sig)
            try:
                self.process.wait(timeout)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
                raise
        return self.process.returncode


def child_pids(parent: int, command: str) -> list[int]:
    """Live processes whose parent is `parent` and whose command line contains `command`."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
            cmdline = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode()
        except OSError:
            continue
        # Fields after the command name, which is in parentheses and may hold spaces.
        state, ppid = stat.rpartition(")")[2].split()[:2]
        if int(ppid) == parent and state != "Z" and command in cmdline:
            found.append(int(entry.name))
    return sorted(found)


def worker_pids(server: ChatServer) -> list[int]:
    assert server.process is not None
    return child_pids(server.process.pid, "quart_chat.worker")


def accepts_connections(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=1):
            return True
    except OSError:
        return False


class Caddy:
    """Caddy as the reverse proxy in front of chat servers, set up like deploy/Caddyfile:
    a backend that refuses connections (being restarted) is skipped for another."""

    def __init__(self, workdir: Path, backends: list[int]) -> None:
        self.workdir = workdir
        self.backends = backends
        self.port = free_port()
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> Caddy:
        self.workdir.mkdir(parents=True, exist_ok=True)
        upstreams = " ".join(f"127.0.0.1:{port}" for port in self.backends)
        config = self.workdir / "Caddyfile"
        config.write_text(
            "{\n\tadmin off\n\tauto_https off\n}\n"
            f"http://127.0.0.1:{self.port} {{\n"
            f"\treverse_proxy {upstreams} {{\n"
            "\t\tlb_policy round_robin\n\t\tlb_try_duration 5s\n\t\tfail_duration 10s\n"
            "\t}\n}\n"
        )
        log = open(self.workdir / "caddy.log", "ab")  # noqa: SIM115 - the child owns it
        self.process = subprocess.Popen(
            ["caddy", "run", "--adapter", "caddyfile", "--config", str(config)],
            cwd=self.workdir,
            env={**os.environ, "HOME": str(self.workdir), "XDG_DATA_HOME": str(self.workdir)},
            stdout=log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
        )
        log.close()
        wait_for(lambda: accepts_connections(self.port), what="caddy")
        return self

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            self.process.wait(10)
