"""SPEC §4.6: limits hold (quick checks; the functional suite covers details)."""

from __future__ import annotations

import os
import re
import secrets

import evalbox


def test_timeout_on_infinite_loop(box):
    r = box.run("limits", "spin", timeout=1)
    assert r.out.status is evalbox.Status.TIMEOUT, f"an endless loop was not stopped by the wall clock\n{r.describe()}"
    assert 0.9 <= r.out.wall_time < 2.5, f"timeout=1 ended after {r.out.wall_time:.2f}s"
    assert b"INFO spinning" in r.out.stdout, "partial output before the limit must be kept"


def test_cpu_time_limit(box):
    r = box.run("limits", "spin", cpu_time=1, timeout=10)
    assert r.out.status is evalbox.Status.CPU_LIMIT, f"cpu_time=1 did not stop an endless loop\n{r.describe()}"
    # well before the wall clock would have ended it (CPU time accrues slowly on a loaded machine)
    assert r.out.wall_time < 7, f"cpu_time=1 took {r.out.wall_time:.2f}s of wall time to act"


def test_output_flood(box):
    cap = 64 * 1024
    r = box.run("limits", "flood", max_output="64K", timeout=10)
    o = r.out
    assert o.status is evalbox.Status.OUTPUT_LIMIT, f"an output flood was not stopped\n{r.describe()}"
    assert len(o.stdout) + len(o.stderr) <= cap, f"kept {len(o.stdout) + len(o.stderr)} bytes with max_output=64K"
    assert o.stdout_truncated, "stdout_truncated must say the output was cut"
    assert o.wall_time < 5, f"the flood ran {o.wall_time:.1f}s before being stopped"


def test_memory_hog(box):
    r = box.run("limits", "memhog", "1024", memory="64M", timeout=20)
    r.assert_no_escape("memory limit")
    assert r.out.status is evalbox.Status.MEMORY_LIMIT, f"touching 1 GiB with memory=64M\n{r.describe()}"
    touched = [int(x) for x in re.findall(r"INFO touched=(\d+)", r.stdout)]
    assert not touched or max(touched) <= 64, f"the program touched {max(touched)} MiB with memory=64M"


def test_memory_hog_through_dev_shm(box, targets):
    """tmpfs pages are memory too: filling /dev/shm may not get past memory=64M, and nothing of
    it may remain after the run."""
    name = f"/dev/shm/evalbox-test-fill-{secrets.token_hex(6)}"
    targets.track(name)
    r = box.run("limits", "fsize", str(256 << 20), name, memory="64M", max_file_size=None, timeout=20)
    r.assert_no_escape("memory limit through /dev/shm")
    m = re.search(r"INFO written=(\d+)", r.stdout)
    if m:
        assert int(m.group(1)) <= (80 << 20), f"wrote {int(m.group(1)) >> 20} MiB to /dev/shm with memory=64M"
    assert not os.path.exists(name), f"{name} (from the sandbox) outlived the run"


def test_open_files_limit(box):
    r = box.run("limits", "nofile", "1000", max_open_files=32)
    r.assert_no_escape("RLIMIT_NOFILE")
    opened = int(r.info("opened") or -1)
    assert 0 <= opened <= 32 - 3, f"opened {opened} files with max_open_files=32\n{r.describe()}"
    assert "EMFILE" in r.stdout, r.describe()


def test_file_size_limit(box):
    r = box.run("limits", "fsize", str(4 << 20), max_file_size="1M")
    r.assert_no_escape("RLIMIT_FSIZE")
    m = re.search(r"INFO written=(\d+) size=(\d+) errno=\d+ \((\w+)\)", r.stdout)
    assert m, r.describe()
    written, size, err = int(m.group(1)), int(m.group(2)), m.group(3)
    assert written <= (1 << 20) and size <= (1 << 20), f"wrote {written} bytes with max_file_size=1M"
    assert err == "EFBIG", f"expected EFBIG at the limit, got {err}"
