"""How long the caller's thread waits on the exchange with a template or launcher (send the
request, the fork, the answer) per warm run, against the run's wall time: `run_many` of 300 warm
`print(1)` at concurrency 1 and 4. Usage: python bench/exchange_wait.py"""

from __future__ import annotations

import statistics
import time

from evalbox.faces.batch import run_many
from evalbox.faces.bench import find_python, warm_python_plan
from evalbox.process import warm

calls: list[float] = []
inner: list[float] = []
original = warm._Spawner.call


def timed_call(self, fn, undo=None):
    start = time.perf_counter()

    def job():
        begun = time.perf_counter()
        try:
            return fn()
        finally:
            inner.append(time.perf_counter() - begun)

    try:
        return original(self, job, undo)
    finally:
        calls.append(time.perf_counter() - start)


warm._Spawner.call = timed_call
plan = warm_python_plan(find_python(None), "print(1)")
run_many([plan] * 20, concurrency=4, progress=False)
for concurrency in (1, 4):
    calls.clear()
    inner.clear()
    start = time.perf_counter()
    run_many([plan] * 300, concurrency=concurrency, progress=False)
    elapsed = time.perf_counter() - start
    print(f"c={concurrency}: {300 / elapsed:.0f} runs/s; exchange median {statistics.median(calls) * 1000:.2f} ms "
          f"(on the spawner thread {statistics.median(inner) * 1000:.2f}); caller blocked {sum(calls):.2f} s "
          f"of {elapsed:.2f} s")
