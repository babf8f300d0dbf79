"""The worker's optional API token: with `api_token` set, every request but the dashboard's page and
files needs `Authorization: Bearer <token>`, else 401 with `WWW-Authenticate: Bearer`.

An aiohttp middleware (Faust's web driver is aiohttp; `web_application_options` hands it to the
`aiohttp.web.Application`), so it sees every request before any view, and it decides by the route the
request matched, not by its path: what is open is named (`OPEN_ROUTES`), everything else, a view
added later and a path that matches nothing included, needs the token. The token is compared with
`hmac.compare_digest`, so the time taken does not tell how much of a guess was right.

aiohttp is imported where it is used: `auth_headers` serves clients (server/process.py) too.
"""

from __future__ import annotations

import hmac
import json
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from aiohttp import web

OPEN_ROUTES = frozenset({"/", "/dashboard/{name}", "/dashboard/vendor/{name}"})
"""The routes (aiohttp's canonical form of the path pattern) served without the token: the dashboard's
redirect, page and files (server/web.py), which hold no data; the page then sends the token itself."""
REALM = "ferry-worker"

Handler = Callable[["web.Request"], Awaitable["web.StreamResponse"]]


def bearer_token(header: str | None) -> str | None:
    """The credentials of an `Authorization: Bearer <token>` header (the scheme in any case), else None."""
    if not header:
        return None
    scheme, _, credentials = header.strip().partition(" ")
    credentials = credentials.strip()
    return credentials if scheme.lower() == "bearer" and credentials else None


def token_matches(given: str, expected: str) -> bool:
    return hmac.compare_digest(given.encode("utf-8", "surrogateescape"), expected.encode("utf-8"))


def is_open(request: web.Request) -> bool:
    """Whether the route `request` matched is one of `OPEN_ROUTES` (a request matching none is not)."""
    resource = request.match_info.route.resource
    return resource is not None and resource.canonical in OPEN_ROUTES


def unauthorized(error: str | None) -> web.Response:
    """401, with the challenge RFC 6750 names (`error="invalid_token"` when a token was given but is wrong)."""
    from aiohttp import web

    challenge = f'Bearer realm="{REALM}"' + (f', error="{error}"' if error else "")
    message = "this worker needs 'Authorization: Bearer <token>' (its api_token)" if error is None \
        else "the bearer token is not this worker's api_token"
    return web.Response(status=401, body=json.dumps({"error": message}).encode(),
                        headers={"WWW-Authenticate": challenge, "Content-Type": "application/json",
                                 "Cache-Control": "no-store"})


def token_middleware(token: str) -> Callable[[web.Request, Handler], Awaitable[web.StreamResponse]]:
    """The aiohttp middleware that asks every request outside `OPEN_ROUTES` for `token`."""
    from aiohttp import web

    if not token:
        raise ValueError("token_middleware needs a token")

    @web.middleware
    async def require_token(request: web.Request, handler: Handler) -> web.StreamResponse:
        if is_open(request):
            return await handler(request)
        given = bearer_token(request.headers.get("Authorization"))
        if given is None:
            return unauthorized(None)
        if not token_matches(given, token):
            return unauthorized("invalid_token")
        return await handler(request)

    return require_token


def auth_headers(token: str) -> dict[str, str]:
    """What a request to another worker of the app carries: the same token (every worker has it)."""
    return {"Authorization": f"Bearer {token}"} if token else {}
