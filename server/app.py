"""Build the `faust.App` from a `ServerConfig`, and nothing else (topics, tables and agents: server.streams)."""

from __future__ import annotations

from pathlib import Path

import faust

from ferry.server.config import ServerConfig


def create_app(config: ServerConfig) -> faust.App:
    """One Faust app; every broker-facing setting comes from `config`.

    The producer stays non-idempotent (the local broker rejects InitProducerId) and
    `topic_partitions` matches the source topics, since tables are co-partitioned with them:
    the bridge keys every record by device id, so the worker needs no repartition.
    """
    return faust.App(
        config.app_id,
        broker=config.broker_url,
        store=config.store,
        datadir=str(Path(config.data_dir)),
        topic_partitions=config.partitions,
        web_host=config.web_host,
        web_port=config.web_port,
        web_bind=config.web_host,
        # Peers reach each other's web views at this address (routed and fleet views).
        canonical_url=f"http://{config.web_host}:{config.web_port}",
        broker_session_timeout=config.broker_session_timeout_s,
        producer_max_batch_size=config.producer_max_batch_size,
        producer_linger=config.producer_linger_ms / 1000.0,
        consumer_auto_offset_reset="earliest",
        autodiscover=False,
    )
