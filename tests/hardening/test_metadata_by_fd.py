"""Red-team finding (promise 1): a sandbox that shares the caller's uid changed the mode, owner
and times of the caller's files through fds of a read-only mount (fchmod, fchown, futimens):
Landlock does not cover metadata and the kernel lets a file's owner change it through any fd.
These calls are now done by evalbox, and only on files named inside the workspace."""

from __future__ import annotations

import os
import shutil
import stat
import tempfile

import pytest

from hardening_kit import NOBODY, SYSTEM_PYTHON, run_snippet

# (the programs below report each attempt on a line: "<label> done" or "<label> refused <errno>")
ATTEMPT = r'''
def attempt(label, fn):
    try:
        fn()
        print(label, "done", flush=True)
    except OSError as e:
        print(label, "refused", e.errno, flush=True)
'''

PROGRAM = ATTEMPT + r'''
import os, sys
data, folder = sys.argv[1], sys.argv[2]
fd = os.open(data, os.O_RDONLY)
attempt("fchmod-file", lambda: os.fchmod(fd, 0o666))
attempt("futimens", lambda: os.utime(fd, (0, 0)))
attempt("fchown", lambda: os.fchown(fd, -1, -1))
dfd = os.open(folder, os.O_RDONLY | os.O_DIRECTORY)
attempt("fchmod-dir", lambda: os.fchmod(dfd, 0o777))
with open("mine.txt", "w") as own:       # the workspace's own files: still changeable
    os.fchmod(own.fileno(), 0o600)
    os.utime(own.fileno(), (5, 5))
print("own", oct(os.stat("mine.txt").st_mode & 0o777), int(os.stat("mine.txt").st_mtime), flush=True)
'''


def test_fd_metadata_of_a_read_only_mount_is_refused(caller):
    if not os.path.exists(SYSTEM_PYTHON):
        pytest.skip(f"needs {SYSTEM_PYTHON} (apt-get install python3.11)")
    base = tempfile.mkdtemp(prefix="harden-fdmeta-")
    folder = os.path.join(base, "dataset")
    data = os.path.join(folder, "data.csv")
    # (a root host's sandbox is another uid: the mount must be readable by others)
    dir_mode, file_mode = (0o700, 0o600) if caller == "nobody" else (0o755, 0o644)
    try:
        os.mkdir(folder, dir_mode)
        os.chmod(folder, dir_mode)
        with open(data, "w") as f:
            f.write("a,b\n")
        os.chmod(data, file_mode)
        os.utime(data, (1_000_000_000, 1_000_000_000))
        if caller == "nobody":
            for path in (base, folder, data):
                os.chown(path, NOBODY, NOBODY)
        os.chmod(base, 0o755)
        result = run_snippet(caller, f"""
            out = evalbox.run([{SYSTEM_PYTHON!r}, "-I", "-S", "-c", {PROGRAM!r}, {data!r}, {folder!r}],
                              mounts=[evalbox.Mount.ro({folder!r})], timeout=30)
            emit({{"status": out.status.value, "stdout": out.stdout.decode(), "stderr": out.stderr.decode()[-500:]}})
        """)
        lines = dict(line.split(" ", 1) for line in result["stdout"].splitlines())
        assert stat.S_IMODE(os.stat(data).st_mode) == file_mode, f"ESCAPE: fchmod changed a read-only file: {result}"
        assert stat.S_IMODE(os.stat(folder).st_mode) == dir_mode, f"ESCAPE: fchmod changed a read-only dir: {result}"
        assert int(os.stat(data).st_mtime) == 1_000_000_000, f"ESCAPE: futimens re-dated a read-only file: {result}"
        for label in ("fchmod-file", "futimens", "fchmod-dir"):
            assert lines.get(label, "").startswith("refused"), result
        assert lines.get("own") == "0o600 5", f"the workspace's own files must stay changeable: {result}"
    finally:
        shutil.rmtree(base, ignore_errors=True)


SWAP = r'''
import os, sys
victim = sys.argv[1]
ws = os.path.dirname(os.getcwd())
os.rename(ws + "/tmp", ws + "/tmp.old")   # the program owns its workspace's names...
os.symlink("/", ws + "/tmp")              # ...and makes one of them lead to the host's root
for label, fn in (("chmod", lambda: os.chmod(victim, 0o666)), ("utime", lambda: os.utime(victim, (0, 0)))):
    try:
        fn()
        print(label, "done", flush=True)
    except OSError as e:
        print(label, "refused", e.errno, flush=True)
'''


@pytest.mark.parametrize("how", ["no jail", "monitored"])
def test_a_workspace_name_swapped_for_a_link_does_not_widen_metadata_changes(how):
    """Red-team finding (round 3): evalbox decided what is inside the workspace by following the
    names tmp/work/home, which the program owns: `tmp -> /` made every file of the caller
    changeable through evalbox. The caller's 0600 file must stay as it was."""
    if os.geteuid() != 0 or not shutil.which("setpriv") or not os.path.exists(SYSTEM_PYTHON):
        pytest.skip(f"needs root to run evalbox as uid {NOBODY} (setpriv, {SYSTEM_PYTHON}), as CI does")
    base = tempfile.mkdtemp(prefix="harden-swap-")
    victim = os.path.join(base, "private.txt")
    try:
        with open(victim, "w") as f:
            f.write("the caller's\n")
        os.chmod(victim, 0o600)
        os.utime(victim, (1_000_000_000, 1_000_000_000))
        os.chown(victim, NOBODY, NOBODY)
        os.chown(base, NOBODY, NOBODY)
        extra = ", notify=evalbox.NotifyMode.MONITOR, intercept=['openat']" if how == "monitored" else ""
        result = run_snippet("nobody", f"""
            out = evalbox.run([{SYSTEM_PYTHON!r}, "-I", "-S", "-c", {SWAP!r}, {victim!r}], timeout=30{extra})
            emit({{"status": out.status.value, "stdout": out.stdout.decode(), "stderr": out.stderr.decode()[-500:],
                   "view": out.protections.view if out.protections else None}})
        """, prefix="os.environ['EVALBOX_JAIL'] = '0'\n" if how == "no jail" else "")
        assert stat.S_IMODE(os.stat(victim).st_mode) == 0o600, f"ESCAPE: evalbox chmodded the caller's file: {result}"
        assert int(os.stat(victim).st_mtime) == 1_000_000_000, f"ESCAPE: evalbox re-dated the caller's file: {result}"
        assert "chmod refused" in result["stdout"], result
    finally:
        shutil.rmtree(base, ignore_errors=True)


SET_ID = ATTEMPT + r'''
import os, shutil, sys
d = sys.argv[1]
shutil.copyfile("/bin/true", d + "/a")
attempt("chmod", lambda: os.chmod(d + "/a", 0o4755))
attempt("chmod-gid", lambda: os.chmod(d + "/a", 0o2755))
fd = os.open(d + "/a", os.O_RDONLY)
attempt("fchmod", lambda: os.fchmod(fd, 0o4755))
attempt("open-creat", lambda: os.close(os.open(d + "/b", os.O_CREAT | os.O_WRONLY, 0o4755)))
attempt("mknod", lambda: os.mknod(d + "/c", 0o104755))
shutil.copyfile("/bin/true", "own")   # ordinary modes stay possible (in the workspace: without the
os.chmod("own", 0o755)                 # jail, metadata changes are done only there)
print("plain", oct(os.stat("own").st_mode & 0o7777), flush=True)
'''


@pytest.mark.parametrize("how", ["default", "no jail"])
def test_a_sandbox_with_the_callers_uid_leaves_no_set_id_file(how):
    """Red-team finding (round 3): in the unprivileged jail a program could chmod 04755 a copy of
    a binary in a writable mount: a setuid-to-the-caller program left on the host for any local
    user. Set-id bits are refused in every tier where the program has the caller's uid."""
    if os.geteuid() != 0 or not shutil.which("setpriv") or not os.path.exists(SYSTEM_PYTHON):
        pytest.skip(f"needs root to run evalbox as uid {NOBODY} (setpriv, {SYSTEM_PYTHON}), as CI does")
    base = tempfile.mkdtemp(prefix="harden-setid-")
    shared = os.path.join(base, "shared")
    try:
        os.mkdir(shared)
        os.chown(base, NOBODY, NOBODY)
        os.chown(shared, NOBODY, NOBODY)
        result = run_snippet("nobody", f"""
            out = evalbox.run([{SYSTEM_PYTHON!r}, "-I", "-S", "-c", {SET_ID!r}, {shared!r}],
                              mounts=[evalbox.Mount.rw({shared!r})], timeout=30)
            emit({{"status": out.status.value, "stdout": out.stdout.decode(), "stderr": out.stderr.decode()[-500:]}})
        """, prefix="os.environ['EVALBOX_JAIL'] = '0'\n" if how == "no jail" else "")
        for name in os.listdir(shared):
            mode = os.stat(os.path.join(shared, name)).st_mode
            assert not mode & 0o6000, f"ESCAPE: a set-id file {name} ({oct(mode)}) was left on the host: {result}"
        lines = dict(line.split(" ", 1) for line in result["stdout"].splitlines())
        for label in ("chmod", "chmod-gid", "fchmod", "open-creat", "mknod"):
            assert lines.get(label, "").startswith("refused"), result
        assert lines.get("plain") == "0o755", f"ordinary modes must stay possible: {result}"
    finally:
        shutil.rmtree(base, ignore_errors=True)
