"""The live web dashboard at ``/``: static files and the operator's login.

The page (``ui/index.html``, ``ui/app.js``, ``ui/style.css``, served from the package:
no build step, no CDN) reads the same REST routes as the SDK and follows the fabric's
events over the WebSocket. It signs in with the operator's admin token, typed into a
form or passed once in the URL fragment (``/#token=...``, which never reaches a server
log): ``POST /v1/dashboard/login`` checks it and answers with an HttpOnly, SameSite=Strict
cookie holding a 12-hour operator session (a MAC, not the token). The cookie opens reads
(``GET``) and the WebSocket from a page of this server only; every change still needs
a signed message or the admin token itself, so a forged cross-site request can do nothing.
"""

from __future__ import annotations

import importlib.resources
from typing import TYPE_CHECKING, Final

import msgspec
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from infrafabric.server.auth import OPERATOR_SESSION_SECONDS
from infrafabric.server.bodies import json_body
from infrafabric.service import ServiceError

if TYPE_CHECKING:
    from infrafabric.server.app import ServerState

__all__ = ["dashboard_routes"]

#: The files of the page, by the name the page asks for, and their media types.
ASSETS: Final = {
    "app.js": "text/javascript; charset=utf-8",
    "style.css": "text/css; charset=utf-8",
    "verify.js": "text/javascript; charset=utf-8",
}
#: What the page may load and reach: itself and its own WebSocket, nothing else.
SECURITY_HEADERS: Final = {
    "content-security-policy": (
        "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
        "connect-src 'self' ws: wss:; form-action 'self'; frame-ancestors 'none'; "
        "base-uri 'none'"
    ),
    "x-content-type-options": "nosniff",
    "referrer-policy": "no-referrer",
    "cache-control": "no-store",
}


class _Login(msgspec.Struct, forbid_unknown_fields=True):
    token: str


def dashboard_routes(state: ServerState, cookie: str) -> list[Route]:
    """``/``, ``/ui/{name}``, ``POST /v1/dashboard/login`` and ``/logout``."""

    async def page(request: Request) -> Response:
        return Response(_asset("index.html"), 200, SECURITY_HEADERS, "text/html; charset=utf-8")

    async def asset(request: Request) -> Response:
        name = request.path_params["name"]
        if name not in ASSETS:
            return _refusal("NOT_FOUND", f"no file {name!r}", 404)
        return Response(_asset(name), 200, SECURITY_HEADERS, ASSETS[name])

    async def login(request: Request) -> Response:
        try:  # read with a bound: anyone may post here, before signing in
            body = await json_body(request, _Login)
        except ServiceError as exc:
            return _refusal(exc.code, exc.detail, exc.status)
        if not state.sessions.is_admin(body.token):
            return _refusal("UNAUTHENTICATED", "that is not this fabric's operator token", 401)
        response = Response(b'{"ok":true}', 200, media_type="application/json")
        response.set_cookie(
            cookie,
            state.sessions.operator_session(state.clock()),
            max_age=int(OPERATOR_SESSION_SECONDS),
            httponly=True,
            samesite="strict",
            secure=request.url.scheme == "https",
        )
        return response

    async def logout(request: Request) -> Response:
        response = Response(b'{"ok":true}', 200, media_type="application/json")
        response.delete_cookie(cookie, httponly=True, samesite="strict")
        return response

    return [
        Route("/", page, methods=["GET"]),
        Route("/ui/{name}", asset, methods=["GET"]),
        Route("/v1/dashboard/login", login, methods=["POST"]),
        Route("/v1/dashboard/logout", logout, methods=["POST"]),
    ]


def _asset(name: str) -> bytes:
    return importlib.resources.files("infrafabric.server").joinpath("ui", name).read_bytes()


def _refusal(code: str, detail: str, status: int) -> Response:
    body = msgspec.json.encode({"error": {"code": code, "detail": detail}})
    return Response(body, status, media_type="application/json")
