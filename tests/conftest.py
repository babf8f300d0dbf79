"""Fixtures shared by every suite: real local services on free 127.0.0.1 ports, always stopped."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from ferry.local_kafka import LocalKafka

@pytest.fixture(scope="session")
def kafka(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalKafka]:
    """The local Kafka-compatible broker (Tansu, memory storage), one per test session.

    Tests share it, so each test uses its own topic names.
    """
    with LocalKafka(tmp_path_factory.mktemp("kafka")) as broker:
        yield broker
