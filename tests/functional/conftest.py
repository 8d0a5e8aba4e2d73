"""Fixtures for evalbox functional tests; plain helpers live in ft_helpers.py."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import tempfile
from pathlib import Path

import pytest

from ft_helpers import CSRC, live_with_marker, unique_seconds


# -- fixtures ------------------------------------------------------------------------------------

@pytest.fixture
def host_dir():
    """A scratch host directory (tempfile defaults: mode 0700, owned by the test user)."""
    d = tempfile.mkdtemp(prefix="evalbox-functest-")
    try:
        yield Path(d)
    finally:
        shutil.rmtree(d, ignore_errors=True)


_private_dirs: list[str] = []


@pytest.fixture(scope="session", autouse=True)
def _remove_private_dirs():
    yield
    for d in _private_dirs:
        shutil.rmtree(d, ignore_errors=True)


@pytest.fixture
def private_tmp(monkeypatch):
    """Point tempfile (hence new evalbox workspaces) at a private, traversable directory.

    Lets a test assert that *its* runs left nothing behind without being confused by other
    evalbox users of /tmp. The directory is removed at the end of the session, not of the test,
    so that state evalbox keeps across runs cannot make other tests fail.
    """
    d = tempfile.mkdtemp(prefix="evalbox-functest-tmp-")
    os.chmod(d, 0o755)
    _private_dirs.append(d)
    monkeypatch.setattr(tempfile, "tempdir", d)
    yield Path(d)


@pytest.fixture
def marker():
    """A factory of unique process markers; processes still alive with one are killed at teardown."""
    made: list[str] = []

    def new() -> str:
        m = unique_seconds()
        made.append(m)
        return m

    yield new
    for m in made:
        for pid in live_with_marker(m):
            try:
                os.kill(pid, signal.SIGKILL)
            except OSError:
                pass


@pytest.fixture(scope="session")
def cbin(tmp_path_factory):
    """Compile the C helpers in csrc/ on the host; returns {name: bytes of the binary}."""
    out_dir = tmp_path_factory.mktemp("cbin")
    binaries = {}
    for src in sorted(CSRC.glob("*.c")):
        exe = out_dir / src.stem
        subprocess.run(["gcc", "-O1", "-o", str(exe), str(src)], check=True)
        binaries[src.stem] = exe.read_bytes()
    return binaries
