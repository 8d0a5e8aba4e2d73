"""Grading candidate programs with verdicts they cannot forge (SPEC §7).

`evalbox.evals.humaneval`: HumanEval's check_correctness and evaluate_functional_correctness.
`evalbox.evals.judge`: stdin/stdout test cases, judged on the host (accepted, wrong answer...).
`evalbox.evals.relay`: function tests in general (`FunctionTest`, `check_functions`): the
candidate and the trusted tests in separate sandboxes, only plain data between them.
"""

from evalbox.evals import humaneval, judge, relay
from evalbox.evals.relay import FunctionTest, check_functions, iter_checks

__all__ = ["FunctionTest", "check_functions", "humaneval", "iter_checks", "judge", "relay"]
