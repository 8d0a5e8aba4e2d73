"""`import evalbox` loads only what every run needs: the faces, runtimes and graders a user may
never touch load on first use, and optional extras never load unless asked for."""

import subprocess
import sys

HEAVY = ("asyncio", "evalbox.runtimes", "evalbox.evals", "evalbox.faces.code", "evalbox.faces.aio", "ray", "fastapi",
         "uvicorn", "tqdm")


def _loaded_after(code: str) -> set[str]:
    probe = code + "\nimport sys; print(' '.join(sys.modules))"
    out = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, timeout=60, check=True)
    return set(out.stdout.split())


def test_import_evalbox_loads_no_optional_face():
    loaded = _loaded_after("import evalbox")
    assert not loaded & set(HEAVY), f"import evalbox loaded {sorted(loaded & set(HEAVY))}"


def test_lazy_names_still_work_and_list():
    loaded = _loaded_after(
        "import evalbox\n"
        "assert evalbox.python.run is not None and evalbox.evals.humaneval is not None\n"
        "assert callable(evalbox.run_code) and callable(evalbox.arun)\n"
        "assert {'python', 'evals', 'arun', 'run_code'} <= set(dir(evalbox))\n"
        "from evalbox import cpp, CodeResult, AsyncExecutor")
    assert {"evalbox.runtimes.python", "evalbox.evals", "asyncio"} <= loaded
    assert "ray" not in loaded
