"""Which paths a plan's Landlock ruleset grants (policy), and the ruleset interface (kernel)."""

import errno
import os

import pytest

import evalbox
from evalbox.kernel import landlock as ll
from evalbox.policy import filesystem
from evalbox.policy.resolve import Runtime

EMPTY = Runtime(frozenset(), frozenset())
SENSITIVE = ["/etc/shadow", "/etc/gshadow", "/etc/sudoers", "/etc/ssh", "/etc/ssl/private", "/root", "/home",
             "/etc", "/", "/tmp", "/var", "/dev/shm", "/run", "/sys", "/boot", "/etc/security"]


def granted(plan, workspace="/tmp/evalbox-ws", runtime=EMPTY):
    rules = filesystem._readable_system_paths() + filesystem.path_rules(plan, workspace, runtime)
    return {r.path: r.rights for r in rules}


def test_abi_detected():
    assert ll.abi_version() >= 1


@pytest.mark.parametrize("path", SENSITIVE)
def test_sensitive_paths_never_granted(path):
    assert path not in granted(evalbox.Plan(["true"]))


def test_system_trees_read_exec_only():
    rules = granted(evalbox.Plan(["true"]))
    for tree in ("/usr", "/bin", "/lib"):
        assert rules[tree] == ll.READ_EXEC


def test_etc_is_a_list_of_read_only_entries():
    etc = {p: r for p, r in granted(evalbox.Plan(["true"])).items() if p.startswith("/etc/")}
    assert "/etc/passwd" in etc and "/etc/ld.so.cache" in etc
    assert all(r == ll.READ for r in etc.values())
    assert not any("shadow" in p or "ssh" in p or "private" in p or "sudo" in p for p in etc)


def test_workspace_gets_every_right_and_devices_no_exec():
    rules = granted(evalbox.Plan(["true"]), workspace="/tmp/ws")
    assert rules["/tmp/ws"] & (ll.WRITE_FILE | ll.MAKE_REG | ll.REMOVE_FILE | ll.REFER | ll.TRUNCATE) \
        == ll.WRITE_FILE | ll.MAKE_REG | ll.REMOVE_FILE | ll.REFER | ll.TRUNCATE
    assert not rules["/dev/null"] & ll.EXECUTE
    assert rules["/dev/null"] & ll.TRUNCATE  # `> /dev/null` opens with O_TRUNC
    assert rules["/proc"] == ll.READ


def test_mounts(tmp_path):
    ro, rw = tmp_path / "ro", tmp_path / "rw"
    ro.mkdir()
    rw.mkdir()
    rules = granted(evalbox.Plan(["true"], mounts=[evalbox.Mount.ro(str(ro)), evalbox.Mount.rw(str(rw))]))
    assert rules[str(ro)] == ll.READ_EXEC
    assert rules[str(rw)] & ll.WRITE_FILE


def test_runtime_outside_system_trees_granted_file_by_file():
    rt = Runtime(frozenset({"/opt/tool/bin/tool", "/usr/bin/env"}), frozenset({"/opt/tool/lib/libx.so"}))
    rules = granted(evalbox.Plan(["true"]), runtime=rt)
    assert rules["/opt/tool/bin/tool"] == ll.READ_FILE | ll.EXECUTE
    assert rules["/opt/tool/lib/libx.so"] == ll.READ_FILE | ll.EXECUTE
    assert "/opt/tool" not in rules and "/usr/bin/env" not in rules


def test_ruleset_skips_missing_paths_and_trims_file_rights(tmp_path):
    f = tmp_path / "f"
    f.write_text("x")
    with ll.Ruleset(ll.fs_rights(ll.abi_version())) as rs:
        assert rs.allow_path(str(tmp_path / "missing"), ll.READ) is False
        assert rs.allow_path(str(f), ll.READ | ll.MAKE_DIR) is True  # dir rights dropped for a file
        assert rs.allow_path(str(tmp_path), ll.READ_EXEC) is True
        assert rs.fd >= 0
    assert rs.fd == -1


def test_ruleset_really_restricts(tmp_path):
    """Apply a ruleset in a forked child: only the granted directory stays readable."""
    ok, denied = tmp_path / "ok", tmp_path / "denied"
    ok.mkdir()
    denied.mkdir()
    (ok / "a").write_text("a")
    (denied / "b").write_text("b")
    with ll.Ruleset(ll.fs_rights(ll.abi_version())) as rs:
        rs.allow_path(str(ok), ll.READ)
        pid = os.fork()
        if pid == 0:
            code = 1
            try:
                import ctypes

                libc = ctypes.CDLL(None, use_errno=True)
                libc.prctl(38, 1, 0, 0, 0)
                if libc.syscall(446, rs.fd, 0) == 0:
                    open(ok / "a").read()
                    try:
                        open(denied / "b").read()
                        code = 2
                    except PermissionError:
                        code = 0
            finally:
                os._exit(code)
        _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0


def test_cached_system_rule_fds_are_checked_before_use(tmp_path):
    """If the host closes a cached fd and the number is reused by another file, the ruleset must
    not grant that file: the cache notices and reopens its paths."""
    packed = filesystem._system_rules_packed(ll.fs_rights(ll.abi_version()))
    import struct

    rights, fd, dev, ino = struct.unpack_from("=QiQQ", packed, 0)
    secret = tmp_path / "secret"
    secret.write_text("x")
    other = os.open(str(secret), os.O_PATH)
    os.dup2(other, fd, inheritable=False)  # the host "closed" the cached fd and its number now names another file
    os.close(other)
    reused = fd
    try:
        with ll.Ruleset(ll.fs_rights(ll.abi_version())) as rs:
            with pytest.raises(OSError) as e:
                rs.allow_packed(packed)
            assert e.value.errno == errno.ESTALE
        rules = [filesystem.PathRule(str(tmp_path), ll.READ)]
        filesystem.build_ruleset(rules, ll.abi_version(), False).close()  # reopens the cache
        fresh = filesystem._system_rules_packed(ll.fs_rights(ll.abi_version()))
        assert fresh != packed
    finally:
        os.close(reused)
