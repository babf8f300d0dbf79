"""`/alerts` (the fleet's newest, `limit`, `since`) and the series view (`from`/`to`, the bound, unknown
metrics), in process through the app's web server, as tests/server/test_web.py serves it."""

from __future__ import annotations

import asyncio
from pathlib import Path
from unittest import mock

from aiohttp import web as aiohttp_web
from aiohttp.test_utils import TestServer
from faust.exceptions import SameNode

from ferry.server.app import create_app
from ferry.server.config import ServerConfig
from ferry.server.logic import STATUS, TELEMETRY, Record
from ferry.server.streams import Streams, wire
from ferry.server.windows import History

from tests.server.fake_kafka import fake_producer
from tests.server.helpers import T0, asleep, reading, status
from tests.server.test_worker_state import Assignment, get, http

NOISY = "dev-noisy"
OTHERS = [f"dev-{i:02d}" for i in range(12)]


def make_streams(tmp_path: Path, **settings: object) -> Streams:
    config = ServerConfig(broker="127.0.0.1:1", app_id="ferry-test-views", data_dir=str(tmp_path), partitions=1,
                          allowed_lateness_s=0, **settings)
    app = create_app(config)
    streams = wire(app, config)
    app.finalize()
    return streams


def serve(streams: Streams, batches: list[list[Record]], paths: list[str],
          peers: dict[str, aiohttp_web.Application] | None = None) -> list[tuple[int, object]]:
    """Process `batches`, then (status, JSON) of GET each path; `peers`: other workers of the group (path ->
    app), listed in the group's metadata beside this one."""
    app = streams.worker.app

    async def run() -> list[tuple[int, object]]:
        servers = [TestServer(peer, host="127.0.0.1") for peer in (peers or {}).values()]
        for server in servers:
            await server.start_server()
        metadata = {str(app.conf.canonical_url): {}, **{f"http://127.0.0.1:{s.port}": {} for s in servers}}
        assigned = Assignment(streams)
        try:
            # `route_req` raising SameNode: this worker owns the device, as `@app.table_route` then finds.
            with fake_producer(app), mock.patch.object(app.router, "tables_metadata", return_value=metadata), \
                    mock.patch.object(app.router, "route_req", side_effect=SameNode), \
                    mock.patch.object(app.assignor, "assigned_actives", side_effect=assigned.tps):
                async with http(streams) as client:
                    await assigned.start({0})
                    await assigned.complete()
                    for batch in batches:
                        await streams.worker.process(batch)
                    return [await get(client, path) for path in paths]
        finally:
            for server in servers:
                await server.close()

    return asyncio.run(run())


# ---- /alerts --------------------------------------------------------------------------------------


def alert_batches() -> tuple[list[list[Record]], list[tuple[str, str, int]]]:
    """30 alerts of one device (its last will then its birth, 15 times, a second apart) and one `offline`
    of each of 12 others; and every alert as (device, kind, ts_ms), newest first."""
    noisy, expected = [], []
    for i in range(15):
        noisy += [Record(NOISY, STATUS, asleep(dev=NOISY), T0, T0 + 2000 * i, 0),
                  Record(NOISY, STATUS, status(0, dev=NOISY), T0, T0 + 2000 * i + 1000, 0)]
        expected += [(NOISY, "offline", T0 + 2000 * i), (NOISY, "online", T0 + 2000 * i + 1000)]
    # Two of the others among the noisy device's newest alerts, the rest before them.
    when = {dev: T0 + 28_500 - 2000 * j if j < 2 else T0 - 500 * j for j, dev in enumerate(OTHERS)}
    others = [Record(dev, STATUS, asleep(dev=dev), T0, when[dev], 0) for dev in OTHERS]
    expected += [(dev, "offline", when[dev]) for dev in OTHERS]
    # In three batches, the others' last wills in the middle one: the log orders by time, not arrival.
    return [noisy[:10], others, noisy[10:]], sorted(expected, key=lambda a: (a[2], a[0], a[1]), reverse=True)


def seen(answer: object) -> list[tuple[str, str, int]]:
    return [(a["device"], a["kind"], a["ts_ms"]) for a in answer["alerts"]]


def test_alerts_are_the_fleets_newest_not_each_devices_last_few(tmp_path: Path) -> None:
    """More than 20 alerts of one device among those of many: the newest N of them all, newest first."""
    batches, expected = alert_batches()
    since = T0 + 20_000
    answers = serve(make_streams(tmp_path), batches,
                    ["/alerts", "/alerts?limit=25", f"/alerts?since={since}", f"/alerts?since={since}&limit=3",
                     f"/alerts?since={T0 + 10**9}"])
    assert [status for status, _ in answers] == [200] * 5
    everything, newest_25, since_all, since_3, none = (seen(answer) for _, answer in answers)
    assert len(expected) == 42 and everything == expected
    assert newest_25 == expected[:25]
    # The old view kept 20 per device: 23 of the newest 25 are the noisy device's, 2 are others'.
    assert sum(1 for device, _, _ in newest_25 if device == NOISY) == 23
    assert since_all == [a for a in expected if a[2] >= since] and len(since_all) == 12
    assert since_3 == since_all[:3]
    assert none == []


def test_the_alert_log_keeps_the_newest_alerts_keep_of_a_partition(tmp_path: Path) -> None:
    batches, expected = alert_batches()
    answers = serve(make_streams(tmp_path, alerts_keep=30), batches,
                    ["/alerts", "/alerts?limit=30", "/alerts?limit=31"])
    assert seen(answers[0][1]) == seen(answers[1][1]) == expected[:30]  # default: min(100, alerts_keep)
    assert answers[2][0] == 400 and "1..30" in answers[2][1]["error"]


def test_bad_alert_queries_are_refused(tmp_path: Path) -> None:
    paths = ["/alerts?limit=0", "/alerts?limit=-3", "/alerts?limit=x", "/alerts?limit=1001", "/alerts?since=x",
             "/alerts?since=-1", "/alerts?since=2024-11-24T20:00:00Z", "/alerts?limit=1000&since=0"]
    answers = serve(make_streams(tmp_path), [], paths)
    assert [status for status, _ in answers] == [400] * 7 + [200]
    assert "limit" in answers[0][1]["error"] and "since" in answers[4][1]["error"]


def test_alerts_merge_the_newest_of_every_worker(tmp_path: Path) -> None:
    """Another worker of the group is asked for its newest `limit` since `since` and the answers merged."""
    asked: list[dict] = []
    theirs = [{"device": "dev-far", "kind": "offline", "metric": None, "reason": "x", "ts_ms": T0 + ms,
               "value": None, "score": None} for ms in (29_999, 20_750, 5)]

    async def peer_alerts(request: aiohttp_web.Request) -> aiohttp_web.Response:
        asked.append(dict(request.query))
        since = int(request.query.get("since", 0))
        return aiohttp_web.json_response({"alerts": [a for a in theirs if a["ts_ms"] >= since]
                                          [:int(request.query["limit"])]})

    peer = aiohttp_web.Application()
    peer.router.add_get("/alerts", peer_alerts)
    batches, expected = alert_batches()
    since = T0 + 20_000
    answers = serve(make_streams(tmp_path), batches, ["/alerts?limit=4", f"/alerts?since={since}"], {"peer": peer})
    assert asked == [{"limit": "4", "scope": "local"}, {"limit": "100", "since": str(since), "scope": "local"}]
    far = [(a["device"], a["kind"], a["ts_ms"]) for a in theirs]
    merged = sorted(expected + far, key=lambda a: (a[2], a[0], a[1]), reverse=True)
    assert seen(answers[0][1]) == merged[:4] and far[0] in merged[:4]
    assert seen(answers[1][1]) == [a for a in merged if a[2] >= since]


# ---- /devices/{id}/series/{metric} ----------------------------------------------------------------


def minute_readings(minutes: int, per_minute: int = 3) -> list[Record]:
    """dev-01's readings, `per_minute` a minute from T0, temp_c and rh_pct."""
    step = 60_000 // per_minute
    return [Record("dev-01", TELEMETRY, reading(s, ts_ms=T0 + s * step, metrics={"temp_c": 20.0 + s, "rh_pct": 40.0}),
                   T0 + s * step, T0 + s * step, 0) for s in range(minutes * per_minute)]


def starts(answer: dict, kind: str) -> list[tuple[int, bool]]:
    return [((w["start_ms"] - T0) // 60_000, w["closed"]) for w in answer[kind]]


def test_series_from_to_and_the_kept_bound(tmp_path: Path) -> None:
    """`series_keep` closed windows per metric and kind are kept; `from`/`to` pick those starting in [from, to)."""
    answers = serve(make_streams(tmp_path, series_keep=4), [minute_readings(10)],
                    ["/devices/dev-01/series/temp_c",
                     f"/devices/dev-01/series/temp_c?from={T0 + 7 * 60_000}",
                     f"/devices/dev-01/series/temp_c?from={T0 + 7 * 60_000}&to={T0 + 9 * 60_000}",
                     f"/devices/dev-01/series/temp_c?to={T0 + 7 * 60_000 - 1}",
                     f"/devices/dev-01/series/rh_pct?from={T0 + 9 * 60_000}&to={T0 + 9 * 60_000 + 1}"])
    assert [status for status, _ in answers] == [200] * 5
    every, since_7, from_7_to_9, to_7, rh = (answer for _, answer in answers)
    # Minutes 0-8 closed (the watermark is minute 9's last reading): the newest 4 kept, then minute 9, open.
    assert starts(every, "1m") == [(5, True), (6, True), (7, True), (8, True), (9, False)]
    # Hopping 5-minute windows, one starting every minute: closed ones end by minute 9 + 40 s.
    assert starts(every, "5m") == [(1, True), (2, True), (3, True), (4, True), (5, False), (6, False),
                                   (7, False), (8, False), (9, False)]
    assert starts(since_7, "1m") == [(7, True), (8, True), (9, False)]
    assert starts(from_7_to_9, "1m") == [(7, True), (8, True)] and starts(from_7_to_9, "5m") == [(7, False), (8, False)]
    assert starts(to_7, "1m") == [(5, True), (6, True)] and starts(to_7, "5m") == [(1, True), (2, True), (3, True),
                                                                                    (4, True), (5, False), (6, False)]
    assert starts(rh, "1m") == [(9, False)] and rh["metric"] == "rh_pct"


def test_an_unknown_metric_is_404_naming_the_known_ones(tmp_path: Path) -> None:
    answers = serve(make_streams(tmp_path), [minute_readings(2)],
                    ["/devices/dev-01/series/pressure_hpa", "/devices/dev-01/series/temp_c",
                     "/devices/nobody/series/temp_c"])
    (status, answer), (ok, _), (missing, _) = answers
    assert status == 404
    assert answer == {"error": "no metric 'pressure_hpa' for device 'dev-01'", "metrics": ["rh_pct", "temp_c"]}
    assert (ok, missing) == (200, 404)


def test_bad_series_queries_are_refused(tmp_path: Path) -> None:
    paths = [f"/devices/dev-01/series/temp_c?{q}" for q in ("from=x", "to=-5", "from=1.5", "to=2024-11-24")]
    answers = serve(make_streams(tmp_path), [minute_readings(1)], paths)
    assert [status for status, _ in answers] == [400] * 4
    assert answers[0][1]["error"].startswith("from: expected milliseconds since the Unix epoch")


def test_local_accounting_sums_what_the_device_summaries_say() -> None:
    """`/accounting?scope=local` sums the states directly: the same figures (and keys) as summing each
    device's `/devices` summary, with duplicates, gaps, losses the device reported, invalid records, a
    device offline by its will and one silent past its limit."""
    from types import SimpleNamespace

    from ferry.server.logic import Settings, apply_batch
    from ferry.server.views import accounting_of, local_accounting, local_devices_view

    settings = Settings.from_config(ServerConfig(broker="127.0.0.1:1"))
    states: dict = {}
    records = [Record(dev, TELEMETRY, reading(seq, dev=dev, ts_ms=T0 + seq * 10_000), T0 + seq * 10_000,
                      T0 + seq * 10_000 + 5, 0) for dev in OTHERS for seq in (0, 1, 1, 4)]
    records += [Record("dev-00", STATUS, status(3, dev="dev-00"), T0, T0 + 1, 0),
                Record("dev-01", STATUS, asleep(dev="dev-01"), T0 + 50_000, T0 + 50_000, 0),
                Record("dev-02", TELEMETRY, b"{not json", T0, T0, 0),
                Record(NOISY, TELEMETRY, reading(0, dev=NOISY, ts_ms=T0 + 1_000_000), T0 + 1_000_000,
                       T0 + 1_000_000, 0)]
    apply_batch(records, lambda d: states.setdefault(d, settings.new_state(d)), lambda d: History(), settings)
    worker = SimpleNamespace(settings=settings, local_devices=lambda: sorted(states), state=states.__getitem__)
    now = T0 + 1_000_000 + 5_000  # the others silent for ~16 minutes, the noisy one not
    want = accounting_of(local_devices_view(worker, now))
    got = local_accounting(worker, now)
    assert list(got.items()) == list(want.items())
    assert (got["devices"], got["gaps"], got["duplicates"], got["lost_at_device"], got["invalid"],
            got["offline"]) == (13, 24, 12, 3, 1, 12)
