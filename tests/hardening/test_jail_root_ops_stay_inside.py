"""The jail's root is built by a list of operations (mkdir, symlink, file, bind, tmpfs...; see
kernel/_spawn.c apply_root_ops). Whatever a step finds on its way (a symlink planted in the new
root or in a tree bound into it, `..`, a source that vanished), no step acts on the host's
filesystem and the first failure ends the build before anything runs.

The operations are given straight to the C builder (build_template: the same code a run's init
uses), aimed at sacrificial host directories this test creates."""

from __future__ import annotations

import errno
import os
import secrets
import shutil
import stat

import pytest

import evalbox
from evalbox.errors import SpawnError
from evalbox.kernel import _spawn
from evalbox.process.host import probe

pytestmark = pytest.mark.skipif(not probe().jail or probe().jail_userns,
                                reason="no root-host jail here (build_template needs root with CAP_SYS_ADMIN; "
                                "`evalbox check` says why): the jail's root is not built from templates here")

SYMLINK, DIR, FILE, BIND, TMPFS = _spawn.ROOT_SYMLINK, _spawn.ROOT_DIR, _spawn.ROOT_FILE, _spawn.ROOT_BIND, _spawn.ROOT_TMPFS


def _op(op, path, data=b"", mode=0o755, flags=0):
    return (op, path.encode() if isinstance(path, str) else path, data.encode() if isinstance(data, str) else data,
            mode, flags, 0)


@pytest.fixture
def victim():
    """A host directory (mode 0700, one file) outside /tmp, where the builder stages its root."""
    top = os.path.join("/var/tmp", "evalbox-rootops-" + secrets.token_hex(6))
    os.mkdir(top, 0o700)
    with open(os.path.join(top, "keep"), "w") as f:
        f.write("unchanged")
    try:
        yield top
    finally:
        shutil.rmtree(top, ignore_errors=True)


def _host_state(victim: str) -> tuple:
    null = os.lstat("/dev/null")
    tmp = os.lstat("/tmp")
    return (sorted(os.listdir(victim)), stat.S_IMODE(os.stat(victim).st_mode), open(os.path.join(victim, "keep")).read(),
            stat.S_ISCHR(null.st_mode), null.st_rdev, stat.S_ISDIR(tmp.st_mode), stat.S_IMODE(tmp.st_mode))


CASES = {
    # a link in the new root, then steps through it: the old builder wrote the host's file, chmod'ed
    # the host's directory
    "file through a planted link": lambda v: [_op(SYMLINK, "/esc", v), _op(FILE, "/esc/planted", "x")],
    "chmod of a planted link": lambda v: [_op(SYMLINK, "/esc", v), _op(DIR, "/esc", mode=0o777)],
    "directory below a planted link": lambda v: [_op(SYMLINK, "/esc", v), _op(DIR, "/esc/made", mode=0o777)],
    "link below a planted link": lambda v: [_op(SYMLINK, "/esc", v), _op(SYMLINK, "/esc/python", "python3")],
    "mount on a planted link": lambda v: [_op(SYMLINK, "/esc", v), _op(TMPFS, "/esc", "size=1m")],
    # the reported damage: the host's /dev/null replaced by a link to python3
    "link over /dev/null through a link to /dev": lambda v: [_op(SYMLINK, "/dev", "/dev"),
                                                            _op(SYMLINK, "/dev/null", "python3")],
    # `..` out of the staging root onto the host
    "file by ..": lambda v: [_op(DIR, "/a"), _op(FILE, "/a/../../.." + v + "/planted", "x")],
    "link by ..": lambda v: [_op(SYMLINK, "/../../.." + v + "/planted", "python3")],
    # a step fails midway: a late bind whose source is not there, after steps that succeeded
    "late bind of a missing source": lambda v: [_op(DIR, "/a"), _op(FILE, "/a/f", "x"),
                                                _op(BIND, "/b", "/missing", flags=_spawn.ROOT_LATE)],
    "late bind of a link": lambda v: [_op(SYMLINK, "/esc", v),
                                      _op(BIND, "/b", "/esc", flags=_spawn.ROOT_LATE | _spawn.ROOT_IS_DIR)],
}


@pytest.mark.parametrize("name", list(CASES))
def test_a_root_step_that_meets_a_link_or_fails_changes_nothing_on_the_host(victim, name):
    before = _host_state(victim)
    with pytest.raises(OSError) as failed:
        os.close(_spawn.build_template(CASES[name](victim)))
    assert failed.value.errno in (errno.ELOOP, errno.EXDEV, errno.ENOENT, errno.ENOTDIR, errno.EEXIST), failed.value
    assert _host_state(victim) == before


def test_a_bind_whose_source_vanishes_fails_the_build_and_leaves_it_in_place(victim):
    source = os.path.join(victim, "src")
    os.mkdir(source)
    entries = [_op(DIR, "/a"), _op(BIND, source, source, flags=_spawn.ROOT_IS_DIR | _spawn.ROOT_NOFOLLOW)]
    os.close(_spawn.build_template(entries))  # the same list builds while the source is there
    os.rmdir(source)
    before = _host_state(victim)
    with pytest.raises(OSError) as failed:
        os.close(_spawn.build_template(entries))
    assert failed.value.errno == errno.ENOENT
    assert _host_state(victim) == before


def test_a_run_whose_mount_source_is_swapped_for_a_link_fails_before_the_program(victim, monkeypatch):
    """Through the public API: the plan's mount source is replaced by a link to a host directory
    after the plan was checked (as a concurrent run with that tree writable could do). The run's
    root is built per run (collect=...): the init refuses the source, the program never runs, and
    neither the link's target nor the source's place changes."""
    source = os.path.join(victim, "data")
    os.mkdir(source)
    marker = os.path.join(victim, "ran")
    from evalbox.process import sandbox

    real = sandbox.prepare

    def prepare_then_swap(*args, **kwargs):  # (before the spawn, by the caller or a slot's launcher)
        lock = real(*args, **kwargs)
        os.rmdir(source)
        os.symlink(victim, source)
        return lock

    monkeypatch.setattr(sandbox, "prepare", prepare_then_swap)
    before_null = os.lstat("/dev/null")
    with pytest.raises(SpawnError) as failed:
        evalbox.run(["sh", "-c", f"touch {marker} /tmp/x; ls {source}"], mounts=[evalbox.Mount(source)],
                    collect=["out"], timeout=10)
    assert failed.value.errno == errno.ELOOP and "build the jail's root" in str(failed.value), str(failed.value)
    assert not os.path.exists(marker)
    assert os.path.islink(source) and os.readlink(source) == victim
    assert sorted(os.listdir(victim)) == ["data", "keep"]
    null = os.lstat("/dev/null")
    assert stat.S_ISCHR(null.st_mode) and null.st_rdev == before_null.st_rdev


def test_a_template_fd_naming_the_host_mount_namespace_is_refused(victim):
    """A run's operations are applied inside the template's root; given the host's own mount
    namespace instead (a stale fd number), the init refuses before any step."""
    from evalbox.process import lockdown, templates

    host_ns = os.open("/proc/self/ns/mnt", os.O_RDONLY | os.O_CLOEXEC)
    real = templates.template_fd

    def host_namespace(entries, stamp):
        templates._users[host_ns] = 1  # given back by the run (templates.release)
        return host_ns

    before = _host_state(victim)
    try:
        lockdown.templates.template_fd = host_namespace
        with pytest.raises(SpawnError) as failed:
            evalbox.run(["/bin/true"], files={"planted.txt": "x"}, timeout=10)
    finally:
        lockdown.templates.template_fd = real
        os.close(host_ns)
    assert failed.value.errno == errno.EBADF, failed.value
    assert _host_state(victim) == before


def _listing(ns_fd: int, path: str) -> list[str]:
    """os.listdir(path) inside the mount namespace `ns_fd` (from a thread of its own)."""
    import threading

    from evalbox.kernel.syscall_table import ARCHES, native_arch

    nr = ARCHES[native_arch()]
    got: list = []

    def look() -> None:
        try:
            _spawn.syscall(nr["unshare"], 0x200)  # CLONE_FS: this thread's own root
            _spawn.syscall(nr["setns"], ns_fd, 0x20000)
            got.append(sorted(os.listdir(path)))
        except OSError as e:
            got.append(e)

    t = threading.Thread(target=look)
    t.start()
    t.join()
    if isinstance(got[0], OSError):
        raise got[0]
    return got[0]


def test_an_operation_after_a_mount_over_its_directory_lands_on_that_mount():
    """Operations in one directory share its fd; a mount placed over that directory (or above it)
    must send the next ones into the mount, not into the directory it hides."""
    ns = _spawn.build_template([_op(DIR, "/a"), _op(FILE, "/a/hidden", "x"), _op(TMPFS, "/a", "size=1m"),
                                _op(FILE, "/a/shown", "y"), _op(DIR, "/b/c"), _op(TMPFS, "/b", "size=1m"),
                                _op(FILE, "/b/c2", "z")])
    try:
        assert _listing(ns, "/a") == ["shown"]
        assert _listing(ns, "/b") == ["c2"]
    finally:
        os.close(ns)
