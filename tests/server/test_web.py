"""The worker's HTTP side: `ferry.server.web.dashboard_file` serves only known file types inside
server/dashboard/ (and its vendor/); Faust's own views are off, the API listens on 127.0.0.1, and
an API token, when set, is asked of every request but the dashboard's page (docs/server.md)."""

from __future__ import annotations

import asyncio
from pathlib import Path
from unittest import mock

import pytest
from aiohttp import web as aiohttp_web
from aiohttp.test_utils import TestServer

import ferry.server.web as web
from ferry.process import free_port
from ferry.server.app import create_app
from ferry.server.config import ServerConfig
from ferry.server.streams import Streams, wire
from ferry.server.views import ADDITIVE
from ferry.server.web import dashboard_file
from tests.server.test_worker_state import Assignment, http


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
    response = aiohttp_web.Response(body=b"1;", headers=web.file_headers(web.CONTENT_TYPES[".js"]))
    assert response.headers["Content-Type"] == "text/javascript; charset=utf-8"
    assert response.charset == "utf-8"


# ---- the worker's HTTP side: Faust's own views off, 127.0.0.1, the optional API token ------------
#
# In process, as tests/server/test_metrics.py serves it (`http()` of test_worker_state mounts what
# `faust worker` mounts). Real workers with a token: tests/server/test_scale.py.

TOKEN = "Zm9vYmFy-ferry_test.token~42"
FAUST_VIEWS = ("/table/", "/table/devices/", "/table/devices/dev-01/", "/table/history/dev-01/",
               "/router/", "/router/topics", "/router/devices/", "/router/devices/dev-01/",
               "/graph/", "/assignment/", "/performance/", "/stats/", "/signal/")
API = ("/accounting", "/devices", "/alerts?limit=5", "/metrics")
# Faust's own variables, which it lets override what the app is given (faust/types/settings/base.py).
FAUST_ENVIRONMENT = {"WEB_BIND": "0.0.0.0", "WEB_HOST": "elsewhere.example", "WEB_PORT": "7777", "APP_DEBUG": "1",
                     "APP_WEB_TABLES_ENABLED": "1", "APP_WEB_ROUTER_ENABLED": "1", "APP_WEB_STATS_ENABLED": "1",
                     "APP_WEB_GRAPH_ENABLED": "1", "APP_WEB_METRICS_ENABLED": "1"}


def make_streams(tmp_path: Path, **settings: object) -> Streams:
    config = ServerConfig(broker="127.0.0.1:1", app_id="ferry-test-web", data_dir=str(tmp_path), partitions=1,
                          **settings)
    app = create_app(config)
    streams = wire(app, config)
    app.finalize()
    return streams


@pytest.fixture
def faust_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    for name, value in FAUST_ENVIRONMENT.items():
        monkeypatch.setenv(name, value)


def serve(streams: Streams, requests: list[tuple[str, dict[str, str]]]) -> list[tuple[int, dict[str, str]]]:
    """(status, headers) of each GET (path, headers) to the worker's HTTP side, its tables recovered.
    Once per app: its aiohttp application keeps the event loop it was first served on."""
    async def run() -> list[tuple[int, dict[str, str]]]:
        assigned = Assignment(streams)
        with mock.patch.object(streams.worker.app.assignor, "assigned_actives", side_effect=assigned.tps):
            async with http(streams) as client:
                await assigned.start({0})
                await assigned.complete()
                out = []
                for path, headers in requests:
                    response = await client.get(path, headers=headers, allow_redirects=False)
                    await response.read()
                    out.append((response.status, dict(response.headers)))
                return out

    return asyncio.run(run())


def statuses(streams: Streams, paths: tuple[str, ...], *headers: dict[str, str]) -> list[dict[str, int]]:
    """path -> status of GET path, for each of `headers` (default: none)."""
    variants = headers or ({},)
    answers = iter(serve(streams, [(p, h) for h in variants for p in paths]))
    return [{p: next(answers)[0] for p in paths} for _ in variants]


def test_faust_own_views_are_not_served(tmp_path: Path, faust_environment: None) -> None:
    """`/table/...` (table contents), `/router/...` (the group's URLs) and Faust's debug views answer 404,
    even with Faust's variables asking for them; the API and the dashboard answer."""
    streams = make_streams(tmp_path)
    [answers] = statuses(streams, FAUST_VIEWS + API + ("/", "/dashboard/index.html", "/dashboard/dashboard.js"))
    assert {p: answers[p] for p in FAUST_VIEWS} == dict.fromkeys(FAUST_VIEWS, 404)
    assert {p: answers[p] for p in API} == dict.fromkeys(API, 200)
    assert (answers["/"], answers["/dashboard/index.html"], answers["/dashboard/dashboard.js"]) == (302, 200, 200)
    routes = {r.resource.canonical for r in streams.worker.app.web.web_app.router.routes() if r.resource}
    assert not {r for r in routes if r.startswith(("/table", "/router", "/graph", "/assignment", "/performance"))}


def test_faust_settings_are_ferry_settings(tmp_path: Path, faust_environment: None) -> None:
    conf = make_streams(tmp_path).worker.app.conf
    assert (conf.web_bind, conf.web_port, str(conf.canonical_url)) == ("127.0.0.1", 6066, "http://127.0.0.1:6066")
    assert not (conf.debug or conf.web_tables_enabled or conf.web_router_enabled or conf.web_stats_enabled
                or conf.web_graph_enabled or conf.web_metrics_enabled)


def test_listens_on_127_0_0_1_by_default(tmp_path: Path, faust_environment: None) -> None:
    """The socket Faust's web driver opens (`Web.start_server`, the same call `faust worker` makes)."""
    assert ServerConfig(broker="k:1").web_host == "127.0.0.1"
    port = free_port()
    web = make_streams(tmp_path, web_port=port).worker.app.web

    async def run() -> list:
        web.init_server()
        await web.start_server()
        try:
            return list(web._runner.addresses)
        finally:
            await web.stop_server()

    assert asyncio.run(run()) == [("127.0.0.1", port)]


def test_web_host_binds_elsewhere(tmp_path: Path) -> None:
    conf = make_streams(tmp_path, web_host="10.0.0.5", web_port=7000).worker.app.conf
    assert (conf.web_bind, str(conf.canonical_url)) == ("10.0.0.5", "http://10.0.0.5:7000")


def test_a_wildcard_bind_advertises_the_url_it_is_given(tmp_path: Path) -> None:
    """Bound to 0.0.0.0, the worker tells the group (Faust's `canonical_url`, which the router and the fleet
    views use) the advertised URL, not the bind address no other machine can use."""
    conf = make_streams(tmp_path, web_host="0.0.0.0", web_port=7000,
                        advertised_url="http://10.0.0.5:7000").worker.app.conf
    assert (conf.web_bind, conf.web_port, str(conf.canonical_url)) == ("0.0.0.0", 7000, "http://10.0.0.5:7000")


def test_a_fleet_view_does_not_ask_itself_when_bound_to_a_wildcard(tmp_path: Path) -> None:
    """The group's metadata lists this worker by its advertised URL: it is recognised as itself, and only
    the other member is asked."""
    asked: list[str] = []

    async def peer_accounting(request: aiohttp_web.Request) -> aiohttp_web.Response:
        asked.append(request.path)
        return aiohttp_web.json_response({k: 1 for k in ADDITIVE})

    streams = make_streams(tmp_path, web_host="0.0.0.0", advertised_url="http://127.0.0.1:1")
    app = streams.worker.app
    peer_app = aiohttp_web.Application()
    peer_app.router.add_get("/accounting", peer_accounting)

    async def run() -> tuple[int, object]:
        async with TestServer(peer_app, host="127.0.0.1") as peer:
            metadata = {f"http://127.0.0.1:{peer.port}": {}, "http://127.0.0.1:1": {}}
            assigned = Assignment(streams)
            with mock.patch.object(app.router, "tables_metadata", return_value=metadata), \
                    mock.patch.object(app.assignor, "assigned_actives", side_effect=assigned.tps):
                async with http(streams) as client:
                    await assigned.start({0})
                    await assigned.complete()
                    response = await client.get("/accounting")
                    return response.status, await response.json()

    status, answer = asyncio.run(run())
    assert (status, answer["received"], asked) == (200, 1, ["/accounting"])


def test_no_token_configured_means_no_token_needed(tmp_path: Path) -> None:
    assert statuses(make_streams(tmp_path), API, {}, {"Authorization": "Bearer anything"}) == \
        [dict.fromkeys(API, 200)] * 2


@pytest.mark.parametrize("header", [None, "", "Bearer", "Bearer ", f"Basic {TOKEN}", TOKEN, f"Bearer {TOKEN}x",
                                    f"Bearer {TOKEN[:-1]}", "Bearer wrong", f"Bearer {TOKEN} extra",
                                    "Bearer Zm9vYmFy-ferry_test.token~4\u00e9"])
def test_the_api_needs_the_token(tmp_path: Path, header: str | None) -> None:
    streams = make_streams(tmp_path, api_token=TOKEN)
    answers = serve(streams, [(p, {} if header is None else {"Authorization": header}) for p in API])
    for path, (status, headers) in zip(API, answers):
        assert status == 401, path
        assert headers["WWW-Authenticate"].startswith('Bearer realm="ferry-worker"'), path
        given = header is not None and header.partition(" ")[0] == "Bearer" and header.partition(" ")[2].strip()
        assert ('error="invalid_token"' in headers["WWW-Authenticate"]) == bool(given), path


@pytest.mark.parametrize("header", [f"Bearer {TOKEN}", f"bearer {TOKEN}", f"BEARER  {TOKEN} "])
def test_the_right_token_is_let_through(tmp_path: Path, header: str) -> None:
    assert statuses(make_streams(tmp_path, api_token=TOKEN), API, {"Authorization": header}) == \
        [dict.fromkeys(API, 200)]


def test_with_a_token_the_dashboard_page_stays_open_and_nothing_else(tmp_path: Path) -> None:
    page = ("/", "/dashboard/index.html", "/dashboard/vendor/missing.js", "/dashboard/nothing.txt")
    # A path no view serves needs the token too: without it nobody learns what is served.
    others = ("/table/", "/router/", "/nothing", "/dashboard/", "/dashboard/a/b/c", "/devices/dev-01",
              "/devices/dev-01/series/temp_c", "/accounting/")
    unserved = ("/table/", "/router/", "/nothing", "/accounting/")
    opened, closed, with_token = statuses(make_streams(tmp_path, api_token=TOKEN), page + others, {}, {},
                                          {"Authorization": f"Bearer {TOKEN}"})
    assert {p: opened[p] for p in page} == {"/": 302, "/dashboard/index.html": 200,
                                            "/dashboard/vendor/missing.js": 404, "/dashboard/nothing.txt": 404}
    assert {p: closed[p] for p in others} == dict.fromkeys(others, 401)
    assert {p: with_token[p] for p in unserved} == dict.fromkeys(unserved, 404)


def test_a_fleet_view_asks_the_other_workers_with_the_token(tmp_path: Path) -> None:
    """`/devices` asks every other member of the group for its part, with the same token."""
    seen: list[str | None] = []

    async def peer_devices(request: aiohttp_web.Request) -> aiohttp_web.Response:
        seen.append(request.headers.get("Authorization"))
        return aiohttp_web.json_response({"dev-99": {"received": 1}})

    streams = make_streams(tmp_path, api_token=TOKEN)
    app = streams.worker.app
    peer_app = aiohttp_web.Application()
    peer_app.router.add_get("/devices", peer_devices)

    async def run() -> tuple[int, object]:
        async with TestServer(peer_app, host="127.0.0.1") as peer:
            metadata = {f"http://127.0.0.1:{peer.port}": {}, str(app.conf.canonical_url): {}}
            assigned = Assignment(streams)
            with mock.patch.object(app.router, "tables_metadata", return_value=metadata), \
                    mock.patch.object(app.assignor, "assigned_actives", side_effect=assigned.tps):
                async with http(streams) as client:
                    await assigned.start({0})
                    await assigned.complete()
                    response = await client.get("/devices", headers={"Authorization": f"Bearer {TOKEN}"})
                    return response.status, await response.json()

    status, answer = asyncio.run(run())
    assert (status, answer) == (200, {"dev-99": {"received": 1}})
    assert seen == [f"Bearer {TOKEN}"]


def test_the_token_is_compared_in_constant_time() -> None:
    from ferry.server import auth

    with mock.patch.object(auth.hmac, "compare_digest", wraps=auth.hmac.compare_digest) as compare:
        assert auth.token_matches(TOKEN, TOKEN) and not auth.token_matches("x", TOKEN)
    assert compare.call_count == 2


def test_the_token_is_not_shown(tmp_path: Path) -> None:
    config = ServerConfig(broker="k:1", api_token=TOKEN)
    assert TOKEN not in repr(config) and TOKEN not in str(config)
