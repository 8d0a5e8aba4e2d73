"""Seccomp-BPF program builder (mechanism only; policy lives elsewhere).

``build()`` turns an ordered list of :class:`Rule` into the raw
``struct sock_filter[]`` that ``seccomp(SECCOMP_SET_MODE_FILTER)`` expects.

Program layout
--------------
::

    ld  arch                     ; wrong arch -> bad_arch
    ld  nr                       ; (x86_64) nr >= 0x40000000 (x32) -> bad_arch
    binary search over nr        ; JGE nodes only, one per range boundary
    per-syscall argument blocks  ; only for syscalls whose rules have args
    shared RET instructions      ; one per distinct action

The syscall-number space is cut into ranges of consecutive numbers that share
an *outcome*: either a plain action (default, or the action of an
unconditional rule) or an argument block.  Adjacent ranges with equal outcomes
are merged, so an allow-list of mostly contiguous syscall numbers needs far
fewer comparisons than syscalls, and the search costs O(log ranges) jumps per
system call.  A range that leads to an argument block used only once gets the
block emitted right where the search reaches it, which keeps jumps short.

Classic BPF conditional jumps only reach 255 instructions forward.  The
assembler lays out the program with symbolic labels and bridges any branch
that ends up out of reach through a *pool* entry placed as late as the branch
can still reach: a copy of the target when the target is a RET (same size, one
fewer instruction executed), otherwise a ``ja`` (32-bit offset).  Later
branches to the same target share the entry, so programs of any size up to
the kernel's 4096 instructions work at a cost of a few entries per ~250
instructions.

Output is a pure function of the input, so callers may cache it.
"""

from __future__ import annotations

import bisect
import struct
from collections.abc import Sequence
from dataclasses import dataclass

from evalbox.kernel import syscall_table

__all__ = [
    "RET_ALLOW",
    "RET_ERRNO",
    "RET_KILL_PROCESS",
    "RET_KILL_THREAD",
    "RET_LOG",
    "RET_TRACE",
    "RET_TRAP",
    "RET_USER_NOTIF",
    "Arg",
    "BPF_MAXINSNS",
    "Rule",
    "build",
    "disassemble",
    "errno_action",
    "first_match",
]

RET_KILL_PROCESS = 0x80000000
RET_KILL_THREAD = 0x00000000
RET_TRAP = 0x00030000
RET_ERRNO = 0x00050000
RET_USER_NOTIF = 0x7FC00000
RET_TRACE = 0x7FF00000
RET_LOG = 0x7FFC0000
RET_ALLOW = 0x7FFF0000

_RET_ACTION_FULL = 0xFFFF0000
_RET_DATA = 0x0000FFFF
_MAX_ERRNO = 4095  # the kernel clamps larger SECCOMP_RET_ERRNO data to this

# Longest program the kernel accepts for one filter.
BPF_MAXINSNS = 4096

_U32 = 0xFFFFFFFF
_U64 = 0xFFFFFFFFFFFFFFFF

# Classic BPF encoding (include/uapi/linux/bpf_common.h, filter.h).
_LD, _LDX, _ST, _STX, _ALU, _JMP, _RET, _MISC = range(8)
_W, _ABS, _IMM, _MEM, _LEN = 0x00, 0x20, 0x00, 0x60, 0x80
_ADD, _SUB, _MUL, _DIV, _OR, _AND, _LSH, _RSH, _NEG, _MOD, _XOR = (
    0x00, 0x10, 0x20, 0x30, 0x40, 0x50, 0x60, 0x70, 0x80, 0x90, 0xA0,
)
_JA, _JEQ, _JGT, _JGE, _JSET = 0x00, 0x10, 0x20, 0x30, 0x40
_K, _X = 0x00, 0x08
_RVAL_A = 0x10
_TAX, _TXA = 0x00, 0x80

# struct seccomp_data: int nr; u32 arch; u64 instruction_pointer; u64 args[6].
_OFF_NR = 0
_OFF_ARCH = 4
_OFF_IP = 8
_OFF_ARGS = 16
_SECCOMP_DATA_SIZE = 64

# x86_64 marks x32 system calls by setting this bit in nr.
_X32_SYSCALL_BIT = 0x40000000

_INSN = struct.Struct("=HBBI")


def errno_action(e: int) -> int:
    """SECCOMP_RET_ERRNO action making the syscall fail with errno ``e``."""
    if not 0 <= e <= _MAX_ERRNO:
        raise ValueError(f"errno must be in 0..{_MAX_ERRNO}, got {e}")
    return RET_ERRNO | e


_OPS = ("eq", "ne", "lt", "le", "gt", "ge", "masked_eq")


@dataclass(frozen=True)
class Arg:
    """A comparison on one system call argument.

    ``index`` is the argument position (0..5).  ``op`` is one of ``eq``,
    ``ne``, ``lt``, ``le``, ``gt``, ``ge`` (unsigned comparisons of the
    argument against ``value``) or ``masked_eq`` (``(arg & mask) == value``).

    ``width`` selects how much of the 64-bit register is compared:

    * ``64`` (default): the full unsigned 64-bit value, as libseccomp does on
      64-bit arches.  Right for pointers, sizes and ``long`` flags.
    * ``32``: only the low 32 bits; the high word is ignored.  Use it for
      arguments the kernel declares ``int``/``unsigned int`` (socket domain,
      fd numbers, ``open`` flags, ...): the kernel truncates them, and user
      space may leave garbage in the upper half, so a 64-bit comparison could
      be bypassed (deny rules) or spuriously fail (allow rules).

    Negative ``value``/``mask`` are taken as two's complement of ``width``
    bits (``value=-100`` with ``width=32`` means ``0xFFFFFF9C``); fields are
    stored normalised, so equal comparisons compare equal.  With
    ``width=32`` the high half of ``mask`` is ignored.
    """

    index: int
    op: str
    value: int
    mask: int = _U64
    width: int = 64

    def __post_init__(self) -> None:
        if not isinstance(self.index, int) or not 0 <= self.index <= 5:
            raise ValueError(f"argument index must be 0..5, got {self.index!r}")
        if self.op not in _OPS:
            raise ValueError(f"unknown op {self.op!r}: expected one of {', '.join(_OPS)}")
        if self.width not in (32, 64):
            raise ValueError(f"width must be 32 or 64, got {self.width!r}")
        value = _normalise(self.value, self.width, "value")
        if isinstance(self.mask, int) and 0 <= self.mask <= _U64:
            mask = self.mask & (_U32 if self.width == 32 else _U64)
        else:
            mask = _normalise(self.mask, self.width, "mask")
        if self.op == "masked_eq" and value & ~mask:
            raise ValueError(
                f"masked_eq value {value:#x} has bits outside mask {mask:#x}; "
                "it could never match"
            )
        object.__setattr__(self, "value", value)
        object.__setattr__(self, "mask", mask)


def arg_matches(arg: Arg, value: int) -> bool:
    """Does ``arg`` hold for this argument register value (what the compiled filter decides)?"""
    v = value & (_U32 if arg.width == 32 else _U64)
    op = arg.op
    if op == "masked_eq":
        return v & arg.mask == arg.value
    if op == "eq":
        return v == arg.value
    if op == "ne":
        return v != arg.value
    if op == "lt":
        return v < arg.value
    if op == "le":
        return v <= arg.value
    if op == "gt":
        return v > arg.value
    return v >= arg.value


def first_match(rules: Sequence["Rule"], args: Sequence[int], default: int) -> int:
    """The action of the first of one syscall's ``rules`` whose args all hold (else ``default``):
    the same decision ``build`` compiles, for a caller that must know which rule a call met."""
    for rule in rules:
        if all(arg_matches(a, args[a.index]) for a in rule.args):
            return rule.action
    return default


def _normalise(v: int, width: int, what: str) -> int:
    if not isinstance(v, int) or isinstance(v, bool):
        raise TypeError(f"{what} must be an int, got {v!r}")
    if not -(1 << (width - 1)) <= v < (1 << width):
        raise ValueError(f"{what} {v:#x} does not fit in {width} bits")
    return v & ((1 << width) - 1)


def _check_action(action: int, what: str) -> None:
    if not isinstance(action, int) or not 0 <= action <= _U32:
        raise ValueError(f"{what} must be a 32-bit seccomp action, got {action!r}")


@dataclass(frozen=True)
class Rule:
    """``action`` for ``syscall`` when every comparison in ``args`` holds.

    Rules for the same syscall are tried in the order given to :func:`build`;
    the first one whose args all match decides.  No args: always matches.
    """

    syscall: str
    action: int
    args: tuple[Arg, ...] = ()

    def __post_init__(self) -> None:
        _check_action(self.action, "action")
        args = tuple(self.args)
        for a in args:
            if not isinstance(a, Arg):
                raise TypeError(f"rule args must be Arg instances, got {a!r}")
        object.__setattr__(self, "args", args)


# --------------------------------------------------------------------------
# Code generation with symbolic labels
# --------------------------------------------------------------------------

# One instruction: (code, k, jt_label, jf_label).  Conditional jumps use both
# labels; JA uses jt_label as its target; everything else uses neither.
_Ins = tuple[int, int, int | None, int | None]

# An outcome is hashable so identical argument blocks can be shared:
#   ("ret", action)
#   ("check", ((args, action), ...), fallback_action)
_Outcome = tuple


class _Emitter:
    def __init__(self) -> None:
        self.insns: list[_Ins] = []
        self.label_at: dict[int, int] = {}  # label -> index of the next insn
        self._nlabels = 0
        self._ret_labels: dict[int, int] = {}

    def label(self) -> int:
        self._nlabels += 1
        return self._nlabels

    def place(self, label: int) -> None:
        self.label_at[label] = len(self.insns)

    def ret_label(self, action: int) -> int:
        """Label of the shared ``ret action`` (emitted by ``finish``)."""
        if action not in self._ret_labels:
            self._ret_labels[action] = self.label()
        return self._ret_labels[action]

    def ld(self, offset: int) -> None:
        self.insns.append((_LD | _W | _ABS, offset, None, None))

    def and_k(self, k: int) -> None:
        self.insns.append((_ALU | _AND | _K, k, None, None))

    def jump(self, op: int, k: int, jt: int, jf: int) -> None:
        self.insns.append((_JMP | op | _K, k, jt, jf))

    def ja(self, target: int) -> None:
        self.insns.append((_JMP | _JA, 0, target, None))

    def finish(self) -> None:
        for action, label in self._ret_labels.items():
            self.place(label)
            self.insns.append((_RET | _K, action, None, None))


def _emit_arg(em: _Emitter, arg: Arg, ok: int, fail: int) -> None:
    """Jump to ``ok`` if ``arg`` holds for the current syscall, else ``fail``."""
    lo_off = _OFF_ARGS + 8 * arg.index  # both supported arches are little-endian
    hi_off = lo_off + 4
    lo_v, hi_v = arg.value & _U32, arg.value >> 32
    lo_m, hi_m = arg.mask & _U32, arg.mask >> 32
    op = arg.op

    if arg.width == 64 and not (op == "masked_eq" and hi_m == 0):
        # Decide on the high word when it differs, fall through to the low
        # word when it is equal (lexicographic 64-bit comparison).
        low = em.label()
        em.ld(hi_off)
        if op in ("eq", "masked_eq"):
            if op == "masked_eq" and hi_m != _U32:
                em.and_k(hi_m)
            em.jump(_JEQ, hi_v, low, fail)
        elif op == "ne":
            em.jump(_JEQ, hi_v, low, ok)
        else:
            # gt/ge: hi > v -> ok, hi < v -> fail; lt/le: the other way round.
            above, below = (ok, fail) if op in ("gt", "ge") else (fail, ok)
            if hi_v == _U32:  # nothing is above
                em.jump(_JEQ, hi_v, low, below)
            elif hi_v == 0:  # nothing is below
                em.jump(_JGT, hi_v, above, low)
            else:
                eq = em.label()
                em.jump(_JGT, hi_v, above, eq)
                em.place(eq)
                em.jump(_JEQ, hi_v, low, below)
        em.place(low)

    em.ld(lo_off)
    if op == "eq":
        em.jump(_JEQ, lo_v, ok, fail)
    elif op == "ne":
        em.jump(_JEQ, lo_v, fail, ok)
    elif op == "masked_eq":
        if lo_m != _U32:
            em.and_k(lo_m)
        em.jump(_JEQ, lo_v, ok, fail)
    elif op == "gt":
        em.jump(_JGT, lo_v, ok, fail)
    elif op == "ge":
        em.jump(_JGE, lo_v, ok, fail)
    elif op == "lt":
        em.jump(_JGE, lo_v, fail, ok)
    else:  # le
        em.jump(_JGT, lo_v, fail, ok)


def _emit_check(em: _Emitter, outcome: _Outcome) -> None:
    _, conds, fallback = outcome
    for i, (args, action) in enumerate(conds):
        fail = em.label() if i + 1 < len(conds) else em.ret_label(fallback)
        for j, arg in enumerate(args):
            if j + 1 < len(args):
                ok = em.label()
                _emit_arg(em, arg, ok, fail)
                em.place(ok)
            else:
                _emit_arg(em, arg, em.ret_label(action), fail)
        if i + 1 < len(conds):
            em.place(fail)


def _outcome_for(rules: list[Rule], default: int) -> _Outcome:
    """Collapse one syscall's ordered rules into its outcome."""
    conds: list[tuple[tuple[Arg, ...], int]] = []
    fallback = default
    for r in rules:
        if not r.args:
            fallback = r.action  # unconditional: later rules are unreachable
            break
        conds.append((r.args, r.action))
    # A trailing rule that yields the fallback anyway changes nothing.
    while conds and conds[-1][1] == fallback:
        conds.pop()
    if not conds:
        return ("ret", fallback)
    return ("check", tuple(conds), fallback)


# Binary search tree over ranges: a leaf is an outcome, a node is
# (boundary, below, at_or_above).
def _tree(ranges: list[tuple[int, _Outcome]], lo: int, hi: int):
    if hi - lo == 1:
        return ranges[lo][1]
    mid = (lo + hi) // 2
    return (ranges[mid][0], _tree(ranges, lo, mid), _tree(ranges, mid, hi))


def _is_leaf(t) -> bool:
    return isinstance(t[0], str)


def _leaf_refs(t, counts: dict[_Outcome, int]) -> None:
    if _is_leaf(t):
        counts[t] = counts.get(t, 0) + 1
    else:
        _leaf_refs(t[1], counts)
        _leaf_refs(t[2], counts)


def build(
    rules: Sequence[Rule],
    default: int,
    arch: str | None = None,
    bad_arch: int = RET_KILL_PROCESS,
) -> bytes:
    """Compile ``rules`` into a seccomp filter for ``arch`` (default: native).

    * ``seccomp_data.arch`` other than ``arch``'s AUDIT_ARCH -> ``bad_arch``
      (this is what stops i386 ``int 0x80`` calls on x86_64).  On x86_64 any
      nr >= 0x40000000 (x32 bit set, or negative such as -1) -> ``bad_arch``
      too; libseccomp sends nr == -1 to the default action instead.
    * For each syscall, its rules are tried in order and the first whose args
      all match decides; no match, or no rules at all -> ``default``.
    * Rules naming a syscall that ``arch`` lacks are skipped silently.

    Returns the ``struct sock_filter`` array (8 bytes per instruction,
    native endian).  Raises ``ValueError`` if it exceeds ``BPF_MAXINSNS``.
    """
    if arch is None:
        arch = syscall_table.native_arch()
    if arch not in syscall_table.ARCHES:
        raise syscall_table.UnsupportedArchError(
            f"unknown arch {arch!r}: expected one of {', '.join(sorted(syscall_table.ARCHES))}"
        )
    _check_action(default, "default")
    _check_action(bad_arch, "bad_arch")
    table = syscall_table.ARCHES[arch]

    by_nr: dict[int, list[Rule]] = {}
    for rule in rules:
        if not isinstance(rule, Rule):
            raise TypeError(f"expected Rule, got {rule!r}")
        nr = table.get(rule.syscall)
        if nr is not None:
            by_nr.setdefault(nr, []).append(rule)

    # Ranges of nr sharing an outcome, as (first nr, outcome), covering the
    # whole space the search has to handle.
    default_outcome: _Outcome = ("ret", default)
    end = _X32_SYSCALL_BIT if arch == "x86_64" else 1 << 32
    ranges: list[tuple[int, _Outcome]] = []

    def add(start: int, outcome: _Outcome) -> None:
        if not ranges or ranges[-1][1] != outcome:
            ranges.append((start, outcome))

    nxt = 0
    for nr in sorted(by_nr):
        if nr > nxt:
            add(nxt, default_outcome)
        add(nr, _outcome_for(by_nr[nr], default))
        nxt = nr + 1
    if nxt < end:
        add(nxt, default_outcome)

    tree = _tree(ranges, 0, len(ranges))
    refs: dict[_Outcome, int] = {}
    _leaf_refs(tree, refs)

    em = _Emitter()
    # The default RET is requested first so it is the first shared RET.
    em.ret_label(default)
    bad = em.ret_label(bad_arch)
    block_labels: dict[_Outcome, int] = {}
    shared_blocks: list[_Outcome] = []

    def target(t) -> int:
        """Label for subtree ``t`` (created here, placed by ``emit``)."""
        if not _is_leaf(t):
            return em.label()
        if t[0] == "ret":
            return em.ret_label(t[1])
        if t not in block_labels:
            block_labels[t] = em.label()
            if refs[t] > 1:
                shared_blocks.append(t)
        return block_labels[t]

    def emit(t, label: int) -> None:
        if _is_leaf(t):
            # Blocks used by one leaf go inline; shared ones after the search,
            # since BPF can only jump forward.
            if t[0] == "check" and refs[t] == 1:
                em.place(label)
                _emit_check(em, t)
            return
        boundary, below, above = t
        em.place(label)
        lb, la = target(below), target(above)
        em.jump(_JGE, boundary, la, lb)
        emit(below, lb)
        emit(above, la)

    ok = em.label()
    em.ld(_OFF_ARCH)
    em.jump(_JEQ, syscall_table.AUDIT_ARCH[arch], ok, bad)
    em.place(ok)
    em.ld(_OFF_NR)
    root = target(tree)
    if arch == "x86_64":
        # x32 calls, and negative nr, which no x86_64 syscall uses.
        em.jump(_JGE, _X32_SYSCALL_BIT, bad, root)
    elif _is_leaf(tree):
        em.ja(root)
    emit(tree, root)
    for outcome in shared_blocks:
        em.place(block_labels[outcome])
        _emit_check(em, outcome)
    em.finish()

    program = _assemble(em)
    count = len(program) // _INSN.size
    if count > BPF_MAXINSNS:
        raise ValueError(
            f"seccomp filter needs {count} instructions, the kernel accepts at most "
            f"{BPF_MAXINSNS}: use fewer argument rules or merge syscalls"
        )
    return program


# Pools are placed at most this far past the jump that needs them, leaving
# slack for pools later inserted in between (the hard limit is 255).
_POOL_REACH = 240


def _assemble(em: _Emitter) -> bytes:
    """Resolve labels; bridge out-of-reach branches through pools.

    A conditional jump reaches at most 255 instructions forward.  When a
    target is farther, a pool entry for it is added at the latest point the
    jump can still reach that no instruction falls through into (right after a
    jump or RET).  An entry is a copy of the target if that is a RET, else a
    ``ja`` to it.  Later jumps to the same target reuse the entry while it is
    in reach, so far RETs cost a couple of copies per ~250 instructions rather
    than one per branch.  Entries shift later code, so this repeats until
    every branch resolves.
    """
    insns = em.insns
    n = len(insns)
    label_at = em.label_at
    is_cond = [c & 0x07 == _JMP and c & 0xF0 != _JA for c, _, _, _ in insns]
    no_fallthrough = [
        is_cond[i] or c & 0x07 == _RET or c == _JMP | _JA for i, (c, _, _, _) in enumerate(insns)
    ]
    pools: list[list[int]] = [[] for _ in insns]  # labels bridged after insn i
    pooled_at: dict[int, list[int]] = {}  # label -> sorted insn indices
    addr: list[int] = []
    laddr: dict[int, int] = {}

    def layout() -> None:
        addr.clear()
        a = 0
        for i in range(n):
            addr.append(a)
            a += 1 + len(pools[i])
        laddr.clear()
        for lab, i in label_at.items():
            laddr[lab] = addr[i] if i < n else a

    def offset(i: int, lab: int) -> int | None:
        base = addr[i] + 1
        d = laddr[lab] - base
        if d < 0:
            raise AssertionError("backward jump in seccomp program")
        if d <= 255:
            return d
        for p in pooled_at.get(lab, ()):
            if p >= i:
                d = addr[p] + 1 + pools[p].index(lab) - base
                if d <= 255:
                    return d
        return None

    def add_pool_entry(i: int, lab: int) -> None:
        limit = addr[i] + 1 + _POOL_REACH
        p = bisect.bisect_right(addr, limit - 1) - 1
        while p > i and not (no_fallthrough[p] and addr[p] + 1 + len(pools[p]) <= limit):
            p -= 1
        pools[p].append(lab)
        bisect.insort(pooled_at.setdefault(lab, []), p)

    layout()
    changed = True
    while changed:
        changed = False
        for i in range(n):
            if not is_cond[i]:
                continue
            for lab in (insns[i][2], insns[i][3]):
                if offset(i, lab) is None:
                    add_pool_entry(i, lab)
                    layout()
                    changed = True

    out = bytearray()
    for i, (code, k, jt, jf) in enumerate(insns):
        if is_cond[i]:
            out += _INSN.pack(code, offset(i, jt), offset(i, jf), k)
        elif code == _JMP | _JA:
            out += _INSN.pack(code, 0, 0, laddr[jt] - addr[i] - 1)
        else:
            out += _INSN.pack(code, 0, 0, k)
        for j, lab in enumerate(pools[i]):
            dest = label_at[lab]
            if insns[dest][0] == _RET | _K:
                out += _INSN.pack(_RET | _K, 0, 0, insns[dest][1])
            else:
                out += _INSN.pack(_JMP | _JA, 0, 0, laddr[lab] - (addr[i] + 1 + j) - 1)
    return bytes(out)


# --------------------------------------------------------------------------
# Disassembler
# --------------------------------------------------------------------------

_ACTION_NAMES = {
    RET_KILL_PROCESS: "KILL_PROCESS",
    RET_KILL_THREAD: "KILL_THREAD",
    RET_TRAP: "TRAP",
    RET_ERRNO: "ERRNO",
    RET_USER_NOTIF: "USER_NOTIF",
    RET_TRACE: "TRACE",
    RET_LOG: "LOG",
    RET_ALLOW: "ALLOW",
}

_ALU_NAMES = {
    _ADD: "add", _SUB: "sub", _MUL: "mul", _DIV: "div", _OR: "or", _AND: "and",
    _LSH: "lsh", _RSH: "rsh", _NEG: "neg", _MOD: "mod", _XOR: "xor",
}
_JMP_NAMES = {_JEQ: "jeq", _JGT: "jgt", _JGE: "jge", _JSET: "jset"}


def _action_name(k: int) -> str:
    base = k & _RET_ACTION_FULL
    name = _ACTION_NAMES.get(base)
    if name is None:
        return ""
    data = k & _RET_DATA
    if base in (RET_ERRNO, RET_TRAP, RET_TRACE) and data:
        return f"{name}({data})"
    return name if not data else f"{name}|{data:#x}"


def _field_name(off: int) -> str:
    if off == _OFF_NR:
        return "nr"
    if off == _OFF_ARCH:
        return "arch"
    if off in (_OFF_IP, _OFF_IP + 4):
        return "ip" + (".hi" if off & 4 else ".lo")
    if _OFF_ARGS <= off < _SECCOMP_DATA_SIZE:
        i, half = divmod(off - _OFF_ARGS, 8)
        return f"args[{i}]" + (".hi" if half else ".lo")
    return ""


def disassemble(program: bytes) -> str:
    """Human-readable listing, one instruction per line (for debugging)."""
    if len(program) % _INSN.size:
        raise ValueError("program length is not a multiple of 8 bytes")
    lines = []
    for pc, (code, jt, jf, k) in enumerate(_INSN.iter_unpack(program)):
        cls = code & 0x07
        note = ""
        if cls == _LD and code & 0xE0 == _ABS:
            text = f"ld [{k}]"
            note = _field_name(k)
        elif cls == _LD and code & 0xE0 == _IMM:
            text = f"ld #{k:#x}"
        elif cls == _LD and code & 0xE0 == _MEM:
            text = f"ld M[{k}]"
        elif cls == _LD and code & 0xE0 == _LEN:
            text = "ld #len"
        elif cls == _LDX and code & 0xE0 == _IMM:
            text = f"ldx #{k:#x}"
        elif cls == _LDX and code & 0xE0 == _MEM:
            text = f"ldx M[{k}]"
        elif cls == _LDX and code & 0xE0 == _LEN:
            text = "ldx #len"
        elif cls == _ST:
            text = f"st M[{k}]"
        elif cls == _STX:
            text = f"stx M[{k}]"
        elif cls == _ALU:
            name = _ALU_NAMES.get(code & 0xF0, f"alu?{code:#x}")
            text = name if code & 0xF0 == _NEG else (
                f"{name} x" if code & _X else f"{name} #{k:#x}"
            )
        elif cls == _JMP and code & 0xF0 == _JA:
            text = f"ja {pc + 1 + k:04d}"
        elif cls == _JMP:
            name = _JMP_NAMES.get(code & 0xF0, f"j?{code:#x}")
            operand = "x" if code & _X else f"#{k:#x}"
            text = f"{name} {operand}, {pc + 1 + jt:04d}, {pc + 1 + jf:04d}"
        elif cls == _RET:
            if code & 0x18 == _RVAL_A:
                text = "ret a"
            else:
                text = f"ret #{k:#x}"
                note = _action_name(k)
        elif cls == _MISC:
            text = "txa" if code & 0xF8 == _TXA else "tax"
        else:
            text = f"??? code={code:#x} jt={jt} jf={jf} k={k:#x}"
        lines.append(f"{pc:04d}: {text:<32}" + (f"; {note}" if note else "").rstrip())
    return "\n".join(line.rstrip() for line in lines)
