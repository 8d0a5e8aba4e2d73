"""Language runtimes: `evalbox.python`, `evalbox.cpp`, `evalbox.java`... (one module per language).

Each has `run(code, **limits) -> Output` and `plan(code, **limits) -> Plan` (for
`Executor.spawn` and `run_many`), and `stages(code, compile_timeout=, run_timeout=, **limits)`:
the compile and run phases as separate Plans (`Stages`); `limits` are the keywords of
`evalbox.Plan`. `LANGUAGES` maps SandboxFusion's language names to them.
"""

from evalbox.runtimes import (bash, c, cpp, go, go_test, java, node, nodejs, perl, pytest, python, rust, shell,
                              typescript)

RUNTIMES = {"python": python, "shell": shell, "node": node, "go": go}

# SandboxFusion's names (plus "c"), each with stages() for separate compile and run phases.
LANGUAGES = {
    "python": python, "pytest": pytest, "cpp": cpp, "c": c, "bash": bash, "nodejs": nodejs,
    "typescript": typescript, "go": go, "go_test": go_test, "java": java, "rust": rust, "perl": perl,
}

__all__ = ["LANGUAGES", "RUNTIMES", "bash", "c", "cpp", "go", "go_test", "java", "node", "nodejs", "perl", "pytest", "python",
           "rust", "shell", "typescript"]
