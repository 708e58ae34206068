"""The ``/mcp`` route of the fabric application, built on its first request.

Importing the MCP SDK takes most of a second; every ``ifab`` command and embedded fabric
builds the application, and most never serve MCP. This stand-in imports it (in a
thread, so the event loop keeps serving) and starts :class:`.http.McpEndpoint` when the
first request to ``/mcp`` arrives.
"""

from __future__ import annotations

import asyncio
import importlib
from typing import TYPE_CHECKING

from starlette.types import ASGIApp, Receive, Scope, Send

if TYPE_CHECKING:
    from infrafabric.bridges.mcp.http import McpEndpoint
    from infrafabric.server.app import ServerState

__all__ = ["McpRoute"]


class McpRoute:
    """An ASGI app for ``/mcp``; set :attr:`fabric_app` to the application it serves in."""

    def __init__(self, state: ServerState) -> None:
        self._state = state
        self.fabric_app: ASGIApp | None = None
        self._endpoint: McpEndpoint | None = None
        self._starting = asyncio.Lock()

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        endpoint = self._endpoint or await self._start()
        await endpoint(scope, receive, send)

    async def close(self) -> None:
        if self._endpoint is not None:
            await self._endpoint.close()
            self._endpoint = None

    async def _start(self) -> McpEndpoint:
        async with self._starting:
            if self._endpoint is None:
                assert self.fabric_app is not None, "McpRoute.fabric_app is set by create_app"
                module = await asyncio.to_thread(
                    importlib.import_module, "infrafabric.bridges.mcp.http"
                )
                endpoint: McpEndpoint = module.McpEndpoint(self._state, self.fabric_app)
                await endpoint.start()
                self._endpoint = endpoint
            return self._endpoint
