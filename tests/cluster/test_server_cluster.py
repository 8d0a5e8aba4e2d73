"""`evalbox serve --cluster ray`: the HTTP server's requests run on the cluster's worker nodes and
answer exactly as a local server does."""

import os
import subprocess
import sys
import threading
import time

import pytest

pytest.importorskip("fastapi", reason="the server tests need the server extra: pip install -e '.[test]'")
requests = pytest.importorskip("requests", reason="the server tests need the test extra: pip install -e '.[test]'")
uvicorn = pytest.importorskip("uvicorn", reason="the server tests need the server extra: pip install -e '.[test]'")

from conftest import WORKER_CPUS, free_port  # noqa: E402

VARYING = ("execution_time", "cpu_time")  # measured, so never equal between two runs

REQUESTS = [
    {"language": "python", "code": "import sys; print(sys.stdin.read()[::-1])", "stdin": "abc"},
    {"language": "python", "code": "raise SystemExit(3)"},
    {"language": "c", "code": '#include <stdio.h>\nint main(void){puts("from c");return 0;}\n'},
    {"language": "cpp", "code": "#include <iostream>\nint main(){int x; std::cin >> x; std::cout << x * 2 << '\\n';}\n",
     "stdin": "21"},
    {"language": "c", "code": "int main(void){ return missing; }\n"},  # the build fails: no run phase
]
SANDBOXES = 1 + 1 + 2 + 2 + 1  # python runs once; c/cpp compile, then run when the build succeeded


class ServerThread:
    """An evalbox server app on uvicorn, in a thread of this process (so its Ray actors are ours)."""

    def __init__(self, app):
        self.url = f"http://127.0.0.1:{free_port()}"
        port = int(self.url.rsplit(":", 1)[1])
        self.server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning"))
        self.thread = threading.Thread(target=self.server.run, daemon=True)

    def __enter__(self):
        self.thread.start()
        deadline = time.monotonic() + 60
        while not self.server.started:
            assert self.thread.is_alive() and time.monotonic() < deadline, "the server did not start"
            time.sleep(0.05)
        return self

    def __exit__(self, *exc):
        self.server.should_exit = True
        self.thread.join(30)

    def run_code(self, body):
        response = requests.post(self.url + "/run_code", json=body, timeout=120)
        assert response.status_code == 200, response.text
        data = response.json()
        for result in (data["compile_result"], data["run_result"]):
            for key in VARYING:
                if result:
                    result.pop(key)
        return data


def node_runs(ray):
    """Sandboxes run so far by this process's node actors, by node."""
    from evalbox.faces.cluster import pool_for

    pool = pool_for("ray")
    return {node.node_id: ray.get(node.actor.info.remote())["runs"] for node in pool.alive_nodes()}


def test_server_on_the_cluster_answers_as_a_local_one(ray_cluster):
    ray, cluster, workers = ray_cluster
    from evalbox.faces.server import Settings, create_app

    with ServerThread(create_app(Settings(concurrency=2))) as local:
        expected = [local.run_code(body) for body in REQUESTS]
    assert [r["status"] for r in expected] == ["Success", "Failed", "Success", "Success", "Failed"]

    before = node_runs(ray)
    app = create_app(Settings(concurrency=None, cluster="ray"))
    with ServerThread(app) as remote:
        assert app.state.service.slots.size == 2 * WORKER_CPUS  # every worker's CPUs; the head has none
        answers = [remote.run_code(body) for body in REQUESTS]
    assert answers == expected
    after = node_runs(ray)
    worker_ids = {w.node_id for w in workers}
    assert set(after) == worker_ids and cluster.head_node.node_id not in after
    assert sum(after.values()) - sum(before.get(n, 0) for n in after) == SANDBOXES


def test_serve_cli_with_cluster_runs_on_it(ray_cluster):
    """The command itself: `evalbox serve --cluster ray` with RAY_ADDRESS, and a clear refusal
    for a cluster it cannot reach."""
    _, cluster, _ = ray_cluster
    port = free_port()
    env = {**os.environ, "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0", "RAY_ADDRESS": cluster.address}
    process = subprocess.Popen([sys.executable, "-m", "evalbox", "serve", "--port", str(port), "--cluster", "ray"],
                               stdout=subprocess.PIPE, stderr=subprocess.STDOUT, env=env)
    try:
        deadline = time.monotonic() + 120
        while True:
            assert process.poll() is None, process.stdout.read().decode()
            assert time.monotonic() < deadline, "evalbox serve --cluster ray did not answer within 120 s"
            try:
                if requests.get(f"http://127.0.0.1:{port}/v1/ping", timeout=1).json() == "pong":
                    break
            except requests.RequestException:
                time.sleep(0.2)
        body = requests.post(f"http://127.0.0.1:{port}/run_code", json=REQUESTS[0], timeout=120).json()
        assert (body["status"], body["run_result"]["stdout"]) == ("Success", "cba\n")
    finally:
        process.terminate()
        try:
            process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


def test_serve_cli_refuses_a_cluster_it_cannot_use():
    done = subprocess.run([sys.executable, "-m", "evalbox", "serve", "--port", str(free_port()), "--cluster", "yarn"],
                          capture_output=True, text=True, timeout=120, stdin=subprocess.DEVNULL)
    assert done.returncode == 2
    assert "--cluster ray" in done.stderr and "ray://HOST:PORT" in done.stderr
