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


def test_the_last_runs_page_cache_is_not_the_next_runs_max_rss(tmp_path):
    """A run that wrote a large file leaves it in its group's page cache; the next run in the
    recycled group (or resident slot) reports its own peak, not that cache (red team round 4)."""
    import evalbox
    from evalbox.process.host import probe

    if "memory" not in probe().cgroup.controllers:
        pytest.skip("no memory cgroup this process may use (run as root, or in a delegated cgroup v2 subtree)")
    os.chmod(tmp_path, 0o777)  # (the sandbox's uid writes there)
    for i in range(3):
        first = evalbox.run(["sh", "-c", f"head -c 100000000 /dev/zero > out/{i}"],
                            mounts=[evalbox.Mount(str(tmp_path), "out", writable=True)], memory=512 << 20,
                            max_file_size=200 << 20)
        assert first.success, first.stderr
        after = evalbox.run(["/bin/true"], memory=512 << 20)
        assert after.success
        assert first.max_rss > 64 << 20, first.max_rss  # (the cache was charged to the first run's group)
        assert after.max_rss < 48 << 20, (first.max_rss, after.max_rss)
