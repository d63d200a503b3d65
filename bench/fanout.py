"""Fan-out benchmark: one room, C WebSocket clients, S of them sending on a fixed schedule.

    python -m bench.fanout                 # the full run (several minutes)
    python -m bench.fanout --smoke         # a few seconds, small C: correctness only
    python -m bench.fanout --help

It starts its own Redis and `quart-chat serve --workers W` (pinned with taskset
to one core; the generator and Redis to another), logs in through the real
code flow (a local aiosmtpd sink receives the code mail), opens C clients in
`general` and steps the number of senders up until p99 latency exceeds the
bound or a message is lost. Then a reconnect storm: S sockets (--storm-connections)
opened 1 ms apart, none waiting for another, each joining once `ready`; it
reports the time to the last `ready` and to the last join's history per 1,000
sockets, and any refusal. Then it measures idle memory per connection:
without permessage-deflate, with it offered (as browsers do) to a server that
declines it (the default), and offered to one that agrees
(CHAT_WS_COMPRESSION=true). Then the rooms phase (bench/rooms.py): N users
on 2 workers in 500 private rooms of 4 and `general`, with CPU per delivery,
latency, and per worker what it receives from Redis. Last the mixed phase
(bench/mixed.py): posts with edits, reactions and typing in `general`, and
the server CPU that typing adds at the knee load. A table goes to stdout
and the full results as JSON to bench/results/.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import math
import os
import platform
import secrets
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from collections import Counter
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path
from typing import Any

import redis

from tests.servers import RedisServer, free_port, wait_for
from tests.smtp import SmtpSink

from . import proc
from .wsclient import ChatClient, Hub, Step, connect, loads, message_text, storm

DESCRIPTION = "Fan-out benchmark of quart-chat (see bench/fanout.py)."
RESULTS_DIR = Path(__file__).resolve().parent / "results"
DEFAULT_STEPS = "1,2,5,10,15,20,25,30,40,50,60,80,100,130,160,200"
P99_BOUND_S = 0.250
GENERATOR_BUSY = 0.85  # share of its core above which the generator may be the limit
SEND_LAG_BOUND_S = 0.050  # p99 lateness of the generator's own sends
# Share of the window a process sat runnable while another one had its core:
# above this the machine was contended and the step's numbers are suspect.
CONTENDED = 0.05
UNLIMITED = str(10**9)


# -- servers


class ChatServer:
    """`quart-chat serve` under taskset, with the whole process tree observable."""

    def __init__(self, workdir: Path, env: dict[str, str], workers: int, cpus: str | None) -> None:
        self.workdir = workdir
        self.env = env
        self.workers = workers
        self.cpus = cpus
        self.port = free_port()
        self.process: subprocess.Popen[bytes] | None = None
        self.log_path = workdir / "server.log"

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> ChatServer:
        self.workdir.mkdir(parents=True, exist_ok=True)
        command = [sys.executable, "-m", "quart_chat", "serve"]
        command += ["--bind", f"127.0.0.1:{self.port}", "--workers", str(self.workers)]
        if self.cpus is not None:
            command = ["taskset", "-c", self.cpus, *command]
        with open(self.log_path, "ab") as log:
            self.process = subprocess.Popen(
                command, env=self.env, cwd=self.workdir, stdout=log, stderr=subprocess.STDOUT
            )

        def healthy() -> bool:
            assert self.process is not None
            if self.process.poll() is not None:
                raise RuntimeError(f"server exited:\n{self.log_path.read_text()}")
            try:
                with urllib.request.urlopen(self.base_url + "/healthz", timeout=2) as response:
                    return bool(response.status == 200)
            except OSError:
                return False

        try:
            wait_for(healthy, timeout=60, what="quart-chat /healthz")
            # /healthz answers from the first worker up; give the others time to start.
            wait_for(lambda: len(self.pids()) >= self.workers + 1, timeout=60, what="workers")
        except BaseException:
            self.stop()  # no server left running behind a failed start
            raise
        return self

    def pids(self) -> list[int]:
        assert self.process is not None
        return proc.tree_pids(self.process.pid)

    def worker_pids(self) -> list[int]:
        assert self.process is not None
        return [pid for pid in self.pids() if pid != self.process.pid]

    def stop(self) -> None:
        if self.process is None or self.process.poll() is not None:
            return
        self.process.send_signal(signal.SIGTERM)
        try:
            self.process.wait(30)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()


@dataclass
class Environment:
    """Redis, the SMTP sink and a scratch directory shared by every phase of a run."""

    workdir: Path
    redis: RedisServer
    smtp: SmtpSink
    secret: str

    def server_env(self, data_dir: Path, compression: bool = False) -> dict[str, str]:
        inherited = {k: v for k, v in os.environ.items() if not k.startswith("CHAT_")}
        return {
            **inherited,
            **self.smtp.env(),
            "CHAT_REDIS_URL": self.redis.url,
            "CHAT_DATA_DIR": str(data_dir),
            "CHAT_SECRET_KEY": self.secret,
            "CHAT_COOKIE_SECURE": "false",
            # The benchmark logs in hundreds of users from one address and
            # sends far above a person's rate; the limits are not under test.
            "CHAT_CODE_REQUESTS_PER_IP_HOUR": UNLIMITED,
            "CHAT_LOGIN_ATTEMPTS_PER_IP_HOUR": UNLIMITED,
            "CHAT_MESSAGES_PER_MINUTE": UNLIMITED,
            "CHAT_BACKLOG_REQUESTS_PER_MINUTE": UNLIMITED,
            "CHAT_MAX_SOCKETS_PER_USER": UNLIMITED,
            "CHAT_MAX_SOCKETS_PER_ADDRESS": UNLIMITED,
            "CHAT_WS_COMPRESSION": "true" if compression else "false",
            # The load clients send no heartbeat; a run outlasts the idle timeout.
            "CHAT_WS_IDLE_TIMEOUT_SECONDS": "3600",
        }

    def fresh_server(
        self, name: str, workers: int, cpus: str | None, compression: bool = False
    ) -> ChatServer:
        client = redis.Redis.from_url(self.redis.url)
        try:
            client.flushall()
        finally:
            client.close()
        directory = self.workdir / name
        server_env = self.server_env(directory / "var", compression)
        return ChatServer(directory, server_env, workers, cpus).start()

    def redis_used_memory(self) -> int:
        client = redis.Redis.from_url(self.redis.url)
        try:
            return int(client.info("memory")["used_memory"])
        finally:
            client.close()


@contextlib.contextmanager
def environment(keep: bool) -> Iterator[Environment]:
    workdir = Path(tempfile.mkdtemp(prefix="quart-chat-bench-"))
    redis_server = RedisServer(workdir / "redis", appendonly=False).start()
    smtp = SmtpSink().start()
    try:
        yield Environment(workdir, redis_server, smtp, secrets.token_urlsafe(48))
    finally:
        smtp.stop()
        redis_server.stop()
        if not keep:
            shutil.rmtree(workdir, ignore_errors=True)


# -- login through the real code flow


def _post_json(url: str, origin: str, body: dict[str, str]) -> tuple[int, Any, list[str]]:
    request = urllib.request.Request(
        url,
        data=json.dumps(body).encode(),
        method="POST",
        headers={"Content-Type": "application/json", "Origin": origin},
    )
    try:
        with urllib.request.urlopen(request, timeout=30) as response:
            return response.status, json.load(response), response.headers.get_all("Set-Cookie")
    except urllib.error.HTTPError as error:
        return error.code, error.read().decode(errors="replace"), []


def login(server: ChatServer, smtp: SmtpSink, email: str) -> str:
    """POST /login/code, read the code from the mail, POST /login: the cookie header value."""
    base = server.base_url
    status, body, _ = _post_json(base + "/login/code", base, {"email": email})
    if status != 202:
        raise RuntimeError(f"POST /login/code for {email}: {status} {body}")
    code = smtp.wait_for_code(email, timeout=60)
    status, body, cookies = _post_json(base + "/login", base, {"email": email, "code": code})
    if status != 200:
        raise RuntimeError(f"POST /login for {email}: {status} {body}")
    for cookie in cookies or []:
        pair = cookie.split(";", 1)[0]
        if pair.startswith("QUART_AUTH="):
            return pair
    raise RuntimeError(f"POST /login for {email} set no QUART_AUTH cookie: {cookies}")


async def login_many(server: ChatServer, smtp: SmtpSink, count: int, tag: str) -> list[str]:
    emails = [f"bench-{tag}-{i}@example.test" for i in range(count)]
    with ThreadPoolExecutor(16) as pool:
        loop = asyncio.get_running_loop()
        return list(
            await asyncio.gather(
                *(loop.run_in_executor(pool, login, server, smtp, email) for email in emails)
            )
        )


# -- the load generator


async def open_clients(
    hub: Hub, server: ChatServer, cookies: list[str], count: int, deflate: bool
) -> list[Any]:
    limit = asyncio.Semaphore(64)

    async def one(index: int) -> ChatClient:
        async with limit:
            # Round robin, so the first senders are distinct users.
            cookie = cookies[index % len(cookies)]
            return await asyncio.wait_for(
                connect(hub, index, "127.0.0.1", server.port, cookie, deflate), 60
            )

    return list(await asyncio.gather(*(one(i) for i in range(count))))


async def probe(hub: Hub, clients: list[ChatClient], timeout: float = 60) -> float:
    """One message from client 0 that every client must see: proves all joins are live."""
    hub.probe = f"probe {secrets.token_hex(8)}"
    hub.probe_seen = 0
    hub.probe_target = len(clients)
    hub.probe_done.clear()
    for client in clients:
        client.probed = False
    started = time.monotonic()
    clients[0].send_json(
        {"type": "send", "room": "general", "text": hub.probe, "client_id": hub.probe}
    )
    try:
        await asyncio.wait_for(hub.probe_done.wait(), timeout)
    except TimeoutError:
        raise RuntimeError(
            f"probe reached {hub.probe_seen} of {len(clients)} clients in {timeout}s; "
            f"frames {dict(hub.frames)}, closes {dict(hub.close_codes)}"
        ) from None
    return time.monotonic() - started


def percentile(ordered: list[float], q: float) -> float:
    if not ordered:
        return math.nan
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


@dataclass
class Sample:
    at: float
    server_cpu: float
    generator_cpu: float
    redis_cpu: float
    server_wait: float
    generator_wait: float


async def run_step(
    hub: Hub,
    clients: list[ChatClient],
    server: ChatServer,
    redis_pid: int,
    index: int,
    senders: int,
    args: argparse.Namespace,
) -> dict[str, Any]:
    rate, warmup, duration = args.rate, args.warmup, args.duration
    start = time.monotonic() + 0.2
    end = start + warmup + duration
    schedule = sorted(
        (start + (k + s / senders) / rate, s, k)
        for s in range(senders)
        for k in range(math.ceil((warmup + duration) * rate))
    )
    schedule = [entry for entry in schedule if entry[0] < end]
    step = Step(index, senders, rate, len(schedule), start + warmup, end)
    for client in clients:
        client.start_step(step)
    hub.step = step
    server_pids = server.pids()

    def sample() -> Sample:
        return Sample(
            time.monotonic(),
            proc.cpu_seconds(server_pids),
            proc.self_cpu_seconds(),
            proc.cpu_seconds([redis_pid]),
            proc.run_delay_seconds(server_pids),
            proc.run_delay_seconds([os.getpid()]),
        )

    samples: list[Sample] = []

    async def sample_window() -> None:
        for at in (step.window_start, step.window_end):
            await asyncio.sleep(max(0.0, at - time.monotonic()))
            samples.append(sample())

    sampler = asyncio.create_task(sample_window())
    profiler = (
        asyncio.create_task(profile_worker(server, step, args.profile, index))
        if args.profile
        else None
    )
    send_lag: list[float] = []
    unsent = 0
    for g, (at, sender, seq) in enumerate(schedule):
        delay = at - time.monotonic()
        if delay > 0:
            await asyncio.sleep(delay)
        client = clients[sender]
        if client.closed.done():
            unsent += 1
            step.rejected.add(g)
            continue
        if at >= step.window_start:
            send_lag.append(time.monotonic() - at)
        text = message_text(index, g, sender, seq, at, args.size)
        client.send_json(
            {"type": "send", "room": "general", "text": text, "client_id": f"b{index}-{g}"}
        )
    await sampler
    profile = await profiler if profiler is not None else None

    # Drain: wait for every expected delivery, or until progress stalls.
    live = [c for c in clients if not c.closed.done()]
    last_progress, last_count = time.monotonic(), -1
    drain_started = time.monotonic()
    while True:
        expected = (step.messages - len(step.rejected)) * len(live)
        count = step.delivered - step.duplicates
        if count >= expected:
            break
        if count != last_count:
            last_count, last_progress = count, time.monotonic()
        elif time.monotonic() - last_progress > args.stall:
            break
        await asyncio.sleep(0.05)
        live = [c for c in clients if not c.closed.done()]
    drain_s = time.monotonic() - drain_started
    hub.step = None

    accepted = [g for g in range(step.messages) if g not in step.rejected]
    lost = 0
    for client in clients:
        seen = client.seen
        if step.rejected:
            lost += sum(1 for g in accepted if not seen[g])
        else:
            lost += seen.count(0)
    closed = sum(1 for c in clients if c.closed.done())

    before, after = samples
    wall = after.at - before.at
    server_cpu = after.server_cpu - before.server_cpu
    generator_cpu = after.generator_cpu - before.generator_cpu
    redis_cpu = after.redis_cpu - before.redis_cpu
    server_wait = (after.server_wait - before.server_wait) / wall
    generator_wait = (after.generator_wait - before.generator_wait) / wall
    achieved = step.delivered_in_window / wall
    latencies = sorted(step.latencies)
    send_lag.sort()
    p99 = percentile(latencies, 0.99)
    generator_busy = generator_cpu / wall
    send_lag_p99 = percentile(send_lag, 0.99)
    errors = sum(step.errors.values())
    result: dict[str, Any] = {
        "senders": senders,
        "rate_per_sender": rate,
        "clients": len(clients),
        "offered_messages_per_s": senders * rate,
        "offered_deliveries_per_s": senders * rate * len(clients),
        "achieved_deliveries_per_s": achieved,
        "messages": step.messages,
        "deliveries": step.delivered,
        "latency_ms": {
            "p50": percentile(latencies, 0.50) * 1000,
            "p95": percentile(latencies, 0.95) * 1000,
            "p99": p99 * 1000,
            "max": (latencies[-1] if latencies else math.nan) * 1000,
            "samples": len(latencies),
        },
        "lost": lost,
        "duplicated": step.duplicates,
        "reordered": step.reordered,
        "stale": step.stale,
        "errors": errors,
        "error_codes": dict(step.errors),
        "unsent": unsent,
        "closed_clients": closed,
        "close_codes": {str(k): v for k, v in hub.close_codes.items()},
        "drain_s": drain_s,
        "window_s": wall,
        "server_cpu_s": server_cpu,
        "server_cpu_share": server_cpu / wall,
        "server_cpu_ms_per_1000": server_cpu * 1000 / (step.delivered_in_window / 1000)
        if step.delivered_in_window
        else math.nan,
        "redis_cpu_share": redis_cpu / wall,
        "generator_cpu_share": generator_busy,
        "generator_send_lag_ms": {
            "p99": send_lag_p99 * 1000,
            "max": (send_lag[-1] if send_lag else math.nan) * 1000,
        },
        "generator_limited": generator_busy > GENERATOR_BUSY or send_lag_p99 > SEND_LAG_BOUND_S,
        "server_runqueue_wait_share": server_wait,
        "generator_runqueue_wait_share": generator_wait,
        "contended": server_wait > CONTENDED or generator_wait > CONTENDED,
        "profile": profile,
    }
    result["ok"] = bool(
        lost == 0
        and step.duplicates == 0
        and step.reordered == 0
        and errors == 0
        and closed == 0
        and p99 <= P99_BOUND_S
    )
    return result


def py_spy() -> str | None:
    beside_python = Path(sys.executable).parent / "py-spy"
    return str(beside_python) if beside_python.exists() else shutil.which("py-spy")


async def profile_worker(
    server: ChatServer, step: Step, directory: Path, index: int
) -> dict[str, Any]:
    """py-spy on the busiest worker for the step's measured window: the top of the profile."""
    await asyncio.sleep(max(0.0, step.window_start - time.monotonic()))
    pids = server.worker_pids()
    worker = max(pids, key=lambda pid: proc.cpu_seconds([pid]))
    directory.mkdir(parents=True, exist_ok=True)
    output = directory / f"profile-{time.strftime('%Y%m%d-%H%M%S')}-S{step.senders}.txt"
    seconds = max(1, int(step.window_end - time.monotonic()))
    binary = py_spy()
    assert binary is not None  # checked in parse_args
    spy = await asyncio.create_subprocess_exec(
        binary, "record", "--pid", str(worker), "--duration", str(seconds), "--rate", "250",
        "--nonblocking", "--format", "raw", "--output", str(output),
        stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.DEVNULL,
    )  # fmt: skip
    await spy.wait()
    return {"file": str(output), **top_of_profile(output)}


def top_of_profile(path: Path, count: int = 25) -> dict[str, Any]:
    """Self and inclusive sample shares per function from py-spy's collapsed stacks."""
    own: Counter[str] = Counter()
    inclusive: Counter[str] = Counter()
    total = 0
    for line in path.read_text().splitlines():
        stack, _, samples = line.rpartition(" ")
        frames = stack.split(";")
        n = int(samples)
        total += n
        own[frames[-1]] += n
        for frame in set(frames):
            inclusive[frame] += n
    if not total:
        return {"samples": 0}

    def shares(counter: Counter[str]) -> list[tuple[str, float]]:
        return [(frame, n / total) for frame, n in counter.most_common(count)]

    return {"samples": total, "self": shares(own), "inclusive": shares(inclusive)}


def blame_elsewhere(step: dict[str, Any]) -> bool:
    """Only latency failed, and the machine or the generator may be why: worth a retry."""
    delivered_all = step["lost"] == 0 and step["closed_clients"] == 0 and step["errors"] == 0
    return delivered_all and bool(step["contended"] or step["generator_limited"])


async def throughput_phase(env: Environment, args: argparse.Namespace) -> dict[str, Any]:
    server = env.fresh_server("throughput", args.workers, args.server_cpus, args.server_compression)
    try:
        sessions = math.ceil(args.clients / args.clients_per_session)
        started = time.monotonic()
        cookies = await login_many(server, env.smtp, sessions, "load")
        login_s = time.monotonic() - started
        hub = Hub()
        started = time.monotonic()
        clients = await open_clients(hub, server, cookies, args.clients, args.deflate)
        negotiated = sum(1 for c in clients if c.inflater is not None)
        connect_s = time.monotonic() - started
        probe_s = await probe(hub, clients)
        print(
            f"throughput: {args.clients} clients on {sessions} sessions "
            f"({args.clients_per_session} clients per login; logins {login_s:.1f}s, "
            f"connects {connect_s:.1f}s, first fan-out {probe_s * 1000:.0f} ms; "
            f"permessage-deflate {'offered' if args.deflate else 'not offered'}, "
            f"server {'agrees' if args.server_compression else 'declines'}, "
            f"negotiated by {negotiated})",
            flush=True,
        )
        print(TABLE_HEADER, flush=True)
        assert env.redis.process is not None
        steps: list[dict[str, Any]] = []
        attempt = 0
        for senders in args.steps:
            if senders > args.clients:
                break
            for retry in range(args.retries + 1):
                result = await run_step(
                    hub, clients, server, env.redis.process.pid, attempt, senders, args
                )
                attempt += 1
                result["attempt"] = retry + 1
                steps.append(result)
                print(table_row(result), flush=True)
                if result["profile"]:
                    print(profile_text(result["profile"]), flush=True)
                await asyncio.sleep(args.pause)
                if result["ok"] or not blame_elsewhere(result):
                    break
            if not result["ok"] and not args.keep_going:
                break
        for client in clients:
            client.close()
        passing = [s for s in steps if s["ok"]]
        knee = max(passing, key=lambda s: s["achieved_deliveries_per_s"]) if passing else None
        return {
            "sessions": sessions,
            "clients_per_session": args.clients_per_session,
            "deflate_offered": args.deflate,
            "server_compression": args.server_compression,
            "deflate_negotiated": negotiated,
            "login_s": login_s,
            "connect_s": connect_s,
            "steps": steps,
            "knee": knee,
            "frames_outside_steps": dict(hub.frames),
            "protocol_errors": dict(hub.protocol_errors),
        }
    finally:
        server.stop()


# -- idle memory, with the websockets library as the client (it offers deflate like browsers)


async def idle_clients(
    server: ChatServer, cookies: list[str], count: int, deflate: bool
) -> tuple[list[Any], str | None]:
    from websockets.asyncio.client import connect as ws_connect
    from websockets.typing import Origin

    limit = asyncio.Semaphore(64)
    url = f"ws://127.0.0.1:{server.port}/ws"

    async def one(index: int) -> Any:
        async with limit:
            socket = await ws_connect(
                url,
                origin=Origin(server.base_url),
                additional_headers={"Cookie": cookies[index % len(cookies)]},
                compression="deflate" if deflate else None,
                ping_interval=None,
                open_timeout=60,
                max_size=2**20,
            )
            first = loads(await socket.recv())
            if first.get("type") != "ready":
                raise RuntimeError(f"first frame was not ready: {first}")
            await socket.send(json.dumps({"type": "join", "room": "general"}))
            # Joined once its backlog is in: a probe stored before that arrives in
            # the backlog, not as a live message.
            while loads(await socket.recv()).get("type") != "history":
                pass
            return socket

    sockets = list(await asyncio.gather(*(one(i) for i in range(count))))
    negotiated = sockets[0].response.headers.get("Sec-WebSocket-Extensions") if sockets else None

    # Every socket must see one message: the joins are done and the path is live.
    text = f"probe {secrets.token_hex(8)}"

    async def wait_probe(socket: Any) -> None:
        while True:
            frame = loads(await socket.recv())
            if frame.get("type") == "message" and frame.get("text") == text:
                return

    waiters = [asyncio.create_task(wait_probe(s)) for s in sockets]
    await sockets[0].send(
        json.dumps({"type": "send", "room": "general", "text": text, "client_id": text})
    )
    await asyncio.wait_for(asyncio.gather(*waiters), 120)
    return sockets, negotiated


async def settle_memory(server: ChatServer, seconds: float = 3.0) -> proc.Memory:
    await asyncio.sleep(seconds)
    return proc.memory(server.pids())


MEMORY_VARIANTS = {
    # name: (the client offers permessage-deflate, the server agrees to it)
    "plain": (False, False),
    "deflate": (True, False),
    "deflate-on": (True, True),
}


async def memory_phase(env: Environment, args: argparse.Namespace, name: str) -> dict[str, Any]:
    deflate, compression = MEMORY_VARIANTS[name]
    server = env.fresh_server(f"memory-{name}", args.workers, args.server_cpus, compression)
    try:
        sessions = math.ceil(args.idle_connections / args.clients_per_session)
        cookies = await login_many(server, env.smtp, sessions, f"idle-{name}")
        # Warm up every code path (imports, caches) before the baseline.
        warm, _ = await idle_clients(server, cookies, 20, deflate)
        for socket in warm:
            await socket.close()
        before = await settle_memory(server)
        redis_before = env.redis_used_memory()
        started = time.monotonic()
        sockets, negotiated = await idle_clients(server, cookies, args.idle_connections, deflate)
        connect_s = time.monotonic() - started
        after = await settle_memory(server)
        redis_after = env.redis_used_memory()
        await asyncio.gather(*(s.close() for s in sockets), return_exceptions=True)
        count = args.idle_connections
        return {
            "variant": name,
            "deflate_offered": deflate,
            "server_compression": compression,
            "extensions_negotiated": negotiated,
            "connections": count,
            "sessions": sessions,
            "connect_s": connect_s,
            "rss_kib_before": before.rss_kb,
            "rss_kib_after": after.rss_kb,
            "pss_kib_before": before.pss_kb,
            "pss_kib_after": after.pss_kb,
            "rss_kib_per_connection": (after.rss_kb - before.rss_kb) / count,
            "pss_kib_per_connection": (after.pss_kb - before.pss_kb) / count,
            "redis_bytes_per_connection": (redis_after - redis_before) / count,
        }
    finally:
        server.stop()


# -- a reconnect storm: every client of a restarted worker comes back at once


async def storm_phase(env: Environment, args: argparse.Namespace) -> dict[str, Any]:
    server = env.fresh_server("storm", args.workers, args.server_cpus)
    try:
        count = args.storm_connections
        sessions = math.ceil(count / args.clients_per_session)
        cookies = await login_many(server, env.smtp, sessions, "storm")
        hub = Hub()
        seen = await storm(
            hub, "127.0.0.1", server.port, cookies, count, args.storm_interval_ms / 1000
        )
        for client in seen.clients:
            client.close()
        ready, history = sorted(seen.ready_s), sorted(seen.history_s)
        return {
            "connections": count,
            "sessions": sessions,
            "workers": args.workers,
            "opened_over_s": seen.spread_s,
            "ready": len(ready),
            "history": len(history),
            "refused": dict(seen.refused),
            "failed": dict(seen.failed),
            "all_ready_s": seen.all_ready_s,
            "all_history_s": seen.all_history_s,
            "ready_s_per_1000": seen.all_ready_s * 1000 / count,
            "history_s_per_1000": seen.all_history_s * 1000 / count,
            "socket_ready_ms": {q: percentile(ready, p) * 1000 for q, p in PERCENTILES},
            "socket_history_ms": {q: percentile(history, p) * 1000 for q, p in PERCENTILES},
        }
    finally:
        server.stop()


PERCENTILES = (("p50", 0.5), ("p99", 0.99), ("max", 1.0))


# -- report

TABLE_HEADER = (
    f"{'S':>4} {'offered/s':>9} {'achieved/s':>10} {'p50ms':>7} {'p95ms':>7} {'p99ms':>7} "
    f"{'maxms':>7} {'lost':>5} {'dup':>4} {'reord':>5} {'err':>4} {'srvCPU':>6} "
    f"{'ms/1k':>6} {'genCPU':>6}  verdict"
)


def table_row(step: dict[str, Any]) -> str:
    latency = step["latency_ms"]
    verdict = "ok" if step["ok"] else "FAIL"
    if step["generator_limited"]:
        verdict += " generator-limited"
    if step["contended"]:
        verdict += " contended"
    if step.get("attempt", 1) > 1:
        verdict += f" (attempt {step['attempt']})"
    return (
        f"{step['senders']:>4} {step['offered_deliveries_per_s']:>9.0f} "
        f"{step['achieved_deliveries_per_s']:>10.0f} {latency['p50']:>7.1f} "
        f"{latency['p95']:>7.1f} {latency['p99']:>7.1f} {latency['max']:>7.1f} "
        f"{step['lost']:>5} {step['duplicated']:>4} {step['reordered']:>5} "
        f"{step['errors'] + step['closed_clients']:>4} {step['server_cpu_share']:>6.0%} "
        f"{step['server_cpu_ms_per_1000']:>6.1f} {step['generator_cpu_share']:>6.0%}  {verdict}"
    )


def profile_text(profile: dict[str, Any], count: int = 15) -> str:
    if not profile.get("samples"):
        return "profile: no samples"
    lines = [f"profile ({profile['samples']} samples, {profile['file']}); self time:"]
    lines += [f"  {share:6.1%}  {frame}" for frame, share in profile["self"][:count]]
    lines.append("inclusive:")
    lines += [f"  {share:6.1%}  {frame}" for frame, share in profile["inclusive"][:count]]
    return "\n".join(lines)


def summary(results: dict[str, Any]) -> str:
    lines = [
        "verdict: ok = no loss, duplicate, reorder, error or close and p99 <= 250 ms; "
        "contended = server or generator waited > 5% of the window for a CPU "
        "(other load on the machine); generator-limited = generator > 85% busy "
        "or its sends > 50 ms late (p99)"
    ]
    throughput = results.get("throughput")
    if throughput:
        knee = throughput["knee"]
        if knee:
            lines.append(
                f"knee: {knee['achieved_deliveries_per_s']:.0f} deliveries/s "
                f"(S={knee['senders']}), p99 {knee['latency_ms']['p99']:.1f} ms, "
                f"{knee['server_cpu_ms_per_1000']:.1f} server CPU-ms per 1,000 deliveries"
            )
            lines.append(
                "CPU-bound capacity at that cost: "
                f"{1e6 / knee['server_cpu_ms_per_1000']:.0f} deliveries/s per server core"
            )
        else:
            lines.append("knee: none (the first step already failed)")
    phase = results.get("storm")
    if phase:
        lines.append(
            f"reconnect storm: {phase['connections']} sockets opened over "
            f"{phase['opened_over_s']:.1f}s on {phase['workers']} worker(s): "
            f"{phase['ready']} ready, {phase['history']} with history, "
            f"refused {phase['refused'] or 'none'}, failed {phase['failed'] or 'none'}; "
            f"all ready after {phase['all_ready_s']:.2f}s ({phase['ready_s_per_1000']:.2f}s "
            f"per 1,000), all history after {phase['all_history_s']:.2f}s "
            f"({phase['history_s_per_1000']:.2f}s per 1,000); per socket to ready "
            f"p50/p99/max {_ms(phase['socket_ready_ms'])}, "
            f"to history {_ms(phase['socket_history_ms'])}"
        )
    for phase in results.get("memory", []):
        label = "deflate not offered"
        if phase["deflate_offered"]:
            agreed = "agrees" if phase["server_compression"] else "declines"
            label = f"deflate offered, server {agreed}"
        lines.append(
            f"idle memory, {label:32}: {phase['rss_kib_per_connection']:.1f} KiB RSS, "
            f"{phase['pss_kib_per_connection']:.1f} KiB PSS per connection at "
            f"{phase['connections']} connections (+{phase['redis_bytes_per_connection']:.0f} B "
            f"in Redis; negotiated: {phase['extensions_negotiated'] or 'none'})"
        )
    phase = results.get("rooms")
    if phase:
        from .rooms import summary_lines

        lines += summary_lines(phase)
        if phase.get("profile"):
            lines.append(profile_text(phase["profile"]))
    phase = results.get("mixed")
    if phase:
        from .mixed import summary_lines as mixed_lines

        lines += mixed_lines(phase)
    return "\n".join(lines)


def _ms(quantiles: dict[str, float]) -> str:
    return "/".join(f"{quantiles[q]:.0f}" for q, _ in PERCENTILES) + " ms"


def machine() -> dict[str, Any]:
    model = "unknown"
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    versions = {}
    for package in ("quart", "hypercorn", "wsproto", "redis", "websockets", "uvloop", "orjson"):
        with contextlib.suppress(metadata.PackageNotFoundError):
            versions[package] = metadata.version(package)
    return {
        "cpu": model,
        "cpus": os.cpu_count(),
        "kernel": platform.release(),
        "python": platform.python_version(),
        "loadavg": os.getloadavg(),
        "versions": versions,
    }


# -- command line


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m bench.fanout", description=__doc__.split("\n")[0]
    )
    parser.add_argument("--clients", "-C", type=int, default=1000)
    parser.add_argument("--steps", default=DEFAULT_STEPS, help="sender counts S to step through")
    parser.add_argument("--rate", "-R", type=float, default=1.0, help="messages/s per sender")
    parser.add_argument("--duration", "-D", type=float, default=10.0, help="measured seconds")
    parser.add_argument("--warmup", type=float, default=2.0, help="seconds before measuring")
    parser.add_argument(
        "--retries",
        type=int,
        default=2,
        help="repeat a step that failed only on latency while contended or generator-limited",
    )
    parser.add_argument(
        "--keep-going", action="store_true", help="run every step even after one failed (A/B)"
    )
    parser.add_argument("--pause", type=float, default=1.0, help="seconds between steps")
    parser.add_argument("--stall", type=float, default=5.0, help="drain gives up after this")
    parser.add_argument("--size", type=int, default=100, help="message text length")
    parser.add_argument(
        "--deflate",
        action="store_true",
        help="load clients offer permessage-deflate, as browsers do (memory phase does both)",
    )
    parser.add_argument(
        "--server-compression",
        action="store_true",
        help="the server agrees to permessage-deflate (CHAT_WS_COMPRESSION=true)",
    )
    parser.add_argument("--workers", "-W", type=int, default=1)
    parser.add_argument("--clients-per-session", type=int, default=10, help="clients per login")
    parser.add_argument("--idle-connections", type=int, default=2000)
    parser.add_argument(
        "--storm-connections", type=int, default=2000, help="sockets in the reconnect storm"
    )
    parser.add_argument(
        "--storm-interval-ms", type=float, default=1.0, help="between storm sockets' starts"
    )
    parser.add_argument(
        "--memory-variants",
        default=",".join(MEMORY_VARIANTS),
        help="idle runs: plain (not offered), deflate (offered, declined), deflate-on (agreed)",
    )
    parser.add_argument("--server-cpus", default="0", help="taskset list for the server")
    parser.add_argument("--generator-cpu", type=int, default=1, help="core for generator+Redis")
    parser.add_argument("--no-pin", action="store_true", help="no CPU pinning")
    parser.add_argument("--no-uvloop", action="store_true")
    parser.add_argument(
        "--only",
        choices=["throughput", "storm", "memory", "rooms", "mixed"],
        help="run one phase (default all)",
    )
    rooms = parser.add_argument_group("rooms phase (bench/rooms.py)")
    rooms.add_argument("--room-users", type=int, default=2000, help="users, one socket each")
    rooms.add_argument("--rooms", type=int, default=500, help="private rooms besides general")
    rooms.add_argument("--room-size", type=int, default=4, help="members per room")
    rooms.add_argument("--room-workers", type=int, default=2, help="quart-chat workers")
    rooms.add_argument(
        "--room-rate", type=float, default=200.0, help="messages/s into random small rooms"
    )
    rooms.add_argument("--general-rate", type=float, default=1.0, help="messages/s to general")
    rooms.add_argument("--room-duration", type=float, default=20.0, help="measured seconds")
    rooms.add_argument(
        "--local-rooms",
        type=float,
        default=0.5,
        help="share of rooms whose members are all on one worker (the rest: anyone)",
    )
    rooms.add_argument(
        "--watch-share",
        type=float,
        default=0.0,
        help="share of members that do not join their room: they watch it (unread bumps)",
    )
    rooms.add_argument(
        "--room-idle", type=float, default=3.0, help="seconds of idle CPU measured first"
    )
    rooms.add_argument("--seed", type=int, default=14, help="rooms, members and schedule")
    mixed = parser.add_argument_group("mixed phase (bench/mixed.py; also uses -C, -R, --size)")
    mixed.add_argument(
        "--mixed-senders",
        type=int,
        default=20,
        help="active users in the mixed run: S senders in general",
    )
    mixed.add_argument(
        "--knee-senders",
        type=int,
        help="S for the typing cost (default: the throughput phase's knee if it ran, else 30)",
    )
    mixed.add_argument(
        "--mixed-edits", type=float, default=0.1, help="edits per active user per second"
    )
    mixed.add_argument(
        "--mixed-reactions",
        type=float,
        default=0.2,
        help="reaction toggles per active user per second",
    )
    mixed.add_argument(
        "--typing-every", type=float, default=3.0, help="seconds between an active user's typing"
    )
    mixed.add_argument("--mixed-duration", type=float, default=10.0, help="measured seconds")
    mixed.add_argument(
        "--ab-rounds",
        type=int,
        default=3,
        help="rounds of posts only / posts + typing, alternated, for the typing cost",
    )
    mixed.add_argument(
        "--typing-all",
        action="store_true",
        help="the typing cost also with every connected user typing (one socket per user)",
    )
    parser.add_argument(
        "--profile",
        type=Path,
        metavar="DIR",
        help="py-spy the busiest worker during each step's window; stacks go to DIR",
    )
    parser.add_argument("--json", type=Path, help="results file (default bench/results/...)")
    parser.add_argument("--keep", action="store_true", help="keep the scratch dir (logs)")
    parser.add_argument(
        "--smoke", action="store_true", help="a few seconds with small C; no pinning"
    )
    args = parser.parse_args(argv)
    if args.smoke:
        args.clients, args.steps, args.rate = 20, "2", 5.0
        args.duration, args.warmup, args.pause, args.retries = 2.0, 1.0, 0.0, 0
        args.idle_connections, args.clients_per_session, args.no_pin = 30, 5, True
        args.storm_connections = 30
        args.room_users, args.rooms, args.room_rate, args.general_rate = 24, 8, 10.0, 1.0
        args.room_duration, args.watch_share, args.room_idle = 3.0, 0.25, 1.0
        args.mixed_senders, args.mixed_edits, args.mixed_reactions = 2, 1.0, 2.0
        args.knee_senders = 2
        args.mixed_duration, args.ab_rounds, args.typing_all = 3.0, 1, True
    args.steps = [int(s) for s in str(args.steps).split(",")]
    args.memory_variants = [v.strip() for v in args.memory_variants.split(",") if v.strip()]
    if args.profile is not None and py_spy() is None:
        parser.error("--profile needs py-spy: pip install -e '.[bench]'")
    unknown = set(args.memory_variants) - set(MEMORY_VARIANTS)
    if unknown:
        parser.error(f"--memory-variants: unknown {', '.join(sorted(unknown))}")
    if args.no_pin:
        args.server_cpus = None
    return args


async def run(args: argparse.Namespace) -> dict[str, Any]:
    results: dict[str, Any] = {
        "started": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "config": {k: v for k, v in vars(args).items() if k != "json"},
        "machine": machine(),
        "event_loop": type(asyncio.get_running_loop()).__module__,
    }
    with environment(args.keep) as env:
        if args.keep:
            print(f"scratch dir: {env.workdir}", flush=True)
        if args.only in (None, "throughput"):
            results["throughput"] = await throughput_phase(env, args)
        if args.only in (None, "storm"):
            results["storm"] = await storm_phase(env, args)
        if args.only in (None, "memory"):
            results["memory"] = []
            for variant in args.memory_variants:
                phase = await memory_phase(env, args, variant)
                results["memory"].append(phase)
        if args.only in (None, "rooms"):
            from .rooms import rooms_phase

            results["rooms"] = await rooms_phase(env, args)
        if args.only in (None, "mixed"):
            from .mixed import mixed_phase

            knee = (results.get("throughput") or {}).get("knee")
            results["mixed"] = await mixed_phase(env, args, knee["senders"] if knee else None)
    results["machine"]["loadavg_end"] = os.getloadavg()
    return results


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    import resource

    _soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))  # the server inherits it too
    if not args.no_pin:
        # Redis and the SMTP sink are started from here and share the generator's core.
        os.sched_setaffinity(0, {args.generator_cpu})
    runner: Any = asyncio.run
    if not args.no_uvloop:
        with contextlib.suppress(ImportError):
            import uvloop

            runner = uvloop.run
    results = runner(run(args))
    print(summary(results))
    path = args.json or RESULTS_DIR / f"fanout-{time.strftime('%Y%m%d-%H%M%S')}.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(results, indent=2, default=str))
    print(f"results: {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
