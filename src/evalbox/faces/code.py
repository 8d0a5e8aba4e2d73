"""Source code in a named language, compiled and run as separate sandboxed phases.

    result = evalbox.run_code("cpp", source, stdin=b"3\\n", compile_timeout=10, run_timeout=2)
    result.compile   # Output of the build (None for interpreted languages)
    result.run       # Output of the program (None when the build failed or timed out)
    result = await evalbox.arun_code("python", "print(1)")

The languages are `evalbox.runtimes.LANGUAGES` (SandboxFusion's names); the phases are the
language's `stages()`. The program runs only when the build exited 0, with the build's
artifacts copied into a fresh sandbox. `fetch` names files of the run's workspace to return in
`CodeResult.files` (see `Plan.collect`).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from evalbox.errors import ValidationError
from evalbox.executor.executor import Executor
from evalbox.process.result import Output, Status
from evalbox.runtimes.common import Stages

if TYPE_CHECKING:
    from evalbox.faces.aio import AsyncExecutor


@dataclass(frozen=True)
class CodeResult:
    compile: Output | None  # None: the language has no compile phase
    run: Output | None  # None: the build failed, so the program never ran
    files: Mapping[str, bytes] = field(default_factory=dict)  # the `fetch` files found after the run

    @property
    def success(self) -> bool:
        """The build (if any) and the program both exited with code 0."""
        return (self.compile is None or self.compile.success) and self.run is not None and self.run.success


def language_names() -> list[str]:
    from evalbox.runtimes import LANGUAGES

    return sorted(LANGUAGES)


def code_stages(language: str, code: str | bytes, *, compile_timeout: float | None = 10.0,
                run_timeout: float | None = 10.0, fetch: Iterable[str] = (), **limits: Any) -> Stages:
    """The language's Stages for `code`; `limits` are Plan keywords of the run (stdin, files, memory...)."""
    from evalbox.runtimes import LANGUAGES

    runtime = LANGUAGES.get(language)
    if runtime is None:
        raise ValidationError(f"unknown language {language!r}; evalbox runs {', '.join(sorted(LANGUAGES))}")
    fetch = tuple(fetch)
    if fetch:
        limits["collect"] = fetch
    return runtime.stages(code, compile_timeout=compile_timeout, run_timeout=run_timeout, **limits)


def built(compiled: Output | None) -> bool:
    return compiled is None or (compiled.status is Status.EXITED and compiled.exit_code == 0)


def _result(stages: Stages, compiled: Output | None, ran: Output | None) -> CodeResult:
    return CodeResult(compiled, ran, dict(ran.files) if ran is not None and stages.run.collect else {})


def run_code(language: str, code: str | bytes, **kw: Any) -> CodeResult:
    """Compile (when the language has a compile phase) and run `code`; see `code_stages` for keywords."""
    stages = code_stages(language, code, **kw)
    with Executor() as ex:
        compiled = ex.run(stages.compile) if stages.compile is not None else None
        ran = ex.run(stages.run_after(compiled) if compiled is not None else stages.run) if built(compiled) else None
    return _result(stages, compiled, ran)


async def arun_stages(ex: "AsyncExecutor", stages: Stages) -> CodeResult:
    """Run prepared Stages on an AsyncExecutor (cancelling kills the phase that is running)."""
    compiled = await ex.run(stages.compile) if stages.compile is not None else None
    ran = None
    if built(compiled):
        ran = await ex.run(stages.run_after(compiled) if compiled is not None else stages.run)
    return _result(stages, compiled, ran)


async def arun_code(language: str, code: str | bytes, *, executor: "AsyncExecutor | None" = None,
                    **kw: Any) -> CodeResult:
    """`run_code` for asyncio, on `executor` or on a new AsyncExecutor of the running loop."""
    from evalbox.faces.aio import AsyncExecutor

    stages = code_stages(language, code, **kw)
    if executor is not None:
        return await arun_stages(executor, stages)
    async with AsyncExecutor() as ex:
        return await arun_stages(ex, stages)
