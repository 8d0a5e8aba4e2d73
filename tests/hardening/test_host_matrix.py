"""SPEC §6, supported hosts: what a user sees on each, simulated on this machine.

- root in a default Docker container (uid 0 without CAP_SYS_ADMIN, read-only cgroupfs, Docker's
  seccomp profile): runs work, `evalbox.python` works, and promise 9 is reported as not held;
- an unprivileged caller on a host that refuses user namespaces (Docker's profile, a sysctl):
  runs work in the Landlock-only mode and `check` and `Output.protections` say what of promise
  9 does not hold, and why;
- an unprivileged caller where user namespaces are allowed gets the jail (the jail's own tests,
  tests/escape/test_escape_jail.py, then run for it too).

The simulations run a small evalbox script in a subprocess under tests/docker_sim.py.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import textwrap

import pytest

from evalbox.process.host import probe

SIM = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "docker_sim.py")

# What the script reports: the host's view, runs, and what the sandbox sees.
SCRIPT = textwrap.dedent(r"""
    import json, os, subprocess, sys, time, warnings
    import evalbox
    from evalbox.faces.report import host_report
    from evalbox.process.host import probe

    result = {}
    host = probe()
    result["jail"], result["reason"] = host.jail, host.no_jail_reason
    report = host_report()
    result["ready"], result["namespaces"] = report["ready"], report["features"]["namespaces"]
    out = evalbox.run(["sh", "-c", "id -u; echo hi"])
    result["run"] = [out.status.name, out.stdout.decode(), out.stderr.decode()[-300:]]
    result["view"] = out.protections.view
    result["identity"] = out.protections.identity
    result["shadow"] = evalbox.run(["cat", "/etc/shadow"]).success
    bomb = evalbox.run(["sh", "-c", "for i in $(seq 40); do sleep 3 & done 2>&1; wait"], max_pids=8, timeout=20)
    result["bomb"] = [bomb.status.name, b"fork" in bomb.stdout.lower() + bomb.stderr.lower()]
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        try:
            py = evalbox.python.run("import sys; print(6 * 7, sys.version_info[0])", timeout=30)
            result["python"] = [py.status.name, py.stdout.decode(), py.stderr.decode()[-300:]]
        except evalbox.SandboxError as e:
            result["python"] = ["ERROR", str(e), ""]
    result["python_warning"] = " ".join(str(w.message) for w in caught)
    # a call evalbox answers on the program's behalf, reading its memory (a root caller without
    # CAP_SYS_PTRACE reads a sandbox of another uid by taking on that uid's file-system ids)
    memfd = evalbox.run(["/usr/bin/python3", "-I", "-S", "-c",
                         "import os; fd = os.memfd_create('x'); os.write(fd, b'ok'); print(os.pread(fd, 2, 0).decode())"])
    result["memfd"] = [memfd.status.name, memfd.stdout.decode(), memfd.stderr.decode()[-300:]]
    print("RESULT " + json.dumps(result))
""")


def _simulate(prefix: list[str], sim_args: list[str]) -> dict:
    done = subprocess.run([*prefix, sys.executable, SIM, *sim_args, "--", sys.executable, "-c", SCRIPT],
                          capture_output=True, timeout=300)
    lines = [line for line in done.stdout.decode().splitlines() if line.startswith("RESULT ")]
    assert done.returncode == 0 and lines, (done.returncode, done.stdout[-2000:], done.stderr[-4000:])
    return json.loads(lines[-1][len("RESULT "):])


def _subreaper_script() -> str:
    """The jail tests' subreaper caller (forking, killed descendants, then a run that forks)."""
    import re

    with open(os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "escape",
                           "test_escape_jail.py")) as f:
        return re.search(r'SUBREAPER_CALLER = r"""(.*?)"""', f.read(), re.S).group(1)


def _system_python() -> bool:
    return any(os.access(p, os.X_OK) for p in ("/usr/local/bin/python3", "/usr/bin/python3"))


@pytest.mark.skipif(os.geteuid() != 0, reason="simulating root in a default Docker container needs root "
                    "(unshare -m, read-only remounts of the cgroup mounts, a smaller bounding set): run the suite "
                    "as root, as .ci/run's last step does")
@pytest.mark.skipif(not shutil.which("unshare") or not shutil.which("setpriv"),
                    reason="needs unshare and setpriv (apt-get install util-linux)")
def test_root_in_a_default_docker_container():
    seen = _simulate(["unshare", "-m", "--propagation", "private"], [])
    # no namespaces can be made there: promise 9 is reported as not held, with why and what to do
    assert seen["jail"] is False
    assert "CAP_SYS_ADMIN" in seen["reason"] and "--cap-add SYS_ADMIN" in seen["reason"]
    assert seen["ready"] is True
    assert seen["namespaces"].startswith("no jail (root without CAP_SYS_ADMIN")
    assert "the host's process table is visible" in seen["namespaces"]
    assert seen["view"] == seen["namespaces"].split("; a mount namespace")[0]
    # runs work, each as a uid of its own (root's files stay root's)
    status, stdout, stderr = seen["run"]
    assert status == "EXITED" and stdout.endswith("\nhi\n"), seen["run"]
    assert int(stdout.split()[0]) >= 2_000_000_000 and "own uid per sandbox" in seen["identity"]
    assert seen["shadow"] is False
    # no pids cgroup (cgroupfs is read-only): the sandbox's own uid's RLIMIT_NPROC bounds a fork loop
    assert seen["bomb"] == ["EXITED", True], seen["bomb"]
    assert seen["memfd"][:2] == ["EXITED", "ok\n"], seen["memfd"]
    # evalbox.python works: this Python lives under /root (mode 0700), which a sandbox uid cannot
    # search, and nothing can be bound here; a system Python runs instead, and the user is told
    if _system_python():
        assert seen["python"][:2] == ["EXITED", "42 3\n"], seen["python"]
        assert "/root" not in sys.executable or "cannot reach" in seen["python_warning"]
    else:
        assert seen["python"][0] == "ERROR" and "install Python 3" in seen["python"][1], seen["python"]


@pytest.mark.skipif(os.geteuid() != 0, reason="simulating root in a default Docker container needs root: run the "
                    "suite as root, as .ci/run's last step does")
@pytest.mark.skipif(not shutil.which("unshare") or not shutil.which("setpriv"),
                    reason="needs unshare and setpriv (apt-get install util-linux)")
def test_subreaper_caller_in_a_default_docker_container_gets_no_zombies():
    # no jail there: the run's orphans are reparented to the caller (a container's PID 1 is a
    # subreaper of sorts), which evalbox reaps after each run
    done = subprocess.run(["unshare", "-m", "--propagation", "private", sys.executable, SIM, "--", sys.executable,
                           "-c", _subreaper_script()], capture_output=True, timeout=300)
    assert done.returncode == 0, (done.stdout[-3000:], done.stderr[-3000:])


@pytest.mark.skipif(os.geteuid() == 0, reason="an unprivileged caller's fallback: runs in the unprivileged leg "
                    "of .ci/run (uid 65534); as root the jail needs no user namespace")
def test_unprivileged_caller_where_user_namespaces_are_refused():
    seen = _simulate([], ["--userns-only"])
    assert seen["jail"] is False
    assert "refused to create user namespaces" in seen["reason"], seen["reason"]
    assert "seccomp" in seen["reason"]  # what refused them, and what the user can do
    assert seen["ready"] is True
    for part in ("process table is visible", "network state is visible", "names and metadata",
                 "`disk` is not enforced"):
        assert part in seen["namespaces"] and part in seen["view"], (part, seen["view"])
    status, stdout, _ = seen["run"]
    assert status == "EXITED" and stdout == f"{os.getuid()}\nhi\n"
    assert seen["python"][:2] == ["EXITED", "42 3\n"], seen["python"]


@pytest.mark.skipif(os.geteuid() == 0, reason="an unprivileged caller's fallback: runs in the unprivileged leg "
                    "of .ci/run (uid 65534)")
def test_subreaper_caller_where_user_namespaces_are_refused_gets_no_zombies():
    done = subprocess.run([sys.executable, SIM, "--userns-only", "--", sys.executable, "-c", _subreaper_script()],
                          capture_output=True, timeout=300)
    assert done.returncode == 0, (done.stdout[-3000:], done.stderr[-3000:])


@pytest.mark.skipif(os.geteuid() == 0, reason="runs in the unprivileged leg of .ci/run (uid 65534)")
def test_unprivileged_caller_gets_the_jail_where_user_namespaces_are_allowed():
    from evalbox.kernel import _spawn

    step, err = _spawn.probe_user_namespace()
    if step:
        pytest.skip(f"this host refuses unprivileged user namespaces ({probe().no_jail_reason})")
    import evalbox
    from evalbox.faces.report import host_report

    assert probe().jail and probe().jail_userns
    assert "promise 9 holds" in host_report()["features"]["namespaces"]
    out = evalbox.run(["sh", "-c", "id -u; cat /proc/self/uid_map; ls /"])
    assert out.success, out.stderr
    lines = out.stdout.decode().split("\n")
    assert lines[0] == str(os.getuid())
    assert lines[1].split() == [str(os.getuid()), str(os.getuid()), "1"]  # mapped to itself only
    assert "user" in out.protections.namespaces and "network" in out.protections.namespaces
    assert "in a user namespace of its own" in out.protections.view
    # the program cannot make namespaces of its own (seccomp), though its init could
    nested = evalbox.run(["unshare", "-U", "-r", "true"])
    assert not nested.success
    # RLIMIT_NPROC counts per user namespace: max_pids is exact, whatever else runs as this uid
    forks = textwrap.dedent("""
        import os, time
        n = 0
        try:
            while n < 100:
                if os.fork() == 0:
                    time.sleep(3)
                    os._exit(0)
                n += 1
        except OSError:
            pass
        print(n)
    """)
    bounded = evalbox.run(["/usr/bin/python3", "-I", "-S", "-c", forks], max_pids=5, timeout=20)
    assert bounded.stdout == b"4\n", (bounded.stdout, bounded.stderr)  # the program and 4 children
    # a supervisor that opens files for the program needs its mount namespace, which this caller
    # cannot join: such a run goes without the jail, and says so
    supervised = evalbox.run(["cat", "/etc/hostname"], notify=evalbox.NotifyMode.MONITOR, intercept=["openat"])
    assert supervised.success, supervised.stderr
    assert supervised.protections.view.startswith("no jail (supervised opens"), supervised.protections.view
    assert "user" not in supervised.protections.namespaces
