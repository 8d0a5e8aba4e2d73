"""Helpers for the host-side hardening tests (issue 9): run a snippet as root or as an
unprivileged user, each in a fresh process (the caller's own memory and identity matter here).

As root the snippet runs under this interpreter; as an unprivileged uid it runs under the system
Python (/usr/bin/python3.11) importing evalbox from this checkout, with no groups (setpriv). The
uid is one no account or other process uses (not 65534: other jobs on a shared machine run as
nobody, and RLIMIT_NPROC counts every process of a uid, so they would change our results).
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

import evalbox

SRC = str(Path(evalbox.__file__).resolve().parent.parent)
SYSTEM_PYTHON = "/usr/bin/python3.11"
NOBODY = 64124  # an otherwise unused uid ("nobody"-like: no account, no groups)

sys.modules["hardening_kit"] = sys.modules[__name__]


def _nobody_available() -> str | None:
    if os.geteuid() != 0:
        return f"needs root to switch to uid {NOBODY} (run the suite as root, as CI does)"
    if not shutil.which("setpriv") or not os.path.exists(SYSTEM_PYTHON):
        return f"needs setpriv (util-linux) and {SYSTEM_PYTHON} (apt-get install python3.11)"
    return None


@pytest.fixture(params=["root", "nobody"])
def caller(request):
    """'root' or 'nobody': who calls evalbox in `run_snippet`."""
    if request.param == "nobody":
        why = _nobody_available()
        if why:
            pytest.skip(why)
    elif os.geteuid() != 0:
        pytest.skip("the root-caller variant needs root")
    return request.param


def run_snippet(who: str, code: str, timeout: float = 120, cwd: str = "/tmp", prefix: str = "") -> dict:
    """Run `code` (which must `emit(dict)` once) as `who`; returns that dict."""
    prelude = (
        "import json, os, sys\n"
        f"sys.path.insert(0, {SRC!r})\n"
        "import evalbox\n"
        "def emit(d):\n"
        "    print('RESULT ' + json.dumps(d), flush=True)\n"
    )
    script = prelude + prefix + textwrap.dedent(code)
    if who == "root":
        argv = [sys.executable, "-c", script]
    else:
        argv = ["setpriv", f"--reuid={NOBODY}", f"--regid={NOBODY}", "--clear-groups",
                "--inh-caps=-all", "--bounding-set=-all", SYSTEM_PYTHON, "-I", "-c", script]
    env = {"PATH": "/usr/local/bin:/usr/bin:/bin", "LANG": "C.UTF-8", "TMPDIR": "/tmp"}
    proc = subprocess.run(argv, capture_output=True, timeout=timeout, cwd=cwd, env=env)
    for line in proc.stdout.decode(errors="replace").splitlines():
        if line.startswith("RESULT "):
            return json.loads(line[7:])
    raise AssertionError(f"snippet as {who} printed no result (exit {proc.returncode}):\n"
                         f"{proc.stdout.decode(errors='replace')}\n{proc.stderr.decode(errors='replace')}")
