"""deploy/: the alert rules pass `promtool`, their unit tests pass, every metric they and
the Grafana dashboard name is one a server exposes, and a real Prometheus (Debian's)
scrapes a real `ifab serve` with the example configuration."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import time
from pathlib import Path

import httpx

from tests.harness import RUNNING, Fabric, free_port, stop
from tests.server.test_metrics import FAMILIES, PER_LINK  # every family a scrape shows

DEPLOY = Path(__file__).parents[2] / "deploy"
PROMTOOL = shutil.which("promtool")
PROMETHEUS = shutil.which("prometheus")


def promtool(*args: str, cwd: Path) -> str:
    assert PROMTOOL is not None, "promtool is missing: `make test` installs Debian's prometheus"
    result = subprocess.run(
        [PROMTOOL, *args], cwd=cwd, capture_output=True, text=True, timeout=60, check=False
    )
    assert result.returncode == 0, result.stdout + result.stderr
    return result.stdout


def named_metrics(text: str) -> set[str]:
    """The ifab_ metric families an expression text names (a counter's _total, a
    histogram's _bucket read as their family)."""
    names = set(re.findall(r"\bifab_[a-z_]+", text))
    return {re.sub(r"_(total|bucket|count|sum)$", "", name) for name in names}


def test_the_alert_rules_are_valid_and_their_unit_tests_pass() -> None:
    assert "SUCCESS: 9 rules found" in promtool(
        "check", "rules", "alerts.yml", cwd=DEPLOY / "prometheus"
    )
    assert "SUCCESS" in promtool("test", "rules", "alerts.test.yml", cwd=DEPLOY / "prometheus")


def test_the_rules_and_the_dashboard_name_only_metrics_that_exist() -> None:
    rules = named_metrics((DEPLOY / "prometheus" / "alerts.yml").read_text())
    assert rules <= FAMILIES, rules - FAMILIES
    dashboard = json.loads((DEPLOY / "grafana" / "infrafabric.json").read_text())
    exprs = " ".join(t["expr"] for panel in dashboard["panels"] for t in panel["targets"])
    known = FAMILIES | PER_LINK
    assert named_metrics(exprs) <= known, named_metrics(exprs) - known
    assert len({panel["id"] for panel in dashboard["panels"]}) == len(dashboard["panels"])


def test_a_real_prometheus_scrapes_a_real_server(tmp_path: Path) -> None:
    assert PROMETHEUS is not None, "prometheus is missing: `make test` installs Debian's"
    fabric = Fabric(tmp_path)
    fabric.start()
    config_dir = tmp_path / "prometheus"
    config_dir.mkdir()
    shutil.copy(DEPLOY / "prometheus" / "alerts.yml", config_dir)
    (config_dir / "admin.token").write_text(fabric.admin_token)
    config = (DEPLOY / "prometheus" / "prometheus.yml").read_text()
    config = config.replace("127.0.0.1:8765", f"127.0.0.1:{fabric.port}")
    config = config.replace("scrape_interval: 15s", "scrape_interval: 1s")
    (config_dir / "prometheus.yml").write_text(config)
    assert "SUCCESS" in promtool("check", "config", "prometheus.yml", cwd=config_dir)
    port = free_port()
    process = subprocess.Popen(
        [
            PROMETHEUS, "--config.file", "prometheus.yml",
            "--storage.tsdb.path", str(tmp_path / "tsdb"),
            "--web.listen-address", f"127.0.0.1:{port}", "--log.level", "warn",
        ],
        cwd=config_dir, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
    )  # fmt: skip
    RUNNING.add(process)
    try:
        up = None
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            try:
                reply = httpx.get(
                    f"http://127.0.0.1:{port}/api/v1/query", params={"query": "ifab_store_up"}
                ).json()
                if reply["data"]["result"]:
                    up = reply["data"]["result"][0]["value"][1]
                    break
            except (httpx.HTTPError, KeyError, ValueError):
                pass
            time.sleep(0.3)
        assert up == "1"
        targets = httpx.get(f"http://127.0.0.1:{port}/api/v1/targets").json()
        [target] = targets["data"]["activeTargets"]
        assert target["health"] == "up", target.get("lastError")
        rules = httpx.get(f"http://127.0.0.1:{port}/api/v1/rules").json()
        loaded = [rule["name"] for group in rules["data"]["groups"] for rule in group["rules"]]
        assert len(loaded) == 9
        # the runbook's query for a spike of refusals parses and runs
        runbook = (DEPLOY.parent / "docs" / "operations.md").read_text()
        query = re.search(r"`(sum by \(reason\) \(rate\(ifab_rejections_total\[5m\]\)\))`", runbook)
        assert query, "the runbook's refusals query moved"
        answer = httpx.get(
            f"http://127.0.0.1:{port}/api/v1/query", params={"query": query.group(1)}
        ).json()
        assert answer["status"] == "success", answer
    finally:
        stop(process)
        fabric.kill()
