"""Fixtures of the server tests: the dashboard's chart library must be there for the browser tests."""

from __future__ import annotations

import pytest

from ferry.server.web import dashboard_file


@pytest.fixture
def vendored() -> None:
    if dashboard_file("vendor/uPlot.iife.min.js") is None:
        pytest.fail("the chart library is not vendored: run `make install` (ferry/npm_vendor.py)", pytrace=False)
