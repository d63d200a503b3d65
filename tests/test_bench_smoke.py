"""The fan-out benchmark's smoke mode, so it cannot rot: correctness only, never speed."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def test_smoke_run_delivers_every_message_once_in_order(tmp_path: Path) -> None:
    results_path = tmp_path / "fanout.json"
    env = {k: v for k, v in os.environ.items() if not k.startswith("CHAT_")}
    completed = subprocess.run(
        [sys.executable, "-m", "bench.fanout", "--smoke", "--json", str(results_path)],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=170,
    )
    assert completed.returncode == 0, completed.stdout + completed.stderr
    results = json.loads(results_path.read_text())

    steps = results["throughput"]["steps"]
    assert len(steps) == 1
    step = steps[0]
    assert step["messages"] > 0
    # Every client, senders included, gets every message exactly once.
    assert step["deliveries"] == step["messages"] * step["clients"]
    assert step["lost"] == 0
    assert step["duplicated"] == 0
    assert step["reordered"] == 0
    assert step["errors"] == 0, step["error_codes"]
    assert step["closed_clients"] == 0, step["close_codes"]
    assert step["latency_ms"]["samples"] > 0

    memory = results["memory"]
    assert [phase["variant"] for phase in memory] == ["plain", "deflate", "deflate-on"]
    # Offered compression is declined unless the server is told to agree.
    negotiated = [phase["extensions_negotiated"] for phase in memory]
    assert negotiated[:2] == [None, None]
    assert negotiated[2].startswith("permessage-deflate")
    assert all(phase["connections"] == 30 for phase in memory)
    assert all(phase["rss_kib_after"] > 0 for phase in memory)
