"""evalbox.node: the host's Node.js running a file in the workspace."""

from __future__ import annotations

import pytest

import evalbox
from evalbox.runtimes import common
from rt_helpers import describe, needs_node, ok


@needs_node
def test_runs_javascript_with_args_and_stdin():
    code = "const fs = require('fs'); console.log(process.argv.slice(2).join(','), fs.readFileSync(0, 'utf8').trim())"
    out = ok(evalbox.node.run(code, args=["a", "b"], stdin=b"input\n", timeout=30))
    assert out.stdout == b"a,b input\n"


@needs_node
def test_es_module():
    out = ok(evalbox.node.run("import os from 'node:os'; console.log(typeof os.cpus)", filename="main.mjs", timeout=30))
    assert out.stdout == b"function\n"


@needs_node
def test_exit_code_exception_and_files():
    out = evalbox.node.run("process.exitCode = 4", timeout=30)
    assert out.exit_code == 4, describe(out)
    out = evalbox.node.run("const h = require('./helper'); throw new Error(h.msg)",
                           files={"helper.js": "module.exports = {msg: 'boom'}"}, timeout=30)
    assert out.exit_code == 1 and b"Error: boom" in out.stderr and b"main.js:1" in out.stderr


@needs_node
def test_no_network_and_no_host_files():
    code = ("const net = require('net'); const s = net.connect(80, '1.1.1.1');"
            "s.on('error', e => { console.log('net', e.code); "
            "try { require('fs').readFileSync('/etc/shadow') } catch (e) { console.log('fs', e.code) } })")
    out = ok(evalbox.node.run(code, timeout=30))
    assert b"net " in out.stdout and (b"fs EACCES" in out.stdout or b"fs ENOENT" in out.stdout), describe(out)  # ENOENT in the jail


@needs_node
def test_timeout():
    out = evalbox.node.run("for (;;) {}", timeout=0.5)
    assert out.status is evalbox.Status.TIMEOUT


def test_bad_filename():
    with pytest.raises(evalbox.ValidationError, match=".mjs"):
        evalbox.node.plan("1", filename="main.ts")


def test_missing_node_says_how_to_install(monkeypatch):
    monkeypatch.setattr(common, "DEFAULT_ENV_PATH", "/nonexistent")
    monkeypatch.setenv("PATH", "/nonexistent")
    with pytest.raises(evalbox.CommandNotFound, match="install Node.js"):
        evalbox.node.plan("1")
