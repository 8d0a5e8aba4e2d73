"""`evalbox bench --quick --json`: every row is there and sane. Bounds are deliberately generous.

Speed is judged by the benchmark itself (BENCHMARKS.md), not here: these tests only catch a
suite that breaks, a row that disappears, or a regression by an order of magnitude.
"""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from evalbox.faces import bench


@pytest.fixture(scope="module")
def quick() -> dict:
    proc = subprocess.run(
        [sys.executable, "-m", "evalbox", "bench", "--quick", "--json"],
        capture_output=True, text=True, timeout=300,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    return json.loads(proc.stdout)


def _rows(report: dict) -> dict[str, dict]:
    return {r["name"]: r for r in report["rows"]}


def test_machine_is_described(quick):
    m = quick["machine"]
    assert m["kernel"] and m["cores"] >= 1 and m["memory_gb"] > 0


def test_every_row_is_present_and_measured(quick):
    rows = _rows(quick)
    gap = f"{bench.SPORADIC_GAP * 1000:g}"
    expected = ["posix_spawn /bin/true (bare)", "evalbox /bin/true", "bwrap --unshare-all /bin/true",
                "sandlock run /bin/true", f"posix_spawn /bin/true, {gap} ms idle before",
                f"evalbox /bin/true, {gap} ms idle before", bench.FLOOR_TRUE, f"{bench.FLOOR_TRUE}, {gap} ms idle before"]
    for c in bench.CONCURRENCY_LEVELS:
        expected += [f"bare pool python print(1), c={c}", f"evalbox python print(1), c={c}",
                     f"evalbox warm python print(1), c={c}"]
    expected += ["bare pool python print(1): CPU per run", "evalbox python print(1): CPU per run",
                 "evalbox warm python print(1): CPU per run", "evalbox warm python print(1): CPU per run vs cold",
                 bench.BARE_ONE_CPU, bench.FLOOR_PYTHON, bench.FLOOR_FORK, bench.FLOOR_WARM]
    expected += ["getppid() not intercepted, per call", "getppid() monitored (MONITOR), per call",
                 "getppid() supervised, Python ALLOW, per call"]
    expected += ["run_many python, 128 plans", "evalbox serve /run_code, 128 at once", "serve latency in a 128-burst",
                 "serve latency, 1 request at a time", "run_many: caller CPU per run",
                 "evalbox serve: server CPU per request"]
    for name in expected:
        assert name in rows, f"missing row {name!r}: {sorted(rows)}"
    for r in quick["rows"]:
        if r["skipped"]:
            assert r["median"] is None and r["runs"] == 0
            continue
        assert r["median"] > 0 and r["p90"] > 0 and r["runs"] > 0, r
        if r["unit"] in ("ms", "us"):  # times: the slow tail is the high end
            assert r["p90"] >= r["median"], r
        else:
            assert r["p90"] <= r["median"], r  # the slow tail of a rate is its low end
        if r["ratio"] is not None:
            assert r["ratio"] > 0 and r["baseline"] in rows, r
        if r["target"] is not None:
            assert isinstance(r["met"], bool), r


def test_spawn_latency_within_generous_bounds(quick):
    rows = _rows(quick)
    row = rows["evalbox /bin/true"]
    assert row["median"] < 50, row
    assert row["ratio"] < 30, row
    assert row["target"] == f"<= {bench.TARGET_SPAWN:g}"
    paced = rows[f"evalbox /bin/true, {bench.SPORADIC_GAP * 1000:g} ms idle before"]
    assert paced["median"] < 100 and paced["ratio"] < 100, paced  # the idle time itself is never counted


def test_python_throughput_within_generous_bounds(quick):
    rows = _rows(quick)
    for c in bench.CONCURRENCY_LEVELS:
        row = rows[f"evalbox python print(1), c={c}"]
        assert row["median"] > 5, row  # runs/s: fresh interpreters, even on a slow CI box
        assert row["ratio"] > 1 / 30, row
        assert row["target"] == f">= {bench.TARGET_PYTHON:g}"
    cpu = rows["evalbox python print(1): CPU per run"]
    assert 0 < cpu["median"] < 1000 and cpu["ratio"] < 30, cpu  # ms of CPU per fresh interpreter
    for c in bench.CONCURRENCY_LEVELS:
        row = rows[f"evalbox warm python print(1), c={c}"]
        assert row["median"] > 5 and row["target"] == f">= {bench.TARGET_PYTHON_WARM:g}", row
    warm = rows["evalbox warm python print(1): CPU per run"]
    assert 0 < warm["median"] < 1000 and warm["ratio"] < 30, warm


def test_quick_skips_humaneval_with_a_note(quick):
    rows = [r for r in quick["rows"] if r["section"] == "humaneval"]
    assert rows and all(r["skipped"] for r in rows)
    assert "--humaneval" in rows[0]["skipped"]


def test_big_caller_rows(quick):
    rows = [r for r in quick["rows"] if r["section"] == "caller"]
    assert rows
    if rows[0]["skipped"]:  # not enough free memory on this box: said so
        assert "GB" in rows[0]["skipped"]
        return
    names = [r["name"] for r in rows]
    assert "evalbox /bin/true, small caller" in names and "posix_spawn /bin/true, small caller" in names
    big = next(r for r in rows if r["name"].startswith("evalbox /bin/true, ") and "GB caller" in r["name"])
    assert big["median"] < 50 and big["ratio"] < 10, big
    fork = next(r for r in rows if r["name"].startswith("os.fork+exec") and "GB caller" in r["name"])
    assert fork["ratio"] > 0, fork


# -- pieces, without timing ----------------------------------------------------------------------


def test_percentile_and_compare():
    assert bench._percentile([5, 1, 3, 2, 4], 0.9) == 5
    assert bench._percentile([5, 1, 3, 2, 4], 0.1) == 1
    assert bench._percentile([7.0], 0.9) == 7.0
    base = bench.latency_row("base", "s", [1.0, 1.0, 1.0])
    row = bench.compare(bench.latency_row("x", "s", [2.0, 2.0, 4.0]), base, 1.3)
    assert row.ratio == 2.0 and row.met is False and row.target == "<= 1.3" and row.baseline == "base"
    fast = bench.compare(bench.rate_row("y", "s", [300.0, 200.0, 100.0]), bench.rate_row("b", "s", [100.0]), 0.95)
    assert fast.median == 200.0 and fast.p90 == 100.0 and fast.ratio == 2.0 and fast.met is True
    skipped = bench.compare(bench.skipped_row("z", "s", "ms", "not here"), base, 1.3)
    assert skipped.ratio is None and skipped.met is None


def test_table_renders_skipped_and_measured_rows():
    rows = [bench.latency_row("posix_spawn /bin/true (bare)", "spawn", [1.0, 1.2]),
            bench.skipped_row("bwrap --unshare-all /bin/true", "spawn", "ms", "bwrap not installed")]
    rows.insert(1, bench.compare(bench.latency_row("evalbox /bin/true", "spawn", [2.0, 2.5]), rows[0], 1.3))
    text = bench.format_table(rows)
    assert "skipped: bwrap not installed" in text
    assert "NO" in text and "<= 1.3" in text


def test_bare_pool_captures_output():
    py = bench.find_python()
    results = bench.BarePool().run([py, "-I", "-S", "-c", "import sys; print(1); print(2, file=sys.stderr)"], 6, 3)
    assert len(results) == 6
    assert all(status == 0 and out == b"1\n" and err == b"2\n" for status, out, err in results)


def test_profile_breaks_the_run_down():
    stages = bench.profile_stages(runs=5)
    total = stages[0][1]
    assert stages[0][0].startswith("Executor.run") and total > 0
    assert len(stages) > 5  # the internals it wraps exist (it skips those that moved)
    assert all(us >= 0 and us <= total * 1.5 for _, us, _ in stages[1:])
    assert "Executor.spawn" in bench.format_profile(stages)


def test_humaneval_program_is_the_harness_check_program():
    problem = {"prompt": "def f(x):\n", "canonical_solution": "    return x\n",
               "test": "def check(c):\n    assert c(1) == 1\n", "entry_point": "f"}
    src = bench.humaneval_program(problem)
    assert src.endswith("check(f)\n")
    exec(compile(src, "<humaneval>", "exec"), {})


def test_notify_round_trip_smoke(quick):
    rows = {r["name"]: r for r in quick["rows"]}
    plain = rows["getppid() not intercepted, per call"]
    watched = rows["getppid() monitored (MONITOR), per call"]
    assert plain["median"] < watched["median"] < 2000, (plain, watched)  # us; generous for CI


def test_the_floor_runs_the_program_in_the_sandbox(tmp_path):
    """The floor rows time the real thing, with and without the jail: the program runs locked
    down (a write outside its workspace fails), and its failure is not timed as a run."""
    from evalbox.process.host import probe

    target = tmp_path / "outside"
    target.write_text("intact")
    target.chmod(0o666)
    for who, floor in bench.floors(["/bin/sh", "-c", f"echo changed > {target}"], probe()).items():
        try:
            with pytest.raises(bench.BenchError, match="failed"):
                floor.latency()
            with pytest.raises(bench.BenchError, match="failed"):
                floor.cpu()
        finally:
            floor.close()
        assert target.read_text() == "intact", who
    for who, floor in bench.floors(["/bin/true"], probe()).items():
        try:
            assert floor.latency() > 0 and floor.cpu() >= 0, who
        finally:
            floor.close()


def test_the_warm_fork_floor_runs_every_program_and_counts_failures(tmp_path):
    py = bench.find_python(None)
    marks = [tmp_path / f"ran-{i}" for i in range(6)]
    result = bench.warm_fork_floor(py, [f"open({str(m)!r}, 'w').close()" for m in marks], 2)
    assert all(m.exists() for m in marks) and result["failures"] == 0 and result["cpu_ms"] > 0
    with pytest.raises(bench.BenchError, match="1 programs failed"):
        bench.warm_fork_floor(py, ["print(1)", "raise ValueError", "print(2)"], 2)


@pytest.mark.parametrize("jail", [True, False], ids=["jail", "nojail"])
def test_the_warm_floor_runs_the_program_in_the_sandbox(tmp_path, jail):
    """The warm floor's copies really are locked down (a write outside the workspace fails, the
    program runs as another uid under seccomp), and a failed program is not timed as a run."""
    import dataclasses

    from evalbox.process.host import probe
    from evalbox.process.warm import why_cold_here

    if why_cold_here():
        pytest.skip(f"no warm copies here: {why_cold_here()}")
    host = probe()
    if jail and not host.jail:
        pytest.skip("no jail on this host")
    host = dataclasses.replace(host, jail=jail)
    py = bench.find_python(None)
    target = tmp_path / "outside"
    target.write_text("intact")
    target.chmod(0o666)
    floor = bench.WarmFloor(py, host, f"open({str(target)!r}, 'w').write('changed')")
    try:
        with pytest.raises(bench.BenchError, match="failed"):
            floor.cpu()
    finally:
        floor.close()
    assert target.read_text() == "intact"
    locked = ("import os\nstatus = open('/proc/self/status').read()\n"
              "assert os.getuid() != 0 and 'Seccomp:\\t2' in status and 'NoNewPrivs:\\t1' in status\n")
    floor = bench.WarmFloor(py, host)
    try:
        assert floor.cpu(locked) > 0 and floor.cpu() > 0
    finally:
        floor.close()
