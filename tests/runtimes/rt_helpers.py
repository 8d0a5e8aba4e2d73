"""Helpers for the language runtime and CLI tests (real programs in real sandboxes)."""

from __future__ import annotations

import os
import shutil

import pytest

import evalbox
from evalbox.process.host import probe

# Toolchains are installed by .ci/run (and README says how); without one, its tests skip saying so.
_SEARCH_PATH = os.pathsep.join([os.environ.get("PATH", ""), "/usr/local/bin", "/usr/bin", "/bin"])
HAVE_GO = shutil.which("go", path=_SEARCH_PATH) is not None
HAVE_NODE = shutil.which("node", path=_SEARCH_PATH) is not None
needs_go = pytest.mark.skipif(not HAVE_GO, reason="needs Go: apt-get install golang-go (.ci/run installs it)")
needs_node = pytest.mark.skipif(not HAVE_NODE, reason="needs Node.js: apt-get install nodejs (.ci/run installs it)")

# Where no memory cgroup is available (a caller that is not root, without a delegated cgroup),
# `memory` is an RLIMIT_AS per process; Go's and Node's defaults are then 1G of address space.
MEMORY_IS_ADDRESS_SPACE = not (probe().cgroup.version and "memory" in probe().cgroup.controllers)


def describe(out: evalbox.Output) -> str:
    return (f"status={out.status} exit_code={out.exit_code} signal={out.signal} wall={out.wall_time:.3f}\n"
            f"--- stdout ---\n{out.stdout[-1500:]!r}\n--- stderr ---\n{out.stderr[-2500:]!r}")


def ok(out: evalbox.Output) -> evalbox.Output:
    assert out.status is evalbox.Status.EXITED and out.exit_code == 0, describe(out)
    return out
