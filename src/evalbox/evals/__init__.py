"""Benchmark harnesses that run every candidate program in its own sandbox.

`evalbox.evals.humaneval`: HumanEval's check_correctness and evaluate_functional_correctness.
"""

from evalbox.evals import humaneval

__all__ = ["humaneval"]
