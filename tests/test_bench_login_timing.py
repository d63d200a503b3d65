"""The login timing benchmark's statistics and a tiny run, so it cannot rot (never speed)."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from pathlib import Path

from bench.login_timing import mann_whitney

ROOT = Path(__file__).resolve().parent.parent


def test_mann_whitney_matches_the_textbook_values() -> None:
    # Fully separated samples of 3: U = 0, z = -4 / sqrt(5.25), p = 0.0809 (as scipy's
    # asymptotic mannwhitneyu with continuity correction).
    u, z, p = mann_whitney([1, 2, 3], [4, 5, 6])
    assert u == 0
    assert math.isclose(z, -4 / math.sqrt(5.25))
    assert math.isclose(p, 0.0808556, rel_tol=1e-5)
    # Identical samples (all ties) tell nothing apart.
    assert mann_whitney([1.0] * 5, [1.0] * 5)[2] == 1.0
    # Ties get average ranks: U counts half a win for each tie.
    assert mann_whitney([1, 2], [2, 3])[0] == 0.5


def test_a_small_run_measures_every_outcome_and_mails_only_allowed(tmp_path: Path) -> None:
    results_path = tmp_path / "timing.json"
    env = {k: v for k, v in os.environ.items() if not k.startswith("CHAT_")}
    completed = subprocess.run(
        [
            *(sys.executable, "-m", "bench.login_timing", "--requests", "20"),
            *("--warmup", "4", "--settle", "2", "--json", str(results_path)),
        ],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert completed.returncode == 0, completed.stdout + completed.stderr
    results = json.loads(results_path.read_text())
    assert [row["name"] for row in results["classes"]] == [
        "issued",
        "not_allowed",
        "resend_wait",
        "locked",
    ]
    assert all(row["samples"] == 20 for row in results["classes"])
    delivered = results["mail_delivered_by_domain"]
    assert delivered.get("allowed.example") == results["mail_expected_at_allowed_domain"]
    assert "elsewhere.example" not in delivered
