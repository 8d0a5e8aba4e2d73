"""run_many/arun_many across a local Ray cluster: the same results as a local run, in order,
errors in their slots, limits kept, and nothing lost or doubled when a node dies mid-batch."""

import asyncio
import errno
import os
import shutil
import tempfile
import threading
import time

import pytest

import evalbox
from evalbox import Mount, Plan, Status
from same_as_local import comparable

pytestmark = pytest.mark.usefixtures("ray_cluster")

def mixed_plans():
    return [
        evalbox.python.plan("import os; print(open('data.txt').read(), os.environ['K'])",
                            files={"data.txt": "hi"}, env={"K": "v"}),
        evalbox.shell.plan("tr a-z A-Z", stdin=b"quiet\n"),
        ["sh", "-c", "echo out; echo err >&2; exit 3"],
        ["sh", "-c", "kill -9 $$"],
        evalbox.Plan(["sleep", "5"], timeout=0.5),
        evalbox.python.plan("x = bytearray(512 << 20)", memory="64M"),
        evalbox.Plan(["yes"], max_output="1K"),  # (never ends by itself: always killed at the cap)
        ["evalbox-no-such-command"],
        ["echo", "a\0b"],
        *[["sh", "-c", f"sleep 0.0{i % 3}; echo {i}"] for i in range(12)],
    ]


@pytest.fixture
def shared_dir():
    """A host directory every sandbox uid may write (a root host gives each sandbox its own uid)."""
    path = tempfile.mkdtemp(prefix="evalbox-ray-test-", dir="/tmp")
    os.chmod(path, 0o777)
    log = os.path.join(path, "log")  # appended to by sandboxes of different uids
    open(log, "w").close()
    os.chmod(log, 0o666)
    try:
        yield path
    finally:
        shutil.rmtree(path)


def node_pool():
    from evalbox.faces.cluster import pool_for

    return pool_for("ray")


def test_results_match_a_local_run_in_order(ray_cluster):
    ray, cluster, workers = ray_cluster
    plans = mixed_plans()
    local = evalbox.run_many(plans, progress=False)
    remote = evalbox.run_many(plans, cluster="ray", progress=False)
    assert [comparable(r) for r in remote] == [comparable(r) for r in local]
    assert [r.status for r in remote[3:7]] == [Status.SIGNALED, Status.TIMEOUT, Status.MEMORY_LIMIT,
                                               Status.OUTPUT_LIMIT]
    assert isinstance(remote[7], evalbox.CommandNotFound) and isinstance(remote[8], evalbox.ValidationError)

    # The sandboxes ran on the two worker nodes, both of them; the head (no CPUs) ran none.
    pool = node_pool()
    assert set(pool.nodes) == {w.node_id for w in workers}
    runs = ray.get([node.actor.info.remote() for node in pool.nodes.values()])
    assert all(info["runs"] > 0 for info in runs)


def test_overrides_and_errors_as_locally(ray_cluster):
    def supervisor(req):
        return evalbox.Decision.deny(errno.EACCES)

    private = tempfile.mkdtemp(dir="/tmp")  # 0700: a root host refuses it for a sandbox uid, at spawn
    try:
        plans = [
            ["sh", "-c", "sleep 5"],
            Plan(["cat", "/etc/hostname"], notify=evalbox.NotifyMode.SUPERVISE, intercept=["openat"]),
            Plan(["ls", private], mounts=[Mount.ro(private)]),
        ]
        local = evalbox.run_many(plans, timeout=0.3, progress=False)
        remote = evalbox.run_many(plans, cluster="ray", timeout=0.3, progress=False)
    finally:
        os.rmdir(private)
    assert [comparable(r) for r in remote] == [comparable(r) for r in local]
    assert remote[0].status is Status.TIMEOUT

    # A supervisor is code: it cannot travel to another machine, so that slot says so.
    supervised = Plan(["true"], notify=evalbox.NotifyMode.SUPERVISE, intercept=["openat"], supervisor=supervisor)
    out = evalbox.run_many([supervised, ["true"]], cluster="ray", progress=False)
    assert isinstance(out[0], evalbox.ValidationError) and "supervisor" in str(out[0])
    assert out[1].success


def test_a_program_at_fault_runs_once(shared_dir):
    log = os.path.join(shared_dir, "log")
    at_fault = {
        "crash": ["sh", "-c", f"echo crash >> {log}; kill -SEGV $$"],
        "timeout": ["sh", "-c", f"echo timeout >> {log}; sleep 5"],
        "exit": ["sh", "-c", f"echo exit >> {log}; exit 1"],
        "memory": ["sh", "-c", f"echo memory >> {log}; exec python3 -c 'x = bytearray(1 << 30)'"],
    }
    plans = [Plan(argv, timeout=0.5, memory="64M", mounts=[Mount.rw(shared_dir)]) for argv in at_fault.values()]
    outs = evalbox.run_many(plans, cluster="ray", progress=False)
    assert [o.status for o in outs] == [Status.SIGNALED, Status.TIMEOUT, Status.EXITED, Status.MEMORY_LIMIT]
    with open(log) as f:
        assert sorted(f.read().split()) == sorted(at_fault)


def waiting_sandboxes(gate):
    """Pids of the test's sandboxed shells still waiting for the gate."""
    found = []
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            with open(f"/proc/{pid}/cmdline", "rb") as f:
                argv = f.read().split(b"\0")
        except OSError:
            continue
        if argv[0] == b"sh" and any(gate.encode() in a for a in argv):
            found.append(int(pid))
    return found


def test_node_lost_mid_batch_loses_nothing_and_doubles_nothing(ray_cluster, shared_dir):
    """Every slot busy, one node removed: its plans run again on the others, each result once."""
    ray, cluster, _ = ray_cluster
    doomed = cluster.add_node(num_cpus=2)  # the fixture's workers stay for the other tests
    cluster.wait_for_nodes()
    gate, log = os.path.join(shared_dir, "open"), os.path.join(shared_dir, "log")
    n = 14
    plans = [Plan(["sh", "-c", f"echo {i} >> {log}; while [ ! -e {gate} ]; do sleep 0.02; done; echo {i}"],
                 mounts=[Mount.rw(shared_dir)], timeout=60) for i in range(n)]
    results = []
    runner = threading.Thread(target=lambda: results.extend(evalbox.run_many(plans, cluster="ray", progress=False)))
    runner.start()
    try:
        slots = 3 * 2
        deadline = time.monotonic() + 120
        while len(open(log).read().split()) < slots:  # every slot holds a waiting plan
            assert runner.is_alive() and time.monotonic() < deadline, "the batch never filled the three nodes"
            time.sleep(0.02)
        cluster.remove_node(doomed)
        # The lost node's sandboxes die with its executor (the two others keep running theirs).
        while len(waiting_sandboxes(gate)) != slots - 2:
            assert time.monotonic() < deadline, waiting_sandboxes(gate)
            time.sleep(0.02)
    finally:
        open(gate, "w").close()  # let everything finish whatever happened above
        runner.join(120)
    assert not runner.is_alive()
    assert [r.stdout if isinstance(r, evalbox.Output) else r for r in results] == [f"{i}\n".encode() for i in range(n)]
    started = open(log).read().split()
    rerun = [i for i in set(started) if started.count(i) > 1]
    assert len(rerun) == 2, started  # the two plans that were running on the removed node, started again
    assert sorted(set(started), key=int) == [str(i) for i in range(n)]
    assert doomed.node_id not in node_pool().nodes


def test_arun_many_and_submit(ray_cluster):
    from evalbox.faces.cluster import ClusterClient

    plans = mixed_plans()
    local = evalbox.run_many(plans, progress=False)

    async def main():
        many = await evalbox.arun_many(plans, cluster="ray")
        async with ClusterClient("ray") as client:
            one = await client.submit(evalbox.shell.plan("echo $((6 * 7))"))
            with pytest.raises(evalbox.CommandNotFound):
                await client.submit(Plan(["evalbox-no-such-command"]))
            assert client.capacity == 4
        return many, one

    many, one = asyncio.run(main())
    assert [comparable(r) for r in many] == [comparable(r) for r in local]
    assert one.stdout == b"42\n"


def test_bad_cluster_name_is_a_validation_error():
    with pytest.raises(evalbox.ValidationError, match="ray://HOST:PORT"):
        evalbox.run_many([["true"]], cluster="spark")


def test_cancelling_a_submit_kills_its_sandbox(shared_dir):
    from evalbox.faces.cluster import ClusterClient

    marker = os.path.join(shared_dir, "never")  # in the sandbox's argv: how the test finds it

    async def main():
        async with ClusterClient("ray") as client:
            waiting = asyncio.ensure_future(client.submit(
                Plan(["sh", "-c", f"while [ ! -e {marker} ]; do sleep 0.02; done"], mounts=[Mount.ro(shared_dir)])))
            deadline = time.monotonic() + 60
            while not waiting_sandboxes(marker):
                assert time.monotonic() < deadline and not waiting.done()
                await asyncio.sleep(0.02)
            waiting.cancel()
            while waiting_sandboxes(marker):
                assert time.monotonic() < deadline, "the cancelled plan's sandbox is still running"
                await asyncio.sleep(0.02)
            assert (await client.submit(evalbox.shell.plan("echo after"))).stdout == b"after\n"

    asyncio.run(main())


def test_node_lost_under_the_async_client(ray_cluster, shared_dir):
    """The server's path (ClusterClient.submit): a lost node's plans are resubmitted, each once."""
    from evalbox.faces.cluster import ClusterClient

    _, cluster, _ = ray_cluster
    doomed = cluster.add_node(num_cpus=2)
    cluster.wait_for_nodes()
    gate, log = os.path.join(shared_dir, "open"), os.path.join(shared_dir, "log")
    n = 10

    async def main():
        async with ClusterClient("ray") as client:
            assert client.capacity == 6
            calls = [asyncio.ensure_future(client.submit(
                Plan(["sh", "-c", f"echo {i} >> {log}; while [ ! -e {gate} ]; do sleep 0.02; done; echo {i}"],
                     mounts=[Mount.rw(shared_dir)], timeout=60))) for i in range(n)]
            try:
                deadline = time.monotonic() + 120
                while len(open(log).read().split()) < 6:
                    assert time.monotonic() < deadline, "the client never filled the three nodes"
                    await asyncio.sleep(0.02)
                await asyncio.get_running_loop().run_in_executor(None, cluster.remove_node, doomed)
            finally:
                open(gate, "w").close()
            return await asyncio.gather(*calls)

    outs = asyncio.run(main())
    assert [o.stdout for o in outs] == [f"{i}\n".encode() for i in range(n)]
    started = open(log).read().split()
    assert sorted(set(started), key=int) == [str(i) for i in range(n)]
    assert len(started) == n + 2  # the two plans running on the removed node, and only they, ran twice
