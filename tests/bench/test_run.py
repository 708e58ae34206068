"""``bench/run.py --only``: some parts of the benchmarks, as ``make bench ONLY=...`` runs."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

RUN = Path(__file__).parents[2] / "bench" / "run.py"


def bench(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, str(RUN), *args], capture_output=True, text=True, timeout=300
    )


def test_only_the_parts_named_run() -> None:
    done = bench("--quick", "--only", "metrics")
    assert done.returncode == 0, done.stderr
    assert "/metrics: one scrape" in done.stdout
    assert "Claims and messages" not in done.stdout  # the claims part
    assert "raw verify, PyNaCl" not in done.stdout  # the envelope part


def test_an_unknown_part_is_refused_with_the_parts_there_are() -> None:
    done = bench("--only", "claim")
    assert done.returncode == 2
    assert "invalid choice: 'claim'" in done.stderr
    # (whether argparse quotes the choices it lists depends on the Python version)
    assert re.search(r"choose from .*\bclaims\b", done.stderr)
