"""The Faust app the worker runs, and its repairs of Faust's recovery: its flow control keeps records a
stream queue holds when flow that was never suspended is resumed (faust/tables/recovery.py
`on_recovery_completed` does that after seeking the source partitions), and source partitions
nobody committed are read from their beginning."""

from __future__ import annotations

import asyncio

from faust.types import TP

from ferry.server.app import RecoveryFlowControl, create_app, rewind_uncommitted
from ferry.server.config import ServerConfig


def test_resuming_flow_that_runs_keeps_what_the_stream_queues_hold() -> None:
    async def run() -> tuple[int, int, int]:
        app = create_app(ServerConfig(broker="127.0.0.1:1", app_id="flow-test"))
        assert isinstance(app.flow_control, RecoveryFlowControl)
        queue = app.FlowControlQueue(maxsize=10, clear_on_resume=True)
        app.flow_control.resume()       # recovery resumes flow to read the changelogs
        await queue.put("fetched after the seek")
        app.flow_control.resume()       # on_recovery_completed resumes it again: the record stays
        kept = queue.qsize()
        app.flow_control.suspend()      # a rebalance begins: Faust empties the queues itself
        app.flow_control.clear()
        await asyncio.sleep(0)
        emptied = queue.qsize()
        app.flow_control.resume()
        queue.put_nowait("stale")       # left from before a suspension...
        app.flow_control.suspend()
        app.flow_control.resume()       # ...goes when the suspension ends, as in Faust
        return kept, emptied, queue.qsize()

    assert asyncio.run(run()) == (1, 0, 0)


def test_source_partitions_nobody_committed_are_read_from_their_beginning() -> None:
    """aiokafka's seek to committed offsets leaves a partition without a commit where its fetcher
    got to during recovery; those records were dropped by Faust (see `rewind_uncommitted`)."""
    class Consumer:
        def __init__(self) -> None:
            self.seeks: list[dict] = []

        async def seek_to_committed(self) -> dict:
            return {TP("t.telemetry", 0): None, TP("t.telemetry", 1): 17, TP("t.status", 1): 0,
                    TP("app-devices-changelog", 0): None}

        async def seek_wait(self, partitions: dict) -> None:
            self.seeks.append(partitions)

        def assignment(self) -> set:
            return {TP("t.telemetry", 0)}

    class App:
        consumer = Consumer()

    rewound = asyncio.run(rewind_uncommitted(App(), {"t.telemetry", "t.status"}))
    assert rewound == [TP("t.status", 1), TP("t.telemetry", 0)]
    assert App.consumer.seeks == [{TP("t.telemetry", 0): 0, TP("t.status", 1): 0}]


def test_a_worker_given_no_partition_by_a_rebalance_does_not_crash() -> None:
    """A worker joining a generation that gives it no partition (more workers than the group spreads
    over): aiokafka's seek to committed offsets asserts there are partitions, and the worker died
    (seen in `ferry demo --chaos` after a worker restart)."""
    class Consumer:
        def assignment(self) -> set:
            return set()

        async def seek_to_committed(self) -> dict:
            raise AssertionError("No partitions are currently assigned")

    class App:
        consumer = Consumer()

    assert asyncio.run(rewind_uncommitted(App(), {"t.telemetry"})) == []


def test_the_consumer_hands_over_at_most_consumer_max_poll_records_at_a_time() -> None:
    """Faust's default (None) hands over every partition's whole fetch at once."""
    app = create_app(ServerConfig(broker="127.0.0.1:1", app_id="poll-test", consumer_max_poll_records=1234))
    assert app.conf.broker_max_poll_records == 1234
    assert create_app(ServerConfig(broker="127.0.0.1:1", app_id="poll-test-2")).conf.broker_max_poll_records == 2000
