"""Output as users of subprocess expect it, and as JSON that loses nothing."""

from __future__ import annotations

import asyncio
import inspect
import json
import signal
import subprocess
import sys

import pytest
from click.testing import CliRunner

import evalbox
from evalbox.faces.cli import main


def test_json_tells_bytes_from_the_text_that_spells_them():
    raw = evalbox.run(["printf", r"\377"], timeout=10)
    text = evalbox.run(["printf", r"\\xff"], timeout=10)
    assert raw.stdout == b"\xff" and text.stdout == b"\\xff"
    raw_d, text_d = raw.as_dict(), text.as_dict()
    assert raw_d["stdout"] is None and raw_d["stdout_b64"] == "/w=="
    assert text_d["stdout"] == "\\xff" and "stdout_b64" not in text_d
    assert json.dumps(raw_d) != json.dumps(text_d)


def test_json_round_trip_is_lossless():
    out = evalbox.run(["sh", "-c", r"printf 'caf\303\251 \377\376'; printf 'ok\n' >&2; exit 3"], timeout=10)
    for with_protections in (False, True):
        back = evalbox.Output.from_dict(json.loads(json.dumps(out.as_dict(protections=with_protections))))
        assert (back.stdout, back.stderr, back.status, back.exit_code, back.signal, back.max_rss) == \
            (out.stdout, out.stderr, out.status, out.exit_code, out.signal, out.max_rss)
        assert back.wall_time == pytest.approx(out.wall_time, abs=1e-6)
        assert back.protections == (out.protections if with_protections else None)
    assert out.stdout == "café ".encode() + b"\xff\xfe"


def test_protections_only_when_asked():
    out = evalbox.run(["true"], timeout=10)
    assert "protections" not in out.as_dict()
    assert out.as_dict(protections=True)["protections"]["no_new_privs"] is True
    plain = CliRunner().invoke(main, ["run", "--json", "--", "true"], catch_exceptions=False)
    asked = CliRunner().invoke(main, ["run", "--json", "--protections", "--", "true"], catch_exceptions=False)
    assert "protections" not in json.loads(plain.stdout)
    assert json.loads(asked.stdout)["protections"]["landlock_abi"] >= 1
    assert len(plain.stdout) * 2 < len(asked.stdout)  # the bulk of a row, when it was always there


def test_returncode_like_subprocess():
    assert evalbox.run(["sh", "-c", "exit 3"], timeout=10).returncode == 3
    killed = evalbox.run(["sh", "-c", "kill -TERM $$"], timeout=10)
    assert killed.exit_code is None and killed.returncode == -signal.SIGTERM
    assert subprocess.run(["sh", "-c", "kill -TERM $$"]).returncode == killed.returncode


def test_check_returncode():
    ok = evalbox.run(["true"], timeout=10)
    assert ok.check_returncode() is ok
    failed = evalbox.run(["sh", "-c", "echo out; echo err >&2; exit 4"], timeout=10)
    with pytest.raises(subprocess.CalledProcessError) as info:
        failed.check_returncode()
    e = info.value
    assert isinstance(e, evalbox.CalledProcessError) and e.result is failed
    assert e.returncode == 4 and e.stdout == b"out\n" and e.stderr == b"err\n"
    assert "exited with code 4" in str(e)
    timed_out = evalbox.run(["sleep", "5"], timeout=0.2)
    with pytest.raises(evalbox.CalledProcessError, match="timed out"):
        timed_out.check_returncode()


def test_text_access_replaces_what_is_not_utf8():
    out = evalbox.run(["sh", "-c", r"printf 'caf\303\251 \377'; printf '\376' >&2"], timeout=10)
    assert out.stdout_text == "café \ufffd" and out.stderr_text == "\ufffd"


def test_run_many_and_arun_many_agree_on_progress():
    sync = inspect.signature(evalbox.run_many).parameters["progress"].default
    both = inspect.signature(evalbox.arun_many).parameters["progress"].default
    assert sync is both is True


def test_lazy_names_are_listed():
    listed = dir(evalbox)
    for name in ("arun", "arun_many", "AsyncExecutor", "AsyncSandbox", "run", "Output"):
        assert name in listed
    assert set(evalbox.__all__) <= set(listed)


def test_importing_evalbox_does_not_load_asyncio():
    code = "import sys, evalbox; dir(evalbox); print('asyncio' in sys.modules)"
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert done.stdout.strip() == "False", done.stderr


def test_arun_many_keeps_order():
    outs = asyncio.run(evalbox.arun_many([["sh", "-c", f"sleep 0.0{3 - i}; echo {i}"] for i in range(3)], progress=False))
    assert [o.stdout for o in outs] == [b"0\n", b"1\n", b"2\n"]
