"""evalbox.evals.judge: stdin/stdout cases judged on the host, one verdict per case."""

from __future__ import annotations

import asyncio
import secrets
import textwrap

import pytest

import evalbox
from evalbox.evals import judge
from evalbox.evals.judge import Case, Verdict

ADD = "a, b = map(int, input().split())\nprint(a + b)\n"


def py(code: str, **limits) -> evalbox.Plan:
    return evalbox.python.plan(textwrap.dedent(code), **limits)


def test_verdict_per_case():
    program = py("""
        import os, sys
        n = int(input())
        if n == 1: print(1)
        elif n == 2: print(3)
        elif n == 3:
            while True: pass
        elif n == 4: x = bytearray(1 << 30); print(len(x))
        elif n == 5: raise SystemExit(3)
        elif n == 6: os.kill(os.getpid(), 9)
        elif n == 7:
            while True: sys.stdout.write("x" * 65536)
        elif n == 8: print(8); sys.exit(1)
    """, timeout=1.0, memory="64M", max_output="1M")
    cases = [Case(f"{n}\n", f"{n}\n") for n in range(1, 9)]
    report = judge.judge(program, cases, concurrency=4)
    assert [c.verdict for c in report.cases] == [
        Verdict.ACCEPTED, Verdict.WRONG_ANSWER, Verdict.TIME_LIMIT, Verdict.MEMORY_LIMIT,
        Verdict.RUNTIME_ERROR, Verdict.RUNTIME_ERROR, Verdict.OUTPUT_LIMIT, Verdict.RUNTIME_ERROR]
    assert report.cases[1].message == "token 1: expected '2', got '3'"
    assert report.cases[4].message == "exit code 3" and report.cases[5].message == "killed by signal 9"
    assert report.verdict is Verdict.WRONG_ANSWER and report.passed == 1 and report.total == 8 and not report.accepted
    summary = report.summary()
    assert summary["counts"] == {"accepted": 1, "wrong_answer": 1, "time_limit": 1, "memory_limit": 1,
                                 "runtime_error": 3, "output_limit": 1}
    assert summary["first_failure"] == {"index": 1, "verdict": "wrong_answer", "message": "token 1: expected '2', got '3'"}


def test_accepted_and_cpu_limit():
    report = judge.judge(py(ADD), [("1 2\n", "3\n"), (b"10 -4", b"  6  "), Case("0 0", "0")])
    assert report.accepted and report.verdict is Verdict.ACCEPTED and report.summary()["first_failure"] is None
    slow = judge.judge(py("while True: pass"), [("", "")], cpu_time=0.3, timeout=10)
    assert slow.cases[0].verdict is Verdict.TIME_LIMIT and "CPU time" in slow.cases[0].message


def test_stop_on_failure_skips_the_rest():
    report = judge.judge(py(ADD), [("1 1", "3"), ("1 1", "2"), ("2 2", "4")], stop_on_failure=True, concurrency=1)
    assert [c.verdict for c in report.cases] == [Verdict.WRONG_ANSWER, Verdict.SKIPPED, Verdict.SKIPPED]
    assert report.cases[1].output is None and report.verdict is Verdict.WRONG_ANSWER


def test_async():
    report = asyncio.run(judge.ajudge(py(ADD), [("1 2", "3"), ("2 2", "5")], concurrency=2))
    assert [c.verdict for c in report.cases] == [Verdict.ACCEPTED, Verdict.WRONG_ANSWER]


def test_comparison_rules():
    assert judge.compare_tokens(b"1  2\n3\n\n", b"1 2 3") == ""
    assert judge.compare_tokens(b"1 2", b"1 2 3") == "expected 3 tokens, got 2"
    assert judge.compare_tokens(b"0.30000000000000004", b"0.3") != ""
    assert judge.compare_tokens(b"0.30000000000000004", b"0.3", float_tolerance=1e-9) == ""
    assert judge.compare_tokens(b"1000001", b"1e6", float_tolerance=1e-6) == ""  # relative for large values
    assert judge.compare_tokens(b"1000002", b"1e6", float_tolerance=1e-6) != ""
    assert judge.compare_tokens(b"nan", b"1", float_tolerance=1.0) != "" and judge.compare_tokens(b"inf", b"1e308", float_tolerance=1.0) != ""
    assert judge.compare_tokens(b"abc", b"1", float_tolerance=1.0) == "token 1: expected '1', got 'abc'"
    assert judge.compare_lines(b"a  \r\nb\n\n\n", b"a\nb") == ""
    assert judge.compare_lines(b"a b\n", b"a  b\n") == "line 1: expected 'a  b', got 'a b'"
    assert judge.compare_exact(b"ab\n", b"ab\n") == "" and judge.compare_exact(b"ab", b"ab\n").startswith("differs at byte 2")
    with pytest.raises(ValueError):
        judge.judge(py(ADD), [("1 1", "2")], compare="fuzzy")
    with pytest.raises(ValueError):
        judge.judge(py(ADD), [("1 1", "2")], compare="exact", float_tolerance=1e-6)


def test_modes_and_checker_end_to_end():
    program = py("print('x =', 1.0000001)\nprint()\n")
    assert judge.judge(program, [("", "x = 1")], float_tolerance=1e-6).accepted
    assert not judge.judge(program, [("", "x = 1")]).accepted
    assert judge.judge(program, [("", "x = 1.0000001")], compare="lines").accepted
    assert not judge.judge(program, [("", "x = 1.0000001")], compare="exact").accepted
    seen = []

    def checker(stdin: bytes, expected: bytes, output: bytes) -> bool:
        seen.append((stdin, expected, output))
        return output.startswith(b"x =")

    assert judge.judge(program, [("in", "anything")], compare=checker).accepted
    assert seen == [(b"in", b"anything", b"x = 1.0000001\n\n")]


def test_expected_output_never_reaches_the_program():
    """The program searches every file and process it can see for the expected output; it cannot
    find it, so it prints what it found (nothing) and the case is a wrong answer."""
    secret = "evalbox-judge-secret-" + secrets.token_hex(8)
    program = py(f"""
        import os, sys
        needle = "".join(reversed({secret[::-1]!r})).encode()
        places = []
        for root in (os.getcwd(), os.path.dirname(os.getcwd()), "/tmp", "/dev/shm", "/var/tmp", os.environ.get("HOME", "/")):
            for dirpath, _, names in os.walk(root):
                places += [os.path.join(dirpath, n) for n in names]
        for pid in filter(str.isdigit, os.listdir("/proc")):
            places += [f"/proc/{{pid}}/{{w}}" for w in ("cmdline", "environ", "fd/0", "fd/1", "fd/3")]
        found = []
        for path in places:
            try:
                with open(path, "rb") as f:
                    if needle in f.read(1 << 22):
                        found.append(path)
            except (OSError, ValueError):
                pass
        print(needle.decode() if found else "nothing", found)
    """, timeout=20)
    report = judge.judge(program, [("", secret)])
    assert report.cases[0].verdict is Verdict.WRONG_ANSWER and report.cases[0].output.stdout == b"nothing []\n"


def test_program_that_cannot_start():
    with pytest.raises(evalbox.SandboxError):
        judge.judge(["/nonexistent/judge-me"], [("", "")])
