"""Host cleanup survives whatever tree a program leaves: a deep directory chain neither breaks the
run nor the sweep that every later Executor() does (findings 08-deep-tree-cleanup-recursionerror)."""

import os
import subprocess
import sys
import textwrap

import pytest

DEPTH = 3000

CHECK = textwrap.dedent(f"""
    import glob, os, sys
    import evalbox
    code = "import os\\nfor i in range({DEPTH}):\\n    os.mkdir('d'); os.chdir('d')\\nprint('built')\\n"
    out = evalbox.run(["/usr/bin/python3", "-I", "-S", "-c", code], timeout=60)
    assert out.stdout.strip() == b"built", out
    mine = [d for d in glob.glob("/tmp/evalbox-*") + glob.glob("/dev/shm/evalbox-*")
            if d.split("-")[1] == str(os.getpid())]
    assert mine == [], ("workspace left behind", mine)
    with evalbox.Executor() as ex:
        assert ex.run(evalbox.Plan(["/bin/true"])).success
    print("ok")
""")


def _clean_env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k != "EVALBOX_TMPDIR"}
    env.update(extra)
    return env


@pytest.mark.parametrize("jail", ["1", "0"])
def test_deep_directory_chain_is_removed_and_the_run_returns(jail):
    # the jail gives the workspace a tmpfs; EVALBOX_JAIL=0 (and unprivileged callers) a real dir
    done = subprocess.run([sys.executable, "-c", CHECK], capture_output=True, text=True, timeout=300,
                          env=_clean_env(EVALBOX_JAIL=jail))
    assert done.returncode == 0 and done.stdout.strip().endswith("ok"), done.stderr[-3000:]


def _dead_pid() -> int:
    child = subprocess.Popen(["/bin/true"])
    child.wait()
    return child.pid


def _build_chain(top: str, depth: int, outside: str) -> None:
    fd = os.open(top, os.O_RDONLY | os.O_DIRECTORY)
    for level in range(depth):
        os.mkdir("d", dir_fd=fd)
        os.symlink(outside, "link", dir_fd=fd)  # never followed by the cleanup
        child = os.open("d", os.O_RDONLY | os.O_DIRECTORY, dir_fd=fd)
        if level % 700 == 0:
            os.fchmod(fd, 0)  # locked by the program (once its entries exist: also without root)
        os.close(fd)
        fd = child
    os.close(fd)


def test_stale_deep_workspace_never_stops_the_next_executor(tmp_path):
    """A leftover of a dead evalbox process with a 5000-level chain (and links out of it) is swept:
    the next Executor() starts, the leftover is gone, and nothing the links point at is touched."""
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "keep").write_text("sacrificial")
    stale = f"/tmp/evalbox-{_dead_pid()}-deeptest"
    # built under a name no sweep takes, then put in place at once: another evalbox process on the
    # machine may sweep it the moment it has the stale name (which is fine: it is gone either way)
    building = f"/tmp/building-{os.getpid()}-deeptest"
    os.mkdir(building, 0o700)
    try:
        _build_chain(building, 5000, str(outside))
        os.rename(building, stale)
        probe = textwrap.dedent("""
            import evalbox
            with evalbox.Executor() as ex:
                assert ex.run(evalbox.Plan(["/bin/true"])).success
            print("ok")
        """)
        done = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, timeout=300,
                              env=_clean_env(EVALBOX_JAIL="0"))
        assert done.returncode == 0 and done.stdout.strip() == "ok", done.stderr[-3000:]
        assert not os.path.lexists(stale), "stale workspace not swept"
        assert (outside / "keep").read_text() == "sacrificial"
    finally:
        subprocess.run(["rm", "-rf", stale, building])


UNPRIVILEGED_REMOVE = textwrap.dedent("""
    import os, sys, tempfile
    from evalbox.process.workspace import _force_rmtree
    top = tempfile.mkdtemp(prefix="evalbox-rmtest-")
    fd = os.open(top, os.O_RDONLY | os.O_DIRECTORY)
    d = os.dup(fd)
    for i in range(3000):
        os.mkdir("d", dir_fd=d)
        child = os.open("d", os.O_RDONLY | os.O_DIRECTORY, dir_fd=d)
        os.close(d)
        d = child
        open(f"/proc/self/fd/{d}/f", "w").close()   # (the top holds only d)
    os.fchmod(d, 0)        # the deepest directory locked,
    os.fchmod(fd, 0o500)   # the top made read-only: nothing can be unlinked or moved without chmod
    print(_force_rmtree(top), os.path.lexists(top))
""")


def test_unprivileged_owner_removes_a_deep_locked_tree():
    """Without root's override of permissions: the remover gives locked directories back to
    their owner and moves deep ones up (a rename into a read-only top needs its write bit)."""
    if os.geteuid() != 0:
        pytest.skip("runs the remover as nobody via setpriv: needs root")
    src = os.path.join(os.path.dirname(__file__), "..", "..", "src")
    done = subprocess.run(["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups",
                           "env", f"PYTHONPATH={os.path.abspath(src)}", "HOME=/tmp", "/usr/bin/python3", "-c",
                           UNPRIVILEGED_REMOVE], capture_output=True, text=True, timeout=300, cwd="/tmp")
    assert done.stdout.split() == ["True", "False"], (done.stdout, done.stderr[-2000:])
