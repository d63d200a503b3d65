"""The rooms phase of the fan-out benchmark at tiny sizes, so it cannot rot: correctness only."""

from __future__ import annotations

from pathlib import Path

from .benchrun import smoke_results


def test_rooms_smoke_run_delivers_each_room_only_to_its_members(tmp_path: Path) -> None:
    results, output = smoke_results(tmp_path, "--only", "rooms")
    phase = results["rooms"]

    assert phase["users"] == 24 and phase["rooms"] == 8 and phase["workers"] == 2
    assert phase["added_missing"] == 0
    assert phase["join_failures"] == {}
    # Both kinds of delivery happened: full messages to joined sockets, bumps to watchers.
    assert phase["room_messages"] > 0 and phase["general_messages"] > 0
    assert phase["message_frames"] > 0 and phase["unread_frames"] > 0
    # Every member got each message of its rooms exactly once, in order, and nobody
    # got a frame of a room they are not in.
    assert phase["lost"] == 0
    assert phase["duplicated"] == 0
    assert phase["reordered"] == 0
    assert phase["foreign"] == 0
    assert phase["errors"] == 0, phase["error_codes"]
    assert phase["closed_clients"] == 0, phase["close_codes"]
    assert phase["latency_ms"]["samples"] > 0

    # Each worker's Redis connection: no pattern subscription, one channel per room it has
    # members in and per user it serves, and only those rooms' bytes.
    workers = phase["per_worker"]
    assert len(workers) == 2, workers
    for worker in workers:
        assert worker["psub"] == 0
        assert worker["sub"] == worker["expected_sub"]
        assert worker["bytes_from_redis"] >= worker["member_room_bytes"] > 0
        assert worker["only_member_rooms"], worker
    # Half the rooms have members on one worker only: each worker has rooms it is not in.
    assert all(worker["rooms_without_members"] > 0 for worker in workers)
    assert phase["ok"], output
