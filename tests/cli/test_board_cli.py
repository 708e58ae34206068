"""`ifab serve` as a real process, driven by the `ifab` task, agent, status and tail commands."""

from __future__ import annotations

import http.server
import json
import queue
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

from tests.harness import IFAB, RUNNING, Fabric, ok, stop


def test_a_board_worked_from_the_shell(fabric: Fabric, tmp_path: Path) -> None:
    ok(fabric("identity", "new", "lead"))
    ok(fabric("identity", "new", "coder"))
    assert "enrolled if://agent/lead" in ok(fabric("agent", "enroll", "lead"))
    ok(fabric("agent", "enroll", "coder", "--cap", "code:python"))
    board = tmp_path / "board.yaml"
    board.write_text(
        "tasks:\n"
        "  - {id: design, title: Design the API, priority: 80}\n"
        "  - {id: build, title: Build it, needs: [code:python], after: [design]}\n"
        "  - {id: docs, title: Tidy the docs, filler: true}\n"
    )
    assert "imported 3 tasks" in ok(fabric("task", "import", str(board), "--as", "lead"))
    assert "design  claimed" in ok(fabric("task", "claim", "--as", "lead"))
    ok(fabric("task", "progress", "design", "50", "--note", "half", "--as", "lead"))
    ok(fabric("task", "done", "design", "--result", '{"ok": true}', "--as", "lead"))
    listing = ok(fabric("task", "list"))
    assert "build" in listing
    assert "available" in listing
    assert "build  claimed" in ok(fabric("task", "claim", "--as", "coder"))
    blocked = ok(
        fabric(
            "task",
            "block",
            "build",
            "--type",
            "review",
            "--description",
            "needs eyes",
            "--urgency",
            "high",
            "--as",
            "coder",
        )
    )
    assert "filler offered" in blocked
    assert "docs" in blocked
    assert json.loads(ok(fabric("task", "show", "build")))["blocker"]["urgency"] == "high"
    assert "invited: nobody qualified" in ok(
        fabric("task", "help", "build", "--needs", "ops:k8s", "--as", "coder")
    )
    blocked_tasks = ok(fabric("task", "list", "--state", "blocked"))  # as the runbook does
    assert [line.split()[0] for line in blocked_tasks.splitlines()[1:]] == ["build"]
    status = ok(fabric("status"))
    assert "blocked" in status
    assert "if://agent/coder" in status
    agents = ok(fabric("agent", "list"))
    assert "green" in agents
    assert "code:python" in agents
    tail = ok(fabric("tail", "--seconds", "1"))
    assert tail == ""  # nothing happened during that second
    refused = fabric("task", "done", "build", "--as", "lead")
    assert refused.returncode == 1
    assert b"NOT_OWNER" in refused.stderr


def test_bad_yaml_and_unreachable_servers_get_clear_errors(fabric: Fabric, tmp_path: Path) -> None:
    ok(fabric("identity", "new", "lead"))
    broken = tmp_path / "broken.yaml"
    broken.write_text("tasks:\n  - {priority: 3}\n")
    result = fabric("task", "import", str(broken), "--as", "lead")
    assert result.returncode == 1
    assert b"task #1 needs at least a title" in result.stderr
    both = tmp_path / "both.yaml"
    both.write_text("tasks:\n  - {title: A, needs: [x], required_capabilities: [y]}\n")
    result = fabric("task", "import", str(both), "--as", "lead")
    assert result.returncode == 1  # one of the two was silently dropped
    assert b"task #1 gives both needs and required_capabilities" in result.stderr
    unknown = fabric(
        "task",
        "block",
        "t",
        "--type",
        "x",
        "--description",
        "d",
        "--urgency",
        "soon",
        "--as",
        "lead",
    )
    assert unknown.returncode == 2  # refused by the CLI before it reaches the server
    assert b"'soon' is not one of" in unknown.stderr
    # the same for a milestone and a state that do not exist (both exited 1 before: the
    # first refused by the server, the second... by nobody, an empty list)
    off_scale = fabric("task", "progress", "t", "30", "--as", "lead")
    assert (off_scale.returncode, b"one of 0, 25, 50, 75, 100" in off_scale.stderr) == (2, True)
    no_state = fabric("task", "list", "--state", "bogus")
    assert (no_state.returncode, b"'bogus' is not one of" in no_state.stderr) == (2, True)
    away = fabric("task", "list", "--server", "http://127.0.0.1:9")
    assert away.returncode == 1
    assert b"cannot reach" in away.stderr


def test_task_show_escapes_the_id_and_reports_answers_that_are_not_json(fabric: Fabric) -> None:
    """A task id goes into the URL as one escaped path segment: ``a?b`` is not task ``a``
    (its query string), ``..`` not a step up. ``a/b`` reaches no route (NOT_FOUND). An
    answer that is not JSON (a proxy's error page) is an error line with exit status 1,
    not a JSONDecodeError traceback."""
    ok(fabric("identity", "new", "lead"))
    ok(fabric("agent", "enroll", "lead"))
    ok(fabric("task", "add", "The real a", "--id", "a", "--as", "lead"))
    for task_id in ("a?b", "#x", "..", "a%3Fb"):
        for reader in ((), ("--as", "lead")):  # the operator's request, then the SDK's
            result = fabric("task", "show", task_id, *reader)
            assert result.returncode == 1, (task_id, reader, result.stdout)
            # the service's answer about that very id, not the router's about a path
            assert f"no task {task_id}".encode() in result.stderr, (task_id, reader)
    routed_nowhere = fabric("task", "show", "a/b")
    assert routed_nowhere.returncode == 1
    assert b"NOT_FOUND" in routed_nowhere.stderr

    class ProxyErrorPage(http.server.BaseHTTPRequestHandler):
        """Stands for a proxy in front of the fabric that answers with an HTML page."""

        def do_GET(self) -> None:
            page = b"<html><body>502 Bad Gateway</body></html>"
            self.send_response(502)
            self.send_header("content-type", "text/html")
            self.send_header("content-length", str(len(page)))
            self.end_headers()
            self.wfile.write(page)

        def log_message(self, *args: Any) -> None:
            pass

    with http.server.ThreadingHTTPServer(("127.0.0.1", 0), ProxyErrorPage) as proxy:
        threading.Thread(target=proxy.serve_forever, daemon=True).start()
        try:
            url = f"http://127.0.0.1:{proxy.server_address[1]}"
            page = fabric("task", "show", "a", "--server", url)
        finally:
            proxy.shutdown()
    assert page.returncode == 1
    assert page.stderr.startswith(b"error: HTTP 502 from /v1/tasks/a, not JSON")
    assert b"Traceback" not in page.stderr


def test_tail_reports_a_topic_pattern_the_server_refuses(fabric: Fabric) -> None:
    """The server's refusal of the subscription was skipped: tail printed nothing and
    exited 0, as if the board were quiet."""
    refused = fabric("tail", "--topic", "board/**", "--seconds", "10")
    assert refused.returncode == 2
    assert b"MALFORMED" in refused.stderr
    assert b"if:// address" in refused.stderr


def test_task_show_prints_the_task_and_tail_prints_the_events_of_changes_made_meanwhile(
    fabric: Fabric,
) -> None:
    """`ifab task show` is how an operator looks at one task (who holds it, in what
    state), and `ifab tail` how they watch the board live: each prints what happened."""
    ok(fabric("identity", "new", "lead"))
    ok(fabric("agent", "enroll", "lead"))
    assert IFAB is not None
    # Ctrl-C (SIGINT) ends tail; a process started in the background by a shell without
    # job control (`make test &`) inherits SIGINT *ignored*, and so would tail: the
    # launcher puts it back to its default before it becomes ifab
    default_sigint = (
        "import os, signal, sys; signal.signal(signal.SIGINT, signal.SIG_DFL);"
        " os.execv(sys.argv[1], sys.argv[1:])"
    )
    tail = subprocess.Popen(
        [sys.executable, "-c", default_sigint, IFAB, "tail", "--seconds", "120"],
        env=fabric.env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE,
        start_new_session=True,
    )  # fmt: skip
    RUNNING.add(tail)
    lines: queue.Queue[dict[str, Any]] = queue.Queue()

    def read() -> None:
        assert tail.stdout is not None
        for line in tail.stdout:
            lines.put(json.loads(line))

    reader = threading.Thread(target=read, daemon=True)
    reader.start()

    def next_line(timeout: float) -> dict[str, Any] | None:
        try:
            return lines.get(timeout=timeout)
        except queue.Empty:
            return None

    # tail says nothing when it has subscribed: add probe tasks until it prints one
    deadline = time.monotonic() + 30
    probe = 0
    while True:
        assert time.monotonic() < deadline, "ifab tail never printed an event"
        assert tail.poll() is None, tail.stderr.read().decode()  # type: ignore[union-attr]
        ok(fabric("task", "add", "probe", "--id", f"probe-{probe}", "--as", "lead"))
        probe += 1
        if next_line(timeout=2) is not None:
            break

    ok(fabric("task", "add", "Write the report", "--id", "report", "--as", "lead"))
    shown = json.loads(ok(fabric("task", "show", "report")))
    assert (shown["id"], shown["title"], shown["state"], shown["owner"]) == (
        "report",
        "Write the report",
        "available",
        None,
    )
    assert "report  claimed" in ok(fabric("task", "claim", "report", "--as", "lead"))
    shown = json.loads(ok(fabric("task", "show", "report")))
    assert (shown["id"], shown["title"], shown["state"], shown["owner"]) == (
        "report",
        "Write the report",
        "claimed",
        "if://agent/lead",
    )

    about_report: list[dict[str, Any]] = []
    deadline = time.monotonic() + 30
    while not any(event["kind"] == "task.claimed" for event in about_report):
        assert time.monotonic() < deadline, f"tail printed only {about_report}"
        event = next_line(timeout=max(deadline - time.monotonic(), 0))
        if event is not None and event.get("task_id") == "report":
            about_report.append(event)
    stop(tail, signal.SIGINT)
    reader.join(timeout=10)
    assert [(event["kind"], event["state"]) for event in about_report] == [
        ("task.created", "available"),
        ("task.claimed", "claimed"),
    ]
    assert about_report[1]["actor"] == "if://agent/lead"
