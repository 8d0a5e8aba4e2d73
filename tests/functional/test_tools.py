"""Ordinary tools keep working inside the sandbox (SPEC §4.3, last sentence)."""

from __future__ import annotations

import os

import evalbox
from portability import needs_root
from ft_helpers import bash, describe, ok, py, sh

S = evalbox.Status


def test_ls_system_tree_and_root():
    """`ls -l` works on the granted trees. `/`: in the jail it lists just the granted tree;
    without it, it is not listable (Landlock cannot grant a listing of `/` without granting every
    directory below it)."""
    out = ok(evalbox.run(["ls", "-l", "/usr"], timeout=10))
    assert b"bin" in out.stdout and b"lib" in out.stdout, describe(out)
    root = evalbox.run(["ls", "/"], timeout=10)
    if "jail" in root.protections.view.split(":")[0] and not root.protections.view.startswith("no jail"):
        assert root.exit_code == 0, describe(root)
        assert set(root.stdout.split()) <= {b"bin", b"dev", b"etc", b"lib", b"lib32", b"lib64", b"libx32", b"proc",
                                            b"sbin", b"sys", b"tmp", b"usr"}, describe(root)
    else:
        assert root.exit_code != 0 and b"Permission denied" in root.stderr, describe(root)


def test_ls_workspace():
    out = ok(evalbox.run(["ls", "-l"], files={"a.txt": "x", "sub/b.txt": "y"}, timeout=10))
    text = out.stdout.decode()
    assert "a.txt" in text and "sub" in text, describe(out)
    assert text.splitlines()[0].startswith("total"), describe(out)


def test_mkdir_p():
    out = ok(sh("mkdir -p a/b/c && test -d a/b/c && echo made"))
    assert out.stdout == b"made\n"


def test_timeout_expires_with_124():
    """GNU timeout tries setpgid(0,0); when that fails it signals its own process group."""
    out = sh("timeout 1 sleep 5; echo rc=$?", timeout=15)
    assert out.status is S.EXITED and out.exit_code == 0, describe(out)
    assert out.stdout == b"rc=124\n", describe(out)
    assert out.wall_time < 4, describe(out)


def test_timeout_direct_expires_with_124():
    out = evalbox.run(["timeout", "1", "sleep", "5"], timeout=15)
    assert out.status is S.EXITED and out.exit_code == 124, describe(out)


def test_timeout_command_finishes():
    out = sh("timeout 5 true; echo rc=$?")
    assert out.stdout == b"rc=0\n", describe(out)
    ok(out)


def test_ps_aux_and_ef():
    out = ok(sh("ps aux && echo ---- && ps -ef"))
    aux, ef = out.stdout.decode().split("----\n")
    assert aux.splitlines()[0].split()[:2] == ["USER", "PID"], describe(out)
    assert ef.splitlines()[0].split()[:2] == ["UID", "PID"], describe(out)
    assert "ps aux" in aux or "ps" in aux, describe(out)


def test_sort_stdin():
    out = ok(evalbox.run(["sort"], stdin=b"pear\napple\nfig\n", timeout=10))
    assert out.stdout == b"apple\nfig\npear\n"


def test_shell_pipeline():
    out = ok(sh("printf 'c\\nb\\na\\nb\\n' | sort | uniq -c | sort -rn | head -n 1 | tr -s ' '"))
    assert out.stdout.strip() == b"2 b", describe(out)


def test_bash_subshells_background_jobs_wait():
    script = r"""
set -u
x=$( (echo inner; exit 0) )
(exit 3); echo "sub=$?"
( sleep 0.2; echo bg1 > bg1.txt ) &
p1=$!
( echo bg2 > bg2.txt ) &
wait $p1; echo "w1=$?"
wait
echo "x=$x $(cat bg1.txt) $(cat bg2.txt)"
"""
    out = ok(bash(script))
    assert out.stdout == b"sub=3\nw1=0\nx=inner bg1 bg2\n", describe(out)


def test_gcc_compiles_and_runs():
    src = r"""
#include <stdio.h>
#include <math.h>
#include <pthread.h>
static void *work(void *arg) { *(double *)arg = sqrt(*(double *)arg); return NULL; }
int main(void) {
    double v = 1764.0; pthread_t t;
    pthread_create(&t, NULL, work, &v); pthread_join(t, NULL);
    printf("answer=%.0f\n", v);
    return 0;
}
"""
    out = ok(sh("gcc -O2 -Wall -o prog main.c -lm -pthread && ./prog", files={"main.c": src}, timeout=60))
    assert out.stdout == b"answer=42\n", describe(out)


PY_STDLIB = r"""
import json, sqlite3, subprocess, threading, ssl, hashlib, os, sys

# json
assert json.loads(json.dumps({"a": [1, 2]})) == {"a": [1, 2]}
# sqlite in memory
db = sqlite3.connect(":memory:")
db.execute("create table t (x)"); db.executemany("insert into t values (?)", [(i,) for i in range(10)])
assert db.execute("select sum(x) from t").fetchone()[0] == 45
# sqlite file in the workspace (journal files next to it)
f = sqlite3.connect("data.db")
f.execute("create table t (x)"); f.execute("insert into t values (7)"); f.commit(); f.close()
assert sqlite3.connect("data.db").execute("select x from t").fetchone()[0] == 7
assert os.path.getsize("data.db") > 0
# threads
results = []
threads = [threading.Thread(target=lambda i=i: results.append(i * i)) for i in range(8)]
[t.start() for t in threads]; [t.join() for t in threads]
assert sorted(results) == [i * i for i in range(8)]
# subprocess
r = subprocess.run(["ls"], capture_output=True, text=True, check=True)
assert "data.db" in r.stdout.split(), r.stdout
# ssl and hashlib
ctx = ssl.create_default_context()
assert hashlib.sha256(b"abc").hexdigest().startswith("ba7816bf")
print("stdlib ok")
"""


def test_python_stdlib():
    out = ok(evalbox.run(["python3", "-c", PY_STDLIB], timeout=30))
    assert out.stdout == b"stdlib ok\n", describe(out)


PY_MP = r"""
import multiprocessing

def square(x):
    return x * x

if __name__ == "__main__":
    with multiprocessing.Pool(2) as pool:
        print(pool.map(square, range(6)))
"""


@needs_root("multiprocessing locks need a private /dev/shm, which only a root host gives a sandbox (README)")
def test_python_multiprocessing_pool():
    out = py(PY_MP, timeout=30)
    assert out.status is S.EXITED and out.exit_code == 0, describe(out)
    assert out.stdout == b"[0, 1, 4, 9, 16, 25]\n", describe(out)


def test_python_pip_version():
    out = ok(evalbox.run(["python3", "-m", "pip", "--version"], timeout=30))
    assert out.stdout.startswith(b"pip "), describe(out)


def test_etc_passwd_readable_but_not_shadow():
    out = sh("cat /etc/passwd; echo ---; cat /etc/shadow; echo rc=$?")
    assert out.status is S.EXITED, describe(out)
    passwd, rest = out.stdout.split(b"---\n")
    assert passwd.startswith(b"root:x:0:0:"), describe(out)
    assert rest.strip() != b"rc=0" and b"root:" not in rest, describe(out)


def test_date_id_uname():
    out = ok(sh("date +%Y; id -u; uname -a"))
    year, uid, uname = out.stdout.decode().splitlines()
    assert year.isdigit() and int(year) >= 2024, describe(out)
    assert uid.isdigit(), describe(out)
    assert uname.startswith("Linux "), describe(out)


def test_env_shows_only_expected_variables():
    out = ok(evalbox.run(["env"], env={"SEED": "1"}, timeout=10))
    env = dict(line.split("=", 1) for line in out.stdout.decode().splitlines())
    assert set(env) == {"PATH", "HOME", "TMPDIR", "LANG", "USER", "LOGNAME", "SEED"}, describe(out)
    assert env["USER"] == env["LOGNAME"] and env["USER"], describe(out)
    assert env["PATH"] == "/usr/local/bin:/usr/bin:/bin"
    assert env["LANG"] == "C.UTF-8"
    assert env["SEED"] == "1"
    # HOME and TMPDIR are inside the workspace: siblings of the cwd (work/)
    pwd = ok(evalbox.run(["pwd"], timeout=10)).stdout.decode().strip()
    assert pwd.endswith("/work")
    root = os.path.dirname(env["HOME"])
    assert os.path.basename(env["HOME"]) == "home" and os.path.basename(env["TMPDIR"]) == "tmp", env
    assert os.path.dirname(env["TMPDIR"]) == root
    # nothing from the host leaks (USER is the sandbox's own user, not inherited)
    for key in ("PYTEST_CURRENT_TEST", "VIRTUAL_ENV", "PWD", "SHELL"):
        assert key not in env


def test_file_tools():
    script = r"""
set -e
mkdir -p src/deep && echo hello > src/deep/f.txt && echo needle > src/n.txt
chmod 640 src/n.txt
cp -a src copy
test "$(stat -c %a copy/n.txt)" = 640
tar -czf arch.tgz src && mkdir out && tar -xzf arch.tgz -C out && cmp out/src/deep/f.txt src/deep/f.txt
echo "find: $(find . -name '*.txt' | sort | tr '\n' ' ')"
echo "grep: $(grep -rl needle . | sort | tr '\n' ' ')"
sed -i 's/hello/bye/' src/deep/f.txt && echo "sed: $(cat src/deep/f.txt)"
printf '#!/bin/sh\necho script-ran "$@"\n' > script && chmod +x script && ./script 1
ln -s src/deep/f.txt link && echo "link: $(cat link) $(readlink link)"
mkdir -p d1 d2 && echo m > d1/m.txt && mv d1/m.txt d2/ && test ! -e d1/m.txt && echo "mv: $(cat d2/m.txt)"
echo "umask: $(umask)"
"""
    out = ok(sh(script))
    lines = out.stdout.decode().splitlines()
    assert lines[0].startswith("find: ") and "./src/deep/f.txt" in lines[0] and "./out/src/n.txt" in lines[0], describe(out)
    assert lines[1] == "grep: ./copy/n.txt ./out/src/n.txt ./src/n.txt ", describe(out)
    assert lines[2:] == ["sed: bye", "script-ran 1", "link: bye src/deep/f.txt", "mv: m", "umask: 0022"], describe(out)


def test_home_and_tmpdir_writable():
    out = ok(sh('echo t > "$TMPDIR/t" && echo h > "$HOME/.rc" && echo "$TMPDIR" && mktemp && cat "$TMPDIR/t" "$HOME/.rc"'))
    tmpdir, made, t, h = out.stdout.decode().splitlines()
    assert made.startswith(tmpdir + "/"), describe(out)
    assert (t, h) == ("t", "h"), describe(out)


def test_dev_null_redirect_and_urandom():
    out = ok(sh("echo gone > /dev/null && echo more >> /dev/null && cat /dev/null && head -c 4096 /dev/urandom | wc -c"))
    assert out.stdout.strip() == b"4096", describe(out)
    assert out.stderr == b"", describe(out)
