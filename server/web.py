"""The dashboard's files, served by the worker itself so the page works offline (no CDN).

Only the files in `server/dashboard/` and its `vendor/` subfolder (the chart
library that `make install` copies in, see ferry/npm_vendor.py) with a known
type are served; anything else is a 404, so no path can reach outside that folder.
"""

from __future__ import annotations

from pathlib import Path

import faust
from faust.web import Request, Response, View

DASHBOARD_DIR = Path(__file__).resolve().parent / "dashboard"
CONTENT_TYPES = {".html": "text/html; charset=utf-8", ".js": "text/javascript; charset=utf-8",
                 ".css": "text/css; charset=utf-8", ".svg": "image/svg+xml", ".png": "image/png"}
SUBFOLDERS = frozenset({"vendor"})


def dashboard_file(name: str) -> tuple[bytes, str] | None:
    """(content, content type) of `server/dashboard/<name>`, or None if it is not a servable file.

    `name` is a file name, or `vendor/<file name>`; no part may be empty or start with a dot, and
    the resolved file (after symlinks) must still lie inside the dashboard folder.
    """
    parts = name.split("/")
    if len(parts) > 2 or (len(parts) == 2 and parts[0] not in SUBFOLDERS):
        return None
    if any(not part or part.startswith(".") or "\\" in part or "\0" in part for part in parts):
        return None
    path = DASHBOARD_DIR.joinpath(*parts)
    kind = CONTENT_TYPES.get(path.suffix)
    if kind is None:
        return None
    try:
        inside = path.resolve().is_relative_to(DASHBOARD_DIR.resolve())
        return (path.read_bytes(), kind) if inside and path.is_file() else None
    except OSError:
        return None


def file_headers(kind: str) -> dict[str, str]:
    """Headers of a served dashboard file: its type, and revalidate on every load (no stale page after an upgrade)."""
    return {"Content-Type": kind, "Cache-Control": "no-cache", "X-Content-Type-Options": "nosniff"}


def register_dashboard(app: faust.App) -> None:
    """`/` redirects to `/dashboard/index.html`; `/dashboard/<file>` serves `server/dashboard/<file>`,
    `/dashboard/vendor/<file>` the vendored chart library."""

    @app.page("/")
    class Root(View):
        async def get(self, request: Request) -> Response:
            return self.html("", status=302, headers={"Location": "/dashboard/index.html"})

    def serve(view: View, name: str) -> Response:
        found = dashboard_file(name)
        if found is None:
            hint = " (run make install)" if name.startswith("vendor/") else ""
            return view.notfound(f"no dashboard file {name!r}{hint}")
        content, kind = found
        # The type goes in the headers: aiohttp refuses a charset in its content_type argument.
        return view.bytes(content, headers=file_headers(kind))

    @app.page("/dashboard/{name}")
    class DashboardFile(View):
        async def get(self, request: Request, name: str) -> Response:
            return serve(self, name)

    @app.page("/dashboard/vendor/{name}")
    class DashboardVendorFile(View):
        async def get(self, request: Request, name: str) -> Response:
            return serve(self, f"vendor/{name}")
