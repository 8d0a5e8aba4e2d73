"""The command line: run, python/shell/node/go, batch (real sandboxes, real exit codes)."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile

import pytest
from click.testing import CliRunner

from evalbox.faces.cli import main
from rt_helpers import HAVE_GO, HAVE_NODE, needs_go, needs_node

SYSTEM_PYTHON = "/usr/bin/python3"


def evalbox_cli(*args: str, stdin: bytes = b"", timeout: float = 120) -> subprocess.CompletedProcess:
    """The real command, in a subprocess: real stdin/stdout pipes and exit status."""
    return subprocess.run([sys.executable, "-m", "evalbox", *args], input=stdin, capture_output=True, timeout=timeout)


def invoke(*args: str, input: bytes | str | None = None):
    return CliRunner().invoke(main, list(args), input=input, catch_exceptions=False)


@pytest.mark.parametrize("command", ["run", "python", "shell", "node", "go", "batch", "check", "bench", "humaneval"])
def test_every_command_has_help_with_examples(command):
    result = invoke(command, "--help")
    assert result.exit_code == 0 and "Examples:" in result.output and f"evalbox {command}" in result.output


# -- run ---------------------------------------------------------------------------------------------

def test_run_streams_and_forwards_stdin():
    done = evalbox_cli("run", "--", "sh", "-c", "tr a-z A-Z; echo err >&2; exit 3", stdin=b"hello\n")
    assert done.returncode == 3 and done.stdout == b"HELLO\n" and done.stderr == b"err\n"


def test_run_stdin_from_a_file(tmp_path):
    data = tmp_path / "in.txt"
    data.write_bytes(b"from a file\n")
    with open(data, "rb") as f:
        done = subprocess.run([sys.executable, "-m", "evalbox", "run", "--", "cat"], stdin=f, capture_output=True,
                              timeout=60)
    assert done.returncode == 0 and done.stdout == b"from a file\n"


def test_run_options_after_the_command_are_its_own():
    done = evalbox_cli("run", "--timeout", "5", "sh", "-c", "echo $0 $1; exit 3", "x", "--json")
    assert done.returncode == 3 and done.stdout == b"x --json\n", done.stderr


def test_run_exit_codes():
    assert evalbox_cli("run", "--timeout", "0.3", "--", "sleep", "5").returncode == 124
    assert evalbox_cli("run", "--", "sh", "-c", "kill -TERM $$").returncode == 128 + signal.SIGTERM
    done = evalbox_cli("run", "--", "no-such-command-here")
    assert done.returncode == 125 and b"CommandNotFound" in done.stderr


def test_run_files_env_mounts_json():
    shared = tempfile.mkdtemp(prefix="evalbox-cli-mount-")  # under /tmp: other users can reach it
    try:
        os.chmod(shared, 0o755)
        src = os.path.join(shared, "data.txt")
        with open(src, "w") as f:
            f.write("payload")
        os.chmod(src, 0o644)
        result = invoke("run", "--json", "--file", f"{src}:in/d.txt", "--env", "K=V", "--mount", f"{shared}:m",
                        "--max-open-files", "32", "--", "sh", "-c", 'cat in/d.txt; echo " $K"; cat m/data.txt; ulimit -n')
        assert result.exit_code == 0, result.output
        out = json.loads(result.output)
        assert out["stdout"] == "payload V\npayload32\n" and out["status"] == "exited"
    finally:
        shutil.rmtree(shared)


def test_run_bad_option_values():
    assert invoke("run", "--env", "NOEQUALS", "--", "true").exit_code == 2
    assert invoke("run", "--file", "/nonexistent/file", "--", "true").exit_code == 2
    result = invoke("run", "--memory", "lots", "--", "true")
    assert result.exit_code == 125 and "ValidationError" in result.output


# -- runtimes ----------------------------------------------------------------------------------------

def test_python_code_args_and_exit():
    done = evalbox_cli("python", "--interpreter", SYSTEM_PYTHON, "-c", "import sys; print(sys.argv[1:]); sys.exit(4)",
                       "a", "--flag")
    assert done.returncode == 4 and done.stdout == b"['a', '--flag']\n", done.stderr


def test_python_default_interpreter():
    done = evalbox_cli("python", "-c", "import sys; print(sys.prefix)")
    assert done.returncode == 0 and done.stdout.decode().strip() == sys.prefix, done.stderr


def test_python_file_and_stdin(tmp_path):
    script = tmp_path / "rev.py"
    script.write_text("import sys; print(input()[::-1], sys.argv[1])")
    done = evalbox_cli("python", "--interpreter", SYSTEM_PYTHON, str(script), "x", stdin=b"abc\n")
    assert done.returncode == 0 and done.stdout == b"cba x\n", done.stderr
    done = evalbox_cli("python", "--interpreter", SYSTEM_PYTHON, "-", stdin=b"print('code from stdin')")
    assert done.returncode == 0 and done.stdout == b"code from stdin\n", done.stderr


def test_python_json_and_limits():
    result = invoke("python", "--interpreter", SYSTEM_PYTHON, "--json", "--timeout", "0.5", "-c", "while True: pass")
    assert result.exit_code == 124
    assert json.loads(result.output)["status"] == "timeout"


def test_python_needs_code():
    result = invoke("python")
    assert result.exit_code == 2 and "-c CODE" in result.output


def test_shell_and_bash():
    done = evalbox_cli("shell", "-c", 'echo "$0 $1"', "one")
    assert done.returncode == 0 and done.stdout == b"sh one\n"
    done = evalbox_cli("shell", "--bash", "-c", "echo ${BASH_VERSION:+bash}")
    assert done.stdout == b"bash\n"
    done = evalbox_cli("shell", "-", "arg", stdin=b'echo "script from stdin $1"')
    assert done.stdout == b"script from stdin arg\n"


@needs_node
def test_node(tmp_path):
    done = evalbox_cli("node", "-c", "console.log(6 * 7); process.exit(2)")
    assert done.returncode == 2 and done.stdout == b"42\n", done.stderr
    done = evalbox_cli("node", "--esm", "-c", "import path from 'node:path'; console.log(path.sep)")
    assert done.returncode == 0 and done.stdout == b"/\n", done.stderr
    script = tmp_path / "mod.mjs"
    script.write_text("export const x = 1; console.log(import.meta.url.endsWith('/mod.mjs'))")
    done = evalbox_cli("node", str(script))
    assert done.returncode == 0 and done.stdout == b"true\n", done.stderr


@needs_go
def test_go():
    done = evalbox_cli("go", "-c", 'fmt.Println(strings.Fields(" a b ")); os.Exit(len(os.Args))', "x")
    assert done.returncode == 2 and done.stdout == b"[a b]\n", done.stderr


# -- batch -------------------------------------------------------------------------------------------

def test_batch(tmp_path):
    lines = [
        {"cmd": ["sh", "-c", "echo one"], "id": "first"},
        {"runtime": "python", "code": "print(input() * 2)", "stdin": "ab\n", "interpreter": SYSTEM_PYTHON},
        "not json",
        {"runtime": "shell", "code": "exit 3", "id": 7},
        {"cmd": ["true"], "nonsense": 1},
        {"runtime": "cobol", "code": ""},
        {"runtime": "go", "code": "fmt.Println(len(os.Args))", "args": ["a"]},
        {"runtime": "node", "code": "console.log('n')"},
        {"cmd": ["sleep", "5"], "timeout": 0.2},
        {"cmd": ["no-such-command-here"]},
    ]
    infile = tmp_path / "in.jsonl"
    infile.write_text("\n".join(line if isinstance(line, str) else json.dumps(line) for line in lines) + "\n\n")
    outfile = tmp_path / "out.jsonl"
    result = invoke("batch", str(infile), "-o", str(outfile), "--concurrency", "3")
    assert result.exit_code == 1  # some lines were errors
    rows = [json.loads(line) for line in outfile.read_text().splitlines()]
    assert [r["index"] for r in rows] == list(range(len(lines)))
    assert rows[0]["id"] == "first" and rows[0]["stdout"] == "one\n" and rows[0]["success"]
    assert rows[1]["stdout"] == "abab\n" and "id" not in rows[1]
    assert rows[2]["error_type"] == "ValidationError" and "line 3" in rows[2]["error"]
    assert rows[3]["id"] == 7 and rows[3]["exit_code"] == 3
    assert rows[4]["error_type"] == "ValidationError" and "nonsense" in rows[4]["error"]
    assert rows[5]["error_type"] == "ValidationError" and "cobol" in rows[5]["error"]
    assert rows[6]["stdout"] == "2\n" if HAVE_GO else rows[6]["error_type"] == "CommandNotFound", rows[6]
    assert rows[7]["stdout"] == "n\n" if HAVE_NODE else rows[7]["error_type"] == "CommandNotFound", rows[7]
    assert rows[8]["status"] == "timeout"
    assert rows[9]["error_type"] == "CommandNotFound"


def test_batch_from_stdin_to_stdout():
    done = evalbox_cli("batch", "-", stdin=b'{"cmd": ["echo", "x"], "id": "a"}\n')
    assert done.returncode == 0
    row = json.loads(done.stdout)
    assert row["id"] == "a" and row["index"] == 0 and row["stdout"] == "x\n"
