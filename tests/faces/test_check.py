"""`evalbox check`: reports this host feature by feature and proves it with a sandboxed run."""

import json
import subprocess
import sys


def test_check_json_reports_a_ready_host():
    done = subprocess.run([sys.executable, "-m", "evalbox", "check", "--json"], capture_output=True, timeout=60)
    assert done.returncode == 0, done.stderr
    report = json.loads(done.stdout)
    assert report["ready"] is True and report["problem"] is None
    for feature in ("kernel", "landlock", "seccomp filter", "seccomp notify", "cgroups", "identity", "self-test"):
        assert feature in report["features"], feature
    assert "EXITED" in report["features"]["self-test"]
    for default in ("files", "network", "memory", "processes", "time", "signals"):
        assert default in report["defaults"], default
    protections = report["protections"]
    assert protections["no_new_privs"] is True and protections["landlock_abi"] >= 3


def test_check_text_ends_with_the_verdict():
    done = subprocess.run([sys.executable, "-m", "evalbox", "check"], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0
    assert done.stdout.strip().splitlines()[-1].split() == ["ready", "yes"]
