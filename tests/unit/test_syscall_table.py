import re
from pathlib import Path

import pytest

from evalbox.kernel import syscall_table as st

UNISTD_64 = Path("/usr/include/x86_64-linux-gnu/asm/unistd_64.h")


def test_known_x86_64_numbers():
    t = st.X86_64
    assert (t["read"], t["write"], t["open"], t["openat"]) == (0, 1, 2, 257)
    assert t["clone3"] == 435
    assert t["landlock_create_ruleset"] == 444
    assert t["landlock_restrict_self"] == 446
    assert t["seccomp"] == 317
    assert t["uretprobe"] == 335


def test_known_aarch64_numbers():
    t = st.AARCH64
    assert (t["openat"], t["read"], t["write"]) == (56, 63, 64)
    assert t["newfstatat"] == 79 and t["fstat"] == 80
    assert t["renameat"] == 38
    assert t["getrlimit"] == 163
    assert t["clone3"] == 435
    assert t["memfd_secret"] == 447
    # Legacy calls the generic table never had.
    for name in ("open", "stat", "fork", "pipe", "dup2", "uretprobe", "arch_prctl"):
        assert name not in t


NEWER = {
    "cachestat": 451, "fchmodat2": 452, "map_shadow_stack": 453, "futex_wake": 454,
    "futex_wait": 455, "futex_requeue": 456, "statmount": 457, "listmount": 458,
    "lsm_get_self_attr": 459, "lsm_set_self_attr": 460, "lsm_list_modules": 461,
    "mseal": 462, "setxattrat": 463, "getxattrat": 464, "listxattrat": 465,
    "removexattrat": 466, "open_tree_attr": 467, "file_getattr": 468,
    "file_setattr": 469, "listns": 470,
}


@pytest.mark.parametrize("arch", sorted(st.ARCHES))
def test_calls_newer_than_local_headers(arch):
    table = st.ARCHES[arch]
    for name, nr in NEWER.items():
        assert table[name] == nr, name


@pytest.mark.parametrize("arch", sorted(st.ARCHES))
def test_numbers_unique_and_sane(arch):
    table = st.ARCHES[arch]
    seen: dict[int, str] = {}
    for name, nr in table.items():
        assert re.fullmatch(r"[a-z_][a-z0-9_]*", name), name
        assert 0 <= nr < 0x40000000, name
        assert nr not in seen, f"{name} and {seen.get(nr)} share {nr}"
        seen[nr] = name


@pytest.mark.skipif(not UNISTD_64.exists(), reason="no x86_64 kernel headers")
def test_x86_64_matches_system_header():
    header = dict(
        (m.group(1), int(m.group(2)))
        for m in re.finditer(r"^#define __NR_(\w+)\s+(\d+)\s*$", UNISTD_64.read_text(), re.M)
    )
    assert len(header) > 300
    for name, nr in header.items():
        assert st.X86_64.get(name) == nr, name


@pytest.mark.parametrize("arch", ["x86_64", "aarch64"])
def test_agrees_with_libseccomp(arch):
    seccomp = pytest.importorskip("pyseccomp")
    lib_arch = {"x86_64": seccomp.Arch.X86_64, "aarch64": seccomp.Arch.AARCH64}[arch]
    table = st.ARCHES[arch]
    checked = 0
    for name, nr in table.items():
        lib_nr = seccomp.resolve_syscall(lib_arch, name)
        if lib_nr >= 0:  # negative: unknown to this libseccomp or not on arch
            assert lib_nr == nr, name
            checked += 1
    assert checked > 250
    # And the other way round: every number libseccomp names, we name alike.
    for nr in range(0, 451):
        try:
            lib_name = seccomp.resolve_syscall(lib_arch, nr).decode()
        except ValueError:
            continue
        assert table.get(lib_name) == nr, (nr, lib_name)


def test_arch_constants():
    assert set(st.ARCHES) == set(st.AUDIT_ARCH) == {"x86_64", "aarch64"}
    assert st.AUDIT_ARCH == {"x86_64": 0xC000003E, "aarch64": 0xC00000B7}


def test_native_arch(monkeypatch):
    import platform

    for machine, arch in (("x86_64", "x86_64"), ("AMD64", "x86_64"),
                          ("aarch64", "aarch64"), ("arm64", "aarch64")):
        monkeypatch.setattr(platform, "machine", lambda m=machine: m)
        assert st.native_arch() == arch
    monkeypatch.setattr(platform, "machine", lambda: "riscv64")
    with pytest.raises(st.UnsupportedArchError, match="riscv64"):
        st.native_arch()


def test_syscall_number():
    assert st.syscall_number("openat", "x86_64") == 257
    assert st.syscall_number("openat", "aarch64") == 56
    assert st.syscall_number("open", "aarch64") is None
    assert st.syscall_number("no_such_call", "x86_64") is None
    assert st.syscall_number("read") == st.ARCHES[st.native_arch()]["read"]
    with pytest.raises(st.UnsupportedArchError):
        st.syscall_number("read", "mips")


def test_known_syscall_spans_arches():
    assert st.known_syscall("open")  # x86_64 only
    assert st.known_syscall("openat")
    assert st.known_syscall("listns")
    assert not st.known_syscall("no_such_call")
    assert not st.known_syscall("")
