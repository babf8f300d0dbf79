"""Build the `faust.App` from a `ServerConfig`, and nothing else (topics, tables and agents: server.streams)."""

from __future__ import annotations

from pathlib import Path

import faust
from mode.utils.objects import cached_property
from mode.utils.queues import FlowControlEvent

from ferry.server.auth import token_middleware
from ferry.server.config import ServerConfig
from ferry.server.ingest import BatchingTransport, SourceBuffer

FAUST_VIEWS_OFF = {
    # faust/web/base.py: BLUEPRINT_FLAGS maps each built-in blueprint to the setting that serves it.
    "web_tables_enabled": False,   # /table/...: every table's keys and values (default on)
    "web_router_enabled": False,   # /router/...: which worker owns which key, the group's URLs (default on)
    "web_stats_enabled": False,    # / and /assignment/: sensor counters, partitions (default: `debug`)
    "web_graph_enabled": False,    # /graph/: the service graph (default: `debug`)
    "web_metrics_enabled": False,  # /performance/: Faust's monitor as JSON (default off)
    "debug": False,
}
"""Faust's own HTTP views, all off: the worker serves its API (server/views.py) and dashboard
(server/web.py) and nothing else. `@app.table_route` needs none of them: it asks `app.router` (an object
in this process, faust/app/router.py) which worker owns a key, and forwards the request itself."""


class RecoveryFlowControl(FlowControlEvent):
    """Faust's flow control, except that resuming flow that is not suspended keeps the stream queues.

    faust/tables/recovery.py `on_recovery_completed` resumes the source partitions, seeks them to
    their committed offsets (awaiting the consumer thread) and only then calls `flow_control.resume()`,
    which empties every stream queue (mode's `FlowControlEvent.resume` -> `clear`). Flow was already
    resumed to read the changelogs, so the fetcher runs throughout: a record fetched after the seek
    is in a queue when that clear drops it, and the consumer's read offset has moved past it, so it
    is never fetched again. Seen as one reading never counted after a worker restart
    (tests/server/test_worker_integration.py: 1 run in 10 here with both cores kept busy, 0 in 8 after).

    Faust empties the queues itself when a rebalance begins (`suspend()` then `clear()` in
    faust/app/base.py `_on_partitions_revoked`), and streams skip events of an older generation,
    so the clear that matters stays: the one that ends a suspension. A record delivered twice
    instead (fetched before the seek, then again after it) is applied once: `ferry.server.logic`
    skips records at or below a device's applied offset.
    """

    def resume(self) -> None:
        if not self.is_active():
            super().resume()


async def rewind_uncommitted(app: faust.App, topics: set[str]) -> list:
    """Seek the partitions of `topics` that have no committed offset to their beginning; returns them.

    Call it when table recovery completes, before Faust's own "Seek stream partitions to committed
    offsets". During recovery aiokafka fetches the source partitions too (Faust pauses them only in
    its own bookkeeping), and Faust hands its fetcher thread the live set of active partitions
    (faust/transport/consumer.py `_wait_next_records`), which recovery empties when it pauses the
    changelogs (faust/tables/recovery.py). aiokafka reads an empty set as "every partition"
    (aiokafka/consumer/fetcher.py `fetched_records`), moves the source partitions' positions to
    what it had buffered, and Faust drops those records as not active. The seek to committed
    offsets brings back those that have a commit, but aiokafka seeks only `if offset and offset > 0`
    (aiokafka/consumer/consumer.py `seek_to_committed`): a partition nobody committed yet, such as
    one whose worker was killed before its first commit, kept its new position and those records
    were never processed (tests/server/test_scale.py, 8 of 17 runs before). Reading such a
    partition from its beginning is what `consumer_auto_offset_reset = "earliest"` asks for anyway;
    records already applied to a device's state are skipped by their offsets.
    """
    if not app.consumer.assignment():  # a generation that gave this worker nothing: nothing to seek
        return []                        # (aiokafka's seek_to_committed asserts there is something)
    committed = await app.consumer.seek_to_committed()
    uncommitted = {tp: 0 for tp, offset in committed.items() if tp.topic in topics and not offset}
    if uncommitted:
        await app.consumer.seek_wait(uncommitted)
    return sorted(uncommitted)


class FerryApp(faust.App):
    """`faust.App` with `RecoveryFlowControl`, and a consumer that hands the source topics' records to
    `source_buffer` (`ferry.server.ingest`) when `ferry.server.streams.wire` gave it one."""

    source_buffer: SourceBuffer | None = None

    @cached_property
    def flow_control(self) -> FlowControlEvent:
        return RecoveryFlowControl(loop=self.loop)

    def _new_transport(self) -> BatchingTransport:
        return BatchingTransport(self.conf.broker_consumer, self)


def create_app(config: ServerConfig) -> faust.App:
    """One Faust app; every broker-facing setting comes from `config`.

    The producer stays non-idempotent (the local broker rejects InitProducerId) and
    `topic_partitions` matches the source topics, since tables are co-partitioned with them:
    the bridge keys every record by device id, so the worker needs no repartition.

    `env={}`: Faust lets its own environment variables (`WEB_BIND`, `WEB_PORT`, `APP_DEBUG`,
    `APP_WEB_TABLES_ENABLED`, ...) override the settings given here (faust/types/settings/base.py
    `_init_settings`); with an empty environment only `ServerConfig` (`FERRY_SERVER_*`) decides.
    """
    web_options = {"middlewares": [token_middleware(config.api_token)]} if config.api_token else {}
    return FerryApp(
        config.app_id,
        env={},
        broker=config.broker_url,
        store=config.store,
        datadir=str(Path(config.data_dir)),
        topic_partitions=config.partitions,
        web_host=config.web_host,
        web_port=config.web_port,
        web_bind=config.web_host,
        # Peers reach each other's web views at this URL (routed and fleet views); it is not the bind
        # address when that is a wildcard (`advertised_url`).
        canonical_url=config.canonical_url,
        web_application_options=web_options,
        **FAUST_VIEWS_OFF,
        broker_session_timeout=config.broker_session_timeout_s,
        producer_max_batch_size=config.producer_max_batch_size,
        producer_linger=config.producer_linger_ms / 1000.0,
        consumer_auto_offset_reset="earliest",
        broker_max_poll_records=config.consumer_max_poll_records,
        autodiscover=False,
    )
