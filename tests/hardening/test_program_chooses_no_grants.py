"""Class 1: nothing the plan or program writes (a '#!' line, ELF headers) widens access, the
host never opens what such content names with more rights than the sandbox, and the host's work
on it is bounded. Secrets are sacrificial files each test creates (and removes)."""

from __future__ import annotations

import os
import secrets
import shutil
import struct
import subprocess
import tempfile
import time

import pytest

from evalbox.policy import resolve
from evalbox.policy.resolve import runtime_files
from hardening_kit import NOBODY, run_snippet

PT_LOAD, PT_DYNAMIC, PT_INTERP, PT_NOTE = 1, 2, 3, 4


def make_elf(path: str, interps: list[str], needed: list[str] = (), rpath: str | None = None) -> str:
    """A minimal x86_64 ELF with the given PT_INTERP headers (in order), DT_NEEDED and DT_RPATH."""
    strings = bytearray(b"\0")
    offs = {}
    for s in [*interps, *needed, *( [rpath] if rpath else [])]:
        if s not in offs:
            offs[s] = len(strings)
            strings += s.encode() + b"\0"
    phnum = len(interps) + 2
    phoff = 64
    strtab_off = phoff + phnum * 56
    dyn_entries = [(1, offs[n]) for n in needed]
    if rpath:
        dyn_entries.append((15, offs[rpath]))
    dyn_entries += [(5, strtab_off), (10, len(strings)), (0, 0)]
    dyn_off = strtab_off + len(strings)
    dyn_off += (-dyn_off) % 8
    dyn = b"".join(struct.pack("<qQ", t, v) for t, v in dyn_entries)
    size = dyn_off + len(dyn)
    ph = b"".join(struct.pack("<IIQQQQQQ", PT_INTERP, 4, strtab_off + offs[i], 0, 0, len(i) + 1, len(i) + 1, 1)
                  for i in interps)
    ph += struct.pack("<IIQQQQQQ", PT_LOAD, 5, 0, 0, 0, size, size, 4096)
    ph += struct.pack("<IIQQQQQQ", PT_DYNAMIC, 6, dyn_off, dyn_off, dyn_off, len(dyn), len(dyn), 8)
    hdr = b"\x7fELF" + bytes([2, 1, 1, 0]) + bytes(8)
    hdr += struct.pack("<HHIQQQIHHHHHH", 3, 62, 1, 0, phoff, 0, 0, 64, 56, phnum, 64, 0, 0)
    data = bytearray(hdr + ph + strings)
    data += bytes(dyn_off - len(data)) + dyn
    with open(path, "wb") as f:
        f.write(data)
    os.chmod(path, 0o755)
    return path


@pytest.fixture
def root_dir():
    d = tempfile.mkdtemp(prefix="harden-resolve-")
    os.chmod(d, 0o755)
    try:
        yield d
    finally:
        shutil.rmtree(d)


def root_owned_secret(root_dir) -> str:
    """An executable root-owned file: what a '#!' line or an ELF header may try to have granted."""
    if os.geteuid() != 0:
        pytest.skip("needs root-owned files")
    secret = os.path.join(root_dir, "secret")
    with open(secret, "w") as f:
        f.write("x")
    os.chmod(secret, 0o755)
    return secret


def test_first_pt_interp_is_the_one_granted(root_dir):
    if os.geteuid() != 0:
        pytest.skip("needs root-owned files")
    secret = os.path.join(root_dir, "secret")
    with open(secret, "w") as f:
        f.write("x")
    loader = os.path.realpath("/lib64/ld-linux-x86-64.so.2")
    elf = make_elf(os.path.join(root_dir, "two-interps"), ["/lib64/ld-linux-x86-64.so.2", secret])
    rt = runtime_files(elf)
    assert loader in rt.executables
    assert secret not in rt.executables | rt.libraries


def test_untrusted_content_names_nothing(root_dir):
    """A file that is not root's, group/other-writable, or inside what the sandbox writes gives
    only itself, whatever its headers or '#!' line name."""
    if os.geteuid() != 0:
        pytest.skip("needs to chown files")
    secret = os.path.join(root_dir, "secret")
    with open(secret, "w") as f:
        f.write("x")
    os.makedirs(os.path.join(root_dir, "ws"))
    variants = []
    for name, owner, mode, where in [("user-owned", NOBODY, 0o755, ""), ("group-writable", 0, 0o775, ""),
                                     ("world-writable", 0, 0o757, ""), ("in-workspace", 0, 0o755, "ws")]:
        for kind in ("elf", "script"):
            path = os.path.join(root_dir, where, f"{name}-{kind}")
            if kind == "elf":
                make_elf(path, [secret], needed=["libc.so.6"], rpath=root_dir)
            else:
                with open(path, "w") as f:
                    f.write(f"#!{secret}\n")
            os.chown(path, owner, owner)
            os.chmod(path, mode)
            variants.append(path)
    for path in variants:
        rt = runtime_files(path, untrusted=(os.path.join(root_dir, "ws"),))
        assert rt.libraries == frozenset(), path
        assert rt.executables <= {path, os.path.realpath(path)}, (path, rt)


def test_each_runs_workspace_stays_untrusted_when_the_cache_is_warm(root_dir):
    """Resolution is cached across runs whatever their workspaces (each has a new random name);
    a file inside this run's workspace still names nothing, after runs with other workspaces
    warmed the cache for the same executable and for files of the same name."""
    secret = root_owned_secret(root_dir)
    for n in range(3):
        ws = os.path.join(root_dir, f"ws{n}")
        os.makedirs(ws)
        assert runtime_files("/bin/true", fresh=(ws,)) == runtime_files("/bin/true")  # shared, unchanged
        script = os.path.join(ws, "main")
        with open(script, "w") as f:
            f.write(f"#!{secret}\n")
        os.chmod(script, 0o755)  # root's, not writable by others: trusted anywhere but a workspace
        elf = make_elf(os.path.join(ws, "prog"), [secret], needed=["libc.so.6"], rpath=root_dir)
        for path in (script, elf):
            rt = runtime_files(path, fresh=(ws,))
            assert secret not in rt.executables | rt.libraries, (n, path, rt)
            assert rt.libraries == frozenset(), (n, path, rt)
    assert secret in runtime_files(script).executables  # (the same script outside any workspace is followed)


@pytest.mark.parametrize("line, granted", [
    ("#!/usr/bin/env -S sh -c 'cat {s}' {s}", False),
    ("#!/usr/bin/env -S {s}", False),  # a secret is no interpreter: still not granted for a plan file
    ("#!/usr/bin/env -S -P {d} sh", False),
    ("#!/usr/bin/env -Sx\\_{s}", False),
    ("#!/usr/bin/env --split-string={s}", False),
    ("#!/usr/bin/env {s}", False),
    ("#!{s} -x", False),
])
def test_env_lines_in_plan_files_grant_nothing(root_dir, line, granted):
    secret = os.path.join(root_dir, "secret")
    with open(secret, "w") as f:
        f.write("x")
    ws = os.path.join(root_dir, "ws")
    os.makedirs(ws)
    script = os.path.join(ws, "main")
    with open(script, "w") as f:
        f.write(line.format(s=secret, d=root_dir) + "\n")
    os.chmod(script, 0o755)
    rt = runtime_files(script, untrusted=(ws,))
    assert (secret in rt.executables | rt.libraries) is granted


def test_env_split_follows_only_what_env_runs(root_dir):
    """A root-owned script's '#!/usr/bin/env -S NAME' is followed (to NAME on PATH); lines env
    reads differently from a plain split are not."""
    secret = root_owned_secret(root_dir)
    for line in (f"#!/usr/bin/env -S \"{secret}\" x", f"#!/usr/bin/env -S ${{X}}{secret}", f"#!/usr/bin/env -i {secret}",
                 f"#!/usr/bin/env -S -i {secret}"):
        path = os.path.join(root_dir, "s")
        with open(path, "w") as f:
            f.write(line + "\n")
        os.chmod(path, 0o755)
        resolve.runtime_files.cache_clear()
        assert secret not in runtime_files(path).executables, line


def test_host_never_opens_devices_or_proc_named_by_content(root_dir, monkeypatch):
    if os.geteuid() != 0:
        pytest.skip("needs root-owned files")
    opened = []
    real_open = os.open

    def spy(path, flags, *a, **kw):
        opened.append((str(path), flags))
        return real_open(path, flags, *a, **kw)

    monkeypatch.setattr(resolve.os, "open", spy)
    fifo = os.path.join(root_dir, "fifo")
    os.mkfifo(fifo)
    for target in ("/proc/kmsg", "/dev/watchdog", fifo, "/sys/kernel/mm/transparent_hugepage/enabled"):
        script = os.path.join(root_dir, "s")
        with open(script, "w") as f:
            f.write(f"#!{target}\n")
        os.chmod(script, 0o755)
        opened.clear()
        resolve.runtime_files.cache_clear()
        runtime_files(script)
        for path, flags in opened:
            if path == target:
                assert flags & os.O_PATH, f"{target} opened with flags {flags:#o}"
    # and a plan-supplied argv[0] that is not a regular file is never opened for reading
    opened.clear()
    runtime_files(fifo)
    assert all(flags & os.O_PATH for path, flags in opened if path == fifo)


def test_crafted_elf_work_is_bounded(root_dir):
    """Thousands of DT_NEEDED x RPATH entries (root-owned, so trusted) cost well under a second."""
    if os.geteuid() != 0:
        pytest.skip("needs root-owned files")
    dirs = ":".join(f"{root_dir}/d{i}" for i in range(3000))
    elf = make_elf(os.path.join(root_dir, "wide"), ["/lib64/ld-linux-x86-64.so.2"],
                   needed=[f"libnope{i}.so" for i in range(5000)], rpath=dirs)
    start = time.monotonic()
    runtime_files(elf)
    assert time.monotonic() - start < 2.0  # the budget is 0.5 s; generous for a loaded machine


GRAB = r'''
#include <stdio.h>
static const char interp2[] = "@SECRET@";
int main(void) {
    FILE *f = fopen(interp2, "r");
    char buf[128] = {0};
    if (!f) { puts("BLOCKED"); return 0; }
    fgets(buf, sizeof buf, f);
    printf("READ %s\n", buf);
    return 0;
}
'''


def _two_interp_binary(tmp: str, secret: str) -> bytes:
    """A real dynamically linked program whose PT_NOTE became a second PT_INTERP naming `secret`
    (the kernel runs the first; a parser that takes the last would grant the secret)."""
    src = os.path.join(tmp, "grab.c")
    with open(src, "w") as f:
        f.write(GRAB.replace("@SECRET@", secret))
    out = os.path.join(tmp, "grab")
    subprocess.run(["gcc", "-O1", "-o", out, src], check=True)
    data = bytearray(open(out, "rb").read())
    phoff, = struct.unpack_from("<Q", data, 32)
    phentsize, phnum = struct.unpack_from("<HH", data, 54)
    where = data.find(secret.encode() + b"\0")
    for i in range(phnum):
        at = phoff + i * phentsize
        if struct.unpack_from("<I", data, at)[0] == PT_NOTE:
            struct.pack_into("<IIQQQQQQ", data, at, PT_INTERP, 4, where, 0, 0, len(secret) + 1, len(secret) + 1, 1)
            return bytes(data)
    raise AssertionError("no PT_NOTE to turn into a second PT_INTERP")


def test_plan_elf_with_two_interpreters_reads_nothing(caller):
    if not shutil.which("gcc"):
        pytest.skip("needs gcc (apt-get install gcc)")
    token = secrets.token_hex(8)
    top = tempfile.mkdtemp(prefix="harden-secret-", dir="/root" if caller == "root" else "/tmp")
    try:
        secret = os.path.join(top, "secret.txt")
        with open(secret, "w") as f:
            f.write(token)
        os.chmod(secret, 0o644)
        if caller == "nobody":
            os.chown(top, NOBODY, NOBODY)
            os.chown(secret, NOBODY, NOBODY)
            os.chmod(secret, 0o600)
        os.chmod(top, 0o700)
        binary = _two_interp_binary(tempfile.mkdtemp(prefix="harden-build-"), secret)
        got = run_snippet(caller, f"""
            o = evalbox.run(["./grab"], files={{"grab": evalbox.File({binary!r}, executable=True)}}, timeout=20)
            emit({{"out": o.stdout.decode(errors="replace"), "err": o.stderr.decode(errors="replace"),
                  "status": o.status.value}})
        """)
        assert token not in got["out"], got
        assert "BLOCKED" in got["out"], got  # it ran (the first PT_INTERP), and was refused the secret
    finally:
        shutil.rmtree(top)


def test_plan_script_naming_a_secret_reads_nothing(caller):
    token = secrets.token_hex(8)
    top = tempfile.mkdtemp(prefix="harden-secret-", dir="/root" if caller == "root" else "/tmp")
    try:
        secret = os.path.join(top, "secret.txt")
        with open(secret, "w") as f:
            f.write(token)
        if caller == "nobody":
            os.chown(top, NOBODY, NOBODY)
            os.chown(secret, NOBODY, NOBODY)
        os.chmod(secret, 0o644 if caller == "root" else 0o600)
        os.chmod(top, 0o700)
        lines = [f"#!/usr/bin/env -S sh -c 'cat {secret}' {secret}", f"#!/bin/sh {secret}\ncat {secret}",
                 f"#!/usr/bin/env -S sh -c \"cat\\_{secret}\" {secret}"]
        got = run_snippet(caller, f"""
            outs = []
            for line in {lines!r}:
                o = evalbox.run(["./main"], files={{"main": evalbox.File(line + "\\n", executable=True)}}, timeout=20)
                outs.append(o.stdout.decode(errors="replace") + o.stderr.decode(errors="replace"))
            emit({{"outs": outs}})
        """)
        for out in got["outs"]:
            assert token not in out, got
    finally:
        shutil.rmtree(top)
