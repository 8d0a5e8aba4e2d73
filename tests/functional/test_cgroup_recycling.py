"""A cgroup is recycled for the next run only once it is provably empty (SPEC §4.7)."""

from __future__ import annotations

import os
import subprocess

import pytest

from evalbox.kernel import cgroups


def test_a_group_holding_a_process_is_not_empty_and_is_not_recycled():
    lay = cgroups.layout()
    if "pids" not in lay.roots:
        pytest.skip("no pids cgroup controller this process may use (run as root, or in a delegated cgroup v2 "
                    "subtree with the pids controller)")
    group = cgroups.Group(lay, f"test-empty-{os.getpid()}")
    dirs = group.distinct_dirs
    proc = subprocess.Popen(["sleep", "30"])
    try:
        for d in group.distinct_dirs:
            with open(os.path.join(d, "cgroup.procs"), "w") as f:
                f.write(str(proc.pid))
        assert not group.is_empty()
        pooled = len(cgroups._pool)
        cgroups.release(group)  # must remove it (it cannot: busy) rather than pool it
        assert len(cgroups._pool) == pooled
        assert group not in cgroups._pool
    finally:
        proc.kill()
        proc.wait()
        for d in dirs:  # (release could not remove them while the process was there)
            if os.path.isdir(d):
                os.rmdir(d)
    again = cgroups.Group(lay, f"test-empty-{os.getpid()}-2")
    try:
        assert again.is_empty()
    finally:
        again.remove()
