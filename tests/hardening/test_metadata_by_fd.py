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

PROGRAM = r'''
import os, sys
data, folder = sys.argv[1], sys.argv[2]
def attempt(label, fn):
    try:
        fn()
        print(label, "done", flush=True)
    except OSError as e:
        print(label, "refused", e.errno, flush=True)
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
