"""JSON-lines result files for `evalbox batch` and `evalbox humaneval`: results written as they
finish (so a crash or Ctrl-C loses only what was running), resumed from what a file already
holds, and summarised at the end."""

from __future__ import annotations

import json
import os
import time
from collections import Counter
from collections.abc import Iterable
from typing import IO, Any


class ResultsError(Exception):
    """An output file that cannot be used (unwritable, or not the results of this input)."""


class ResultFile:
    """One JSON object per line, each flushed to the file as soon as it is written."""

    def __init__(self, path: str | None, append: bool = False) -> None:
        """`path` None or "-": standard output. Opened now, so an unwritable path fails before any run."""
        self.path = path if path not in (None, "-") else None
        self._own = self.path is not None
        try:
            self._f: IO[str] = open(self.path, "a" if append else "w", encoding="utf-8") if self.path else _stdout()
        except OSError as e:
            raise ResultsError(f"cannot write {path}: {e.strerror}") from None

    def write(self, row: dict[str, Any]) -> None:
        self._f.write(json.dumps(row, ensure_ascii=False) + "\n")
        self._f.flush()

    def close(self) -> None:
        if self._own:
            self._f.close()


def _stdout() -> IO[str]:
    import sys

    return sys.stdout


def read_done(path: str) -> dict[int, dict[str, Any]]:
    """The rows (by "index") an earlier, possibly interrupted, run left in `path`.

    A torn last line (the writer died mid-line) is cut off the file so appending continues cleanly;
    anything else that is not a result row means the file is not ours to extend.
    """
    if not os.path.exists(path):
        return {}
    done: dict[int, dict[str, Any]] = {}
    with open(path, "rb") as f:
        data = f.read()
    good_end = 0
    lines = data.split(b"\n")
    for number, raw in enumerate(lines, 1):
        last = number == len(lines)
        if not raw.strip():
            if not last:
                good_end += len(raw) + 1
            continue
        try:
            row = json.loads(raw)
            if not isinstance(row, dict) or not isinstance(row.get("index"), int) or row["index"] < 0:
                raise ValueError
        except ValueError:
            if last:  # torn write: drop it, the run is redone
                break
            raise ResultsError(f"{path}, line {number}: not a result row with an \"index\"; "
                               "use another output file or run without --resume") from None
        if last:  # a complete row but no newline: the writer died before writing it
            break
        done[row["index"]] = row
        good_end += len(raw) + 1
    if good_end < len(data):
        with open(path, "r+b") as f:
            f.truncate(good_end)
    return done


def rewrite_sorted(path: str, key: str = "index") -> None:
    """Put a finished results file in input order (atomically: a reader never sees half of it)."""
    with open(path, encoding="utf-8") as f:
        rows = [json.loads(line) for line in f if line.strip()]
    rows.sort(key=lambda r: r[key])
    tmp = f"{path}.tmp{os.getpid()}"
    with open(tmp, "w", encoding="utf-8") as f:
        for row in rows:
            f.write(json.dumps(row, ensure_ascii=False) + "\n")
    os.replace(tmp, path)


class Summary:
    """Counts by outcome and the time taken, as one line for stderr."""

    def __init__(self, what: str) -> None:
        self.what = what
        self.counts: Counter[str] = Counter()
        self.skipped = 0
        self.started = time.monotonic()

    def add(self, outcome: str) -> None:
        self.counts[outcome] += 1

    def line(self, unfinished: int = 0, extra: Iterable[str] = ()) -> str:
        done = sum(self.counts.values())
        parts = [f"{self.what}: {done} done in {time.monotonic() - self.started:.2f}s"]
        if self.counts:
            parts[0] += ": " + ", ".join(f"{name} {n}" for name, n in self.counts.most_common())
        if self.skipped:
            parts.append(f"{self.skipped} already in the output (--resume)")
        if unfinished:
            parts.append(f"{unfinished} not run (rerun with --resume to finish)")
        return "; ".join([*parts, *extra])
