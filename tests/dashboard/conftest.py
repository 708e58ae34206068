"""A real server with short health thresholds, and Debian's headless Chromium driven by
Playwright (the system browser: nothing is downloaded)."""

from __future__ import annotations

import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from playwright.sync_api import Browser, Page, sync_playwright

from infrafabric.board.rules import BoardConfig
from infrafabric.server.runner import open_server, run_server
from tests.server.conftest import Fabric

ARTIFACTS = Path(__file__).parents[1] / "artifacts"
CHROMIUM = shutil.which("chromium")
#: Agents turn yellow after one quiet second here, so a test can watch it happen.
CONFIG = BoardConfig(healthy_within=1.0, alive_within=120.0)


@pytest.fixture
def fabric(tmp_path: Path) -> Iterator[Fabric]:
    state = open_server(tmp_path / "data", synchronous="NORMAL", config=CONFIG)
    with run_server(state) as server:
        yield Fabric(server, state.sessions.admin_token)


@pytest.fixture(scope="module")
def browser() -> Iterator[Browser]:
    """Playwright's synchronous API keeps an event loop running in this thread while it
    is open (``asyncio.run`` fails meanwhile): closed with the module, before the tests
    that need ``asyncio.run``."""
    assert CHROMIUM is not None, "chromium is missing: `make test` installs Debian's"
    with sync_playwright() as playwright:
        launched = playwright.chromium.launch(
            executable_path=CHROMIUM, args=["--headless", "--no-sandbox", "--disable-gpu"]
        )
        yield launched
        launched.close()


@pytest.fixture
def page(browser: Browser, request: pytest.FixtureRequest) -> Iterator[Page]:
    context = browser.new_context(viewport={"width": 1400, "height": 900})
    opened = context.new_page()
    errors: list[Any] = []
    opened.on("pageerror", lambda error: errors.append(error))
    yield opened
    ARTIFACTS.mkdir(exist_ok=True)
    opened.screenshot(path=str(ARTIFACTS / f"{request.node.name}.png"), full_page=True)
    context.close()
    assert not errors, f"the page raised: {errors}"
