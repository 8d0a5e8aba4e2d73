"""evalbox.go: snippets wrapped, imports added, built and run inside the sandbox."""

from __future__ import annotations

import pytest

import evalbox
from evalbox.runtimes import common
from evalbox.runtimes.go import used_packages, wrap
from rt_helpers import MEMORY_IS_ADDRESS_SPACE, describe, needs_go, ok


# -- wrapping (no build) ---------------------------------------------------------------------------

def test_a_program_is_used_as_is():
    src = 'package main\n\nimport "fmt"\n\nfunc main() { fmt.Println(1) }\n'
    assert wrap(src) == src


def test_func_main_gets_package_and_imports():
    src = 'func main() {\n\tfmt.Println(strings.ToUpper("x"), math.Pi)\n}\n'
    out = wrap(src)
    assert out.startswith('package main\n\nimport (\n\t"fmt"\n\t"math"\n\t"strings"\n)\n//line main.go:1\n')
    assert out.endswith(src)


def test_snippet_becomes_the_body_of_main():
    out = wrap('fmt.Println(1)')
    assert "func main() {\n//line main.go:1\nfmt.Println(1)\n}" in out and '"fmt"' in out


def test_detection_ignores_comments_strings_and_own_imports():
    src = ('import "fmt"\n// os.Exit(1) in a comment\nx := "sort.Strings in a string"\n'
           'y := `time.Now in a raw string`\nfmt.Println(x, y, strconv.Itoa(1), \'a\')\n')
    assert used_packages(src) == ["strconv"]


def test_detection_skips_shadowed_names_and_lowercase_members():
    assert used_packages("list := []int{1}\nfmt.Println(list.Len)") == ["fmt"]
    assert used_packages("func f(path string) string { return path.Clean }") == []
    assert used_packages("var x struct{ rand int }\n_ = x.rand") == []
    assert used_packages("r := rand.Intn(3); h := &heap.Interface(nil)") == ["container/heap", "math/rand"]


def test_snippet_imports_move_to_the_top():
    out = wrap('import (\n\t"fmt"\n)\nfmt.Println(1)\n')
    head, body = out.split("func main() {", 1)
    assert 'import (\n\t"fmt"\n)' in head and "import" not in body


# -- building and running -------------------------------------------------------------------------

@needs_go
def test_snippet_runs():
    out = ok(evalbox.go.run('fmt.Println(strings.Repeat("ab", 3), len(os.Args))'))
    assert out.stdout == b"ababab 1\n"


@needs_go
def test_program_with_args_stdin_and_exit_code():
    src = '''package main

import (
	"bufio"
	"fmt"
	"os"
)

func main() {
	line, _ := bufio.NewReader(os.Stdin).ReadString('\\n')
	fmt.Print(os.Args[1], " ", line)
	os.Exit(5)
}
'''
    out = evalbox.go.run(src, args=["arg"], stdin=b"in\n")
    assert out.exit_code == 5 and out.stdout == b"arg in\n", describe(out)


@needs_go
def test_func_main_with_helpers():
    src = "func sq(x int) int { return x * x }\n\nfunc main() {\n\tfmt.Println(sq(7))\n}\n"
    assert ok(evalbox.go.run(src)).stdout == b"49\n"


@needs_go
def test_errors_keep_the_users_line_numbers():
    out = evalbox.go.run("x := 1\nfmt.Println(x)\nundefinedThing()\n")
    assert out.exit_code != 0 and b"main.go:3" in out.stderr and b"undefined" in out.stderr, describe(out)
    out = evalbox.go.run("var a []int\nfmt.Println(a[3])\n")
    assert out.exit_code == 2 and b"index out of range" in out.stderr and b"main.go:2" in out.stderr, describe(out)


@needs_go
def test_extra_go_files_are_part_of_the_package():
    helper = 'package main\n\nfunc greet() string { return "hi from helper" }\n'
    out = ok(evalbox.go.run("fmt.Println(greet())", files={"helper.go": helper}))
    assert out.stdout == b"hi from helper\n"


@needs_go
def test_build_cache_is_private_and_nothing_is_downloaded():
    code = ('out, _ := exec.Command("go", "env", "GOCACHE", "GOPATH", "GOPROXY").Output()\n'
            'fmt.Print(string(out))\n')
    out = ok(evalbox.go.run('import "os/exec"\n' + code))
    cache, gopath, proxy = out.stdout.decode().split()
    assert "/home/.cache/go-build" in cache and gopath.endswith("/home/go") and proxy == "off"
    out = evalbox.go.run('package main\nimport "example.com/nothere"\nfunc main() { nothere.X() }\n')
    assert out.exit_code != 0 and b"nothere" in out.stderr, describe(out)


@needs_go
def test_defaults_and_limits():
    plan = evalbox.go.plan("fmt.Println(1)")
    assert plan.timeout == 60 and plan.max_pids == 256 and plan.memory == (1 << 30 if MEMORY_IS_ADDRESS_SPACE else 512 << 20)  # address space: 1G (README)
    assert evalbox.go.plan("fmt.Println(1)", max_pids=100).max_pids == 100
    out = evalbox.go.run("for {}", timeout=3)
    assert out.status is evalbox.Status.TIMEOUT


def test_missing_go_says_how_to_install(monkeypatch):
    monkeypatch.setattr(common, "DEFAULT_ENV_PATH", "/nonexistent")
    monkeypatch.setenv("PATH", "/nonexistent")
    with pytest.raises(evalbox.CommandNotFound, match="apt-get install golang-go"):
        evalbox.go.plan("fmt.Println(1)")


@needs_go
def test_a_go_mod_builds_the_workspace_as_a_module():
    out = ok(evalbox.go.run('fmt.Println("in a module")', files={"go.mod": "module example.com/x\n\ngo 1.19\n"}))
    assert out.stdout == b"in a module\n"
