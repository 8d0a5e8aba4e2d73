"""What preparing and releasing one warm run's lockdown costs the caller, split into user time
(ours: Python) and system time (the kernel's: Landlock rules, the network namespace's counters,
pipes, the jail's root...). The bench floors leave this preparation out (untimed).

    python bench/prepare_cost.py [RUNS]
"""

from __future__ import annotations

import resource
import sys
import time

from evalbox.faces.bench import find_python, warm_python_plan
from evalbox.process.host import probe
from evalbox.process.lockdown import prepare

host, plan = probe(), warm_python_plan(find_python(None), "print(1)")
runs = int(sys.argv[1]) if len(sys.argv) > 1 else 2000
for _ in range(50):
    prepare(plan, host).close()
before, start = resource.getrusage(resource.RUSAGE_SELF), time.perf_counter()
for _ in range(runs):
    lock = prepare(plan, host)
    lock.close_cgroup_fds()
    lock.close()
after, elapsed = resource.getrusage(resource.RUSAGE_SELF), time.perf_counter() - start
print(f"per run: wall {elapsed / runs * 1e3:.3f} ms, user {(after.ru_utime - before.ru_utime) / runs * 1e3:.3f} ms, "
      f"system {(after.ru_stime - before.ru_stime) / runs * 1e3:.3f} ms")
