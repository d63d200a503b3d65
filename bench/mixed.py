"""The mixed phase of bench/fanout.py (`--only mixed`): posts plus edits, reactions and typing.

    python -m bench.fanout --only mixed            # C=1000 in general, S=30 active users
    python -m bench.fanout --only mixed --smoke    # seconds: correctness only

One `quart-chat serve` (pinned like the throughput phase), C clients in
`general` on C/10 logins (10 sockets per user, round robin, so the first
sockets are distinct users). The *active users* are the S senders: each posts
at `--rate` messages/s, edits its own latest message every `1/--mixed-edits` s,
toggles a reaction on someone else's recent message every `1/--mixed-reactions`
s (adds one, later takes it away again), and sends `typing` every
`--typing-every` s, each on a fixed open-loop schedule from the sender's own
socket. The other users only read.

Every client checks each message, edit and reaction: exactly once, and in the
room's stream order (edits and reactions are entries of the stream, with their
own ids). Typing frames carry no id: each client counts, per typer, the typing
frames it got against the typing frames that typer sent (the n-th one gives the
n-th one's latency), and no typing frame may reach a socket of the typer. A
delivery is one frame reaching one socket; message, change and typing
deliveries are counted apart.

Then the cost of typing, in the same sitting on the same sockets: the posts
alone (A) and the posts with every active user typing every 3 s (B), and with
`--typing-all` also every connected user typing (one socket per user: the tab
they type in), alternated A B B A A B ... so drift on the machine falls on
both. The answer is B's server CPU over A's, per second of window.
"""

from __future__ import annotations

import argparse
import asyncio
import bisect
import math
import os
import random
import time
from array import array
from collections import Counter, deque
from dataclasses import dataclass, field
from typing import Any

from . import proc
from .fanout import (
    CONTENDED,
    GENERATOR_BUSY,
    SEND_LAG_BOUND_S,
    Environment,
    login_many,
    open_clients,
    percentile,
    probe,
    profile_text,
    profile_worker,
)
from .rooms import drain, quantiles_ms
from .wsclient import MIXED_STAMP, ChatClient, Hub, Step

GENERAL = "general"
MESSAGE, EDIT, REACTION = 0, 1, 2
KINDS = ("message", "edit", "reaction")
# Single code points: the server sends back exactly the emoji it was given.
EMOJI = ("👍", "🎉", "😂", "👀", "🚀", "✅", "🙏", "🔥")
# Reactions go on one of the last this many messages (of other senders).
RECENT = 50
# The server passes on one `typing` per socket and room every 2 s: a socket's first
# typing of a run waits this long after its last one of the previous run.
TYPING_GAP_S = 2.5


@dataclass
class Load:
    """What one run sends: S senders' posts, and what else the active users do."""

    name: str
    senders: int
    edits: float  # per active user per second
    reactions: float  # per active user per second
    typers: list[int]  # client indices that send `typing`
    typing_every: float


def stream_key(message_id: str) -> tuple[int, int]:
    ms, _, seq = message_id.partition("-")
    return int(ms), int(seq or 0)


@dataclass
class Action:
    at: float
    kind: str  # "message", "edit", "reaction", "typing"
    client: int
    g: int  # event index; -1 for typing


@dataclass
class MixedRun:
    """One run's schedule and what every client saw of it."""

    run: int
    clients: int
    window_start: float
    window_end: float
    kind: array[int] = field(default_factory=lambda: array("b"))
    scheduled: array[float] = field(default_factory=lambda: array("d"))
    sender: array[int] = field(default_factory=lambda: array("i"))
    frames: array[int] = field(default_factory=lambda: array("i"))
    ids: list[str | None] = field(default_factory=list)
    rejected: set[int] = field(default_factory=set)
    skipped: Counter[str] = field(default_factory=Counter)  # no target known yet
    # Per client: events seen, the newest stream id seen, typing frames per typer.
    seen: list[bytearray] = field(default_factory=list)
    last: list[tuple[int, int]] = field(default_factory=list)
    typing_got: list[Counter[str]] = field(default_factory=list)
    # (target, user, emoji, on) -> event index of that reaction change
    reaction_of: dict[tuple[str, str, str, bool], int] = field(default_factory=dict)
    # Typer user id -> scheduled times of the typing frames it sent, in order.
    typing_sent: dict[str, list[float]] = field(default_factory=dict)
    typer_sockets: Counter[str] = field(default_factory=Counter)
    last_typing_at: float = -math.inf
    latencies: dict[str, array[float]] = field(
        default_factory=lambda: {k: array("d") for k in (*KINDS, "typing")}
    )
    in_window: Counter[str] = field(default_factory=Counter)  # deliveries by kind
    delivered: Counter[str] = field(default_factory=Counter)
    duplicates: int = 0
    reordered: int = 0
    stale: int = 0
    unknown_reactions: int = 0
    to_typer: int = 0
    typing_extra: int = 0
    errors: Counter[str] = field(default_factory=Counter)
    # Per sender: its own messages whose id is known (edit targets); all known messages.
    own: dict[int, list[int]] = field(default_factory=dict)
    known: deque[int] = field(default_factory=lambda: deque(maxlen=RECENT * 4))

    def add(self, kind: int, at: float, sender: int) -> int:
        self.kind.append(kind)
        self.scheduled.append(at)
        self.sender.append(sender)
        self.frames.append(0)
        self.ids.append(None)
        return len(self.kind) - 1

    def begin(self) -> None:
        count = len(self.kind)
        self.seen = [bytearray(count) for _ in range(self.clients)]
        self.last = [(0, 0)] * self.clients
        self.typing_got = [Counter() for _ in range(self.clients)]

    def text(self, g: int, size: int) -> str:
        stamp = f"{MIXED_STAMP}|{self.run}|{g}|{int(self.scheduled[g] * 1e6)}|"
        return stamp + "x" * max(0, size - len(stamp))

    # -- called by ChatClient

    def on_message(
        self, client: ChatClient, message: dict[str, Any], text: str, now: float
    ) -> None:
        _, run, index, _ = text.split("|", 3)
        if int(run) != self.run:
            self.stale += 1
            return
        self._event(client, int(index), message, now)

    def on_frame(self, client: ChatClient, kind: str, message: dict[str, Any], now: float) -> None:
        if kind == "typing":
            self._typing(client, message, now)
        elif kind == "edit":
            text = str(message.get("text", ""))
            if not text.startswith(MIXED_STAMP + "|"):
                self.stale += 1
                return
            self.on_message(client, message, text, now)
        else:
            user = message.get("user") or {}
            key = (
                str(message.get("target")),
                str(user.get("id")),
                str(message.get("emoji")),
                bool(message.get("on")),
            )
            g = self.reaction_of.get(key)
            if g is None:
                self.unknown_reactions += 1
                return
            self._event(client, g, message, now)

    def on_error(self, client: ChatClient, message: dict[str, Any]) -> bool:
        tag = str(message.get("client_id") or message.get("ref") or "")
        if not tag.startswith(MIXED_STAMP):
            return False
        if tag.startswith(f"{MIXED_STAMP}{self.run}-"):
            self.rejected.add(int(tag.partition("-")[2]))
            self.errors[str(message.get("code"))] += 1
        else:
            self.stale += 1
        return True

    def _event(self, client: ChatClient, g: int, message: dict[str, Any], now: float) -> None:
        seen = self.seen[client.index]
        if seen[g]:
            self.duplicates += 1
            return
        seen[g] = 1
        self.frames[g] += 1
        kind = KINDS[self.kind[g]]
        self.delivered[kind] += 1
        key = stream_key(str(message.get("id")))
        if key <= self.last[client.index]:
            self.reordered += 1
        else:
            self.last[client.index] = key
        if self.ids[g] is None:
            self.ids[g] = str(message.get("id"))
            if kind == "message":
                self.own.setdefault(self.sender[g], []).append(g)
                self.known.append(g)
        if self.window_start <= now < self.window_end:
            self.in_window[kind] += 1
        scheduled = self.scheduled[g]
        if self.window_start <= scheduled < self.window_end:
            self.latencies[kind].append(now - scheduled)

    def _typing(self, client: ChatClient, message: dict[str, Any], now: float) -> None:
        self.delivered["typing"] += 1
        if self.window_start <= now < self.window_end:
            self.in_window["typing"] += 1
        users = message.get("users") or [message.get("user") or {}]
        got = self.typing_got[client.index]
        for user in users:
            user_id = str(user.get("id"))
            if user_id == client.user_id:
                self.to_typer += 1
                continue
            got[user_id] += 1
            sent = self.typing_sent.get(user_id, ())
            if got[user_id] > len(sent):
                self.typing_extra += 1
                continue
            # From the typer's latest typing sent before now: in a big room the
            # server may pass on several typers at once, a window after the first.
            n = bisect.bisect_right(sent, now)
            scheduled = sent[n - 1] if n else math.nan
            if self.window_start <= scheduled < self.window_end:
                self.latencies["typing"].append(now - scheduled)

    # -- after the drain

    def accepted(self) -> list[int]:
        return [g for g in range(len(self.kind)) if g not in self.rejected]

    def expected_typing(self, clients: list[ChatClient]) -> int:
        """Typing frames due: every socket but the typer's own gets each one."""
        total = len(clients)
        return sum(
            len(times) * (total - self.typer_sockets[user_id])
            for user_id, times in self.typing_sent.items()
        )

    def typing_not_shown(self, clients: list[ChatClient]) -> int:
        """Typing events a socket never heard of: in a big room the server coalesces a
        second's typers into one frame and leaves out those whose message came first."""
        lost = 0
        for client in clients:
            got = self.typing_got[client.index]
            for user_id, times in self.typing_sent.items():
                if user_id != client.user_id:
                    lost += max(0, len(times) - got[user_id])
        return lost


def plan(observer: MixedRun, load: Load, start: float, end: float, rate: float) -> list[Action]:
    actions: list[Action] = []
    senders = load.senders
    span = end - start

    def every(per_second: float, offset: float) -> list[float]:
        if per_second <= 0:
            return []
        return [start + (k + offset) / per_second for k in range(math.ceil(span * per_second))]

    for s in range(senders):
        share = s / max(1, senders)
        for at in every(rate, share):
            actions.append(Action(at, "message", s, -1))
        for at in every(load.edits, (share + 0.37) % 1):
            actions.append(Action(at, "edit", s, -1))
        for at in every(load.reactions, (share + 0.71) % 1):
            actions.append(Action(at, "reaction", s, -1))
    typers = load.typers
    for t, client in enumerate(typers):
        share = t / len(typers)
        for at in every(1 / load.typing_every, share):
            actions.append(Action(at, "typing", client, -1))
    actions = [a for a in actions if a.at < end]
    actions.sort(key=lambda a: a.at)
    kinds = {"message": MESSAGE, "edit": EDIT, "reaction": REACTION}
    for action in actions:
        if action.kind != "typing":
            action.g = observer.add(kinds[action.kind], action.at, action.client)
    return actions


@dataclass
class Reactor:
    """One active user's reactions: which are on (to take away later), which were used."""

    on: deque[tuple[str, str]] = field(default_factory=deque)
    used: set[tuple[str, str]] = field(default_factory=set)


async def run_load(
    hub: Hub,
    clients: list[ChatClient],
    server: Any,
    redis_pid: int,
    load: Load,
    index: int,
    args: argparse.Namespace,
    rng: random.Random,
    not_before: float,
) -> tuple[dict[str, Any], MixedRun]:
    start = max(time.monotonic() + 0.2, not_before)
    warmup, duration = args.warmup, args.mixed_duration
    end = start + warmup + duration
    observer = MixedRun(rng.randrange(1, 10**6), len(clients), start + warmup, end)
    actions = plan(observer, load, start, end, args.rate)
    observer.begin()
    for typer in load.typers:
        user_id = clients[typer].user_id or ""
        observer.typing_sent.setdefault(user_id, [])
    sockets_of = Counter(c.user_id for c in clients)
    for user_id in observer.typing_sent:
        observer.typer_sockets[user_id] = sockets_of[user_id]
    hub.mixed = observer
    server_pids = server.pids()

    def sample() -> dict[str, float]:
        return {
            "at": time.monotonic(),
            "server": proc.cpu_seconds(server_pids),
            "generator": proc.self_cpu_seconds(),
            "redis": proc.cpu_seconds([redis_pid]),
            "server_wait": proc.run_delay_seconds(server_pids),
            "generator_wait": proc.run_delay_seconds([os.getpid()]),
        }

    samples: list[dict[str, float]] = []

    async def sample_window() -> None:
        for at in (observer.window_start, observer.window_end):
            await asyncio.sleep(max(0.0, at - time.monotonic()))
            samples.append(sample())

    sampler = asyncio.create_task(sample_window())
    profiler = None
    if args.profile:
        window = Step(index, load.senders, args.rate, 0, observer.window_start, end)
        profiler = asyncio.create_task(profile_worker(server, window, args.profile, index))
    reactors = [Reactor() for _ in range(load.senders)]
    send_lag: list[float] = []
    tag = f"{MIXED_STAMP}{observer.run}-"
    for action in actions:
        delay = action.at - time.monotonic()
        if delay > 0:
            await asyncio.sleep(delay)
        client = clients[action.client]
        g = action.g
        if client.closed.done():
            if g >= 0:
                observer.rejected.add(g)
            continue
        if action.at >= observer.window_start:
            send_lag.append(time.monotonic() - action.at)
        if action.kind == "message":
            client.send_json(
                {
                    "type": "send",
                    "room": GENERAL,
                    "text": observer.text(g, args.size),
                    "client_id": f"{tag}{g}",
                }
            )
        elif action.kind == "typing":
            user_id = client.user_id or ""
            observer.typing_sent[user_id].append(action.at)
            observer.last_typing_at = action.at
            client.send_json({"type": "typing", "room": GENERAL})
        elif action.kind == "edit":
            own = observer.own.get(action.client)
            if not own:
                observer.rejected.add(g)
                observer.skipped["edit"] += 1
                continue
            target = observer.ids[own[-1]]
            client.send_json(
                {
                    "type": "edit",
                    "room": GENERAL,
                    "id": target,
                    "text": observer.text(g, args.size),
                    "ref": f"{tag}{g}",
                }
            )
        else:
            frame = react(observer, reactors[action.client], client, g, rng)
            if frame is None:
                observer.rejected.add(g)
                observer.skipped["reaction"] += 1
                continue
            client.send_json({**frame, "ref": f"{tag}{g}"})
    await sampler
    profile = await profiler if profiler is not None else None

    # Drain: every expected frame, or until progress stalls.
    expected_changes = len(observer.accepted()) * len(clients)
    expected_typing = observer.expected_typing(clients)
    drain_s = await drain(
        lambda: sum(observer.frames) + observer.delivered["typing"],
        expected_changes + expected_typing,
        args.stall,
    )
    hub.mixed = None
    result = report(observer, load, clients, samples, send_lag, drain_s)
    result["profile"] = profile
    return result, observer


def react(
    observer: MixedRun, reactor: Reactor, client: ChatClient, g: int, rng: random.Random
) -> dict[str, Any] | None:
    """Take away the oldest reaction still on, or put one on a recent message of someone
    else's; each (message, emoji) once per user, so every change has its own key."""
    user_id = client.user_id or ""
    if reactor.on and (len(reactor.on) >= 2 or rng.random() < 0.5):
        target, emoji = reactor.on.popleft()
        on = False
    else:
        mine = observer.sender[g]
        candidates = [m for m in list(observer.known)[-RECENT:] if observer.sender[m] != mine]
        choice = None
        for _ in range(8):
            if not candidates:
                break
            target_id = observer.ids[rng.choice(candidates)] or ""
            emoji = rng.choice(EMOJI)
            if (target_id, emoji) not in reactor.used:
                choice = (target_id, emoji)
                break
        if choice is None:
            return None
        target, emoji = choice
        reactor.used.add(choice)
        reactor.on.append(choice)
        on = True
    observer.reaction_of[target, user_id, emoji, on] = g
    return {"type": "react", "room": GENERAL, "id": target, "emoji": emoji, "on": on}


def report(
    observer: MixedRun,
    load: Load,
    clients: list[ChatClient],
    samples: list[dict[str, float]],
    send_lag: list[float],
    drain_s: float,
) -> dict[str, Any]:
    before, after = samples
    wall = after["at"] - before["at"]
    accepted = observer.accepted()
    lost = sum(max(0, len(clients) - observer.frames[g]) for g in accepted)
    sent_by_kind = Counter(KINDS[observer.kind[g]] for g in accepted)
    in_window_by_kind = Counter(
        KINDS[observer.kind[g]]
        for g in accepted
        if observer.window_start <= observer.scheduled[g] < observer.window_end
    )
    typing_sent = sum(len(t) for t in observer.typing_sent.values())
    typing_in_window = sum(
        1
        for times in observer.typing_sent.values()
        for at in times
        if observer.window_start <= at < observer.window_end
    )
    typing_not_shown = observer.typing_not_shown(clients)
    server_cpu = after["server"] - before["server"]
    deliveries = observer.in_window
    total = sum(deliveries.values())
    message_deliveries = deliveries["message"]
    messages_latency = sorted(
        [
            *observer.latencies["message"],
            *observer.latencies["edit"],
            *observer.latencies["reaction"],
        ]
    )
    p99 = percentile(messages_latency, 0.99)
    send_lag.sort()
    send_lag_p99 = percentile(send_lag, 0.99)
    generator_busy = (after["generator"] - before["generator"]) / wall
    server_wait = (after["server_wait"] - before["server_wait"]) / wall
    generator_wait = (after["generator_wait"] - before["generator_wait"]) / wall
    errors = sum(observer.errors.values())
    closed = sum(1 for c in clients if c.closed.done())
    result: dict[str, Any] = {
        "name": load.name,
        "clients": len(clients),
        "senders": load.senders,
        "rate_per_sender": observer_rate(observer, load),
        "edits_per_active_user_s": load.edits,
        "reactions_per_active_user_s": load.reactions,
        "typers": len(load.typers),
        "typing_every_s": load.typing_every,
        "sent": dict(sent_by_kind),
        "sent_in_window": {**in_window_by_kind, "typing": typing_in_window},
        "typing_sent": typing_sent,
        "skipped": dict(observer.skipped),
        "delivered": dict(observer.delivered),
        "deliveries_in_window": dict(deliveries),
        "deliveries_per_s": total / wall,
        "message_deliveries_per_s": message_deliveries / wall,
        "typing_deliveries_per_s": deliveries["typing"] / wall,
        "window_s": wall,
        "drain_s": drain_s,
        "latency_ms": quantiles_ms(sorted(messages_latency)),
        "latency_ms_by_kind": {k: quantiles_ms(sorted(v)) for k, v in observer.latencies.items()},
        "lost": lost,
        "typing_not_shown": typing_not_shown,
        "typing_notices": sum(sum(got.values()) for got in observer.typing_got),
        "typing_extra": observer.typing_extra,
        "typing_to_typer": observer.to_typer,
        "duplicated": observer.duplicates,
        "reordered": observer.reordered,
        "unknown_reactions": observer.unknown_reactions,
        "stale": observer.stale,
        "errors": errors,
        "error_codes": dict(observer.errors),
        "closed_clients": closed,
        "server_cpu_s": server_cpu,
        "server_cpu_share": server_cpu / wall,
        "server_cpu_ms_per_1000": server_cpu * 1e6 / total if total else math.nan,
        "server_cpu_ms_per_1000_messages": server_cpu * 1e6 / message_deliveries
        if message_deliveries
        else math.nan,
        "redis_cpu_share": (after["redis"] - before["redis"]) / wall,
        "generator_cpu_share": generator_busy,
        "generator_send_lag_ms_p99": send_lag_p99 * 1000,
        "generator_limited": generator_busy > GENERATOR_BUSY or send_lag_p99 > SEND_LAG_BOUND_S,
        "server_runqueue_wait_share": server_wait,
        "generator_runqueue_wait_share": generator_wait,
        "contended": server_wait > CONTENDED or generator_wait > CONTENDED,
    }
    result["ok"] = bool(
        lost == 0
        and observer.typing_extra == 0
        and observer.to_typer == 0
        and observer.duplicates == 0
        and observer.reordered == 0
        and observer.unknown_reactions == 0
        and errors == 0
        and closed == 0
    )
    result["p99_ok"] = p99 * 1000 <= 250
    return result


def observer_rate(observer: MixedRun, load: Load) -> float:
    messages = sum(1 for k in observer.kind if k == MESSAGE)
    span = observer.window_end - (observer.scheduled[0] if len(observer.scheduled) else 0)
    return messages / load.senders / span if load.senders and span > 0 else 0.0


# -- the phase


async def mixed_phase(
    env: Environment, args: argparse.Namespace, knee_senders: int | None = None
) -> dict[str, Any]:
    server = env.fresh_server("mixed", args.workers, args.server_cpus)
    rng = random.Random(args.seed)
    try:
        sessions = math.ceil(args.clients / args.clients_per_session)
        started = time.monotonic()
        cookies = await login_many(server, env.smtp, sessions, "mixed")
        login_s = time.monotonic() - started
        hub = Hub()
        started = time.monotonic()
        clients = await open_clients(hub, server, cookies, args.clients, False)
        connect_s = time.monotonic() - started
        await probe(hub, clients)
        senders = min(args.mixed_senders, sessions, len(clients))
        active = list(range(senders))
        knee = min(args.knee_senders or knee_senders or 30, sessions, len(clients))
        knee_active = list(range(knee))
        # One socket per user: the first `sessions` clients (round robin over the logins).
        everyone = list(range(min(sessions, len(clients))))
        print(
            f"mixed: {len(clients)} clients in general on {sessions} users "
            f"({args.clients_per_session} sockets each; logins {login_s:.1f}s, connects "
            f"{connect_s:.1f}s); active users = the senders: {senders} in the mixed run, "
            f"{knee} (the knee) for the typing cost",
            flush=True,
        )
        assert env.redis.process is not None
        redis_pid = env.redis.process.pid
        every = args.typing_every
        mixed = Load("mixed", senders, args.mixed_edits, args.mixed_reactions, active, every)
        posts = Load("A posts", knee, 0.0, 0.0, [], every)
        typing = Load("B posts+typing (active)", knee, 0.0, 0.0, knee_active, every)
        typing_all = Load("C posts+typing (all users)", knee, 0.0, 0.0, everyone, every)

        runs: list[dict[str, Any]] = []
        not_before = 0.0
        attempt = 0

        async def one(load: Load) -> dict[str, Any]:
            nonlocal not_before, attempt
            result, observer = await run_load(
                hub, clients, server, redis_pid, load, attempt, args, rng, not_before
            )
            attempt += 1
            not_before = max(time.monotonic() + args.pause, observer.last_typing_at + TYPING_GAP_S)
            print(run_line(result), flush=True)
            if result["profile"]:
                print(profile_text(result["profile"]), flush=True)
            runs.append(result)
            return result

        print(RUN_HEADER, flush=True)
        mixed_result = await one(mixed)
        rounds: list[list[dict[str, Any]]] = []
        variants = [typing, typing_all] if args.typing_all else [typing]
        for round_index in range(args.ab_rounds):
            order = [posts, *variants]
            if round_index % 2:
                order.reverse()
            results = {}
            for load in order:
                results[load.name] = await one(load)
            rounds.append([results[load.name] for load in [posts, *variants]])
        for client in clients:
            client.close()
        return {
            "clients": len(clients),
            "sessions": sessions,
            "clients_per_session": args.clients_per_session,
            "senders": senders,
            "knee_senders": knee,
            "login_s": login_s,
            "connect_s": connect_s,
            "mixed": mixed_result,
            "ab": ab_summary(rounds),
            "runs": runs,
            "frames_outside_runs": dict(hub.frames),
            "protocol_errors": dict(hub.protocol_errors),
            "ok": bool(all(r["ok"] for r in runs) and not hub.protocol_errors),
        }
    finally:
        server.stop()


def ab_summary(rounds: list[list[dict[str, Any]]]) -> dict[str, Any]:
    """Per variant: its server CPU per second of window over the posts-only runs'."""
    if not rounds:
        return {}
    base = [r[0] for r in rounds]
    base_share = sum(r["server_cpu_s"] for r in base) / sum(r["window_s"] for r in base)
    base_per_message = _per_1000(base, "message")
    variants = []
    for column in range(1, len(rounds[0])):
        runs = [r[column] for r in rounds]
        share = sum(r["server_cpu_s"] for r in runs) / sum(r["window_s"] for r in runs)
        variants.append(
            {
                "name": runs[0]["name"],
                "typers": runs[0]["typers"],
                "server_cpu_share": share,
                "ratio": share / base_share if base_share else math.nan,
                "ratio_per_round": [
                    (r["server_cpu_s"] / r["window_s"]) / (b["server_cpu_s"] / b["window_s"])
                    for r, b in zip(runs, base, strict=True)
                ],
                # The same per message delivery: steadier when the machine's other load
                # lets the generator fall behind in some runs (fewer messages in the window).
                "ratio_per_message": _per_1000(runs, "message") / base_per_message
                if base_per_message
                else math.nan,
                "ratio_per_message_per_round": [
                    _per_1000([r], "message") / _per_1000([b], "message")
                    for r, b in zip(runs, base, strict=True)
                ],
                "typing_deliveries_per_s": sum(r["typing_deliveries_per_s"] for r in runs)
                / len(runs),
                "message_deliveries_per_s": sum(r["message_deliveries_per_s"] for r in runs)
                / len(runs),
                "server_cpu_ms_per_1000": _per_1000(runs, None),
                "server_cpu_ms_per_1000_messages": _per_1000(runs, "message"),
                "ok": all(r["ok"] for r in runs),
                "contended": any(r["contended"] for r in runs),
            }
        )
    return {
        "rounds": len(rounds),
        "posts_server_cpu_share": base_share,
        "posts_server_cpu_ms_per_1000_messages": base_per_message,
        "variants": variants,
    }


def _per_1000(runs: list[dict[str, Any]], kind: str | None) -> float:
    cpu = sum(r["server_cpu_s"] for r in runs)
    if kind is None:
        deliveries = sum(sum(r["deliveries_in_window"].values()) for r in runs)
    else:
        deliveries = sum(r["deliveries_in_window"].get(kind, 0) for r in runs)
    return cpu * 1e6 / deliveries if deliveries else math.nan


# -- report

RUN_HEADER = (
    f"  {'run':<27} {'msg/s':>6} {'chg/s':>6} {'typ/s':>6} {'deliv/s':>8} {'typ deliv/s':>11} "
    f"{'p50ms':>6} {'p99ms':>6} {'typ p99':>7} {'srvCPU':>6} {'ms/1k':>6} {'ms/1k msg':>9}  verdict"
)


def run_line(r: dict[str, Any]) -> str:
    window = r["window_s"]
    sent = r["sent_in_window"]
    changes = sent.get("edit", 0) + sent.get("reaction", 0)
    verdict = "ok" if r["ok"] else "FAIL"
    if not r["p99_ok"]:
        verdict += " p99>250ms"
    if r["generator_limited"]:
        verdict += " generator-limited"
    if r["contended"]:
        verdict += " contended"
    problems = {
        "lost": r["lost"],
        "typing extra": r["typing_extra"],
        "typing to typer": r["typing_to_typer"],
        "dup": r["duplicated"],
        "reordered": r["reordered"],
        "unknown reactions": r["unknown_reactions"],
        "errors": r["errors"],
        "closed": r["closed_clients"],
    }
    found = ", ".join(f"{k} {v}" for k, v in problems.items() if v)
    if found:
        verdict += f" ({found})"
    return (
        f"  {r['name']:<27} {sent.get('message', 0) / window:>6.1f} {changes / window:>6.1f} "
        f"{sent.get('typing', 0) / window:>6.1f} {r['deliveries_per_s']:>8.0f} "
        f"{r['typing_deliveries_per_s']:>11.0f} {r['latency_ms']['p50']:>6.1f} "
        f"{r['latency_ms']['p99']:>6.1f} {r['latency_ms_by_kind']['typing']['p99']:>7.1f} "
        f"{r['server_cpu_share']:>6.0%} {r['server_cpu_ms_per_1000']:>6.1f} "
        f"{r['server_cpu_ms_per_1000_messages']:>9.1f}  {verdict}"
    )


def summary_lines(phase: dict[str, Any]) -> list[str]:
    m = phase["mixed"]
    by_kind = m["latency_ms_by_kind"]
    delivered = m["deliveries_in_window"]
    lines = [
        f"mixed: {phase['clients']} clients in general, {phase['senders']} active users "
        f"(post {m['rate_per_sender']:.1f}/s, edit every {_every(m['edits_per_active_user_s'])}, "
        f"react every {_every(m['reactions_per_active_user_s'])}, type every "
        f"{m['typing_every_s']:g} s); in {m['window_s']:.1f}s: "
        f"{m['deliveries_per_s']:.0f} deliveries/s ({delivered.get('message', 0)} message, "
        f"{delivered.get('edit', 0)} edit, {delivered.get('reaction', 0)} reaction, "
        f"{delivered.get('typing', 0)} typing)",
        f"  server CPU {m['server_cpu_ms_per_1000']:.1f} ms per 1,000 deliveries "
        f"({m['server_cpu_ms_per_1000_messages']:.1f} per 1,000 message deliveries), "
        f"{m['server_cpu_share']:.0%} of a core; latency p50/p99 message "
        f"{by_kind['message']['p50']:.1f}/{by_kind['message']['p99']:.1f}, edit "
        f"{by_kind['edit']['p50']:.1f}/{by_kind['edit']['p99']:.1f}, reaction "
        f"{by_kind['reaction']['p50']:.1f}/{by_kind['reaction']['p99']:.1f}, typing "
        f"{by_kind['typing']['p50']:.1f}/{by_kind['typing']['p99']:.1f} ms",
        f"  lost {m['lost']}, dup {m['duplicated']}, reordered {m['reordered']}, typing "
        f"not shown {m['typing_not_shown']} (coalesced), extra {m['typing_extra']}, to the "
        f"typer {m['typing_to_typer']}; errors {m['errors']}, closed {m['closed_clients']}: "
        f"{'ok' if m['ok'] else 'FAIL'}",
    ]
    ab = phase["ab"]
    if ab:
        lines.append(
            f"typing cost at S={phase['knee_senders']} ({ab['rounds']} rounds, alternated): "
            "posts only "
            f"{ab['posts_server_cpu_share']:.1%} of a core, "
            f"{ab['posts_server_cpu_ms_per_1000_messages']:.1f} ms per 1,000 message deliveries"
        )
        for v in ab["variants"]:
            rounds = ", ".join(f"{x:.2f}" for x in v["ratio_per_round"])
            per_message = ", ".join(f"{x:.2f}" for x in v["ratio_per_message_per_round"])
            verdict = "ok" if v["ratio"] <= 1.10 else "over 1.10"
            if not v["ok"]:
                verdict += ", FAIL checks"
            if v["contended"]:
                verdict += ", contended"
            lines.append(
                f"  {v['name']}: {v['typers']} typers, {v['typing_deliveries_per_s']:.0f} typing "
                f"deliveries/s on {v['message_deliveries_per_s']:.0f} message deliveries/s; "
                f"{v['server_cpu_share']:.1%} of a core, {v['server_cpu_ms_per_1000_messages']:.1f}"
                f" ms per 1,000 message deliveries ({v['server_cpu_ms_per_1000']:.1f} per 1,000 "
                f"of all); server CPU ratio to posts only {v['ratio']:.3f} (rounds {rounds}), "
                f"per message delivery {v['ratio_per_message']:.3f} (rounds {per_message}): "
                f"{verdict}"
            )
    return lines


def _every(per_second: float) -> str:
    return f"{1 / per_second:g} s" if per_second > 0 else "never"
