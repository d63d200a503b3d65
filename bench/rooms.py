"""The rooms phase of bench/fanout.py (`--only rooms`): many small rooms and `general`.

    python -m bench.fanout --only rooms            # 2,000 users, 500 rooms of 4, 2 workers
    python -m bench.fanout --only rooms --smoke    # seconds: correctness only

N users log in through the real code flow and open one socket each on
`quart-chat serve --workers 2`; the `X-Chat-Worker` header of each handshake
says which worker serves it. Then one member of each room creates it over the
protocol (`room_create` kind private with `members`), every member waits for the
room to appear (`room` on its user channel) and `join`s it; everybody is in
`general`. A share of the rooms (`--local-rooms`) gets members of one worker
only, so that each worker has rooms it has no member in: those it must not
receive from Redis. `--watch-share` leaves that share of (socket, room) pairs
unjoined: those sockets watch the room and get `unread` bumps instead of
messages.

The generator posts into random small rooms at `--room-rate` messages/s (the
sender a joined member) and into `general` at `--general-rate`, on a fixed
open-loop schedule. Every client checks each delivery: exactly once, in the
room's stream order, and only in its own rooms; latency is from the scheduled
send time. A delivery is one message frame or one `unread` frame reaching one
socket. Per worker it reads Redis's view of the worker's pub/sub connection
(CLIENT LIST: `sub=`, `psub=`, and `tot-net-out` where Redis has it, 7.4+;
else the bytes Redis's socket sent on that connection, from the kernel's
tcp_info via `ss`) over the measured window, and compares those bytes with
what the messages of the rooms it has members in weigh on the wire.
"""

from __future__ import annotations

import argparse
import asyncio
import math
import os
import random
import re
import statistics
import subprocess
import time
from array import array
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import redis

from quart_chat import keys

from . import proc
from .fanout import (
    CONTENDED,
    ChatServer,
    Environment,
    login_many,
    open_clients,
    percentile,
    profile_worker,
)
from .wsclient import ROOM_STAMP, ChatClient, Hub, Step, connect

GENERAL = "general"
# Fixed channels every worker subscribes to: chat:presence, chat:session-revoked, chat:users.
FIXED_CHANNELS = 3
# No sends this close to the window's start and end (see `measure`).
EDGE_QUIET_S = 0.05
BUS_NAME_PREFIX = "chat-bus-"  # CLIENT SETNAME of a worker's bus connection (realtime/bus.py)


@dataclass
class BenchRoom:
    """One room of the phase: its members (client indices) and who joined it."""

    index: int
    id: str
    members: list[int]
    joined: list[int]
    watching: list[int]
    workers: frozenset[str]
    local: bool


@dataclass
class ClientState:
    """What one socket received in the phase."""

    rooms: set[str]
    seen: set[int] = field(default_factory=set)
    unread_seen: set[str] = field(default_factory=set)
    last: dict[str, tuple[int, int]] = field(default_factory=dict)


def stream_key(message_id: str) -> tuple[int, int]:
    ms, _, seq = message_id.partition("-")
    return int(ms), int(seq or 0)


class RoomsRun:
    """The phase's observer: ChatClient hands it every `R|` message and every `unread`."""

    def __init__(self, run: int, rooms: list[BenchRoom], states: list[ClientState]) -> None:
        self.run = run
        self.rooms = rooms
        self.states = states
        self.room_by_id = {room.id: room for room in rooms}
        self.scheduled: array[float] = array("d")
        self.room_of: array[int] = array("i")  # -1: general
        self.frames: array[int] = array("i")  # unique message frames per message
        self.size: array[int] = array("i")  # bytes of its message frame as delivered
        self.ids: list[str | None] = []
        self.authors: list[str] = []
        self.rejected: set[int] = set()
        self.window_start = math.inf
        self.window_end = math.inf
        self.latencies: array[float] = array("d")
        self.unreads: list[tuple[str, float]] = []
        self.unread_by_room: Counter[str] = Counter()
        self.delivered_in_window = 0
        self.duplicates = 0
        self.reordered = 0
        self.foreign = 0  # frames for a room the socket is not a member of
        self.stale = 0
        self.errors: Counter[str] = Counter()

    def add_message(self, room: int, scheduled: float, author: str) -> int:
        self.scheduled.append(scheduled)
        self.room_of.append(room)
        self.frames.append(0)
        self.size.append(0)
        self.ids.append(None)
        self.authors.append(author)
        return len(self.scheduled) - 1

    def text(self, g: int, size: int) -> str:
        room = self.room_of[g]
        stamp = f"{ROOM_STAMP}|{self.run}|{g}|{room}|{int(self.scheduled[g] * 1e6)}|"
        return stamp + "x" * max(0, size - len(stamp))

    # -- called by ChatClient for every frame of this phase

    def on_message(
        self, client: ChatClient, message: dict[str, Any], text: str, size: int, now: float
    ) -> None:
        _, run, index, _ = text.split("|", 3)
        if int(run) != self.run:
            self.stale += 1
            return
        g = int(index)
        state = self.states[client.index]
        room_id = str(message.get("room"))
        if room_id not in state.rooms:
            self.foreign += 1
            return
        if g in state.seen:
            self.duplicates += 1
            return
        state.seen.add(g)
        self.frames[g] += 1
        if self.window_start <= now < self.window_end:
            self.delivered_in_window += 1
        message_id = str(message.get("id"))
        key = stream_key(message_id)
        last = state.last.get(room_id)
        if last is not None and key <= last:
            self.reordered += 1
        else:
            state.last[room_id] = key
        if not self.size[g]:
            self.size[g] = size
            self.ids[g] = message_id
        scheduled = self.scheduled[g]
        if self.window_start <= scheduled < self.window_end:
            self.latencies.append(now - scheduled)

    def on_unread(self, client: ChatClient, message: dict[str, Any], now: float) -> None:
        state = self.states[client.index]
        room_id = str(message.get("room"))
        message_id = str(message.get("id"))
        if room_id not in state.rooms:
            self.foreign += 1
            return
        if message_id in state.unread_seen:
            self.duplicates += 1
            return
        state.unread_seen.add(message_id)
        key = stream_key(message_id)
        last = state.last.get(room_id)
        if last is not None and key <= last:
            self.reordered += 1
        else:
            state.last[room_id] = key
        self.unread_by_room[room_id] += 1
        if self.window_start <= now < self.window_end:
            self.delivered_in_window += 1
        self.unreads.append((message_id, now))

    def on_error(self, client: ChatClient, message: dict[str, Any]) -> None:
        self.errors[str(message.get("code"))] += 1
        client_id = str(message.get("client_id") or "")
        if client_id.startswith(f"R{self.run}-"):
            self.rejected.add(int(client_id.partition("-")[2]))

    # -- after the drain

    def expected_frames(self, g: int, clients: int) -> int:
        room = self.room_of[g]
        return clients if room < 0 else len(self.rooms[room].joined)

    def expected_unreads(self) -> int:
        return sum(
            len(self.rooms[self.room_of[g]].watching)
            for g in range(len(self.scheduled))
            if g not in self.rejected and self.room_of[g] >= 0
        )

    def unread_latencies(self) -> list[float]:
        """Latency of the `unread` bumps whose message some joined socket also received
        (that is where its id comes from)."""
        scheduled = {mid: self.scheduled[g] for g, mid in enumerate(self.ids) if mid is not None}
        found = []
        for message_id, at in self.unreads:
            sent = scheduled.get(message_id)
            if sent is not None and self.window_start <= sent < self.window_end:
                found.append(at - sent)
        return found


# -- Redis's view of each worker's bus connection


@dataclass
class BusConnection:
    worker: str
    pid: int
    port: int  # the worker's end (CLIENT LIST addr=)
    name: str
    found_by: str


def client_list(client: redis.Redis) -> list[dict[str, str]]:
    return [{str(k): str(v) for k, v in row.items()} for row in client.client_list()]


def worker_pids(server: ChatServer, clients: list[ChatClient]) -> dict[str, int]:
    """Worker id (X-Chat-Worker) -> pid: the process holding the server end of its sockets."""
    by_port = {c.local_port: c.worker for c in clients if c.worker}
    found: dict[str, int] = {}
    for pid in server.worker_pids():
        for _local, remote in proc.tcp_ports(pid):
            worker = by_port.get(remote)
            if worker is not None:
                found[worker] = pid
                break
    return found


def find_buses(client: redis.Redis, redis_port: int, pids: dict[str, int]) -> list[BusConnection]:
    """Each worker's pub/sub connection: by its CLIENT SETNAME if it sets one, else the
    connection with subscriptions whose local port belongs to the worker's process."""
    rows = client_list(client)
    buses = []
    for worker, pid in pids.items():
        named = [r for r in rows if r.get("name") == BUS_NAME_PREFIX + worker]
        if named:
            port = int(named[0]["addr"].rsplit(":", 1)[1])
            buses.append(BusConnection(worker, pid, port, named[0]["name"], "name"))
            continue
        ports = {local for local, remote in proc.tcp_ports(pid) if remote == redis_port}
        for row in rows:
            port = int(row["addr"].rsplit(":", 1)[1])
            subscribed = int(row.get("sub", 0)) + int(row.get("psub", 0)) > 0
            if subscribed and port in ports:
                buses.append(BusConnection(worker, pid, port, row.get("name", ""), "port"))
    return buses


def redis_sent_bytes(redis_port: int) -> dict[int, int]:
    """Bytes Redis's sockets sent, by the peer's port (kernel tcp_info through `ss`)."""
    out = subprocess.run(
        ["ss", "-tinH", "state", "established", f"( sport = :{redis_port} )"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    sent: dict[int, int] = {}
    peer: int | None = None
    for line in out.splitlines():
        if not line[:1].isspace():
            ports = re.findall(r":(\d+)\s", line + " ")
            peer = int(ports[1]) if len(ports) >= 2 else None
            continue
        match = re.search(r"\bbytes_sent:(\d+)", line)
        if peer is not None:
            sent[peer] = int(match.group(1)) if match else 0
    return sent


@dataclass
class BusSample:
    sub: int
    psub: int
    tot_net_out: int | None
    tcp_sent: int | None


def sample_buses(
    client: redis.Redis, redis_port: int, buses: list[BusConnection]
) -> dict[str, BusSample]:
    rows = {int(r["addr"].rsplit(":", 1)[1]): r for r in client_list(client)}
    sent = redis_sent_bytes(redis_port)
    samples = {}
    for bus in buses:
        row = rows.get(bus.port, {})
        out = row.get("tot-net-out")
        samples[bus.worker] = BusSample(
            int(row.get("sub", -1)),
            int(row.get("psub", -1)),
            int(out) if out is not None else None,
            sent.get(bus.port),
        )
    return samples


def pubsub_bytes(channel: str, payload_bytes: int) -> int:
    """A published message as Redis writes it to a subscriber (RESP2 and RESP3 alike)."""
    head = len(b"*3\r\n$7\r\nmessage\r\n")
    return (
        head
        + len(f"${len(channel)}\r\n{channel}\r\n")
        + len(f"${payload_bytes}\r\n")
        + payload_bytes
        + 2
    )


# -- the phase


def plan_rooms(
    workers_of: list[str], count: int, size: int, local_share: float, rng: random.Random
) -> list[tuple[list[int], bool]]:
    """Members (client indices) per room: the first `local_share` of the rooms from one
    worker's sockets each (alternating), the rest from everybody; each user in about the
    same number of rooms, never twice in one."""
    by_worker: dict[str, list[int]] = {}
    for index, worker in enumerate(workers_of):
        by_worker.setdefault(worker, []).append(index)
    everyone = list(range(len(workers_of)))
    pools: dict[str, list[int]] = {}

    def draw(key: str, source: list[int]) -> list[int]:
        chosen: list[int] = []
        while len(chosen) < size:
            pool = pools.get(key)
            if not pool:
                pool = pools[key] = rng.sample(source, len(source))
            candidate = pool.pop()
            if candidate not in chosen:
                chosen.append(candidate)
        return chosen

    local_rooms = round(count * local_share)
    worker_ids = sorted(w for w, members in by_worker.items() if len(members) >= size)
    plan = []
    for index in range(count):
        if index < local_rooms and worker_ids:
            worker = worker_ids[index % len(worker_ids)]
            plan.append((draw(worker, by_worker[worker]), True))
        else:
            plan.append((draw("*", everyone), False))
    return plan


async def balance(
    hub: Hub, server: ChatServer, cookies: list[str], clients: list[ChatClient], workers: int
) -> int:
    """Spread the sockets evenly over the workers: reopen some of an overfull worker's.

    Each Hypercorn worker listens with SO_REUSEPORT, so the kernel picks one by a hash
    of the connection: a new socket lands on a random worker; before every worker has
    bound its listener, all land on the first. The number of sockets reopened."""
    reopened = 0
    target = math.ceil(len(clients) / workers)
    for _ in range(50):
        counts = Counter(c.worker for c in clients)
        if len(counts) >= workers and max(counts.values()) <= target * 1.05 + 1:
            return reopened
        surplus = {w: n - target for w, n in counts.items() if n > target}
        again = []
        for client in clients:
            if surplus.get(client.worker, 0) > 0:
                surplus[client.worker] -= 1
                again.append(client.index)
        for index in again:
            clients[index].close()
        fresh = await asyncio.gather(
            *(
                asyncio.wait_for(connect(hub, i, "127.0.0.1", server.port, cookies[i]), 60)
                for i in again
            )
        )
        for client in fresh:
            clients[client.index] = client
        reopened += len(again)
        await asyncio.sleep(0.2)
        hub.close_codes.clear()  # those we closed on purpose
    raise RuntimeError(f"sockets stay unevenly spread: {dict(Counter(c.worker for c in clients))}")


async def create_rooms(
    clients: list[ChatClient], plan: list[tuple[list[int], bool]], run: int
) -> list[str]:
    limit = asyncio.Semaphore(32)

    async def one(index: int, members: list[int]) -> str:
        creator = clients[members[0]]
        others = [clients[m].user_id for m in members[1:]]
        async with limit:
            reply = await creator.request(
                {
                    "type": "room_create",
                    "kind": "private",
                    "name": f"bench {run} room {index}",
                    "members": others,
                }
            )
        if reply.get("type") != "room":
            raise RuntimeError(f"room_create answered {reply}")
        return str(reply["room"]["id"])

    return list(await asyncio.gather(*(one(i, m) for i, (m, _) in enumerate(plan))))


async def wait_added(clients: list[ChatClient], rooms: list[BenchRoom], timeout: float) -> int:
    """Every member learns of its room (`room` through its user channel) before joining,
    as a page would: the number that did not within `timeout`."""
    deadline = time.monotonic() + timeout
    while True:
        missing = sum(
            1 for room in rooms for m in room.members if room.id not in clients[m].rooms_seen
        )
        if not missing or time.monotonic() > deadline:
            return missing
        await asyncio.sleep(0.05)


async def join_rooms(clients: list[ChatClient], rooms: list[BenchRoom]) -> Counter[str]:
    limit = asyncio.Semaphore(64)
    failures: Counter[str] = Counter()

    async def one(client: ChatClient, room_id: str) -> None:
        async with limit:
            reply = await client.request({"type": "join", "room": room_id})
        if reply.get("type") != "history":
            failures[f"{reply.get('code')}: {reply.get('message')}"] += 1

    await asyncio.gather(*(one(clients[m], room.id) for room in rooms for m in room.joined))
    return failures


async def rooms_phase(env: Environment, args: argparse.Namespace) -> dict[str, Any]:
    server = env.fresh_server("rooms", args.room_workers, args.server_cpus)
    rng = random.Random(args.seed)
    run = rng.randrange(1, 10**6)
    try:
        count = args.room_users
        started = time.monotonic()
        cookies = await login_many(server, env.smtp, count, "rooms")
        login_s = time.monotonic() - started
        hub = Hub()
        started = time.monotonic()
        clients = await open_clients(hub, server, cookies, count, False)
        reconnected = await balance(hub, server, cookies, clients, args.room_workers)
        connect_s = time.monotonic() - started
        if any(c.user_id is None for c in clients):
            raise RuntimeError("a `ready` frame without user.id: the server predates rooms")
        workers_of = [c.worker or "?" for c in clients]
        sockets_per_worker = Counter(workers_of)

        started = time.monotonic()
        plan = plan_rooms(workers_of, args.rooms, args.room_size, args.local_rooms, rng)
        room_ids = await create_rooms(clients, plan, run)
        create_s = time.monotonic() - started
        rooms = []
        for index, ((members, local), room_id) in enumerate(zip(plan, room_ids, strict=True)):
            watching = [m for m in members if rng.random() < args.watch_share]
            joined = [m for m in members if m not in watching]
            workers = frozenset(workers_of[m] for m in members)
            rooms.append(BenchRoom(index, room_id, members, joined, watching, workers, local))
        states = [ClientState({GENERAL}) for _ in clients]
        for room in rooms:
            for m in room.members:
                states[m].rooms.add(room.id)
        started = time.monotonic()
        added_missing = await wait_added(clients, rooms, 60)
        join_failures = await join_rooms(clients, rooms)
        join_s = time.monotonic() - started
        print(
            f"rooms: {count} users, one socket each, on {len(sockets_per_worker)} workers "
            f"({', '.join(f'{w}: {n}' for w, n in sorted(sockets_per_worker.items()))}); "
            f"{len(rooms)} private rooms of {args.room_size} ({sum(r.local for r in rooms)} "
            f"with members on one worker only) + general; logins {login_s:.1f}s, connects "
            f"{connect_s:.1f}s, room_create {create_s:.1f}s, added+joins {join_s:.1f}s"
            + (f"; {added_missing} `room` frames missing" if added_missing else "")
            + (f"; join failures {dict(join_failures)}" if join_failures else ""),
            flush=True,
        )

        observer = RoomsRun(run, rooms, states)
        hub.rooms = observer
        result = await measure(env, server, hub, clients, observer, args, rng)
        for client in clients:
            client.close()
        result.update(
            {
                "users": count,
                "workers": args.room_workers,
                "sockets_per_worker": dict(sockets_per_worker),
                "rooms": len(rooms),
                "room_size": args.room_size,
                "local_rooms": sum(r.local for r in rooms),
                "watch_share": args.watch_share,
                "watching_pairs": sum(len(r.watching) for r in rooms),
                "login_s": login_s,
                "connect_s": connect_s,
                "reconnected_to_balance": reconnected,
                "create_s": create_s,
                "join_s": join_s,
                "added_missing": added_missing,
                "join_failures": dict(join_failures),
                "frames_by_type": dict(hub.frames),  # all but the measured messages
                "close_codes": {str(k): v for k, v in hub.close_codes.items()},
                "protocol_errors": dict(hub.protocol_errors),
            }
        )
        result["ok"] = bool(
            result["ok"] and not added_missing and not join_failures and not hub.protocol_errors
        )
        return result
    finally:
        server.stop()


async def measure(
    env: Environment,
    server: ChatServer,
    hub: Hub,
    clients: list[ChatClient],
    observer: RoomsRun,
    args: argparse.Namespace,
    rng: random.Random,
) -> dict[str, Any]:
    rooms = observer.rooms
    warmup, duration = args.warmup, args.room_duration
    start = time.monotonic() + args.room_idle + 0.5
    end = start + warmup + duration
    observer.window_start, observer.window_end = start + warmup, end
    schedule: list[tuple[float, int, int]] = []  # (at, g, sender)
    room_sends = int((warmup + duration) * args.room_rate)
    general_sends = int((warmup + duration) * args.general_rate)
    entries: list[tuple[float, int]] = [
        (start + k / args.room_rate, rng.randrange(len(rooms))) for k in range(room_sends)
    ]
    entries += [(start + (k + 0.5) / args.general_rate, -1) for k in range(general_sends)]
    # Nothing is sent just around the window's edges, where Redis's byte counters are read:
    # a message there could be published on either side of the reading.
    edges = (observer.window_start, observer.window_end)
    entries = [e for e in entries if all(abs(e[0] - edge) >= EDGE_QUIET_S for edge in edges)]
    entries.sort()
    for at, room in entries:
        if room < 0:
            sender = rng.randrange(len(clients))
        else:
            pool = rooms[room].joined or rooms[room].members
            sender = rng.choice(pool)
        author = clients[sender].user_id or ""
        schedule.append((at, observer.add_message(room, at, author), sender))

    assert env.redis.process is not None
    redis_pid, redis_port = env.redis.process.pid, env.redis.port
    pids = worker_pids(server, clients)
    redis_client = redis.Redis.from_url(env.redis.url)
    buses = find_buses(redis_client, redis_port, pids)
    all_pids = server.pids()

    # The workers' own cost with every socket open and nothing sent (heartbeats, sweeps,
    # presence), to tell the per-message cost from the floor.
    idle_started = time.monotonic(), proc.cpu_seconds(all_pids)
    await asyncio.sleep(args.room_idle)
    idle_cpu_share = (proc.cpu_seconds(all_pids) - idle_started[1]) / (
        time.monotonic() - idle_started[0]
    )

    def sample() -> dict[str, Any]:
        return {
            "at": time.monotonic(),
            "server": proc.cpu_seconds(all_pids),
            "workers": {w: proc.cpu_seconds([pid]) for w, pid in pids.items()},
            "redis": proc.cpu_seconds([redis_pid]),
            "generator": proc.self_cpu_seconds(),
            "server_wait": proc.run_delay_seconds(all_pids),
            "generator_wait": proc.run_delay_seconds([os.getpid()]),
            "buses": sample_buses(redis_client, redis_port, buses),
        }

    samples: list[dict[str, Any]] = []

    async def sample_window() -> None:
        for at in (observer.window_start, observer.window_end):
            await asyncio.sleep(max(0.0, at - time.monotonic()))
            # In a thread: CLIENT LIST and `ss` must not hold up the generator's sends.
            samples.append(await asyncio.to_thread(sample))

    sampler = asyncio.create_task(sample_window())
    profiler = None
    if args.profile:
        window = Step(0, 0, 0.0, 0, observer.window_start, observer.window_end)
        profiler = asyncio.create_task(profile_worker(server, window, args.profile, 0))
    send_lag: list[float] = []
    general = GENERAL
    for at, g, sender in schedule:
        delay = at - time.monotonic()
        if delay > 0:
            await asyncio.sleep(delay)
        client = clients[sender]
        if client.closed.done():
            observer.rejected.add(g)
            continue
        if at >= observer.window_start:
            send_lag.append(time.monotonic() - at)
        room = observer.room_of[g]
        client.send_json(
            {
                "type": "send",
                "room": general if room < 0 else rooms[room].id,
                "text": observer.text(g, args.size),
                "client_id": f"R{observer.run}-{g}",
            }
        )
    await sampler
    profile = await profiler if profiler is not None else None

    # Drain: every expected delivery, or until progress stalls.
    expected_unreads = observer.expected_unreads()
    expected_frames = sum(
        observer.expected_frames(g, len(clients))
        for g in range(len(observer.scheduled))
        if g not in observer.rejected
    )
    drain_s = await drain(
        lambda: sum(observer.frames) + sum(observer.unread_by_room.values()),
        expected_frames + expected_unreads,
        args.stall,
    )
    hub.rooms = None
    final_buses = sample_buses(redis_client, redis_port, buses)
    redis_client.close()
    result = report(observer, clients, samples, final_buses, buses, pids, send_lag, drain_s)
    deliveries, window = result["deliveries_in_window"], result["window_s"]
    result["idle_server_cpu_share"] = idle_cpu_share
    result["profile"] = profile
    result["server_cpu_ms_per_1000_above_idle"] = (
        (result["server_cpu_s"] - idle_cpu_share * window) * 1e6 / deliveries
        if deliveries
        else math.nan
    )
    return result


def report(
    observer: RoomsRun,
    clients: list[ChatClient],
    samples: list[dict[str, Any]],
    final_buses: dict[str, BusSample],
    buses: list[BusConnection],
    pids: dict[str, int],
    send_lag: list[float],
    drain_s: float,
) -> dict[str, Any]:
    rooms = observer.rooms
    before, after = samples
    wall = after["at"] - before["at"]
    messages = [g for g in range(len(observer.scheduled)) if g not in observer.rejected]
    lost_frames = sum(
        max(0, observer.expected_frames(g, len(clients)) - observer.frames[g]) for g in messages
    )
    unread_expected: Counter[str] = Counter()
    for g in messages:
        room = observer.room_of[g]
        if room >= 0:
            unread_expected[rooms[room].id] += len(rooms[room].watching)
    lost_unreads = sum(
        max(0, n - observer.unread_by_room[room_id]) for room_id, n in unread_expected.items()
    )
    in_window = [
        g for g in messages if observer.window_start <= observer.scheduled[g] < observer.window_end
    ]
    frames_total = sum(observer.frames)
    unreads_total = sum(observer.unread_by_room.values())
    server_cpu = after["server"] - before["server"]
    deliveries = observer.delivered_in_window
    latencies = sorted(observer.latencies)
    unread_latencies = sorted(observer.unread_latencies())
    send_lag.sort()
    server_wait = (after["server_wait"] - before["server_wait"]) / wall
    generator_wait = (after["generator_wait"] - before["generator_wait"]) / wall
    generator_busy = (after["generator"] - before["generator"]) / wall
    errors = sum(observer.errors.values())
    closed = sum(1 for c in clients if c.closed.done())

    workers = per_worker(observer, clients, in_window, before, after, final_buses, buses, pids)
    p99 = percentile(latencies, 0.99)
    result: dict[str, Any] = {
        "room_messages": sum(1 for g in in_window if observer.room_of[g] >= 0),
        "general_messages": sum(1 for g in in_window if observer.room_of[g] < 0),
        "messages_sent": len(messages),
        "message_frames": frames_total,
        "unread_frames": unreads_total,
        "deliveries_in_window": deliveries,
        "deliveries_per_s": deliveries / wall,
        "window_s": wall,
        "drain_s": drain_s,
        "latency_ms": quantiles_ms(latencies),
        "unread_latency_ms": quantiles_ms(unread_latencies),
        "lost": lost_frames + lost_unreads,
        "lost_message_frames": lost_frames,
        "lost_unreads": lost_unreads,
        "duplicated": observer.duplicates,
        "reordered": observer.reordered,
        "foreign": observer.foreign,
        "stale": observer.stale,
        "errors": errors,
        "error_codes": dict(observer.errors),
        "closed_clients": closed,
        "server_cpu_s": server_cpu,
        "server_cpu_share": server_cpu / wall,
        "server_cpu_ms_per_1000": server_cpu * 1e6 / deliveries if deliveries else math.nan,
        "server_cpu_ms_per_message": server_cpu * 1000 / len(in_window) if in_window else math.nan,
        "redis_cpu_share": (after["redis"] - before["redis"]) / wall,
        "generator_cpu_share": generator_busy,
        "generator_send_lag_ms_p99": percentile(send_lag, 0.99) * 1000,
        "server_runqueue_wait_share": server_wait,
        "generator_runqueue_wait_share": generator_wait,
        "contended": server_wait > CONTENDED or generator_wait > CONTENDED,
        "per_worker": workers,
    }
    result["ok"] = bool(
        lost_frames + lost_unreads == 0
        and observer.duplicates == 0
        and observer.reordered == 0
        and observer.foreign == 0
        and errors == 0
        and closed == 0
        and workers
        and all(w["only_member_rooms"] for w in workers)
    )
    result["p99_ok"] = p99 * 1000 <= 250
    return result


async def drain(received: Callable[[], int], expected: int, stall: float) -> float:
    """Wait until `received()` reaches `expected`, or it stops moving for `stall` seconds;
    the seconds waited."""
    last_count, last_progress = -1, time.monotonic()
    started = time.monotonic()
    while (got := received()) < expected:
        if got != last_count:
            last_count, last_progress = got, time.monotonic()
        elif time.monotonic() - last_progress > stall:
            break
        await asyncio.sleep(0.05)
    return time.monotonic() - started


def quantiles_ms(ordered: list[float] | array[float]) -> dict[str, float]:
    values = list(ordered)
    return {
        "p50": percentile(values, 0.5) * 1000,
        "p99": percentile(values, 0.99) * 1000,
        "max": (values[-1] if values else math.nan) * 1000,
        "samples": len(values),
    }


def per_worker(
    observer: RoomsRun,
    clients: list[ChatClient],
    in_window: list[int],
    before: dict[str, Any],
    after: dict[str, Any],
    final: dict[str, BusSample],
    buses: list[BusConnection],
    pids: dict[str, int],
) -> list[dict[str, Any]]:
    """Per worker: what Redis sent its bus connection in the window, against the bytes of
    the messages of the rooms it has members in (and of those it has none in)."""
    rooms = observer.rooms
    known = [s for s in observer.size if s]
    typical = int(statistics.median(known)) if known else 0
    general_channel = keys.room_channel(GENERAL)

    def wire_bytes(g: int) -> int:
        room = observer.room_of[g]
        channel = general_channel if room < 0 else keys.room_channel(rooms[room].id)
        frame = observer.size[g] or typical
        message_id = observer.ids[g] or "0000000000000-0"
        payload = len(f"M {message_id} {observer.authors[g]} ") + frame
        return pubsub_bytes(channel, payload)

    sockets = Counter(c.worker for c in clients)
    users = {w: len({c.user_id for c in clients if c.worker == w}) for w in sockets}
    report = []
    for bus in sorted(buses, key=lambda b: b.worker):
        worker = bus.worker
        member_rooms = [r for r in rooms if worker in r.workers]
        member_ids = {r.index for r in member_rooms}
        mine = other = 0
        for g in in_window:
            room = observer.room_of[g]
            if room < 0 or room in member_ids:
                mine += wire_bytes(g)
            else:
                other += wire_bytes(g)
        first: BusSample = before["buses"][worker]
        last: BusSample = after["buses"][worker]
        if first.tot_net_out is not None and last.tot_net_out is not None:
            received, source = last.tot_net_out - first.tot_net_out, "tot-net-out"
        elif first.tcp_sent is not None and last.tcp_sent is not None:
            received, source = last.tcp_sent - first.tcp_sent, "tcp bytes_sent"
        else:
            received, source = -1, "unavailable"
        expected_sub = len(member_rooms) + 1 + users[worker] + FIXED_CHANNELS
        excess = received - mine
        report.append(
            {
                "worker": worker,
                "pid": bus.pid,
                "bus_found_by": bus.found_by,
                "bus_name": bus.name,
                "sockets": sockets[worker],
                "member_rooms": len(member_rooms),
                "rooms_without_members": len(rooms) - len(member_rooms),
                "sub": last.sub,
                "sub_end_of_drain": final[worker].sub,
                "expected_sub": expected_sub,
                "psub": last.psub,
                "bytes_source": source,
                "bytes_from_redis": received,
                "member_room_bytes": mine,
                "other_room_bytes": other,
                "excess_bytes": excess,
                "cpu_s": after["workers"].get(worker, 0.0) - before["workers"].get(worker, 0.0),
                # Received nothing of the rooms it has no member in: whatever it got beyond
                # its own rooms' messages (presence, its users' channels) is far below what
                # those other rooms weighed, and it uses no pattern subscription.
                "only_member_rooms": bool(
                    last.psub == 0
                    and received >= 0
                    and (other == 0 or excess < other / 2)
                    and last.sub == expected_sub
                ),
            }
        )
    return report


# -- report


def summary_lines(phase: dict[str, Any]) -> list[str]:
    latency, unread = phase["latency_ms"], phase["unread_latency_ms"]
    verdict = "ok" if phase["ok"] else "FAIL"
    if not phase["p99_ok"]:
        verdict += " p99>250ms"
    if phase["contended"]:
        verdict += " contended"
    lines = [
        f"rooms: {phase['users']} users/sockets, {phase['workers']} workers, "
        f"{phase['rooms']} rooms of {phase['room_size']} ({phase['local_rooms']} on one worker"
        f", {phase['watching_pairs']} watching members) + general; in {phase['window_s']:.1f}s: "
        f"{phase['room_messages']} room + {phase['general_messages']} general messages, "
        f"{phase['deliveries_per_s']:.0f} deliveries/s",
        f"  server CPU {phase['server_cpu_ms_per_1000']:.1f} ms per 1,000 deliveries, "
        f"{phase['server_cpu_ms_per_message']:.2f} ms per message, "
        f"{phase['server_cpu_share']:.0%} of a core (idle with the sockets open: "
        f"{phase['idle_server_cpu_share']:.1%}; above that "
        f"{phase['server_cpu_ms_per_1000_above_idle']:.1f} ms per 1,000 deliveries)",
        f"  latency p50/p99/max {latency['p50']:.1f}/{latency['p99']:.1f}/{latency['max']:.1f}"
        f" ms (unread bumps {unread['p50']:.1f}/{unread['p99']:.1f}/{unread['max']:.1f}); "
        f"lost {phase['lost']}, dup {phase['duplicated']}, reordered {phase['reordered']}, "
        f"foreign {phase['foreign']}, errors {phase['errors']}, closed "
        f"{phase['closed_clients']}: {verdict}",
        f"  {'worker':<14} {'sockets':>7} {'rooms':>5} {'sub':>5} {'expect':>6} {'psub':>4} "
        f"{'from Redis':>11} {'its rooms':>11} {'other rooms':>11} {'excess':>8} {'CPU s':>6}"
        "  only its rooms",
    ]
    for w in phase["per_worker"]:
        lines.append(
            f"  {w['worker']:<14} {w['sockets']:>7} {w['member_rooms']:>5} {w['sub']:>5} "
            f"{w['expected_sub']:>6} {w['psub']:>4} {w['bytes_from_redis']:>11} "
            f"{w['member_room_bytes']:>11} {w['other_room_bytes']:>11} {w['excess_bytes']:>8} "
            f"{w['cpu_s']:>6.2f}  {'yes' if w['only_member_rooms'] else 'NO'}"
        )
    if phase["per_worker"]:
        lines.append(
            f"  (bytes over the window: {phase['per_worker'][0]['bytes_source']} of each "
            "worker's pub/sub connection; 'its rooms' = the messages of general and of the "
            "rooms it has members in, as Redis writes them)"
        )
    return lines
