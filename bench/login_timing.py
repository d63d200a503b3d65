"""Does the answer to `POST /login/code` take longer for some addresses than others?

An attacker who can tell "this address gets a code" from "this one does not" by
the response time learns who may log in, which the identical response body is
meant to hide. This benchmark starts a real `quart-chat serve` with a real SMTP
server (aiosmtpd, in its own process so its work does not land in the client's
timings) and a real Redis, then sends interleaved requests in random order for
each class of address:

- `issued`: a fresh allowed address each time: a code is made and mailed;
- `not_allowed`: a fresh address outside CHAT_ALLOWED_EMAIL_DOMAINS;
- `resend_wait`: one allowed address asked again and again inside the resend window;
- `locked`: an allowed address locked by too many wrong codes.

It prints each class's median and a two-sided Mann-Whitney U test of every class
against `issued` (normal approximation with tie correction). A p-value below
0.01 means the classes can be told apart.

    python -m bench.login_timing                 # 1,000 requests per class, ~1 min
    python -m bench.login_timing --requests 200  # quicker, less sensitive
"""

from __future__ import annotations

import argparse
import http.client
import json
import math
import random
import secrets
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from statistics import median
from typing import Any

import redis

from quart_chat import keys
from tests.servers import ChatServer, RedisServer

CLASSES = ("issued", "not_allowed", "resend_wait", "locked")
ALLOWED_DOMAIN = "allowed.example"
OTHER_DOMAIN = "elsewhere.example"


@dataclass(frozen=True)
class Comparison:
    name: str
    samples: int
    median_ms: float
    difference_ms: float
    u: float
    z: float
    p: float


def mann_whitney(first: list[float], second: list[float]) -> tuple[float, float, float]:
    """U of `first`, its z score and two-sided p (normal approximation, ties corrected)."""
    n1, n2 = len(first), len(second)
    pooled = sorted([(value, 0) for value in first] + [(value, 1) for value in second])
    ranks = [0.0] * len(pooled)
    tie_term = 0.0
    i = 0
    while i < len(pooled):
        j = i
        while j + 1 < len(pooled) and pooled[j + 1][0] == pooled[i][0]:
            j += 1
        average = (i + j) / 2 + 1  # ranks are 1-based
        for k in range(i, j + 1):
            ranks[k] = average
        tied = j - i + 1
        tie_term += tied**3 - tied
        i = j + 1
    rank_sum = sum(rank for rank, (_, group) in zip(ranks, pooled, strict=True) if group == 0)
    u = rank_sum - n1 * (n1 + 1) / 2
    n = n1 + n2
    mean = n1 * n2 / 2
    variance = n1 * n2 / 12 * ((n + 1) - tie_term / (n * (n - 1)))
    if variance <= 0:
        return u, 0.0, 1.0
    # Continuity correction towards the mean.
    delta = u - mean
    z = (delta - math.copysign(0.5, delta)) / math.sqrt(variance) if delta else 0.0
    return u, z, math.erfc(abs(z) / math.sqrt(2))


def start_sink() -> tuple[subprocess.Popen[str], int]:
    """aiosmtpd in a child process: it prints how many mails arrived when its stdin closes."""
    sink = subprocess.Popen(
        [sys.executable, "-m", "bench.login_timing", "--sink"],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
        cwd=Path(__file__).resolve().parent.parent,
    )
    assert sink.stdout is not None
    ready, _, port = sink.stdout.readline().partition(" ")
    if ready != "ready":
        raise RuntimeError("the SMTP sink did not start")
    return sink, int(port)


def run_sink() -> None:
    from tests.smtp import SmtpSink

    sink = SmtpSink().start()
    print(f"ready {sink.port}", flush=True)
    sys.stdin.read()  # until the parent closes it
    sink.stop()
    counts: dict[str, int] = {}
    with sink.inbox.arrived:
        for address, messages in sink.inbox.by_recipient.items():
            domain = address.rpartition("@")[2]
            counts[domain] = counts.get(domain, 0) + len(messages)
    print(json.dumps(counts), flush=True)


def post_code(connection: http.client.HTTPConnection, origin: str, email: str) -> float:
    body = json.dumps({"email": email})
    headers = {"Content-Type": "application/json", "Origin": origin}
    started = time.perf_counter()
    connection.request("POST", "/login/code", body=body, headers=headers)
    response = connection.getresponse()
    response.read()
    elapsed = time.perf_counter() - started
    if response.status != 202:
        raise RuntimeError(f"POST /login/code {email}: HTTP {response.status}")
    return elapsed * 1000


def measure(args: argparse.Namespace) -> dict[str, Any]:
    workdir = Path(tempfile.mkdtemp(prefix="quart-chat-timing-"))
    redis_server = RedisServer(workdir / "redis", appendonly=False).start()
    sink, smtp_port = start_sink()
    server: ChatServer | None = None
    try:
        env = {
            "CHAT_REDIS_URL": redis_server.url,
            "CHAT_SECRET_KEY": secrets.token_urlsafe(48),
            "CHAT_COOKIE_SECURE": "false",
            "CHAT_SMTP_HOST": "127.0.0.1",
            "CHAT_SMTP_PORT": str(smtp_port),
            "CHAT_SMTP_SECURITY": "none",
            "CHAT_SMTP_FROM": "quart-chat <chat@example.test>",
            "CHAT_ALLOWED_EMAIL_DOMAINS": ALLOWED_DOMAIN,
            "CHAT_CODE_REQUESTS_PER_IP_HOUR": "1000000000",
            # Long enough that the repeated address stays inside it all run.
            "CHAT_CODE_RESEND_SECONDS": "3600",
        }
        server = ChatServer(workdir / "server", env, workers=args.workers).start()
        locked = f"locked@{ALLOWED_DOMAIN}"
        client = redis.Redis.from_url(redis_server.url)
        try:
            client.set(keys.login_code_failures(locked), 10**6, ex=3600)
        finally:
            client.close()

        run_id = secrets.token_hex(3)
        counter = iter(range(10**9))

        def address(kind: str) -> str:
            if kind == "issued":
                return f"u{run_id}-{next(counter)}@{ALLOWED_DOMAIN}"
            if kind == "not_allowed":
                return f"u{run_id}-{next(counter)}@{OTHER_DOMAIN}"
            if kind == "resend_wait":
                return f"again@{ALLOWED_DOMAIN}"
            return locked

        connection = http.client.HTTPConnection("127.0.0.1", server.port, timeout=30)
        origin = server.base_url
        rng = random.Random(args.seed)
        post_code(connection, origin, address("resend_wait"))  # opens its resend window
        warmup = [rng.choice(CLASSES) for _ in range(args.warmup)]
        for kind in warmup:
            post_code(connection, origin, address(kind))
        schedule = [kind for kind in CLASSES for _ in range(args.requests)]
        rng.shuffle(schedule)
        samples: dict[str, list[float]] = {kind: [] for kind in CLASSES}
        for kind in schedule:
            samples[kind].append(post_code(connection, origin, address(kind)))
            if args.gap_ms:
                time.sleep(args.gap_ms / 1000)
        connection.close()
        # Every issued code has been mailed before the sink is asked for its count.
        expected = args.requests + warmup.count("issued") + 1
        time.sleep(args.settle)
    finally:
        if server is not None:
            server.stop()
        assert sink.stdin is not None and sink.stdout is not None
        sink.stdin.close()
        delivered: dict[str, int] = json.loads(sink.stdout.readline() or "{}")
        sink.wait(30)
        redis_server.stop()
        shutil.rmtree(workdir, ignore_errors=True)

    reference = samples["issued"]
    comparisons = []
    for kind in CLASSES:
        u, z, p = mann_whitney(samples[kind], reference)
        comparisons.append(
            Comparison(
                kind,
                len(samples[kind]),
                median(samples[kind]),
                median(samples[kind]) - median(reference),
                u,
                z,
                p,
            )
        )
    return {
        "workers": args.workers,
        "requests_per_class": args.requests,
        "gap_ms": args.gap_ms,
        "mail_expected_at_allowed_domain": expected,
        "mail_delivered_by_domain": delivered,
        "classes": [vars(c) for c in comparisons],
    }


def report(results: dict[str, Any]) -> None:
    print(
        f"POST /login/code, {results['requests_per_class']} requests per class, "
        f"{results['workers']} worker(s), {results['gap_ms']} ms between requests"
    )
    print(f"{'class':<12} {'n':>5} {'median ms':>10} {'vs issued':>10} {'z':>7} {'p':>8}")
    for row in results["classes"]:
        same = row["name"] == "issued"
        print(
            f"{row['name']:<12} {row['samples']:>5} {row['median_ms']:>10.3f} "
            f"{'' if same else format(row['difference_ms'], '+.3f'):>10} "
            f"{'' if same else format(row['z'], '.2f'):>7} "
            f"{'' if same else format(row['p'], '.4f'):>8}"
        )
    delivered = results["mail_delivered_by_domain"]
    print(
        f"mail delivered: {delivered.get(ALLOWED_DOMAIN, 0)} to {ALLOWED_DOMAIN} "
        f"(expected {results['mail_expected_at_allowed_domain']}), "
        f"{delivered.get(OTHER_DOMAIN, 0)} to {OTHER_DOMAIN} (expected 0)"
    )


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--requests", type=int, default=1000, help="measured requests per class")
    parser.add_argument("--warmup", type=int, default=200, help="unmeasured requests first")
    parser.add_argument("--workers", type=int, default=1)
    parser.add_argument("--gap-ms", type=float, default=2.0, help="pause between requests")
    parser.add_argument("--settle", type=float, default=3.0, help="seconds to let mail drain")
    parser.add_argument("--seed", type=int, default=None)
    parser.add_argument("--json", type=Path, help="also write the results here")
    parser.add_argument("--sink", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.sink:
        run_sink()
        return 0
    results = measure(args)
    report(results)
    if args.json:
        args.json.write_text(json.dumps(results, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
