"""The command line as a user meets it: Ctrl-C, internal errors, non-UTF-8 arguments, messages
in flags, batches and HumanEval that keep what they finished (real processes, real signals)."""

from __future__ import annotations

import json
import os
import re
import signal
import stat
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest
from click.testing import CliRunner

import evalbox
from evalbox.faces.cli import main
from proc_helpers import alive_with, wait_until

README = Path(__file__).resolve().parents[2] / "README.md"


def cli(*args: str | bytes, stdin: bytes = b"", env: dict | None = None, timeout: float = 120):
    return subprocess.run([sys.executable, "-m", "evalbox", *args], input=stdin, capture_output=True,
                          env=env, timeout=timeout)


def invoke(*args: str, input: str | None = None):
    return CliRunner().invoke(main, list(args), input=input, catch_exceptions=False)


def marker() -> str:
    """A unique `sleep` duration: it names the processes of one test in /proc."""
    return f"{os.getpid() % 1000 + 1000}.{time.monotonic_ns() % 10**9:09d}"


@pytest.fixture
def workspaces(monkeypatch):
    """A private, empty base for the workspaces of the CLI processes a test starts."""
    d = tempfile.mkdtemp(prefix="evalbox-cli-ws-")
    os.chmod(d, 0o755)
    yield d
    subprocess.run(["rm", "-rf", d])


def evalbox_cgroups(pid: int) -> list[str]:
    found = []
    for dirpath, dirnames, _ in os.walk("/sys/fs/cgroup"):
        if os.path.basename(dirpath) == f"evalbox-{pid}":
            found.append(dirpath)
            dirnames[:] = []
        elif dirpath.count("/") > 8:
            dirnames[:] = []
    return found


def _comm(pid: int) -> str:
    try:
        with open(f"/proc/{pid}/comm") as f:
            return f.read().strip()
    except OSError:
        return ""


def interrupt_when(proc: subprocess.Popen, ready, what: str) -> tuple[int, bytes]:
    """Wait for `ready()`, send SIGINT as a terminal's Ctrl-C would, return (exit code, stderr)."""
    try:
        assert wait_until(ready, 20), f"never saw {what}; stderr: {proc.stderr.read1() if proc.poll() is not None else b''!r}"
        proc.send_signal(signal.SIGINT)
        _, err = proc.communicate(timeout=20)
        return proc.returncode, err
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


def assert_nothing_left(pid: int, m: str, workspaces: str) -> None:
    assert wait_until(lambda: not alive_with(m), 5), f"sandbox processes outlived the CLI: {alive_with(m)}"
    assert os.listdir(workspaces) == [], f"workspaces left behind: {os.listdir(workspaces)}"
    assert evalbox_cgroups(pid) == [], f"cgroups left behind: {evalbox_cgroups(pid)}"


# -- Ctrl-C -----------------------------------------------------------------------------------------

def test_ctrl_c_on_run_exits_130_and_leaves_nothing(workspaces):
    m = marker()
    env = dict(os.environ, EVALBOX_TMPDIR=workspaces)
    proc = subprocess.Popen([sys.executable, "-m", "evalbox", "run", "--", "sh", "-c",
                             f"sleep {m} & echo started; sleep {m}"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env)
    sleeps = lambda: [p for p in alive_with(m) if p != proc.pid and _comm(p) == "sleep"]  # noqa: E731
    code, err = interrupt_when(proc, lambda: len(sleeps()) == 2, "the sandbox's two sleeps")
    assert code == 130, err
    assert b"interrupted" in err and b"Traceback" not in err, err
    assert_nothing_left(proc.pid, m, workspaces)


def test_ctrl_c_on_batch_keeps_finished_results_and_resume_runs_the_rest(tmp_path, workspaces):
    gate = tmp_path / "gate"  # the slow line waits until this directory holds "go"
    gate.mkdir()
    os.chmod(tmp_path, 0o755)
    os.chmod(gate, 0o755)
    m = marker()
    lines = [{"cmd": ["echo", "one"], "id": "a"},
             {"cmd": ["sh", "-c", f"test -e {gate}/go && echo late || exec sleep {m}"], "id": "slow",
              "mounts": [str(gate)]},
             {"cmd": ["echo", "three"], "id": "c"}]
    infile = tmp_path / "in.jsonl"
    infile.write_text("".join(json.dumps(line) + "\n" for line in lines))
    out = tmp_path / "out.jsonl"
    env = dict(os.environ, EVALBOX_TMPDIR=workspaces)
    proc = subprocess.Popen([sys.executable, "-m", "evalbox", "batch", str(infile), "-o", str(out), "--concurrency", "3"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env)

    def two_written_and_slow_running() -> bool:
        return out.exists() and out.read_text().count("\n") == 2 and any(_comm(p) == "sleep" for p in alive_with(m))

    code, err = interrupt_when(proc, two_written_and_slow_running, "two results written while the third runs")
    assert code == 130, err
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    assert sorted(r["id"] for r in rows) == ["a", "c"] and all(r["success"] for r in rows)
    assert b"2 done" in err and b"1 not run" in err, err
    assert_nothing_left(proc.pid, m, workspaces)

    (gate / "go").write_text("")
    done = cli("batch", str(infile), "-o", str(out), "--resume", env=env)
    assert done.returncode == 0, done.stderr
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    assert [r["id"] for r in rows] == ["a", "slow", "c"]  # complete, in input order
    assert rows[1]["stdout"] == "late\n"
    assert b"1 done" in done.stderr and b"2 already in the output" in done.stderr, done.stderr


# -- errors -------------------------------------------------------------------------------------------

BREAK_CHECK = ("import sys, evalbox.faces.cli as c\n"
               "def boom(): raise RuntimeError('boom: something broke')\n"
               "c.host_report = boom\n"
               "c.entry(sys.argv[1:])\n")


def test_internal_error_is_one_line_and_125():
    done = subprocess.run([sys.executable, "-c", BREAK_CHECK, "check"], capture_output=True, timeout=60)
    assert done.returncode == 125
    lines = done.stderr.decode().strip().splitlines()
    assert len(lines) == 1 and "internal error: RuntimeError: boom" in lines[0] and "--debug" in lines[0], lines
    debug = subprocess.run([sys.executable, "-c", BREAK_CHECK, "--debug", "check"], capture_output=True, timeout=60)
    assert debug.returncode == 125 and b"Traceback" in debug.stderr and b"boom" in debug.stderr


def test_messages_name_the_flags():
    done = cli("run", "--timeout", "-1", "--", "true")
    err = done.stderr.decode()
    assert done.returncode == 125 and "--timeout" in err and "--timeout none" in err and "None" not in err, err
    done = cli("run", "--memory", "lots", "--", "true")
    assert done.returncode == 125 and "--memory lots is not a size" in done.stderr.decode(), done.stderr
    assert cli("run", "--timeout", "none", "--", "true").returncode == 0  # 'none' lifts a limit


def test_non_utf8_arguments_and_environment():
    done = cli("run", "--env", b"K=\xff\xfe", "--", "sh", "-c", 'printf "%s|%s" "$1" "$K"', "sh", b"\xfe\x80")
    assert done.returncode == 0 and done.stdout == b"\xfe\x80|\xff\xfe", done.stderr
    done = cli("shell", "-c", b"printf '\\351t\\351'; echo \xe9")
    assert done.returncode == 0 and done.stdout == b"\xe9t\xe9\xe9\n", done.stderr


def test_go_help_shows_gos_defaults_and_run_the_plans():
    go_help = invoke("go", "--help").output
    for default in ("[default: 60]", "[default: 512M; 1024M where memory is an address", "[default: 256]"):
        assert default in " ".join(go_help.split()), go_help
    run_help = invoke("run", "--help").output
    for default in ("[default: 30]", "[default: 256M]", "[default: 64]"):
        assert default in run_help, run_help


def test_readme_exit_code_table_is_complete():
    text = README.read_text()
    table = text[text.index("| exit code |"):].split("\n\n", 1)[0]
    for status in evalbox.Status:
        assert status.name in table, f"README's exit-code table does not say what {status.name} exits with"
    for code in ("124", "125", "130", "128+N"):
        assert code in table, f"README's exit-code table lacks {code}"


# -- batch --------------------------------------------------------------------------------------------

def write_lines(path: Path, lines: list) -> str:
    path.write_text("".join((line if isinstance(line, str) else json.dumps(line)) + "\n" for line in lines))
    return str(path)


def test_batch_checks_everything_before_running(tmp_path):
    infile = write_lines(tmp_path / "in.jsonl", [{"cmd": ["true"]}])
    assert invoke("batch", infile, "--concurrency", "0").exit_code == 2
    assert invoke("batch", infile, "--concurrency", "-1").exit_code == 2
    result = invoke("batch", infile, "-o", str(tmp_path / "no" / "such" / "dir.jsonl"))
    assert result.exit_code == 1 and "cannot write" in result.output
    assert invoke("batch", infile, "--defaults", "[1]").exit_code == 2
    result = invoke("batch", infile, "--defaults", '{"timeout": -1}')
    assert result.exit_code == 2 and "null" in result.output and "None" not in result.output, result.output
    assert invoke("batch", infile, "--resume").exit_code == 2  # resume needs -o FILE


def test_batch_defaults_apply_to_every_line_and_a_line_wins(tmp_path):
    infile = write_lines(tmp_path / "in.jsonl", [{"cmd": ["sleep", "5"]}, {"cmd": ["sleep", "0.1"], "timeout": 10},
                                                 {"code": "print(1 + 1)", "timeout": 20}])
    out = tmp_path / "out.jsonl"
    result = invoke("batch", infile, "-o", str(out), "--defaults", '{"timeout": 0.3, "runtime": "python"}')
    assert result.exit_code == 0, result.output
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    assert [r["status"] for r in rows] == ["timeout", "exited", "exited"] and rows[2]["stdout"] == "2\n"
    assert "protections" not in rows[0]
    assert re.search(r"batch: 3 done in [0-9.]+s: exited 2, timeout 1", result.output), result.output


def test_batch_resume_skips_what_is_done_and_drops_a_torn_line(tmp_path):
    infile = write_lines(tmp_path / "in.jsonl", [{"cmd": ["echo", str(i)], "id": i} for i in range(3)])
    out = tmp_path / "out.jsonl"
    kept = {"index": 1, "id": 1, "status": "exited", "stdout": "kept from before\n", "success": True}
    out.write_text(json.dumps(kept) + "\n" + '{"index": 2, "id": 2, "sta')  # the writer died mid-line
    result = invoke("batch", infile, "-o", str(out), "--resume")
    assert result.exit_code == 0, result.output
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    assert [r["index"] for r in rows] == [0, 1, 2]
    assert rows[1] == kept and rows[0]["stdout"] == "0\n" and rows[2]["stdout"] == "2\n"
    other = write_lines(tmp_path / "other.jsonl", [{"cmd": ["true"], "id": "x"}, {"cmd": ["true"], "id": "y"}])
    result = invoke("batch", other, "-o", str(out), "--resume")
    assert result.exit_code == 1 and "another input" in result.output


def test_batch_protections_only_when_asked(tmp_path):
    infile = write_lines(tmp_path / "in.jsonl", [{"cmd": ["true"]}])
    out = tmp_path / "out.jsonl"
    assert invoke("batch", infile, "-o", str(out), "--protections").exit_code == 0
    row = json.loads(out.read_text())
    assert row["protections"]["no_new_privs"] is True


def test_run_many_refuses_a_concurrency_below_one():
    for bad in (0, -1, 1.5, True):
        with pytest.raises(evalbox.ValidationError, match="concurrency"):
            evalbox.run_many([["true"]], concurrency=bad)


def test_arun_many_refuses_a_concurrency_below_one():
    import asyncio

    with pytest.raises(evalbox.ValidationError, match="concurrency"):
        asyncio.run(evalbox.arun_many([["true"]], concurrency=0))


# -- humaneval ----------------------------------------------------------------------------------------

PROBLEMS = [
    {"task_id": "T/0", "prompt": "def double(x):\n", "entry_point": "double", "canonical_solution": "    return 2 * x\n",
     "test": "def check(candidate):\n    assert candidate(2) == 4\n"},
    {"task_id": "T/1", "prompt": "def inc(x):\n", "entry_point": "inc", "canonical_solution": "    return x + 1\n",
     "test": "def check(candidate):\n    assert candidate(2) == 3\n"},
]


def test_humaneval_checks_options_before_running(tmp_path):
    problems = write_lines(tmp_path / "problems.jsonl", PROBLEMS)
    samples = write_lines(tmp_path / "samples.jsonl", [{"task_id": "T/0", "completion": "    return 2 * x\n"}])
    for bad in (["--k", "0"], ["--k", "1,x"], ["--timeout", "0"], ["--timeout", "-2"], ["--concurrency", "0"]):
        result = invoke("humaneval", samples, "--problems", problems, "--ignore-incomplete", *bad)
        assert result.exit_code == 2, (bad, result.output)
    assert not (tmp_path / "samples.jsonl_results.jsonl.partial").exists()


def test_humaneval_resume_keeps_saved_results(tmp_path):
    problems = write_lines(tmp_path / "problems.jsonl", PROBLEMS)
    samples = write_lines(tmp_path / "samples.jsonl", [
        {"task_id": "T/0", "completion": "    return 2 * x\n"},
        {"task_id": "T/1", "completion": "    return x\n"},  # wrong, but its saved result says passed
        {"task_id": "T/1", "completion": "    return x + 1\n"},
    ])
    partial = tmp_path / "samples.jsonl_results.jsonl.partial"
    partial.write_text(json.dumps({"index": 1, "task_id": "T/1", "result": "passed"}) + "\n")
    result = invoke("humaneval", samples, "--problems", problems, "--k", "1", "--resume")
    assert result.exit_code == 0, result.output
    scores = json.loads(result.stdout.strip().splitlines()[-1])
    assert scores == {"pass@1": 1.0}
    rows = [json.loads(line) for line in (tmp_path / "samples.jsonl_results.jsonl").read_text().splitlines()]
    assert [r["passed"] for r in rows] == [True, True, True] and rows[1]["completion"] == "    return x\n"
    assert not partial.exists()
    assert "2 done" in result.output and "1 already in the output" in result.output, result.output
