"""Where a warm run's CPU goes, by process: the caller, the run's copy and its init, the long-lived
templates and launchers, idle. Reads `perf script` output of a system-wide profile.

    perf record -o warm.data -a -g -e cpu-clock -F 999 -- python bench/warm_loop.py 8
    perf script -i warm.data -F pid,comm,ip,sym > warm.txt
    python bench/perf_by_process.py warm.txt RUNS

RUNS is what warm_loop.py printed. Each group's samples are split into user time (no kernel entry
on the stack) and the inclusive kernel functions below, per run (1 sample = 1/999 s of one CPU).
"""

from __future__ import annotations

import collections
import sys

KERNEL = ("__do_sys_clone", "dup_mmap", "__x64_sys_exit_group", "exit_mmap", "handle_mm_fault", "do_wp_page",
          "copy_mnt_ns", "free_nsproxy")
ENTRIES = ("entry_SYSCALL_64_after_hwframe", "asm_exc_page_fault", "ret_from_fork_asm", "asm_sysvec_apic_timer_interrupt",
           "asm_common_interrupt", "asm_sysvec_call_function_single", "asm_sysvec_reschedule_ipi")


def samples(path: str):
    current = None
    with open(path) as f:
        for line in f:
            if not line.strip():
                if current:
                    yield current
                current = None
            elif not line.startswith((" ", "\t")):
                parts = line.split()
                current = (int(parts[-1]), " ".join(parts[:-1]), [])
            elif current is not None:
                fields = line.split(None, 1)
                if len(fields) > 1:
                    current[2].append(fields[1].strip())
    if current:
        yield current


def main(path: str, runs: int) -> None:
    data = list(samples(path))
    interpreter = collections.Counter(pid for pid, comm, _ in data if comm.startswith("python3"))
    resident = {pid for pid, n in interpreter.items() if n > 100}  # templates and launchers live throughout
    total, user, kernel = collections.Counter(), collections.Counter(), collections.defaultdict(collections.Counter)
    for pid, comm, chain in data:
        if comm.startswith("python3"):
            group = "launchers and templates" if pid in resident else "run copies and inits"
        elif comm == "python":
            group = "caller (and guard)"
        elif comm == "swapper":
            group = "idle"
        else:
            group = "other: " + comm[:15]
        total[group] += 1
        if not any(fn in ENTRIES for fn in chain):
            user[group] += 1
        for fn in set(chain) & set(KERNEL):
            kernel[group][fn] += 1
    per_run = 1000 / 999 / runs  # ms of one CPU per sample, per run
    for group, n in total.most_common(8):
        detail = ", ".join(f"{fn} {kernel[group][fn] * per_run:.2f}" for fn in KERNEL if kernel[group][fn])
        print(f"{group}: {n * per_run:.2f} ms/run (user {user[group] * per_run:.2f}) {detail}")


if __name__ == "__main__":
    main(sys.argv[1], int(sys.argv[2]))
