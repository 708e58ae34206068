"""The dashboard in a real browser (Debian's Chromium, headless) against a real server:
sign in, watch the board move as agents work through the SDK, watch an agent fall
silent, verify a witness entry in the browser, and be refused with a bad token."""

from __future__ import annotations

import contextlib
import re
import sqlite3
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from playwright.sync_api import Page, expect

from infrafabric.client import SyncClient
from tests.server.conftest import Fabric

SECOND = 1000  # Playwright counts milliseconds


def sign_in(page: Page, fabric: Fabric, token: str | None = None) -> None:
    page.goto(fabric.url)
    expect(page.locator("#login")).to_be_visible()
    expect(page.locator("#tabs")).to_be_hidden()
    page.fill("#token", token or fabric.admin)
    page.click("#login button[type=submit]")
    if token is None:
        expect(page.locator("#login")).to_be_hidden()
        expect(page.locator("#tabs")).to_be_visible()


def as_agent(fabric: Fabric, name: str, work: Callable[[Any], Any], *caps: str) -> Any:
    """Run ``work(client)`` for a freshly enrolled agent ``name`` on a thread of its own
    (Playwright's synchronous API owns this one)."""
    identity = fabric.enroll(name, caps)
    result: list[Any] = []

    def run() -> None:
        with SyncClient.connect(fabric.url, identity) as client:
            result.append(work(client))

    thread = threading.Thread(target=run)
    thread.start()
    thread.join(timeout=30)
    return result[0]


def card(page: Page, column: str, task: str) -> Any:
    return page.locator(f'[data-column="{column}"] [data-task="{task}"]')


def test_a_bad_token_is_refused(fabric: Fabric, page: Page) -> None:
    sign_in(page, fabric, token="not-the-token")
    expect(page.locator("#login-error")).to_contain_text("Refused")
    expect(page.locator("#board")).to_be_hidden()
    reply = page.request.get(f"{fabric.url}/v1/tasks")
    assert reply.status == 401  # no session cookie was given


def test_the_board_moves_live_as_agents_work(fabric: Fabric, page: Page) -> None:
    sign_in(page, fabric)
    expect(page.locator("#live")).to_have_text("live", timeout=5 * SECOND)
    as_agent(fabric, "lead", lambda c: c.create_task("Build the API", id="api", priority=80))
    expect(card(page, "available", "api")).to_be_visible(timeout=SECOND)
    identity = fabric.enroll("coder")
    holder: dict[str, Any] = {}
    done = threading.Event()
    go = threading.Event()

    def work() -> None:
        with SyncClient.connect(fabric.url, identity) as client:
            holder["claimed"] = client.claim("api")
            go.wait(10)
            client.progress("api", 50, "half way")
            go.clear()
            done.set()

    thread = threading.Thread(target=work)
    thread.start()
    expect(card(page, "claimed", "api")).to_be_visible(timeout=SECOND)
    expect(card(page, "claimed", "api")).to_contain_text("coder")
    expect(card(page, "claimed", "api").locator(".lease")).to_have_text(re.compile(r"lease \d+ s"))
    go.set()
    assert done.wait(10)
    thread.join(10)
    progressing = card(page, "in_progress", "api")
    expect(progressing).to_be_visible(timeout=SECOND)
    expect(progressing.locator("progress")).to_have_attribute("value", "50")
    page.click("#tabs button[data-view=events]")
    expect(page.locator("#events")).to_contain_text("task.claimed api by coder")


def test_every_page_of_the_board_is_shown(
    fabric: Fabric, page: Page, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The server answers the board a page at a time; the dashboard reads every page."""
    from infrafabric.server import app

    monkeypatch.setattr(app, "MAX_TASK_PAGE", 2)
    ids = [f"t{i}" for i in range(5)]
    as_agent(fabric, "lead", lambda c: c.create_tasks([{"id": i, "title": i} for i in ids]))
    sign_in(page, fabric)
    for task in ids:
        expect(card(page, "available", task)).to_be_visible(timeout=5 * SECOND)


def test_a_next_page_that_does_not_move_on_stops_the_reading(fabric: Fabric, page: Page) -> None:
    """A reply whose ``next`` repeats (a broken proxy, say) would have the dashboard ask
    for the same page for ever: it stops and says why."""
    asked: list[str] = []

    def same_page(route: Any) -> None:
        asked.append(route.request.url)
        route.fulfill(json={"tasks": [], "next": "t1"})

    page.route("**/v1/tasks?*", same_page)
    page.goto(fabric.url)
    page.fill("#token", fabric.admin)
    page.click("#login button[type=submit]")
    expect(page.locator("#login-error")).to_contain_text("MALFORMED", timeout=5 * SECOND)
    # each reading (at load, with no session yet, and at sign-in) asked twice, then stopped
    first, second = (
        f"{fabric.url}/v1/tasks?limit=5000",
        f"{fabric.url}/v1/tasks?limit=5000&after=t1",
    )
    assert len(asked) in (2, 4)
    assert asked == [first, second] * (len(asked) // 2)


def test_an_agent_turns_yellow_when_it_falls_silent(fabric: Fabric, page: Page) -> None:
    sign_in(page, fabric)
    expect(page.locator("#live")).to_have_text("live", timeout=5 * SECOND)
    as_agent(
        fabric,
        "quiet",
        lambda c: [c.create_task("Anything", id="t1"), c.claim("t1")],
        "code:python",
    )  # a claim is a heartbeat: the fabric has heard from it
    page.click("#tabs button[data-view=agents]")
    row = page.locator('[data-agent="if://agent/quiet"]')
    expect(row).to_have_class("green", timeout=SECOND)  # it just spoke
    expect(row).to_have_class("yellow", timeout=3 * SECOND)  # one quiet second later
    expect(row).to_contain_text("code:python")


def test_a_witness_entry_is_verified_in_the_browser(fabric: Fabric, page: Page) -> None:
    as_agent(fabric, "alice", lambda c: c.create_task("Witnessed", id="w1"))
    time.sleep(1.5)  # the witness signs a checkpoint within a second
    sign_in(page, fabric)
    page.click("#tabs button[data-view=witness]")
    expect(page.locator("#checkpoint")).to_contain_text("Latest checkpoint")
    page.locator("#entries button").first.click()
    expect(page.locator("#verdict")).to_contain_text("Verified in your browser", timeout=5 * SECOND)
    # a bundle whose entry was changed is refused by the same code in the page
    verdict = page.evaluate(
        """async () => {
            const bundle = await (await fetch('/v1/witness/proof?index=0')).json();
            const key = (await (await fetch('/v1/witness/checkpoint')).json()).key;
            bundle.entry = btoa(atob(bundle.entry) + ' ');  // one byte more
            try { await window.IfabVerify.verifyBundle(bundle, key); return 'accepted'; }
            catch (error) { return error.message; }
        }"""
    )
    assert verdict == "the proof leads to a different root"


def test_a_damaged_witness_entry_shows_as_damaged(
    fabric: Fabric, page: Page, tmp_path: Path
) -> None:
    """The entries route lists an entry that is not a witness entry with ``entry: null``;
    the page read ``found.entry.event`` and failed to draw the table."""
    as_agent(fabric, "alice", lambda c: c.create_tasks([{"id": "w1", "title": "W"}]))
    time.sleep(1.5)  # the witness signs a checkpoint within a second
    with contextlib.closing(sqlite3.connect(tmp_path / "data" / "witness.db")) as witness:
        witness.execute("UPDATE entries SET entry = x'7b7d7b' WHERE idx = 0")  # edited by hand
        witness.commit()
    sign_in(page, fabric)
    page.click("#tabs button[data-view=witness]")
    expect(page.locator("#checkpoint")).to_contain_text("Latest checkpoint")
    expect(page.locator("#entries tbody")).to_contain_text("DAMAGED", timeout=5 * SECOND)


def test_the_token_in_the_fragment_signs_in_once_and_leaves_the_address(
    fabric: Fabric, page: Page
) -> None:
    page.goto(f"{fabric.url}/#token={fabric.admin}")
    expect(page.locator("#board")).to_be_visible()
    assert "token" not in page.url
    cookie = next(c for c in page.context.cookies() if c["name"] == "ifab_operator")
    assert cookie["httpOnly"] is True
    assert cookie["sameSite"] == "Strict"
    assert fabric.admin not in cookie["value"]
    page.click("#logout")
    expect(page.locator("#login")).to_be_visible()


def test_phone_screens_and_dark_themes_are_readable(fabric: Fabric, page: Page) -> None:
    as_agent(fabric, "lead", lambda c: c.create_task("A task", id="t1"))
    page.set_viewport_size({"width": 390, "height": 844})
    page.emulate_media(color_scheme="dark")
    sign_in(page, fabric)
    column = page.locator('[data-column="available"]')
    expect(column.locator('[data-task="t1"]')).to_be_visible()
    box = column.bounding_box()
    assert box is not None
    assert box["width"] <= 390  # one column a row: nothing off screen to the side
    background = page.evaluate("getComputedStyle(document.body).backgroundColor")
    red, green, blue = (int(n) for n in re.findall(r"\d+", background)[:3])
    assert red + green + blue < 150  # dark


def test_the_page_loads_nothing_from_elsewhere(fabric: Fabric, page: Page) -> None:
    requested: list[str] = []
    page.on("request", lambda request: requested.append(request.url))
    sign_in(page, fabric)
    expect(page.locator("#board")).to_be_visible()
    assert requested
    assert all(url.startswith((fabric.url, "ws://")) for url in requested)
    policy = page.request.get(fabric.url).headers["content-security-policy"]
    assert "default-src 'none'" in policy


def test_the_budgets_view_charts_spend_since_the_first_costed_step(
    fabric: Fabric, page: Page
) -> None:
    def spend(client: Any) -> None:
        for n, usd in enumerate((0.25, 0.5)):
            client.create_task("Costly", id=f"c{n}")
            client.claim(f"c{n}")
            client.complete(f"c{n}", {"ok": True}, usage={"usd": usd, "model": "m"})

    as_agent(fabric, "spender", spend)
    time.sleep(1.5)  # the witness takes the costs within a second
    sign_in(page, fabric)
    page.click("#tabs button[data-view=budgets]")
    expect(page.locator("#spend-chart text")).to_have_text("$0.7500 spent so far")
    points = page.locator("#spend-chart polyline").get_attribute("points")
    assert points is not None
    assert len(points.split()) >= 3  # two costed steps from the witness, then the report
    expect(page.locator("#budgets")).to_contain_text("spender")


def test_mesh_links_and_their_quality_show_when_peers_report(fabric: Fabric, page: Page) -> None:
    sign_in(page, fabric)
    page.click("#tabs button[data-view=agents]")
    expect(page.locator("#mesh")).to_be_hidden()  # no mesh: no table
    expect(page.locator("#live")).to_have_text("live", timeout=5 * SECOND)
    report = {
        "members": 2,
        "links": [
            {"peer": "if://agent/peer-b", "band": "poor", "rtt_ms": 180.0, "loss_percent": 12.0,
             "relay": True},
        ],
    }  # fmt: skip
    as_agent(fabric, "peer-a", lambda client: client.mesh_report(report))
    row = page.locator('#mesh-links tr[data-link="if://agent/peer-a if://agent/peer-b"]')
    expect(row).to_be_visible(timeout=5 * SECOND)  # live, from the report's topic
    expect(row).to_have_class("band-poor")
    expect(row).to_contain_text("relay")
    expect(row).to_contain_text("180.0")
    page.reload()  # and from /v1/mesh on a fresh load
    page.click("#tabs button[data-view=agents]")
    expect(row).to_contain_text("12 %")
