"""SPEC §4.1: the program reads only what it needs and writes only its workspace.

Writes aim at sacrificial files the test creates (never at real system files). Many targets are
world-readable or world-writable on purpose: then file permissions stop nobody, and only the
sandbox (Landlock) can be what stops the attack.
"""

from __future__ import annotations

import dataclasses
import os
import secrets
import stat
import subprocess
import sys

import pytest

import evalbox
from evalbox.process.host import probe
from escape_kit import snapshot
from portability import known_nonroot_gap

READ_ERRNOS = {"EACCES", "EPERM", "ENOENT"}  # ENOENT: hidden entirely is fine for reads
# EXDEV is Landlock's answer to a link or rename that would need the REFER right; the tests that
# depend on it put their targets on the workspace's own filesystem, so the kernel's own
# cross-device check cannot be what answers.
WRITE_ERRNOS = {"EACCES", "EPERM", "EROFS", "EXDEV", "ENOENT", "EOPNOTSUPP"}


def _shadow_sample() -> bytes:
    if not os.access("/etc/shadow", os.R_OK):
        pytest.skip("needs root: /etc/shadow is unreadable to this user anyway, so only a root caller tests the sandbox")
    with open("/etc/shadow", "rb") as f:
        return f.read(64)


# -- reads ------------------------------------------------------------------------------------


@pytest.mark.parametrize("path", [
    "/etc/shadow",
    "/etc/../etc/shadow",
    "/etc//./shadow",
    "/usr/../etc/shadow",
    "/proc/self/root/etc/shadow",
    "/proc/1/root/etc/shadow",
    "/etc/gshadow",
])
def test_read_shadow(box, path):
    sample = _shadow_sample().split(b"\n")[0]
    r = box.run("fs_attacks", "read", path)
    assert sample not in r.out.stdout, f"ESCAPE: {path} was read\n{r.describe()}"
    r.blocked_how("read", READ_ERRNOS)


def test_read_shadow_via_workspace_symlink(box):
    r = box.run("fs_attacks", "symlink", "/etc/shadow")
    r.blocked_how("read_via_symlink", READ_ERRNOS)


def test_hardlink_shadow_into_workspace(box):
    r = box.run("fs_attacks", "hardlink", "/etc/shadow")
    r.blocked_how("link", WRITE_ERRNOS)


@pytest.mark.parametrize("where,mode", [
    ("/etc", 0o600), ("/etc", 0o644), ("/root", 0o600), ("/root", 0o644),
    ("/tmp", 0o600), ("/tmp", 0o644), ("/var/tmp", 0o644),
])
def test_read_sacrificial_secret(box, targets, where, mode):
    path, secret = targets.file(where, mode)
    r = box.run("fs_attacks", "read", path)
    assert secret.strip() not in r.out.stdout, f"ESCAPE: read {path} (mode {oct(mode)})\n{r.describe()}"
    r.blocked_how("read", READ_ERRNOS)


def test_read_world_readable_secret_in_open_dir(box, targets):
    """0644 file in a 0755 directory of /tmp: file permissions allow everyone."""
    d = targets.dir("/tmp", 0o755)
    path, secret = targets.file(d, 0o644)
    r = box.run("fs_attacks", "read", path)
    assert secret.strip() not in r.out.stdout, f"ESCAPE: read world-readable {path}\n{r.describe()}"
    r.blocked_how("read", READ_ERRNOS)


def test_read_host_working_directory(box):
    """The caller's working tree (world-readable source files here)."""
    path = os.path.abspath(__file__)
    with open(path, "rb") as f:
        head = f.read(40)
    r = box.run("fs_attacks", "read", path)
    assert head not in r.out.stdout, f"ESCAPE: read the host's working directory file {path}\n{r.describe()}"
    r.blocked_how("read", READ_ERRNOS)


def test_list_root_home(box):
    r = box.run("fs_attacks", "ls", "/root")
    granted = {os.path.relpath(p, "/root").split("/")[0] for p in (os.path.realpath(sys.executable), sys.base_prefix)
               if p.startswith("/root/")}
    if probe().jail and box.start == "warm" and granted:
        # The jail's /root holds only what was granted: the warm interpreter's own tree (a cold
        # run of the same interpreter sees the same); nothing else of the host's /root exists.
        listed = [line.split(": ", 2)[2].split() for line in r.lines("ESCAPED") if line.startswith("ls:")]
        assert listed and set(listed[0]) <= granted, f"/root shows more than the interpreter's tree\n{r.describe()}"
        return
    r.blocked_how("ls", READ_ERRNOS)


@pytest.mark.parametrize("path", ["/dev/kmsg", "/dev/mem", "/dev/vda", "/dev/vsock", "/dev/tty", "/dev/console"])
def test_read_devices(box, path):
    r = box.run("fs_attacks", "read", path)
    r.blocked_how("read", READ_ERRNOS | {"ENXIO", "ENODEV"})


# -- /proc of host processes ----------------------------------------------------------------------


def test_proc_environ_of_host_process(box, sleeper):
    r = box.run("fs_attacks", "read", f"/proc/{sleeper.pid}/environ")
    assert sleeper.secret.encode() not in r.out.stdout, f"ESCAPE: read a host process's environment\n{r.describe()}"
    r.blocked_how("read", READ_ERRNOS | {"ESRCH"})


@known_nonroot_gap("a sandbox sharing the caller's uid can list /proc/<caller>/fd (its environ and memory stay unreadable)")
def test_proc_files_of_the_caller(box):
    """The test runner's own environment (CI secrets live there), memory map, memory and fds."""
    pid = os.getpid()
    paths = [f"/proc/{pid}/environ", f"/proc/{pid}/maps", f"/proc/{pid}/mem", f"/proc/{pid}/auxv",
             f"/proc/{pid}/stack", f"/proc/{pid}/syscall"]
    with open(f"/proc/{pid}/environ", "rb") as f:
        env_sample = max(f.read().split(b"\0"), key=len)[:60]
    r = box.run("fs_attacks", "read", *paths)
    assert env_sample not in r.out.stdout, f"ESCAPE: read the calling process's environment\n{r.describe()}"
    leaked = r.lines("ESCAPED")
    assert not leaked, f"ESCAPE: the sandbox read the calling process's /proc files: {leaked}\n{r.describe()}"
    r = box.run("fs_attacks", "ls", f"/proc/{pid}/fd/", f"/proc/{pid}/root/", f"/proc/{pid}/cwd/")
    assert not r.lines("ESCAPED"), f"ESCAPE: listed the calling process's fds, root or cwd\n{r.describe()}"


def test_proc_root_of_host_process(box, sleeper, targets):
    path, secret = targets.file("/etc", 0o644)
    r = box.run("fs_attacks", "read", f"/proc/{sleeper.pid}/root{path}")
    assert secret.strip() not in r.out.stdout, f"ESCAPE: read {path} through /proc/<pid>/root\n{r.describe()}"
    r.blocked_how("read", READ_ERRNOS)
    r = box.run("fs_attacks", "ls", f"/proc/{sleeper.pid}/root/", f"/proc/{sleeper.pid}/cwd/", f"/proc/{sleeper.pid}/fd/")
    assert not r.lines("ESCAPED"), f"ESCAPE: listed a host process's root, cwd or fds\n{r.describe()}"


# -- writes -------------------------------------------------------------------------------------


@pytest.fixture
def victims(targets):
    """Sacrificial files: root-owned 0644 in /etc, and world-writable ones in /etc and in a
    world-writable /tmp directory (only the sandbox can protect those)."""
    open_dir = targets.dir("/tmp", 0o777)
    out = Victims(open_dir=open_dir, tmp_0666=targets.file(open_dir, 0o666, prefix="victim")[0])
    if os.geteuid() == 0:  # only root can plant files in /etc; the others' tests skip (Victims.__missing__)
        out["etc_0644"] = targets.file("/etc", 0o644, prefix="victim")[0]
        out["etc_0666"] = targets.file("/etc", 0o666, prefix="victim")[0]
    return out


class Victims(dict):
    def __missing__(self, key: str) -> str:
        pytest.skip(f"needs root: the {key} victim is a file root plants in /etc (run the suite as root, as .ci/run does)")


@pytest.mark.parametrize("op", ["append", "overwrite", "truncate"])
@pytest.mark.parametrize("which", ["etc_0644", "etc_0666", "tmp_0666"])
def test_modify_file_outside(box, victims, op, which):
    path = victims[which]
    before = snapshot(path)
    r = box.run("fs_attacks", op, path)
    after = snapshot(path)
    assert after.content == before.content, f"ESCAPE: {op} changed {path}: {after.content!r}\n{r.describe()}"
    r.assert_no_escape(f"{op} {path}")
    r.blocked_how({"truncate": "truncate", "append": "append", "overwrite": "overwrite"}[op], WRITE_ERRNOS)
    if op == "truncate" and not r.sigsys:
        r.blocked_how("open_trunc", WRITE_ERRNOS)


@pytest.mark.parametrize("where", ["/root", "/tmp", "/etc", "/usr", "/usr/local/bin", "/var/tmp", "open_dir"])
def test_create_file_outside(box, victims, targets, where):
    directory = victims["open_dir"] if where == "open_dir" else where
    path = targets.track(os.path.join(directory, f"evalbox-test-create-{secrets.token_hex(8)}"))
    r = box.run("fs_attacks", "create", path)
    assert not os.path.lexists(path), f"ESCAPE: the sandbox created {path}\n{r.describe()}"
    if where == "/tmp" and (probe().jail or "/tmp" in " ".join(r.out.protections.namespaces)):
        return  # its own /tmp (the jail's, or a private one): the host's stays untouched (checked above)
    r.blocked_how("create", WRITE_ERRNOS)


@pytest.mark.parametrize("op", ["mkdir", "symlink_out"])
def test_make_entries_in_open_dir(box, victims, targets, op):
    path = targets.track(os.path.join(victims["open_dir"], f"evalbox-test-{op}-{secrets.token_hex(8)}"))
    r = box.run("fs_attacks", op, path)
    assert not os.path.lexists(path), f"ESCAPE: {op} created {path}\n{r.describe()}"
    r.blocked_how(op, WRITE_ERRNOS)


@pytest.mark.parametrize("which", ["etc_0644", "tmp_0666"])
def test_rename_and_unlink_outside(box, victims, targets, which):
    """Renames and deletes outside, within one outside directory."""
    path = victims[which]
    before = snapshot(path)
    renamed = targets.track(path + "-renamed")
    r = box.run("fs_attacks", "rename", path, renamed)
    assert not os.path.lexists(renamed) and snapshot(path) == before, f"ESCAPE: renamed {path}\n{r.describe()}"
    r.blocked_how("rename", WRITE_ERRNOS)
    r = box.run("fs_attacks", "unlink", path)
    assert snapshot(path) == before, f"ESCAPE: unlinked {path}\n{r.describe()}"
    r.blocked_how("unlink", WRITE_ERRNOS)


@pytest.mark.parametrize("which", ["etc_0644", "etc_0666", "tmp_0666"])
def test_metadata_of_root_owned_file(box, victims, which):
    """chmod/chown/utime/setxattr: Landlock does not cover metadata; a sandbox that kept uid 0
    could chmod system files. Nothing about the file may change."""
    path = victims[which]
    before = snapshot(path)
    r = box.run("fs_attacks", "meta", path)
    after = snapshot(path)
    assert after == before, f"ESCAPE: metadata of {path} changed: {before} -> {after}\n{r.describe()}"
    for call in ("chmod", "chown", "lchown", "utimensat", "setxattr", "setxattr_security"):
        r.blocked_how(call, WRITE_ERRNOS)
        if r.sigsys:
            break


def test_touch_world_writable_file_outside(box, victims):
    """utimes(NULL) ("now") is allowed by the kernel to anyone who may write the file, and Landlock
    does not cover timestamps. Documented limit (README): on a root host a sandbox can stamp a
    world-writable file it can name; it still cannot change its content, mode or owner."""
    path = victims["tmp_0666"]
    os.utime(path, ns=(10**18, 10**18))
    before = snapshot(path)
    r = box.run("fs_attacks", "touch", path)
    after = snapshot(path)
    assert dataclasses.replace(after, mtime_ns=before.mtime_ns, ctime_ns=before.ctime_ns) == before, (
        f"ESCAPE: the sandbox changed more than the times of {path} outside its workspace\n{r.describe()}")


# -- cgroups --------------------------------------------------------------------------------------


def test_cgroup_limits_and_membership(box):
    """The program may not raise its own limits or move out of its cgroup."""
    r = box.run("fs_attacks", "cgroup")
    r.assert_no_escape("cgroup")
    assert r.lines("BLOCKED") or r.sigsys, f"no cgroup attempt was made\n{r.describe()}"


# -- /dev/shm -------------------------------------------------------------------------------------
# evalbox grants /dev/shm to sandboxes that have a uid of their own (POSIX semaphores for
# multiprocessing) and removes their entries after the run. That must not open the host's own
# /dev/shm files, which file modes alone often leave readable (0644) or writable (0666).


def test_dev_shm_host_files_not_readable(box, targets):
    path, secret = targets.file("/dev/shm", 0o644)
    r = box.run("fs_attacks", "read", path)
    assert secret.strip() not in r.out.stdout, f"ESCAPE: read the host's /dev/shm file {path} (mode 0644)\n{r.describe()}"
    r.blocked_how("read", READ_ERRNOS)


def test_dev_shm_host_files_not_writable(box, targets):
    path, data = targets.file("/dev/shm", 0o666, prefix="victim")
    before = snapshot(path)
    r = box.run("fs_attacks", "append", path)
    after = snapshot(path)
    assert after.content == before.content, f"ESCAPE: appended to the host's /dev/shm file {path} (mode 0666)\n{r.describe()}"
    r.blocked_how("append", WRITE_ERRNOS)
    r = box.run("fs_attacks", "truncate", path)
    assert snapshot(path).content == data, f"ESCAPE: truncated the host's /dev/shm file {path}\n{r.describe()}"
    r.blocked_how("truncate", WRITE_ERRNOS)
    r = box.run("fs_attacks", "unlink", path)
    assert os.path.exists(path), f"ESCAPE: deleted the host's /dev/shm file {path}\n{r.describe()}"


def test_dev_shm_entries_removed_after_run(box, targets):
    """Whatever the program may create in /dev/shm, nothing of it outlives the run."""
    def owner(path: str) -> int | None:
        try:
            return os.lstat(path).st_uid
        except FileNotFoundError:  # other users of /dev/shm come and go while we look
            return None

    # A caller that is not root shares its uid with the sandbox (and with its other programs, which
    # may use /dev/shm meanwhile): then only entries that appeared during the run can be the run's.
    before = set(os.listdir("/dev/shm")) if os.geteuid() != 0 else set()
    path = targets.track(f"/dev/shm/evalbox-test-create-{secrets.token_hex(8)}")
    r = box.run("fs_attacks", "create", path)
    assert not os.path.lexists(path), f"{path}, created by the sandbox, outlived the run\n{r.describe()}"
    leftovers = [e.path for e in os.scandir("/dev/shm")
                 if r.uid is not None and e.name not in before and owner(e.path) == r.uid]
    assert not leftovers, f"entries of the finished sandbox remain in /dev/shm: {leftovers}"


# -- mounts, renames out, device nodes ---------------------------------------------------------


def test_readonly_mount_is_read_only(box, targets):
    """A world-writable host directory given as Mount.ro: readable, but nothing in it may change."""
    d = targets.dir("/tmp", 0o777)
    victim, data = targets.file(d, 0o666, prefix="victim")
    new = targets.track(os.path.join(d, f"evalbox-test-create-{secrets.token_hex(6)}"))
    mounts = [evalbox.Mount.ro(d), evalbox.Mount.ro(d, "ro")]
    r = box.run("fs_attacks", "read", victim, mounts=mounts)
    assert data.strip() in r.out.stdout, f"a Mount.ro file must be readable\n{r.describe()}"
    for op, args, attack in (("append", [victim], "append"), ("overwrite", ["ro/" + os.path.basename(victim)], "overwrite"),
                             ("truncate", [victim], "truncate"), ("create", [new], "create"),
                             ("unlink", [victim], "unlink"), ("meta", [victim], "chmod")):
        r = box.run("fs_attacks", op, *args, mounts=mounts)
        r.blocked_how(attack, WRITE_ERRNOS)
    assert snapshot(victim).content == data and not os.path.exists(new), "ESCAPE: a read-only mount was written"


def test_device_node_refused(box):
    """A /dev/mem node made in the workspace would be opened with the workspace's rights."""
    r = box.run("fs_attacks", "mknod", "chr", "memdev")
    r.blocked_how("mknod_chr", WRITE_ERRNOS)


def test_mkfifo_in_workspace_works(box):
    """Ordinary behaviour: named pipes in the workspace (shell scripts use them)."""
    r = box.run("fs_attacks", "mknod", "fifo", "fifo")
    assert r.lines("OK"), f"mkfifo in the workspace is ordinary and must work\n{r.describe()}"


def test_cleanup_does_not_follow_planted_links(box, targets):
    """The program replaces its tmp/ and home/ with links to host paths and plants links and
    locked directories; cleaning (or recycling) its workspace as root must not follow any of them."""
    d = targets.dir("/tmp", 0o755)
    inner, inner_data = targets.file(d, 0o644, prefix="victim")
    victim, victim_data = targets.file("/etc", 0o644, prefix="victim")
    before_dir, before_inner, before_victim = snapshot(d), snapshot(inner), snapshot(victim)
    script = (
        f"rm -rf ../tmp && ln -s {d} ../tmp; rm -rf ../home && ln -s {victim} ../home; "
        f"ln -s {d} dirlink; ln -s {victim} filelink; mkdir -p sub/deeper && ln -s {d} sub/deeper/x && "
        f"ln -s / sub/root && chmod 000 sub/deeper sub; ls -la ..; true"
    )
    r = box.run_argv(["/bin/sh", "-c", script])
    assert r.out.success, r.describe()
    assert snapshot(d) == before_dir and snapshot(inner) == before_inner, (
        f"ESCAPE: cleaning the workspace touched the host directory {d}: {snapshot(d)} {snapshot(inner)}")
    assert snapshot(victim) == before_victim, f"ESCAPE: cleaning the workspace touched {victim}: {snapshot(victim)}"
    assert os.path.isdir("/etc") and os.stat("/etc").st_uid == 0 and os.stat("/").st_uid == 0
    for _ in range(3):  # later runs (recycled trees among them) get real, writable directories
        r = box.run_argv(["/bin/sh", "-c", 'test -d ../tmp -a ! -L ../tmp -a -d ../home -a ! -L ../home '
                                           '&& touch "$TMPDIR/x" "$HOME/y" && echo fine'])
        assert r.out.stdout == b"fine\n", f"a later run got a broken workspace\n{r.describe()}"
    assert snapshot(d) == before_dir and snapshot(inner).content == inner_data
    assert snapshot(victim).content == victim_data


# -- links and renames across the workspace boundary ---------------------------------------------


@pytest.fixture(params=["workspace_fs", "tmp"])
def crossing(request, targets, workspace_base):
    """A world-writable directory holding a world-writable root-owned victim, on the workspace's
    own filesystem (so the kernel's cross-device check cannot be what refuses) and in /tmp."""
    base = workspace_base if request.param == "workspace_fs" else "/tmp"
    d = targets.dir(base, 0o777)
    victim, data = targets.file(d, 0o666, prefix="victim")
    return d, victim, data


def test_hardlink_outside_file_into_workspace(box, crossing):
    """protected_hardlinks lets anyone link a file they may read and write (0666): only the
    sandbox can refuse to let a workspace name reach an outside inode."""
    d, victim, data = crossing
    r = box.run("fs_attacks", "hardlink", victim)
    assert snapshot(victim).content == data, f"ESCAPE: {victim} was modified through a hard link\n{r.describe()}"
    assert os.stat(victim).st_nlink == 1, f"ESCAPE: {victim} gained a hard link\n{r.describe()}"
    r.blocked_how("link", WRITE_ERRNOS)


def test_rename_outside_file_into_workspace(box, crossing):
    d, victim, data = crossing
    before = snapshot(victim)
    r = box.run("fs_attacks", "rename_in", victim)
    assert snapshot(victim) == before, f"ESCAPE: moved {victim} into the workspace\n{r.describe()}"
    r.blocked_how("rename_in", WRITE_ERRNOS)


def test_link_workspace_file_out(box, crossing, targets):
    d, _, _ = crossing
    path = targets.track(os.path.join(d, f"evalbox-test-linkout-{secrets.token_hex(8)}"))
    r = box.run("fs_attacks", "link_out", path)
    assert not os.path.lexists(path), f"ESCAPE: a workspace file was hard-linked out to {path}\n{r.describe()}"
    r.blocked_how("link_out", WRITE_ERRNOS)


def test_rename_workspace_file_out(box, crossing, targets):
    d, _, _ = crossing
    dest = targets.track(os.path.join(d, f"evalbox-test-moved-{secrets.token_hex(6)}"))
    r = box.run("fs_attacks", "rename_out", dest)
    assert not os.path.lexists(dest), f"ESCAPE: a workspace file was moved out to {dest}\n{r.describe()}"
    r.blocked_how("rename_out", WRITE_ERRNOS)


def test_stale_sweep_survives_planted_leftovers(targets):
    """A sandbox may create files in /dev/shm (where workspaces live) and a dead caller leaves its
    sandboxes' trees behind; the next evalbox process sweeps entries named evalbox-<dead pid>-*
    as root. Planted entries must neither redirect that sweep (links to host paths) nor make it
    change the shared directory itself. Checked on a sacrificial base dir (EVALBOX_TMPDIR)."""
    base = targets.dir("/tmp", 0o1777)
    os.chmod(base, 0o1777)
    victim_dir = targets.dir("/tmp", 0o755)
    inner, inner_data = targets.file(victim_dir, 0o644, prefix="victim")
    victim, victim_data = targets.file("/etc", 0o644, prefix="victim")
    with open("/proc/sys/kernel/pid_max") as f:
        dead = int(f.read()) + 4242  # no process can have this pid
    # what a sandbox can make in /dev/shm: a regular file with a workspace-like name
    with open(os.path.join(base, f"evalbox-{dead}-planted"), "w") as f:
        f.write("x")
    # what a dead run's own workspace can hold: links out and locked directories
    ws = os.path.join(base, f"evalbox-{dead + 1}-deadrun")
    os.makedirs(os.path.join(ws, "work", "locked", "deeper"))
    os.symlink(victim_dir, os.path.join(ws, "work", "dirlink"))
    os.symlink(victim, os.path.join(ws, "work", "filelink"))
    os.symlink(victim_dir, os.path.join(ws, "tmp"))
    os.symlink(victim_dir, os.path.join(ws, "work", "locked", "deeper", "x"))
    os.chmod(os.path.join(ws, "work", "locked", "deeper"), 0)
    os.chmod(os.path.join(ws, "work", "locked"), 0)
    before = (snapshot(victim_dir), snapshot(inner), snapshot(victim))
    code = "import evalbox, sys; o = evalbox.run(['/bin/true'], timeout=10); print(o.status.name, o.exit_code)"
    env = dict(os.environ, EVALBOX_TMPDIR=base)
    p = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, timeout=60)
    mode = stat.S_IMODE(os.stat(base).st_mode)
    assert mode == 0o1777, (
        f"HOST DAMAGE: sweeping planted leftovers changed the shared base directory's mode to {oct(mode)} "
        f"(with the default base this is /dev/shm)\n{p.stderr.decode(errors='replace')[-2000:]}")
    assert (snapshot(victim_dir), snapshot(inner), snapshot(victim)) == before, "HOST DAMAGE: the sweep followed a planted link"
    assert snapshot(inner).content == inner_data and snapshot(victim).content == victim_data
    assert p.returncode == 0 and p.stdout.split() == [b"EXITED", b"0"], (
        f"a planted leftover keeps evalbox from starting:\n{p.stdout!r}\n{p.stderr.decode(errors='replace')[-2000:]}")
    assert not os.path.lexists(ws), f"the dead run's workspace {ws} was not swept"
