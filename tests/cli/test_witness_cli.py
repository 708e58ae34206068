"""`ifab witness` against a real server process, and audits of a log edited by hand."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import sqlite3
import subprocess
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from infrafabric.client import Client, RemoteError
from infrafabric.keystore import Keystore
from tests.harness import IFAB, PASS, Fabric, ok


@pytest.fixture(scope="module")
def witnessed(tmp_path_factory: pytest.TempPathFactory) -> tuple[Fabric, str]:
    """A fabric that witnessed 43 decisions (its lead's key, enrollment and registration
    with the governor, 20 tasks added and 20 claimed), stopped; and its verifier key."""
    fabric = Fabric(tmp_path_factory.mktemp("witnessed"))
    fabric.start()
    ok(fabric("identity", "new", "lead"))
    ok(fabric("agent", "enroll", "lead"))
    # the decisions themselves through the SDK, as `task add` and `task claim` make
    # them: 40 commands would spend most of this module's time starting Python
    lead = Keystore(fabric.home).unlock("lead", PASS)

    async def decide() -> None:
        async with Client.connect(fabric.url, lead) as agent:
            for number in range(20):
                await agent.create_tasks([{"id": f"t{number:02d}", "title": f"task {number}"}])
            for _ in range(20):
                assert await agent.claim_next() is not None

    asyncio.run(decide())
    deadline = time.monotonic() + 10
    while True:
        printed = ok(fabric("witness", "checkpoint"))
        if printed.split("\n")[1] == "43":
            break
        assert time.monotonic() < deadline, printed
        time.sleep(0.2)
    key = printed.rsplit("verifier key: ", 1)[1].strip()
    bundle = ok(fabric("witness", "prove", "24"))
    (fabric.data.parent / "bundle.json").write_text(bundle)
    log = ok(fabric("witness", "log", "--start", "23", "--count", "2", "--json")).splitlines()
    assert [json.loads(line)["entry"]["event"] for line in log] == ["task.claimed"] * 2
    # filtered on the server, paged by the CLI
    claims = ok(fabric("witness", "log", "--event", "task.claimed", "--task", "t07", "--json"))
    assert [json.loads(line)["index"] for line in claims.splitlines()] == [30]
    lines = ok(fabric("witness", "log", "--component", "keys")).splitlines()
    assert [line.split()[2] for line in lines] == ["keys/key.added", "keys/agent.enrolled"]
    fabric.kill()
    return fabric, key


def test_a_proof_bundle_verifies_offline_and_a_forged_one_does_not(
    witnessed: tuple[Fabric, str],
) -> None:
    fabric, key = witnessed
    bundle = fabric.data.parent / "bundle.json"
    printed = ok(fabric("witness", "verify-proof", str(bundle), "--key", key))
    assert "verified: entry 24 is in the log of 43 entries" in printed
    document = json.loads(bundle.read_text())
    document["index"] = 25
    forged = fabric.data.parent / "forged.json"
    forged.write_text(json.dumps(document))
    refused = fabric("witness", "verify-proof", str(forged), "--key", key)
    assert refused.returncode == 1
    assert "NOT VERIFIED" in refused.stderr.decode()


def _copy(fabric: Fabric, tmp_path: Path) -> Path:
    """A copy of the data directory to edit (the database checkpointed into one file)."""
    copy = tmp_path / "data"
    subprocess.run(["cp", "-a", str(fabric.data), str(copy)], check=True)
    with sqlite3.connect(copy / "witness.db") as db:
        db.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    return copy


def _edit_entry(db: sqlite3.Connection) -> None:
    (entry,) = db.execute("SELECT entry FROM entries WHERE idx = 17").fetchone()
    db.execute(
        "UPDATE entries SET entry = ? WHERE idx = 17",
        (entry.replace(b'"task_id":"t14"', b'"task_id":"t15"'),),
    )


def _edit_entry_and_leaf(db: sqlite3.Connection) -> None:
    import hashlib

    (entry,) = db.execute("SELECT entry FROM entries WHERE idx = 17").fetchone()
    changed = entry.replace(b'"task_id":"t14"', b'"task_id":"t15"')
    db.execute(
        "UPDATE entries SET entry = ?, leaf = ? WHERE idx = 17",
        (changed, hashlib.sha256(b"\x00" + changed).digest()),
    )


def _edit_entry_as_text(db: sqlite3.Connection) -> None:
    # replace() on a BLOB stores TEXT, which the log must still read as the entry's bytes
    db.execute("UPDATE entries SET entry = replace(entry, '\"t14\"', '\"t15\"') WHERE idx = 17")


def _delete_entry(db: sqlite3.Connection) -> None:
    db.execute("DELETE FROM entries WHERE idx = 17")


def _delete_last_entries(db: sqlite3.Connection) -> None:
    db.execute("DELETE FROM entries WHERE idx >= 37")


def _swap_entries(db: sqlite3.Connection) -> None:
    rows = db.execute("SELECT idx, leaf, entry FROM entries WHERE idx IN (17, 30)").fetchall()
    db.execute("DELETE FROM entries WHERE idx IN (17, 30)")
    (first, first_leaf, first_entry), (second, second_leaf, second_entry) = rows
    db.execute("INSERT INTO entries VALUES (?, ?, ?)", (first, second_leaf, second_entry))
    db.execute("INSERT INTO entries VALUES (?, ?, ?)", (second, first_leaf, first_entry))


@pytest.mark.parametrize(
    ("edit", "first_bad"),
    [
        (_edit_entry, 17),
        (_edit_entry_and_leaf, 17),
        (_edit_entry_as_text, 17),
        (_delete_entry, 17),
        (_delete_last_entries, 37),
        (_swap_entries, 17),
    ],
    ids=[
        "changed",
        "changed-with-its-hash",
        "changed-into-text",
        "deleted",
        "truncated",
        "reordered",
    ],
)
def test_verify_names_the_first_entry_tampered_with(
    witnessed: tuple[Fabric, str],
    tmp_path: Path,
    edit: Callable[[sqlite3.Connection], None],
    first_bad: int,
) -> None:
    fabric, _ = witnessed
    copy = _copy(fabric, tmp_path)
    assert "ok: 43 entries agree with" in ok(fabric("witness", "verify", "--data", str(copy)))
    with sqlite3.connect(copy / "witness.db") as db:
        edit(db)
    result = fabric("witness", "verify", "--data", str(copy))
    assert result.returncode == 1
    reported = int(result.stderr.decode().split("first bad entry ")[1].split()[0])
    if edit is _edit_entry_and_leaf:  # only the tree shows it: named to within its pair
        assert reported in (16, 17)
    else:
        assert reported == first_bad


@pytest.mark.parametrize(
    "edit",
    [
        "INSERT INTO nodes VALUES (-1, 0, x'00')",  # a ValueError before, a traceback
        "INSERT INTO entries VALUES (-1, x'00', x'7b7d')",  # reported as nothing at all
        "DELETE FROM nodes WHERE level = 1 AND idx = 3",  # ok, on a log that cannot prove
    ],
    ids=["row-with-no-level", "row-at-a-negative-index", "subtree-missing"],
)
def test_verify_reports_damage_outside_the_entries_without_blaming_a_checkpoint(
    witnessed: tuple[Fabric, str], tmp_path: Path, edit: str
) -> None:
    fabric, _ = witnessed
    copy = _copy(fabric, tmp_path)
    with sqlite3.connect(copy / "witness.db") as db:
        db.execute(edit)
    result = fabric("witness", "verify", "--data", str(copy))
    assert result.returncode == 1
    stderr = result.stderr.decode()
    assert "Traceback" not in stderr
    assert "TAMPERED" in stderr
    assert "a checkpoint is wrong" not in stderr
    if "DELETE" in edit:
        assert "first bad entry 6" in stderr  # the subtree's first entry
    else:
        assert "damage no single entry shows" in stderr


def test_a_log_truncated_with_its_checkpoints_fails_against_a_saved_checkpoint(
    witnessed: tuple[Fabric, str], tmp_path: Path
) -> None:
    fabric, key = witnessed
    copy = _copy(fabric, tmp_path)
    with sqlite3.connect(copy / "witness.db") as db:
        (note,) = db.execute("SELECT note FROM checkpoints WHERE size = 43").fetchone()
        # what someone who can write the file but not sign does to hide its end
        db.execute("DELETE FROM entries WHERE idx >= 37")
        db.execute("DELETE FROM nodes WHERE (idx + 1) << level > 37")
        db.execute("DELETE FROM checkpoints WHERE size > 37")
    saved = tmp_path / "checkpoint.txt"  # as `ifab witness checkpoint > FILE` saves it
    saved.write_text(f"{note}\nverifier key: {key}\n")
    assert "ok: 37 entries agree" in ok(fabric("witness", "verify", "--data", str(copy)))
    result = fabric("witness", "verify", "--data", str(copy), "--checkpoint", str(saved))
    assert result.returncode == 1
    assert "first bad entry 37" in result.stderr.decode()
    assert "only 37 remain: the log was truncated" in result.stderr.decode()
    intact = ok(fabric("witness", "verify", "--data", str(fabric.data), "--checkpoint", str(saved)))
    assert "and the saved checkpoint of 43" in intact
    saved.write_text(note.replace("\n43\n", "\n44\n"))  # its signature no longer holds
    refused = fabric("witness", "verify", "--data", str(copy), "--checkpoint", str(saved))
    assert refused.returncode == 2
    assert "not a checkpoint signed by this fabric's key" in refused.stderr.decode()


def test_a_damaged_entry_is_shown_as_damaged_by_log_export_and_verify(
    witnessed: tuple[Fabric, str], tmp_path: Path
) -> None:
    import base64
    import csv

    fabric, _ = witnessed
    copy = _copy(fabric, tmp_path)
    with sqlite3.connect(copy / "witness.db") as db:
        db.execute("UPDATE entries SET entry = x'7b7d7b' WHERE idx = 17")  # "{}{": not JSON
    data = ("--data", str(copy))
    lines = ok(fabric("witness", "log", "--start", "16", "--count", "3", *data)).splitlines()
    assert [line.split()[0] for line in lines] == ["16", "17", "18"]
    assert lines[1].split()[1] == "DAMAGED"
    assert lines[1].endswith("raw=e317")
    items = _json_lines(
        ok(fabric("witness", "log", "--start", "17", "--count", "1", "--json", *data))
    )
    assert items[0]["entry"] is None
    assert items[0]["damaged"] is True
    assert base64.b64decode(str(items[0]["raw"])) == b"{}{"
    exported = json.loads(ok(fabric("witness", "export", *data)))
    assert len(exported) == 43
    assert exported[17]["damaged"] is True
    rows = list(
        csv.DictReader(ok(fabric("witness", "export", "--format", "csv", *data)).splitlines())
    )
    assert (rows[17]["damaged"], rows[17]["raw"]) == ("true", "e317")
    assert rows[16]["damaged"] == ""
    verified = fabric("witness", "verify", *data)
    assert verified.returncode == 1
    assert "first bad entry 17" in verified.stderr.decode()


def test_a_key_that_is_not_a_verifier_key_is_a_usage_error(witnessed: tuple[Fabric, str]) -> None:
    fabric, _ = witnessed
    bundle = str(fabric.data.parent / "bundle.json")
    for command in (
        ("verify", "--data", str(fabric.data), "--key", "garbage"),
        ("verify-proof", bundle, "--key", "garbage"),
    ):
        result = fabric("witness", *command)
        assert result.returncode == 2, command
        assert "--key: not a verifier key" in result.stderr.decode()
        assert "TAMPERED" not in result.stderr.decode()


def test_verify_of_a_directory_without_a_log_says_so(witnessed: tuple[Fabric, str]) -> None:
    """It asked for the fabric's key first ("pass --key"), about a log that is not there."""
    fabric, _ = witnessed
    missing = fabric.data.parent / "no-such-fabric"
    result = fabric("witness", "verify", "--data", str(missing))
    assert result.returncode == 1
    assert f"no witness log at {missing / 'witness.db'}" in result.stderr.decode()


def test_verify_proof_reports_input_it_cannot_read(
    witnessed: tuple[Fabric, str], tmp_path: Path
) -> None:
    fabric, key = witnessed
    (tmp_path / "binary.json").write_bytes(b"\xff\xfe\x00garbage")
    (tmp_path / "deep.json").write_text("[" * 100_000 + "]" * 100_000)
    for source, stdin, problem in (
        (str(tmp_path / "missing.json"), b"", "cannot read the bundle"),
        (str(tmp_path), b"", "cannot read the bundle"),
        (str(tmp_path / "binary.json"), b"", "is not UTF-8 text"),
        ("-", b"\xff\xfe", "the bundle stdin is not UTF-8 text"),
    ):
        result = fabric("witness", "verify-proof", source, "--key", key, stdin=stdin)
        assert result.returncode == 2, source
        assert problem in result.stderr.decode(), result.stderr
        assert b"Traceback" not in result.stderr
    deep = fabric("witness", "verify-proof", str(tmp_path / "deep.json"), "--key", key)
    assert deep.returncode == 1
    assert b"NOT VERIFIED: a bundle is a JSON object" in deep.stderr


def test_a_kill_9_during_appends_loses_no_witnessed_decision(tmp_path: Path) -> None:
    fabric = Fabric(tmp_path)
    fabric.start()
    ok(fabric("identity", "new", "lead"))
    ok(fabric("agent", "enroll", "lead"))
    lead = Keystore(fabric.home).unlock("lead", PASS)

    async def add() -> None:  # one decision per message: the witness appends as they come
        async with Client.connect(fabric.url, lead) as agent:
            for number in range(30):
                await agent.create_tasks([{"title": f"task {number}"}])

    asyncio.run(add())
    fabric.kill(signal.SIGKILL)
    # the witness process sees its parent gone, finishes and exits by itself
    deadline = time.monotonic() + 15
    while _holders(fabric.data / "witness.db"):
        assert time.monotonic() < deadline, "the witness process outlived the server"
        time.sleep(0.1)
    with sqlite3.connect(fabric.data / "board.db") as db:
        (events,) = db.execute("SELECT count(*) FROM events").fetchone()
    fabric.start()  # the feeder resumes from its cursor
    deadline = time.monotonic() + 10
    while (size := ok(fabric("witness", "checkpoint")).split("\n")[1]) != str(events):
        assert time.monotonic() < deadline, f"checkpoint at {size}, not {events}"
        time.sleep(0.2)
    fabric.kill()
    assert f"ok: {events} entries agree" in ok(fabric("witness", "verify"))


def test_a_kill_9_of_the_witness_process_itself_mid_stream_loses_nothing(tmp_path: Path) -> None:
    """The process that appends to the log is killed (SIGKILL, no chance to finish its
    round) while decisions stream in, then the server too: after a restart the log
    verifies and holds every event the board kept, once."""
    fabric = Fabric(tmp_path)
    fabric.start()
    ok(fabric("identity", "new", "lead"))
    ok(fabric("agent", "enroll", "lead"))
    lead = Keystore(fabric.home).unlock("lead", PASS)
    assert fabric.process is not None
    server = fabric.process.pid
    witness_db = fabric.data / "witness.db"

    def witness_process() -> int | None:
        appenders = [pid for pid in _holders(witness_db) if pid != server]
        return appenders[0] if appenders else None

    async def stream_then_kill() -> int:
        done = 0
        async with Client.connect(fabric.url, lead) as agent:
            for number in range(20):  # some entries in the log: the appender is at work
                await agent.create_tasks([{"title": f"task {number}"}])
            done = 20
            while witness_process() is None:
                await asyncio.sleep(0.05)
            killed, ended = False, ""
            try:
                for number in range(20, 400):
                    await agent.create_tasks([{"title": f"task {number}"}, {"title": "more"}])
                    done += 1
                    if number == 40:  # mid-stream: the appender has rounds in flight
                        appender = witness_process()
                        assert appender is not None
                        os.kill(appender, signal.SIGKILL)
                        killed = True
                    if number == 80:
                        fabric.kill(signal.SIGKILL)
            except RemoteError as exc:  # the server is gone: the stream ends here
                ended = exc.code
            assert killed
            assert ended
        return done

    acknowledged = asyncio.run(stream_then_kill())
    assert acknowledged > 40
    deadline = time.monotonic() + 15
    while _holders(witness_db):
        assert time.monotonic() < deadline, "a process still holds the witness log"
        time.sleep(0.1)
    with sqlite3.connect(fabric.data / "board.db") as db:
        (events,) = db.execute("SELECT count(*) FROM events").fetchone()
        (tasks,) = db.execute("SELECT count(*) FROM tasks").fetchone()
    assert tasks >= 20 + 2 * (acknowledged - 20)  # every acknowledged creation is there
    fabric.start()  # a new witness process resumes from the cursor the killed one left
    deadline = time.monotonic() + 15
    while (size := ok(fabric("witness", "checkpoint")).split("\n")[1]) != str(events):
        assert time.monotonic() < deadline, f"checkpoint at {size}, not {events}"
        time.sleep(0.2)
    exported = json.loads(ok(fabric("witness", "export", "--format", "json")))
    fabric.kill()
    assert f"ok: {events} entries agree" in ok(fabric("witness", "verify"))
    created = [
        item["entry"]["task_id"] for item in exported if item["entry"]["event"] == "task.created"
    ]
    assert len(created) == len(set(created)) == tasks  # each witnessed once: none lost


def _holders(path: Path) -> list[int]:
    """Processes that have ``path`` open (Linux /proc)."""
    found = []
    for fd_dir in Path("/proc").glob("[0-9]*/fd"):
        try:
            if any(Path(link).resolve() == path.resolve() for link in fd_dir.iterdir()):
                found.append(int(fd_dir.parent.name))
        except OSError:  # gone meanwhile, or not ours to read
            continue
    return found


@pytest.fixture(scope="module")
def costed(tmp_path_factory: pytest.TempPathFactory) -> Fabric:
    """A data directory whose witness holds a traced job with reported usage (made by
    agents over the SDK, against a server that has stopped since)."""
    import asyncio

    from infrafabric.client import Client
    from infrafabric.server.runner import open_server, run_server
    from tests.server.conftest import Fabric as ServerFabric

    fabric = Fabric(tmp_path_factory.mktemp("costed"))
    state = open_server(fabric.data, synchronous="NORMAL")
    with run_server(state) as server:
        served = ServerFabric(server, state.sessions.admin_token)
        alice, bob = served.enroll("alice"), served.enroll("bob")

        async def job() -> None:
            async with Client.connect(server.url, alice) as a, Client.connect(server.url, bob) as b:
                with Client.trace("job-1"):
                    await a.create_tasks([{"id": "a", "title": "A"}, {"id": "b", "title": "B"}])
                    await a.claim("a")
                    await a.complete(
                        "a",
                        usage={"tokens_in": 1000, "tokens_out": 200, "model": "big", "usd": 0.5},
                    )
                    await b.claim("b")
                    await b.progress(
                        "b", 50, usage={"tokens_in": 10, "model": "small", "usd": 0.01}
                    )
                    await b.complete(
                        "b", usage={"tokens_in": 30, "tokens_out": 5, "model": "small", "usd": 0.02}
                    )
                await a.create_task("C", id="c")
                await a.claim("c")
                await a.fail("c", "no luck", usage={"tokens_in": 7, "model": "small", "usd": 0.25})

        asyncio.run(job())
    return fabric  # closing the server witnessed everything and signed a last checkpoint


def _json_lines(text: str) -> list[dict[str, object]]:
    return [json.loads(line) for line in text.splitlines()]


def test_log_filters_read_offline_from_the_data_directory(costed: Fabric) -> None:
    data = ("--data", str(costed.data))
    completed = _json_lines(
        ok(costed("witness", "log", "--event", "task.completed", "--json", *data))
    )
    assert [(i["entry"]["task_id"], i["entry"]["actor"]) for i in completed] == [  # type: ignore[index]
        ("a", "if://agent/alice"),
        ("b", "if://agent/bob"),
    ]
    by_bob = ok(costed("witness", "log", "--actor", "bob", *data)).splitlines()
    assert len(by_bob) == 3
    assert all("by=if://agent/bob" in line for line in by_bob)
    assert "cost=30+5 tokens $0.0200 small" in by_bob[-1]
    everything = _json_lines(ok(costed("witness", "log", "--count", "1000", "--json", *data)))
    # 2 keys, 2 enrollments, 2 registrations with the governor, 10 board decisions, and
    # the governor's 4 charges and 1 reputation update (the failure; successes keep 1.0)
    assert len(everything) == 21
    assert ok(costed("witness", "log", "--since", "1h", "--count", "1000", *data)).count("\n") == 21
    assert ok(costed("witness", "log", "--until", "2020-01-01", *data)) == ""
    refused = costed("witness", "log", "--since", "yesterday", *data)
    assert refused.returncode == 2
    assert b"--since: 'yesterday' is not a time" in refused.stderr
    assert ok(costed("witness", "log", "--since", "1h ago", *data)).count("\n") == 21
    before_the_year_1 = costed("witness", "log", "--until", "99999999d", *data)
    assert before_the_year_1.returncode == 2
    assert b"--until: '99999999d' is not a time" in before_the_year_1.stderr
    assert b"Traceback" not in before_the_year_1.stderr


def test_trace_follows_one_job_and_totals_what_it_cost(costed: Fabric) -> None:
    printed = ok(costed("witness", "trace", "job-1", "--data", str(costed.data))).splitlines()
    events = [line.split()[2] for line in printed[:-1]]
    assert events == [  # the governor's decisions carry the trace of what caused them
        "board/task.created",
        "board/task.created",
        "board/task.claimed",
        "board/task.completed",
        "governor/usage.charged",
        "board/task.claimed",
        "board/task.progress",
        "governor/usage.charged",
        "board/task.completed",
        "governor/usage.charged",
    ]
    assert printed[-1] == "10 decisions; 1040 tokens in, 205 out, $0.5300"
    missing = costed("witness", "trace", "job-2", "--data", str(costed.data))
    assert missing.returncode == 1
    assert b"no witnessed decision carries trace job-2" in missing.stderr


def test_cost_totals_by_agent_and_model(costed: Fabric) -> None:
    report = json.loads(ok(costed("witness", "cost", "--json", "--data", str(costed.data))))
    rows = {(row["agent"], row["model"]): row for row in report["by_agent_and_model"]}
    assert set(rows) == {
        ("if://agent/alice", "big"),
        ("if://agent/alice", "small"),
        ("if://agent/bob", "small"),
    }
    assert rows[("if://agent/bob", "small")] == {
        "agent": "if://agent/bob",
        "model": "small",
        "entries": 2,
        "tokens_in": 40,
        "tokens_out": 5,
        "usd": pytest.approx(0.03),
    }
    assert rows[("if://agent/alice", "small")]["usd"] == pytest.approx(0.25)  # the failed task
    assert report["total"]["tokens_in"] == 1047
    assert report["total"]["usd"] == pytest.approx(0.78)
    table = ok(costed("witness", "cost", "--data", str(costed.data)))
    assert "total" in table
    assert "0.7800" in table


def test_export_writes_every_entry_as_json_or_csv(costed: Fabric, tmp_path: Path) -> None:
    import csv

    data = ("--data", str(costed.data))
    ok(costed("witness", "export", "--format", "json", "-o", str(tmp_path / "log.json"), *data))
    exported = json.loads((tmp_path / "log.json").read_text())
    assert exported == _json_lines(ok(costed("witness", "log", "--count", "1000", "--json", *data)))
    printed = ok(costed("witness", "export", "--format", "csv", *data))
    rows = list(csv.DictReader(printed.splitlines()))
    assert [int(row["index"]) for row in rows] == list(range(21))
    assert [row["leaf"] for row in rows] == [item["leaf"] for item in exported]
    failed = next(row for row in rows if row["event"] == "task.failed")
    assert (failed["tokens_in"], failed["usd"], failed["model"]) == ("7", "0.25", "small")
    assert json.loads(failed["payload"])["state"] == "available"
    wrong = costed("witness", "export", "--format", "xml", *data)
    assert wrong.returncode == 2
    nowhere = costed("witness", "export", "-o", str(tmp_path / "no" / "such.csv"), *data)
    assert nowhere.returncode == 1
    assert b"cannot write" in nowhere.stderr
    assert b"Traceback" not in nowhere.stderr


def test_csv_cells_that_would_start_a_formula_are_written_as_text() -> None:
    """An agent chooses its model name, task ids and trace ids: written as they were, a
    spreadsheet opening the export ran ``=HYPERLINK(...)`` as a formula."""
    import csv
    import io

    from infrafabric.cli.witness import _write_csv

    entry = {
        "at": "2026-12-04T16:00:00.000Z",
        "component": "board",
        "event": "task.completed",
        "actor": "if://agent/a",
        "task_id": "-1+2",
        "trace_id": "@SUM(A1)",
        "cost": {
            "tokens_in": 5,
            "tokens_out": 0,
            "usd": 1.5,
            "model": '=HYPERLINK("http://x","y")',
        },
        "payload": {},
    }
    out = io.StringIO()
    assert _write_csv(out, [{"index": 0, "leaf": "ab", "entry": entry}]) == 1
    [row] = list(csv.DictReader(out.getvalue().splitlines()))
    assert row["model"] == '\'=HYPERLINK("http://x","y")'
    assert (row["task_id"], row["trace_id"]) == ("'-1+2", "'@SUM(A1)")
    assert (row["tokens_in"], row["usd"], row["actor"]) == ("5", "1.5", "if://agent/a")


@pytest.mark.parametrize(
    "command", [("export", "--format", "csv"), ("log", "--json")], ids=["export", "log"]
)
def test_output_to_a_reader_that_stopped_reading_ends_quietly(
    costed: Fabric, command: tuple[str, ...]
) -> None:
    """``ifab witness export | head``: once the reader has gone, the command stops without
    an error line or a traceback (before: "error: cannot write None: Broken pipe")."""
    assert IFAB is not None
    reader, writer = os.pipe()
    os.close(reader)  # nobody will read: the first write fails with EPIPE
    try:
        ended = subprocess.run(
            [IFAB, "witness", *command, "--data", str(costed.data)],
            stdout=writer, stderr=subprocess.PIPE, env=costed.env(), timeout=60, check=False,
        )  # fmt: skip
    finally:
        os.close(writer)
    assert ended.returncode == 1
    assert ended.stderr == b""
