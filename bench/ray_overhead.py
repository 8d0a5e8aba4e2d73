"""What running a batch through Ray costs, against the same batch run locally (BENCHMARKS.md).

    python bench/ray_overhead.py [-n 1000] [--json]

Starts a local Ray cluster on 127.0.0.1 (a head with no CPUs and two worker nodes of one CPU
each: the same two sandbox slots as the local run, on this machine's cores), warms the node
actors up, then runs the same N small plans (`/bin/true`, and `python -I -S -c pass`) with
`run_many` locally (concurrency 2) and with `cluster="ray"`. Reports per item: wall time, the
CPU the driver spent (Python and Ray's threads), the CPU the node actors spent outside their
sandboxes, and the sandboxes' own CPU; the same at 32 sandboxes per node (as a big node is fed: calls of 8 plans);
plus the fixed cost of a one-plan batch. Needs Ray
(`pip install 'evalbox-sandbox[ray]'`) and about 1 GB of memory.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import sys
import time

os.environ.setdefault("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")  # every Ray process on 127.0.0.1


def children_cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def measure(label: str, run, n: int, actors_cpu) -> dict:
    """Wall, driver CPU, node-actor CPU and sandbox CPU of one run_many, per item (ms)."""
    actors_before, children_before = actors_cpu(), children_cpu()
    cpu_before, wall_before = time.process_time(), time.perf_counter()
    results = run()
    wall, cpu = time.perf_counter() - wall_before, time.process_time() - cpu_before
    actors, children = actors_cpu() - actors_before, children_cpu() - children_before
    bad = [r for r in results if not getattr(r, "success", False)]
    if bad:
        raise SystemExit(f"{label}: {len(bad)} of {n} plans failed, e.g. {bad[0]!r}")
    sandbox_cpu = sum(r.cpu_time for r in results)
    return {"row": label, "n": n, "wall_s": round(wall, 3), "per_s": round(n / wall, 1),
            "wall_ms_per_item": round(1000 * wall / n, 3), "driver_cpu_ms": round(1000 * cpu / n, 3),
            "actor_cpu_ms": round(1000 * actors / n, 3), "sandbox_cpu_ms": round(1000 * sandbox_cpu / n, 3),
            "local_children_cpu_ms": round(1000 * children / n, 3)}


class Echo:
    """An actor that returns what it gets: Ray's own cost of a call carrying k (plan, Output) pairs."""

    async def run(self, chunk):
        return chunk

    def cpu(self) -> float:
        usage = resource.getrusage(resource.RUSAGE_SELF)
        return usage.ru_utime + usage.ru_stime


def call_costs(ray, evalbox, items: int = 2000) -> list[dict]:
    """Driver and actor CPU per item of Ray calls carrying 1, 8 or 16 items, nothing run."""
    actor = ray.remote(Echo).options(num_cpus=0).remote()
    pair = (evalbox.Plan(["/bin/true"]).to_dict(), evalbox.run(["/bin/true"]))
    ray.get(actor.cpu.remote())
    rows = []
    for k in (1, 8, 16):
        actor_before, cpu_before, wall_before = ray.get(actor.cpu.remote()), time.process_time(), time.perf_counter()
        pending = [actor.run.remote([pair] * k) for _ in range(8)]
        for _ in range(items // k - 8):
            ready, pending = ray.wait(pending, num_returns=1)
            ray.get(ready)
            pending.append(actor.run.remote([pair] * k))
        ray.get(pending)
        wall, cpu = time.perf_counter() - wall_before, time.process_time() - cpu_before
        actor_cpu = ray.get(actor.cpu.remote()) - actor_before
        rows.append({"row": f"ray    call cost, {k} per call (echo actor)", "n": items,
                     "wall_ms_per_item": round(1000 * wall / items, 3), "driver_cpu_ms": round(1000 * cpu / items, 3),
                     "actor_cpu_ms": round(1000 * actor_cpu / items, 3)})
    ray.kill(actor)
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("-n", type=int, default=1000, help="plans per batch (default 1000)")
    parser.add_argument("--json", action="store_true", help="print the rows as JSON")
    args = parser.parse_args()
    n = args.n

    import ray
    from ray.cluster_utils import Cluster

    import evalbox
    from evalbox.faces.cluster import pool_for

    python = "/usr/bin/python3.11" if os.path.exists("/usr/bin/python3.11") else sys.executable
    batches = {
        "true": [evalbox.Plan(["/bin/true"])] * n,
        "python -I -S -c pass": [evalbox.Plan([python, "-I", "-S", "-c", "pass"])] * n,
    }
    cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 0, "include_dashboard": False})
    try:
        for _ in range(2):
            cluster.add_node(num_cpus=1)
        cluster.wait_for_nodes()
        ray.init(address=cluster.address, logging_level="ERROR")
        pool = pool_for("ray")

        def actors_cpu() -> float:
            return sum(info["cpu_seconds"] for info in ray.get([node.actor.info.remote() for node in pool.nodes.values()]))

        def nothing() -> float:
            return 0.0

        evalbox.run_many(batches["true"][:50], cluster="ray", progress=False)  # actors up and warm
        evalbox.run_many(batches["true"][:50], concurrency=2, progress=False)
        rows = []
        for name, plans in batches.items():
            rows.append(measure(f"local  {name}", lambda: evalbox.run_many(plans, concurrency=2, progress=False), n, nothing))
            rows.append(measure(f"ray    {name}", lambda: evalbox.run_many(plans, cluster="ray", progress=False), n, actors_cpu))
        # As a big node is fed (32 at once: calls of 8 plans): the per-item costs of the driver and
        # the actor there (the two cores are oversubscribed: wall time means little).
        plans = batches["true"]
        rows.append(measure("ray    true, 32 at once per node (calls of 8)",
                            lambda: evalbox.run_many(plans, cluster="ray", concurrency=32, progress=False), n, actors_cpu))
        rows.extend(call_costs(ray, evalbox))
        one = [evalbox.Plan(["/bin/true"])]
        fixed = []
        for _ in range(20):
            start = time.perf_counter()
            evalbox.run_many(one, cluster="ray", progress=False)
            remote = time.perf_counter() - start
            start = time.perf_counter()
            evalbox.run_many(one, progress=False)
            fixed.append(remote - (time.perf_counter() - start))
        fixed.sort()
        rows.append({"row": "ray    fixed cost of a batch (one /bin/true, minus local)", "n": len(fixed),
                     "median_ms": round(1000 * fixed[len(fixed) // 2], 2), "p90_ms": round(1000 * fixed[int(0.9 * len(fixed))], 2)})
        info = {"ray": ray.__version__, "evalbox": evalbox.__version__, "cpus": os.cpu_count(),
                "loadavg": os.getloadavg(), "nodes": "head (0 CPUs) + 2 workers x 1 CPU, one machine"}
    finally:
        ray.shutdown()
        cluster.shutdown()
    if args.json:
        print(json.dumps({"machine": info, "rows": rows}, indent=2))
        return
    print(json.dumps(info))
    for row in rows:
        print("  ".join(f"{k}={v}" for k, v in row.items()))


if __name__ == "__main__":
    main()
