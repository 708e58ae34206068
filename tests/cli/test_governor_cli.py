"""`ifab governor` against a real `ifab serve` process: policy checks, reports, resets,
SIGHUP reloads, and books that survive kill -9."""

from __future__ import annotations

import json
import signal
import time
from pathlib import Path

from tests.harness import Fabric, ok

POLICY = """\
profiles:
  default:
    failure_threshold: 2
    cooloff_seconds: null
prices:
  small: {usd_per_1m_in: 0.5, usd_per_1m_out: 1.5}
"""


def test_policy_check_prints_the_profile_or_the_first_problem(tmp_path: Path) -> None:
    fabric = Fabric(tmp_path)
    good = tmp_path / "good.yaml"
    good.write_text(POLICY)
    printed = ok(fabric("governor", "policy", "check", str(good), "--profile", "production"))
    assert printed.startswith(
        f"ok: {good} (profile production of default, development, production)"
    )
    assert "  failure_threshold: 2\n" in printed
    assert "  min_capability_match: 0.8\n" in printed  # production's built-in override
    assert "  prices: small\n" in printed
    bad = tmp_path / "bad.yaml"
    bad.write_text(POLICY.replace("failure_threshold", "failure_treshold"))
    refused = fabric("governor", "policy", "check", str(bad))
    assert refused.returncode == 1
    assert refused.stderr.decode().strip() == (
        f"error: {bad}:3: profiles.default.failure_treshold: unknown key (a typo?)"
    )


def test_serve_refuses_to_start_with_a_bad_policy(tmp_path: Path) -> None:
    fabric = Fabric(tmp_path)
    bad = tmp_path / "bad.yaml"
    bad.write_text("profiles:\n  default:\n    min_capability_match: 7\n")
    started = fabric("serve", "--port", str(fabric.port), "--policy", str(bad))
    assert started.returncode == 1
    assert f"{bad}:3: profiles.default.min_capability_match" in started.stderr.decode()


def test_report_reset_reload_and_books_that_survive_kill_9(tmp_path: Path) -> None:
    fabric = Fabric(tmp_path)
    policy = tmp_path / "policy.yaml"
    policy.write_text(POLICY)
    fabric.start("--policy", str(policy))
    ok(fabric("identity", "new", "worker"))
    ok(fabric("identity", "new", "ops", "--operator"))
    ok(fabric("agent", "enroll", "worker", "--cap", "code:python", "--model", "small"))
    ok(fabric("agent", "enroll", "ops"))
    for name in ("a", "b", "c"):
        ok(fabric("task", "add", name, "--id", name, "--as", "ops"))
    for name in ("a", "b"):
        ok(fabric("task", "claim", name, "--as", "worker"))
        ok(fabric("task", "fail", name, "broken", "--final", "--as", "worker"))
    refused = fabric("task", "claim", "c", "--as", "worker")
    assert refused.returncode == 1
    assert "BREAKER_OPEN" in refused.stderr.decode()

    fabric.kill(signal.SIGKILL)  # the failures were acknowledged: they must survive
    fabric.start("--policy", str(policy))
    report = json.loads(ok(fabric("governor", "report", "--json")))
    worker = next(row for row in report["agents"] if row["agent"] == "if://agent/worker")
    assert (worker["breaker"], worker["tasks_failed"], worker["model"]) == ("open", 2, "small")
    table = ok(fabric("governor", "report"))
    assert "worker" in table
    assert "open" in table  # (rich wraps the columns to the 80 of a pipe)

    not_operator = fabric("governor", "reset", "worker", "--as", "worker")
    assert not_operator.returncode == 1
    assert "NOT_OPERATOR" in not_operator.stderr.decode()
    assert ok(fabric("governor", "reset", "worker", "--as", "ops")).strip() == (
        "reset if://agent/worker's breaker"
    )
    ok(fabric("task", "claim", "c", "--as", "worker"))

    policy.write_text(POLICY + "profile: development\n")
    assert fabric.process is not None
    fabric.process.send_signal(signal.SIGHUP)
    deadline = time.monotonic() + 10
    while json.loads(ok(fabric("governor", "report", "--json")))["policy"]["profile"] != (
        "development"
    ):
        assert time.monotonic() < deadline, "SIGHUP did not reload the policy"
        time.sleep(0.1)
    policy.write_text("profiles: [\n")
    refused = fabric("governor", "reload")
    assert refused.returncode == 1
    assert "INVALID_POLICY" in refused.stderr.decode()
    assert json.loads(ok(fabric("governor", "report", "--json")))["policy"]["profile"] == (
        "development"
    )
    fabric.kill()
