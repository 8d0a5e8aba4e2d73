"""cgroup v2: a run is born in its own cgroup, limits are the cgroup's, a delegated subtree works.

These machines are cgroup v1; `.ci/vm` runs this file in a QEMU guest in pure cgroup v2, as root
and as uid 65534 in a delegated subtree (as systemd's Delegate=yes gives it to a user)."""

import os

import pytest

import evalbox
from evalbox.kernel import cgroups
from evalbox.process.host import probe
from evalbox.process.lockdown import prepare
from evalbox.process.spawn import spawn

pytestmark = pytest.mark.skipif(
    cgroups.layout().version != 2,
    reason="needs a host whose usable cgroups are v2 (this one: "
    f"v{cgroups.layout().version or 'none'}); `.ci/vm` runs these in a pure cgroup v2 guest")


def own_cgroup() -> str:
    with open("/proc/self/cgroup") as f:
        return next(line for line in f.read().splitlines() if line.startswith("0::")).removeprefix("0::")


def read_all(fd: int) -> str:
    chunks = []
    while chunk := os.read(fd, 65536):
        chunks.append(chunk)
    return b"".join(chunks).decode()


def cgroup_of_spawned_cat(keep_procs_fds: bool, keep_dir_fd: bool) -> tuple[str, str]:
    """Spawn `cat /proc/self/cgroup` (its first act after exec) with only some ways into the run's
    cgroup; return (what it printed, the run's cgroup path)."""
    lock = prepare(evalbox.Plan(["/bin/cat", "/proc/self/cgroup"], memory=64 << 20, max_pids=8), probe())
    r, w = os.pipe()
    try:
        if not keep_procs_fds:
            for fd in lock.cgroup_fds:
                os.close(fd)
            lock.cgroup_fds = []
        if not keep_dir_fd and lock.cgroup_dir_fd >= 0:
            os.close(lock.cgroup_dir_fd)
            lock.cgroup_dir_fd = -1
        group_dir = lock.cgroup.distinct_dirs[0]
        pid, pidfd, _, _ = spawn(lock, r, w, w)
        os.close(w)
        w = -1
        out = read_all(r)
        os.waitpid(pid, 0)
        os.close(pidfd)
        mount = next(m for m, fstype, _ in cgroups._mounts() if fstype == "cgroup2")
        return out, "/" + os.path.relpath(group_dir, mount)
    finally:
        os.close(r)
        if w >= 0:
            os.close(w)
        lock.close()


def test_a_run_is_born_in_its_cgroup_without_moving_into_it():
    # no cgroup.procs fd: the child has no way to join the group but being cloned into it
    out, group = cgroup_of_spawned_cat(keep_procs_fds=False, keep_dir_fd=True)
    assert out.strip() == f"0::{group}", f"the program started outside its cgroup {group}: {out!r}"
    assert group != own_cgroup()


def test_the_cgroup_procs_path_still_works_without_a_directory_fd():
    # the path kernels before 5.7 (no CLONE_INTO_CGROUP) take
    out, group = cgroup_of_spawned_cat(keep_procs_fds=True, keep_dir_fd=False)
    assert out.strip() == f"0::{group}"


def test_the_run_and_its_children_live_in_the_runs_cgroup():
    out = evalbox.run(evalbox.Plan(["/bin/sh", "-c", "cat /proc/self/cgroup; (cat /proc/self/cgroup)"],
                                   memory=64 << 20, max_pids=16))
    lines = out.stdout.decode().split()
    assert out.exit_code == 0, out
    assert len(lines) == 2 and lines[0] == lines[1], lines
    assert f"/evalbox-{os.getpid()}/" in lines[0], lines


def test_memory_and_pids_are_the_cgroups():
    out = evalbox.run(evalbox.Plan(["/bin/true"], memory=64 << 20, max_pids=16))
    assert out.exit_code == 0, out
    p = out.protections
    assert p.cgroup.startswith("v2: ") and "cgroup v2" in p.memory and "cgroup v2" in p.processes, p


def test_going_over_memory_is_an_oom_kill_of_the_group():
    plan = evalbox.Plan(["/bin/sh", "-c", "x=a; while :; do x=$x$x$x$x; done"], memory=48 << 20, timeout=60)
    out = evalbox.run(plan)
    assert out.status is evalbox.Status.MEMORY_LIMIT, out


def test_a_delegated_caller_lives_in_a_leaf_and_its_cgroup_hands_out_the_controllers():
    mount = next(m for m, fstype, _ in cgroups._mounts() if fstype == "cgroup2")
    own = own_cgroup()
    if own == "/":
        pytest.skip("the caller is in the root cgroup (root host): nothing is delegated")
    assert os.path.basename(own) == cgroups.LEAF, own
    delegated = os.path.join(mount, os.path.dirname(own).lstrip("/"))
    with open(os.path.join(delegated, "cgroup.subtree_control")) as f:
        enabled = set(f.read().split())
    assert {"memory", "pids"} <= enabled
    with open(os.path.join(delegated, "cgroup.procs")) as f:
        assert f.read().split() == []  # no process left where controllers are handed out
