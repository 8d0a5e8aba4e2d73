"""Class 8: Output tells the truth about the program, not about its caller."""

from __future__ import annotations

import pytest

from hardening_kit import run_snippet

MiB = 1 << 20


def test_max_rss_of_a_tiny_program_is_not_the_callers_memory(caller):
    got = run_snippet(caller, """
        ballast = bytearray(600 << 20)
        for i in range(0, len(ballast), 4096):
            ballast[i] = 1
        outs = [evalbox.run(["/bin/true"]) for _ in range(3)]
        emit({"rss": [o.max_rss for o in outs], "status": [o.status.value for o in outs]})
    """)
    assert got["status"] == ["exited"] * 3
    for rss in got["rss"]:
        assert rss < 64 * MiB, f"/bin/true reported {rss / MiB:.0f} MiB from a 600 MiB caller"


def test_max_rss_counts_what_the_program_uses(caller):
    got = run_snippet(caller, """
        code = "b = bytearray(200 << 20)\\nfor i in range(0, len(b), 4096): b[i] = 1"
        o = evalbox.run(["/usr/bin/python3.11", "-I", "-S", "-c", code], memory="600M", timeout=60)
        emit({"rss": o.max_rss, "status": o.status.value, "err": o.stderr.decode()[-300:]})
    """)
    assert got["status"] == "exited", got
    if caller == "nobody" and got["rss"] == 0:
        # seen once in a full run, never alone: 0 means "unknown", which is truthful but not the figure
        pytest.xfail("KNOWN GAP: an unprivileged caller's run reported max_rss 0 (unknown) once")
    assert 200 * MiB <= got["rss"] < 400 * MiB, got


def test_max_rss_never_reports_a_big_callers_peak_for_a_big_program(caller):
    # a 200 MiB program from a 600 MiB caller: its figure, or 0 (unknown), never the caller's
    got = run_snippet(caller, """
        ballast = bytearray(600 << 20)
        for i in range(0, len(ballast), 4096):
            ballast[i] = 1
        code = "b = bytearray(200 << 20)\\nfor i in range(0, len(b), 4096): b[i] = 1"
        o = evalbox.run(["/usr/bin/python3.11", "-I", "-S", "-c", code], memory="600M", timeout=60)
        emit({"rss": o.max_rss, "status": o.status.value})
    """)
    assert got["status"] == "exited", got
    assert got["rss"] == 0 or 200 * MiB <= got["rss"] < 400 * MiB, got


def test_limits_beyond_64_bits_are_refused_not_wrapped(caller):
    got = run_snippet(caller, """
        refused = []
        for kw in ({"max_open_files": 2**64 + 10}, {"cpu_time": 2**64}, {"max_file_size": 2**64},
                   {"memory": 2**64}, {"max_pids": 2**64 + 1}, {"max_output": 2**64}):
            try:
                evalbox.run(["/bin/true"], **kw)
                refused.append(None)
            except evalbox.ValidationError as e:
                refused.append(str(e))
        emit({"refused": refused})
    """)
    assert all(r and "at most" in r for r in got["refused"]), got
