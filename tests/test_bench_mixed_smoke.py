"""The mixed phase of the fan-out benchmark at tiny sizes, so it cannot rot: correctness only."""

from __future__ import annotations

from pathlib import Path

from .benchrun import smoke_results


def test_mixed_smoke_run_delivers_posts_edits_reactions_once_in_order_and_typing_to_others(
    tmp_path: Path,
) -> None:
    results, output = smoke_results(tmp_path, "--only", "mixed")
    phase = results["mixed"]

    assert phase["clients"] == 20 and phase["senders"] == 2
    mixed = phase["mixed"]
    # Every kind of traffic happened: posts, edits of one's own, reaction toggles both
    # ways, typing; and every client received each post, edit and reaction.
    assert mixed["sent"]["message"] > 0 and mixed["sent"]["edit"] > 0
    assert mixed["sent"]["reaction"] > 0 and mixed["typing_sent"] > 0
    for kind in ("message", "edit", "reaction"):
        assert mixed["delivered"][kind] == mixed["sent"][kind] * mixed["clients"], kind
    # Each typing frame reached every socket but the typer's own (5 sockets per user).
    assert mixed["delivered"]["typing"] == mixed["typing_sent"] * (20 - 5)

    posts, typing, typing_all = (run for run in phase["runs"][1:4])
    assert posts["name"].startswith("A") and posts["typing_sent"] == 0
    assert posts["delivered"].get("typing", 0) == 0
    assert typing["typers"] == 2 and typing["typing_sent"] > 0
    assert typing_all["typers"] == 4 and typing_all["typing_sent"] > typing["typing_sent"]
    for run in phase["runs"]:
        # Nothing lost, twice or out of order; no typing frame to any socket of the typer;
        # in a room this small every typing frame goes out at once, none coalesced.
        assert run["lost"] == 0, run["name"]
        assert run["duplicated"] == 0, run["name"]
        assert run["reordered"] == 0, run["name"]
        assert run["unknown_reactions"] == 0, run["name"]
        assert run["typing_not_shown"] == 0 and run["typing_extra"] == 0, run["name"]
        assert run["typing_to_typer"] == 0, run["name"]
        assert run["errors"] == 0, run["error_codes"]
        assert run["closed_clients"] == 0, run["name"]
        assert run["latency_ms"]["samples"] > 0, run["name"]
    assert [v["name"] for v in phase["ab"]["variants"]] == [typing["name"], typing_all["name"]]
    assert phase["ok"], output
