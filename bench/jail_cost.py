"""The jail's cost on `/bin/true`, side by side: blocks of runs alternating EVALBOX_JAIL=0 and 1,
each block a fresh process (`evalbox.run`, 60 runs after 5 to warm up); prints the median of the
blocks' wall medians and the CPU per run (caller and children), the figure a loaded machine
disturbs least. Usage: python bench/jail_cost.py [BLOCKS]"""
import json
import os
import statistics
import subprocess
import sys
code = r'''
import os, resource, sys, time, json
import evalbox
plan = evalbox.Plan(["/bin/true"])
for _ in range(5): evalbox.run(["/bin/true"])
walls = []
r0 = resource.getrusage(resource.RUSAGE_SELF); c0 = resource.getrusage(resource.RUSAGE_CHILDREN)
for _ in range(int(sys.argv[1])):
    t = time.perf_counter(); evalbox.run(["/bin/true"]); walls.append(time.perf_counter() - t)
r1 = resource.getrusage(resource.RUSAGE_SELF); c1 = resource.getrusage(resource.RUSAGE_CHILDREN)
cpu = (r1.ru_utime + r1.ru_stime - r0.ru_utime - r0.ru_stime) + (c1.ru_utime + c1.ru_stime - c0.ru_utime - c0.ru_stime)
walls.sort()
print(json.dumps({"median_ms": 1000 * walls[len(walls)//2], "cpu_ms": 1000 * cpu / len(walls)}))
'''
res = {"0": [], "1": []}
for block in range(int(sys.argv[1]) if len(sys.argv) > 1 else 6):
    for jail in ("0", "1"):
        out = subprocess.run([sys.executable, "-c", code, "60"], env={**os.environ, "EVALBOX_JAIL": jail}, capture_output=True, text=True, check=True)
        res[jail].append(json.loads(out.stdout.strip().splitlines()[-1]))
for jail, rows in res.items():
    print("jail" if jail == "1" else "none", "median of block medians %.2f ms" % statistics.median(r["median_ms"] for r in rows),
          "cpu/run %.2f ms" % statistics.median(r["cpu_ms"] for r in rows), [round(r["median_ms"], 2) for r in rows])
print("load", os.getloadavg())
