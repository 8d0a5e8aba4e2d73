"""The SandboxFusion-named runtimes: each language built and run for real, as one Plan and as Stages."""

from __future__ import annotations

import re

import pytest

import evalbox
from evalbox.errors import CommandNotFound
from evalbox.runtimes import LANGUAGES, common
from rt_helpers import describe, ok

# language -> (program that reads a number and prints its double, program with a compile error or None)
PROGRAMS = {
    "python": ("print(int(input()) * 2)", None),
    "pytest": ("import sys\ndef test_double():\n    assert int('21') * 2 == 42\n", None),
    "cpp": ("#include <iostream>\nint main() { long n; std::cin >> n; std::cout << n * 2 << std::endl; }",
            "int main() { return undeclared; }"),
    "c": ('#include <stdio.h>\nint main(void) { long n; scanf("%ld", &n); printf("%ld\\n", n * 2); return 0; }',
          "int main(void) { return undeclared; }"),
    "bash": ("read n; echo $((n * 2))", None),
    "perl": ("my $n = <STDIN>; print $n * 2, \"\\n\";", None),
    "nodejs": ("const n = Number(require('fs').readFileSync(0, 'utf8')); console.log(n * 2);", None),
    "typescript": ("const n: number = Number(require('fs').readFileSync(0, 'utf8')); console.log(n * 2);", None),
    "go": ('package main\nimport "fmt"\nfunc main() { var n int; fmt.Scan(&n); fmt.Println(n * 2) }',
           "package main\nfunc main() { undeclared() }"),
    "go_test": ('package main\nimport "testing"\nfunc TestDouble(t *testing.T) { if 21*2 != 42 { t.Fatal("no") } }',
                None),
    "java": ("import java.util.*;\npublic class Main { public static void main(String[] a) {\n"
             "  System.out.println(new Scanner(System.in).nextLong() * 2); } }",
             "public class Main { public static void main(String[] a) { undeclared(); } }"),
    "rust": ("use std::io::Read;\nfn main() { let mut s = String::new(); std::io::stdin().read_to_string(&mut s).unwrap();\n"
             "  println!(\"{}\", s.trim().parse::<i64>().unwrap() * 2); }",
             "fn main() { undeclared(); }"),
}
READS_STDIN = {"python", "cpp", "c", "bash", "perl", "nodejs", "typescript", "go", "java", "rust"}


def test_every_language_has_a_program_here():
    assert set(PROGRAMS) == set(LANGUAGES)


def _stages(language: str, code: str, **kw):
    try:
        return LANGUAGES[language].stages(code, **kw)
    except CommandNotFound as e:  # the message says how to install the toolchain
        pytest.skip(f"{language}: {e}")


@pytest.mark.parametrize("language", sorted(PROGRAMS))
def test_one_plan_builds_and_runs(language):
    code, _ = PROGRAMS[language]
    try:
        out = LANGUAGES[language].run(code, stdin=b"21\n")
    except CommandNotFound as e:
        pytest.skip(f"{language}: {e}")
    ok(out)
    if language in READS_STDIN:
        assert out.stdout.strip() == b"42", describe(out)


@pytest.mark.parametrize("language", sorted(PROGRAMS))
def test_stages_compile_and_run_in_separate_sandboxes(language):
    code, _ = PROGRAMS[language]
    result = evalbox.run_code(language, code, stdin=b"21\n", compile_timeout=60, run_timeout=30) \
        if _stages(language, code) else None
    compiled_languages = {"cpp", "c", "go", "java", "rust"}
    assert (result.compile is not None) == (language in compiled_languages)
    if result.compile is not None:
        ok(result.compile)
        assert result.compile.files  # the artifacts carried to the run phase
    ok(result.run)
    if language in READS_STDIN:
        assert result.run.stdout.strip() == b"42", describe(result.run)
    assert result.success


@pytest.mark.parametrize("language", sorted(k for k, v in PROGRAMS.items() if v[1]))
def test_a_compile_error_stops_before_the_run(language):
    bad = PROGRAMS[language][1]
    _stages(language, bad)
    result = evalbox.run_code(language, bad, compile_timeout=60)
    assert result.compile.exit_code not in (None, 0), describe(result.compile)
    assert b"undeclared" in result.compile.stderr, describe(result.compile)
    assert result.run is None and not result.success
    one = LANGUAGES[language].run(bad)  # the one-sandbox form exits with the compiler's code
    assert one.exit_code != 0 and b"undeclared" in one.stderr, describe(one)


def test_each_phase_has_its_own_timeout():
    _stages("cpp", PROGRAMS["cpp"][0])
    result = evalbox.run_code("cpp", "#include <unistd.h>\nint main() { sleep(30); }", compile_timeout=60, run_timeout=0.5)
    ok(result.compile)
    assert result.run.status is evalbox.Status.TIMEOUT
    assert result.run.wall_time < 5


def test_the_run_phase_sees_the_binary_and_the_callers_files_not_the_source():
    _stages("c", PROGRAMS["c"][0])
    code = ('#include <stdio.h>\nint main(void) { FILE *f = fopen("data.txt", "r"); char b[16] = {0};\n'
            '  fgets(b, sizeof b, f); printf("%s|%d\\n", b, fopen("main.c", "r") != NULL); return 0; }')
    result = evalbox.run_code("c", code, files={"data.txt": "hello"}, compile_timeout=60)
    assert ok(result.run).stdout == b"hello|0\n"


def test_fetch_returns_files_the_program_wrote():
    result = evalbox.run_code("python", "open('out/r.txt', 'w').write('x' * 3)\n", files={"out/keep": ""},
                              fetch=["out/r.txt", "missing.txt"])
    assert result.files == {"out/r.txt": b"xxx"}


def test_unknown_language_is_a_validation_error():
    with pytest.raises(evalbox.ValidationError, match="unknown language 'cobol'.*python"):
        evalbox.run_code("cobol", "DISPLAY 'HI'.")


def test_compile_phase_keeps_a_memory_floor_but_the_callers_larger_limit_wins():
    st = _stages("cpp", PROGRAMS["cpp"][0], memory="64M")
    assert st.compile.memory == 512 << 20 and st.run.memory == 64 << 20
    st = _stages("cpp", PROGRAMS["cpp"][0], memory="2G", compile_timeout=3, run_timeout=2)
    assert st.compile.memory == 2 << 30 and (st.compile.timeout, st.run.timeout) == (3, 2)
    assert st.run.stdin == b"" and st.compile.collect == ("main",)


@pytest.mark.parametrize("language,tool", [("cpp", "g++"), ("c", "gcc"), ("java", "javac"), ("rust", "rustc"),
                                           ("typescript", "tsc"), ("go", "go")])
def test_a_missing_toolchain_is_named(monkeypatch, language, tool):
    def nowhere(name, path, root):
        raise CommandNotFound(f"{name}: not found")

    monkeypatch.setattr(common, "find_executable", nowhere)
    monkeypatch.setenv("PATH", "")
    with pytest.raises(CommandNotFound, match=re.escape(f"{tool} is not installed") + ".*install"):
        LANGUAGES[language].stages("x")


def test_rustup_proxy_resolves_to_a_granted_toolchain():
    from evalbox.runtimes import rust

    st = _stages("rust", PROGRAMS["rust"][0])
    argv0 = st.compile.argv[0]
    assert argv0.endswith("/bin/rustc")
    if not common.in_system_trees(argv0):  # e.g. ~/.rustup/toolchains/...: granted read-only, and only that
        assert [m.source for m in st.compile.mounts] == [argv0.rsplit("/bin/rustc", 1)[0]]
        assert all(not m.writable for m in st.compile.mounts)
    assert rust._rustc().path == argv0
