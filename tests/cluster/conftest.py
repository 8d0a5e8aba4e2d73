"""One local Ray cluster for the whole directory: a head with no CPUs and two worker nodes.

The head has no CPUs, so every sandbox must run on a worker node: the test sees the real path
(driver -> node actors). Ray is kept on 127.0.0.1 (RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=0 before
importing it; by default it advertises the machine's network address).
"""

import os
import socket

import pytest

os.environ["RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"] = "0"
# Ray's files (sessions, sockets, the "current cluster" address) in a directory of this uid's own:
# the suite runs as root and as another user on the same machine, and /tmp/ray belongs to the first.
os.environ["RAY_TMPDIR"] = f"/tmp/evalbox-ray-{os.getuid()}"
os.makedirs(os.environ["RAY_TMPDIR"], mode=0o700, exist_ok=True)
WORKER_CPUS = 2
NO_RAY = "Ray is not installed: pip install -e '.[test]' (or 'evalbox-sandbox[ray]') to run the cluster tests"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="session")
def ray_cluster():
    """(ray module, Cluster, [worker nodes]); this process is connected to it. The head also
    serves Ray clients at cluster.client_address (ray://127.0.0.1:PORT)."""
    ray = pytest.importorskip("ray", reason=NO_RAY)
    from ray.cluster_utils import Cluster

    client_port = free_port()
    cluster = Cluster(initialize_head=True, head_node_args={
        "num_cpus": 0, "include_dashboard": False, "ray_client_server_port": client_port})
    cluster.client_address = f"ray://127.0.0.1:{client_port}"
    workers = [cluster.add_node(num_cpus=WORKER_CPUS) for _ in range(2)]
    cluster.wait_for_nodes()
    ray.init(address=cluster.address, logging_level="WARNING")
    try:
        yield ray, cluster, workers
    finally:
        ray.shutdown()
        cluster.shutdown()
