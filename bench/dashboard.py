"""Dashboard update latency (issue 8): from a claim made through the SDK to the card in
the browser's Claimed column, beside the same event reaching a plain WebSocket client.

A real server runs in this process; Debian's Chromium (headless, through Playwright)
shows the dashboard; an operator WebSocket client on a thread of its own records when
each ``task.claimed`` event arrives. The page stamps the moment the card appears with a
MutationObserver (``Date.now()``, the same wall clock as Python's ``time.time()``), so
the figure does not include Playwright's own polling.
"""

from __future__ import annotations

import asyncio
import json
import shutil
import sys
import tempfile
import threading
import time
from pathlib import Path

import websockets.asyncio.client
from playwright.sync_api import sync_playwright

from claims import milliseconds_row, render
from infrafabric.client import SyncClient
from infrafabric.server.runner import open_server, run_server

sys.path.insert(0, str(Path(__file__).parents[1]))
from tests.harness import enroll

ARM = """task => {
  window.__seen = null;
  const observer = new MutationObserver(() => {
    if (document.querySelector(`[data-column="claimed"] [data-task="${task}"]`)) {
      window.__seen = Date.now(); observer.disconnect();
    }
  });
  observer.observe(document.body, {childList: true, subtree: true});
}"""


def _listen(url: str, token: str, arrived: dict[str, float], ready: threading.Event) -> None:
    async def run() -> None:
        ws = url.replace("http://", "ws://") + f"/v1/ws?token={token}"
        async with websockets.asyncio.client.connect(ws) as socket:
            await socket.send(json.dumps({"type": "subscribe", "topics": ["if://topic/board/**"]}))
            ready.set()
            async for text in socket:
                frame = json.loads(text)
                event = frame.get("event") or {}
                if event.get("kind") == "task.claimed":
                    arrived[event["task_id"]] = time.time()
                if event.get("task_id") == "stop":
                    return

    asyncio.run(run())


def main(quick: bool = False) -> None:
    count = 10 if quick else 40
    chromium = shutil.which("chromium")
    print("\nDashboard: a claim through the SDK to its card in the browser (one server, 2 cores)")
    if chromium is None:
        print("  chromium is not installed (`make test` installs it): skipped")
        return
    browser_ms: list[float] = []
    socket_ms: list[float] = []
    with tempfile.TemporaryDirectory() as directory:
        state = open_server(Path(directory) / "data", synchronous="NORMAL")
        with run_server(state) as server, sync_playwright() as playwright:
            admin = state.sessions.admin_token
            agent = enroll(server.url, admin, "bench")
            arrived: dict[str, float] = {}
            ready = threading.Event()
            listener = threading.Thread(target=_listen, args=(server.url, admin, arrived, ready))
            listener.start()
            ready.wait(10)
            browser = playwright.chromium.launch(
                executable_path=chromium, args=["--headless", "--no-sandbox", "--disable-gpu"]
            )
            page = browser.new_page()
            page.goto(f"{server.url}/#token={admin}")
            page.wait_for_selector("#live.on")
            with SyncClient.connect(server.url, agent) as client:
                for n in range(count):
                    task = f"t{n:03d}"
                    client.create_task("x", id=task)
                    page.wait_for_selector(f'[data-column="available"] [data-task="{task}"]')
                    page.evaluate(ARM, task)
                    start = time.time()
                    client.claim(task)
                    page.wait_for_function("() => window.__seen !== null")
                    browser_ms.append(page.evaluate("window.__seen") / 1000 - start)
                    deadline = time.monotonic() + 5
                    while task not in arrived and time.monotonic() < deadline:
                        time.sleep(0.001)
                    socket_ms.append(arrived[task] - start)
                client.create_task("x", id="stop")
            listener.join(10)
            browser.close()
    rows = [
        milliseconds_row(name, samples)
        for name, samples in (
            ("event on a plain WebSocket client (baseline)", socket_ms),
            ("card moved in the browser's board", browser_ms),
        )
    ]
    print(render(rows))


if __name__ == "__main__":
    main(quick="--quick" in sys.argv)
