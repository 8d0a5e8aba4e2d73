"""A path the plan names (mount source, VIRTUALIZE directory) is never resolved through a symlink:
an earlier run may have planted `data -> /` in its rw mount, and a later plan naming
`<mount>/data` must not hand the next sandbox the host root (red-team finding 02)."""

from __future__ import annotations

import os
import shutil
import tempfile

import pytest

from hardening_kit import NOBODY, run_snippet


@pytest.fixture
def shared_out():
    """A directory both runs of a pipeline use (rw for the first), plus a caller-private file."""
    top = tempfile.mkdtemp(prefix="harden-links-")
    os.chmod(top, 0o755)
    out, private = os.path.join(top, "out"), os.path.join(top, "private")
    os.mkdir(out)
    os.chmod(out, 0o777)
    os.mkdir(private, 0o700)
    with open(os.path.join(private, "key"), "w") as f:
        f.write("CALLER-PRIVATE-KEY")
    os.chmod(os.path.join(private, "key"), 0o600)
    for p in (top, out, private, os.path.join(private, "key")):
        os.chown(p, NOBODY, NOBODY)  # owned by whichever caller runs (root ignores it)
    try:
        yield out, os.path.join(private, "key")
    finally:
        shutil.rmtree(top)


@pytest.mark.parametrize("jail", ["1", "0"])
def test_a_link_planted_by_an_earlier_run_is_refused_as_mount_source_or_virtual_dir(caller, shared_out, jail):
    if caller == "nobody" and jail == "0":
        pytest.skip("an unprivileged caller has no jail either way (covered by jail=1)")
    out, key = shared_out
    got = run_snippet(caller, f"""
        out, key = {out!r}, {key!r}
        a = evalbox.run(["/bin/sh", "-c", f"ln -s / {{out}}/data && mkdir {{out}}/real"],
                        mounts=[evalbox.Mount.rw(out)], timeout=10)
        res = {{"a": a.status.name, "planted": os.path.islink(out + "/data")}}
        tries = {{
            "ro": dict(mounts=[evalbox.Mount.ro(out + "/data")]),
            "ro below": dict(mounts=[evalbox.Mount.ro(out + "/data" + os.path.dirname(key))]),
            "rw": dict(mounts=[evalbox.Mount.rw(out + "/data")]),
            "virtualize": dict(notify=evalbox.NotifyMode.VIRTUALIZE, virtual_paths={{"/data": out + "/data"}}),
        }}
        for name, kw in tries.items():
            try:
                r = evalbox.run(["/bin/cat", f"{{out}}/data{{key}}", key, "/data" + key], timeout=10, **kw)
                res[name] = "ran: " + (r.stdout + r.stderr).decode(errors="replace")[-300:]
            except evalbox.ValidationError as e:
                res[name] = "refused: " + str(e)
        # the real path is still fine
        r = evalbox.run(["/bin/ls", out + "/real"], mounts=[evalbox.Mount.ro(out + "/real")], timeout=10)
        res["real"] = r.status.name
        emit(res)
    """, prefix=f"os.environ['EVALBOX_JAIL'] = {jail!r}\n")
    assert got["a"] == "EXITED" and got["planted"], got
    for name in ("ro", "ro below", "rw", "virtualize"):
        assert "CALLER-PRIVATE-KEY" not in got[name], (name, got[name])
        assert got[name].startswith("refused"), (name, got[name])
        assert f"passes through a symlink ({out}/data); name the real path" in got[name], (name, got[name])
    assert got["real"] == "EXITED", got


@pytest.mark.parametrize("jail", ["1", "0"])
def test_binds_take_the_checked_inode_even_if_a_link_is_swapped_in_after_the_check(tmp_path, jail):
    """Check and bind are apart in time: the spawn's own open of a plan-named bind source (the
    jail's root, or without it the private /tmp's bound-back paths) refuses a symlink too (openat2
    RESOLVE_NO_SYMLINKS), so a link swapped in after the host's checks (simulated here by turning
    those checks off) cannot bind another tree."""
    if os.geteuid() != 0:
        pytest.skip("binds need a root caller")
    secret_dir = tmp_path / "secret"
    secret_dir.mkdir()
    (secret_dir / "s.txt").write_text("SWAPPED-IN-TREE")
    secret_dir.chmod(0o755)
    (secret_dir / "s.txt").chmod(0o644)
    tmp_path.chmod(0o755)
    link = tmp_path / "link"
    link.symlink_to(secret_dir)
    got = run_snippet("root", f"""
        from evalbox.kernel import paths
        from evalbox.process import lockdown
        from evalbox.policy import filesystem
        lockdown._check_named_path = lambda path, what: None           # the checks saw the real dir...
        filesystem.open_named_path = lambda path, what, flags=os.O_PATH: os.open(path, flags | os.O_CLOEXEC)
        try:                                                            # ...then a link was swapped in
            r = evalbox.run(["/bin/cat", {str(link)!r} + "/s.txt"], mounts=[evalbox.Mount.ro({str(link)!r})], timeout=10)
            emit({{"ran": (r.stdout + r.stderr).decode(errors="replace")}})
        except evalbox.SandboxError as e:
            emit({{"refused": str(e)}})
    """, prefix=f"os.environ['EVALBOX_JAIL'] = {jail!r}\n")
    assert "SWAPPED-IN-TREE" not in str(got), got
    assert "refused" in got, got
