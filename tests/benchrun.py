"""Runs a fan-out benchmark phase in its smoke mode, as the bench smoke tests do."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent


def smoke_results(tmp_path: Path, *options: str) -> tuple[dict[str, Any], str]:
    """`python -m bench.fanout --smoke [options]` without CHAT_* variables: its JSON
    results, and what it printed."""
    results_path = tmp_path / "results.json"
    env = {k: v for k, v in os.environ.items() if not k.startswith("CHAT_")}
    completed = subprocess.run(
        [sys.executable, "-m", "bench.fanout", *options, "--smoke", "--json", str(results_path)],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=170,
    )
    assert completed.returncode == 0, completed.stdout + completed.stderr
    results: dict[str, Any] = json.loads(results_path.read_text())
    return results, completed.stdout
