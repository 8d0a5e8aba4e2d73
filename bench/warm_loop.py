"""Warm `print(1)` runs through run_many at concurrency 4 for N seconds (default 8), for profiling
(bench/perf_by_process.py); prints how many runs it made."""

from __future__ import annotations

import sys
import time

from evalbox.faces.batch import run_many
from evalbox.faces.bench import find_python, warm_python_plan

plan = warm_python_plan(find_python(None), "print(1)")
run_many([plan] * 16, concurrency=4, progress=False)
start, runs = time.time(), 0
while time.time() - start < (float(sys.argv[1]) if len(sys.argv) > 1 else 8.0):
    run_many([plan] * 100, concurrency=4, progress=False)
    runs += 100
print(runs)
