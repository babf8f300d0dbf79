"""`ferry.server.web.dashboard_file`: only known file types inside server/dashboard/ (and its vendor/) are served."""

from __future__ import annotations

from pathlib import Path

import pytest

import ferry.server.web as web
from ferry.server.web import dashboard_file


@pytest.fixture
def dashboard(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A dashboard folder of known content, with a secret next to it."""
    folder = tmp_path / "dashboard"
    (folder / "vendor").mkdir(parents=True)
    (folder / "index.html").write_text("<p>hi</p>")
    (folder / "app.js").write_text("1;")
    (folder / "logo.svg").write_text("<svg/>")
    (folder / "notes.txt").write_text("not served")
    (folder / ".hidden.js").write_text("hidden")
    (folder / "vendor" / "lib.min.js").write_text("lib;")
    (folder / "vendor" / "lib.css").write_text("a{}")
    (folder / "vendor" / "LICENSE").write_text("MIT")
    (folder / "other").mkdir()
    (folder / "other" / "x.js").write_text("other")
    (folder / "dir.js").mkdir()
    (tmp_path / "secret.js").write_text("secret")
    (tmp_path / "secret.html").write_text("secret")
    (folder / "link.js").symlink_to(tmp_path / "secret.js")
    (folder / "vendor" / "link.js").symlink_to(tmp_path / "secret.js")
    monkeypatch.setattr(web, "DASHBOARD_DIR", folder)
    return folder


def test_serves_known_types_with_their_content_type(dashboard: Path) -> None:
    assert dashboard_file("index.html") == (b"<p>hi</p>", "text/html; charset=utf-8")
    assert dashboard_file("app.js") == (b"1;", "text/javascript; charset=utf-8")
    assert dashboard_file("logo.svg") == (b"<svg/>", "image/svg+xml")
    assert dashboard_file("vendor/lib.min.js") == (b"lib;", "text/javascript; charset=utf-8")
    assert dashboard_file("vendor/lib.css") == (b"a{}", "text/css; charset=utf-8")


@pytest.mark.parametrize("name", [
    "../secret.js", "../secret.html", "vendor/../../secret.js", "vendor/../index.html", "./index.html",
    "/etc/passwd", "//etc/passwd.js", str(Path("/tmp/secret.js")), "..", ".", "", "vendor/", "vendor//lib.min.js",
    "vendor/vendor/lib.min.js", "other/x.js", "vendor\\..\\..\\secret.js", "..\\secret.js", "index.html\0.js",
    "link.js", "vendor/link.js",
])
def test_refuses_paths_outside_the_folder(dashboard: Path, name: str) -> None:
    assert dashboard_file(name) is None


@pytest.mark.parametrize("name", [
    "notes.txt", "vendor/LICENSE", ".hidden.js", "index.HTML", "index", "index.html.bak", "vendor", "dir.js",
    "missing.js", "vendor/missing.js",
])
def test_refuses_unknown_types_hidden_and_missing_files(dashboard: Path, name: str) -> None:
    assert dashboard_file(name) is None


def test_the_shipped_page_is_served() -> None:
    for name in ("index.html", "dashboard.js", "dashboard.css"):
        found = dashboard_file(name)
        assert found is not None and found[0], name


def test_file_headers_make_a_valid_aiohttp_response() -> None:
    from aiohttp import web as aiohttp_web

    response = aiohttp_web.Response(body=b"1;", headers=web.file_headers(web.CONTENT_TYPES[".js"]))
    assert response.headers["Content-Type"] == "text/javascript; charset=utf-8"
    assert response.charset == "utf-8"
