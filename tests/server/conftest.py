"""The session's `evalbox serve` (see server_helpers.py)."""

from __future__ import annotations

import os
import sys

import pytest

sys.path.insert(0, os.path.dirname(__file__))
pytest.importorskip("fastapi", reason="the server tests need the server extra: pip install -e '.[test]'")

from server_helpers import start_server, stop_server  # noqa: E402


@pytest.fixture(scope="session")
def server():
    s = start_server("--concurrency", "4")
    try:
        yield s
    finally:
        stop_server(s)
