"""`make run`'s swarm: separate agent processes finish the sample board, with a crash
taken over, a filler offered to a blocked agent and a help request."""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
from pathlib import Path

from infrafabric.swarm import AGENTS, start_order

IFAB = shutil.which("ifab", path=str(Path(sys.executable).parent))


def test_the_demo_swarm_finishes_its_board_through_a_crash(tmp_path: Path) -> None:
    assert IFAB is not None
    result = subprocess.run(
        [IFAB, "swarm", "--exit", "--port", "0", "--data", str(tmp_path / "data")],
        capture_output=True, timeout=300, check=False,
    )  # fmt: skip
    output = result.stdout.decode()
    assert result.returncode == 0, result.stderr.decode()
    for sign in (
        "task.expired",
        "filler.offered",
        "help.requested",
        "Summary",
        "Cost (the governor's books)",
        "still running at http://127.0.0.1:",
        f"IFAB_DATA={tmp_path / 'data'} ifab agent enroll NAME",  # not the default data dir
    ):
        assert sign in output, sign
    summary = output.split("Summary", 1)[1]
    assert summary.count("completed") == 9  # every task of the sample board
    assert re.search(
        r"completed\s*\S\s*1\s*\S", summary
    )  # the crashed task: done on its second attempt
    costs = output.split("Cost (the governor's books)", 1)[1]
    planner = re.search(r"planner\s*\S\s*large\s*\S\s*\$([0-9.]+)", costs)
    assert planner is not None
    assert float(planner.group(1)) > 0  # its completions' usage, priced by the demo policy


def test_every_agent_of_the_demo_is_a_process_of_its_own_the_crasher_first() -> None:
    """The planner ran inside the launcher; the issue asks for separate processes."""
    order = start_order()
    assert order[0].role == "crasher"
    assert sorted(plan.name for plan in order) == sorted(plan.name for plan in AGENTS)
    assert "planner" in {plan.name for plan in order}
