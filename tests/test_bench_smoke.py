"""The fan-out benchmark's smoke mode, so it cannot rot: correctness only, never speed."""

from __future__ import annotations

from pathlib import Path

from .benchrun import smoke_results


def test_smoke_run_delivers_every_message_once_in_order(tmp_path: Path) -> None:
    results, _ = smoke_results(tmp_path)

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
