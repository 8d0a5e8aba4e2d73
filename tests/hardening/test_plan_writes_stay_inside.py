"""Class 3: building a workspace never writes outside it (nested mount links, a cwd through a
mount, links met on the way)."""

from __future__ import annotations

import os
import shutil
import tempfile

import pytest

from evalbox.process.workspace import _open_dirs
from hardening_kit import NOBODY, run_snippet


@pytest.fixture
def host_dir():
    d = tempfile.mkdtemp(prefix="harden-mount-")
    os.chmod(d, 0o777)
    os.chown(d, NOBODY, NOBODY)
    try:
        yield d
    finally:
        shutil.rmtree(d)


def test_overlapping_mounts_and_cwd_through_a_mount_are_refused_and_leave_no_trace(caller, host_dir):
    other = tempfile.mkdtemp(prefix="harden-other-")
    os.chmod(other, 0o755)
    try:
        got = run_snippet(caller, f"""
            M = evalbox.Mount
            tries = {{
                "nested ro": dict(mounts=[M.ro({host_dir!r}, "m"), M.ro({other!r}, "m/planted")]),
                "nested rw": dict(mounts=[M.rw({host_dir!r}, "m"), M.ro({other!r}, "m/sub/planted")]),
                "same dest": dict(mounts=[M.ro({host_dir!r}, "m"), M.ro({other!r}, "m")]),
                "cwd below": dict(mounts=[M.ro({host_dir!r}, "m")], cwd="work/m/made"),
                "cwd deep": dict(mounts=[M.rw({host_dir!r}, "a/m")], cwd="work/a/m/x/y"),
                "file below": dict(mounts=[M.ro({host_dir!r}, "m")], files={{"m/f.txt": "x"}}),
                "file below dot": dict(mounts=[M.ro({host_dir!r}, "m")], files={{"./m//f.txt": "x"}}),
            }}
            out = {{}}
            for name, kw in tries.items():
                try:
                    evalbox.run(["/bin/true"], **kw)
                    out[name] = "ran"
                except evalbox.ValidationError as e:
                    out[name] = "refused: " + str(e)
            emit(out)
        """)
        for name, verdict in got.items():
            assert verdict.startswith("refused"), (name, verdict)
        assert os.listdir(host_dir) == [], "something was created in the mounted host directory"
        assert os.listdir(other) == []
    finally:
        shutil.rmtree(other)


def test_workspace_directories_are_made_without_following_links(tmp_path):
    outside = tmp_path / "outside"
    outside.mkdir()
    base = tmp_path / "ws"
    base.mkdir()
    (base / "link").symlink_to(outside)
    (base / "file").write_text("x")
    fd = os.open(base, os.O_RDONLY | os.O_DIRECTORY)
    try:
        for parts in (["link", "x"], ["link"], ["file", "x"]):
            with pytest.raises(OSError):
                os.close(_open_dirs(fd, parts, None))
        os.close(_open_dirs(fd, ["a", "b", "c"], None))
    finally:
        os.close(fd)
    assert list(outside.iterdir()) == []
    assert (base / "a" / "b" / "c").is_dir()


def test_deep_files_and_cwd_are_created_inside(caller):
    got = run_snippet(caller, """
        deep = "/".join(["d"] * 62) + "/f.txt"
        o = evalbox.run(["/bin/sh", "-c", "pwd; cat " + "/".join([".."] * 4) + "/work/" + deep],
                        files={deep: "hello"}, cwd="work/x/y/z")
        emit({"out": o.stdout.decode(), "err": o.stderr.decode(), "status": o.status.value})
    """)
    assert got["status"] == "exited" and got["out"].rstrip().endswith("hello"), got
    assert "/work/x/y/z" in got["out"]
