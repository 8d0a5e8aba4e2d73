"""A small classic-BPF interpreter for seccomp filters (test oracle).

Deliberately independent of ``evalbox.kernel.bpf``: it defines its own opcode
constants (from include/uapi/linux/bpf_common.h) so a wrong constant in the
builder cannot cancel out here.  It accepts exactly the instruction set that
the kernel's seccomp_check_filter() allows and rejects programs the kernel
would reject (bad opcode, out-of-range jump, unaligned or out-of-bounds load,
missing final RET, reading scratch memory before writing it).
"""

from __future__ import annotations

import struct
from collections.abc import Sequence

MAXINSNS = 4096
SECCOMP_DATA_SIZE = 64  # int nr; u32 arch; u64 ip; u64 args[6]
_INSN = struct.Struct("=HBBI")
_DATA = struct.Struct("=IIQ6Q")
_M32 = 0xFFFFFFFF

# instruction classes
LD, LDX, ST, STX, ALU, JMP, RET, MISC = 0x00, 0x01, 0x02, 0x03, 0x04, 0x05, 0x06, 0x07
# ld/ldx size and mode
W, ABS, IMM, MEM, LEN = 0x00, 0x20, 0x00, 0x60, 0x80
# alu/jmp operations and source
ADD, SUB, MUL, DIV, OR, AND, LSH, RSH, NEG, XOR = (
    0x00, 0x10, 0x20, 0x30, 0x40, 0x50, 0x60, 0x70, 0x80, 0xA0,
)
JA, JEQ, JGT, JGE, JSET = 0x00, 0x10, 0x20, 0x30, 0x40
K, X = 0x00, 0x08
RVAL_K, RVAL_A = 0x00, 0x10
TAX, TXA = 0x00, 0x80

_ALU_OPS = (ADD, SUB, MUL, DIV, OR, AND, LSH, RSH, XOR)
# The opcodes seccomp_check_filter() lets through.
ALLOWED = (
    {LD | W | ABS, LD | W | LEN, LDX | W | LEN, LD | IMM, LDX | IMM, LD | MEM, LDX | MEM, ST, STX}
    | {ALU | op | src for op in _ALU_OPS for src in (K, X)}
    | {ALU | NEG, RET | RVAL_K, RET | RVAL_A, MISC | TAX, MISC | TXA, JMP | JA}
    | {JMP | op | src for op in (JEQ, JGT, JGE, JSET) for src in (K, X)}
)


class BPFError(Exception):
    pass


def decode(program: bytes) -> list[tuple[int, int, int, int]]:
    if len(program) % _INSN.size:
        raise BPFError("program size is not a multiple of 8")
    return list(_INSN.iter_unpack(program))


def validate(program: bytes) -> list[tuple[int, int, int, int]]:
    """Static checks equivalent to the kernel's; returns decoded insns."""
    insns = decode(program)
    n = len(insns)
    if not 0 < n <= MAXINSNS:
        raise BPFError(f"program length {n} out of range")
    for pc, (code, jt, jf, k) in enumerate(insns):
        if code not in ALLOWED:
            raise BPFError(f"{pc}: opcode {code:#x} not allowed in seccomp")
        if code == LD | W | ABS and (k & 3 or k >= SECCOMP_DATA_SIZE):
            raise BPFError(f"{pc}: bad seccomp_data offset {k}")
        if code in (LD | MEM, LDX | MEM, ST, STX) and k >= 16:
            raise BPFError(f"{pc}: scratch index {k} out of range")
        if code == ALU | DIV | K and k == 0:
            raise BPFError(f"{pc}: division by constant zero")
        if code in (ALU | LSH | K, ALU | RSH | K) and k >= 32:
            raise BPFError(f"{pc}: shift by {k}")
        if code == JMP | JA:
            if pc + 1 + k >= n:
                raise BPFError(f"{pc}: ja out of range")
        elif code & 0x07 == JMP:
            if pc + 1 + max(jt, jf) >= n:
                raise BPFError(f"{pc}: conditional jump out of range")
    if insns[-1][0] & 0x07 != RET:
        raise BPFError("program does not end with RET")
    return insns


def seccomp_data(nr: int, arch: int, args: Sequence[int], ip: int = 0) -> bytes:
    if len(args) > 6:
        raise ValueError("at most 6 arguments")
    full = [a & 0xFFFFFFFFFFFFFFFF for a in args] + [0] * (6 - len(args))
    return _DATA.pack(nr & _M32, arch & _M32, ip & 0xFFFFFFFFFFFFFFFF, *full)


def run(program: bytes, nr: int, arch: int, args: Sequence[int], ip: int = 0) -> int:
    """Run a seccomp filter on one system call; returns the action value."""
    return run_insns(validate(program), seccomp_data(nr, arch, args, ip))


def run_insns(insns: list[tuple[int, int, int, int]], data: bytes) -> int:
    """Run already-validated instructions on a packed seccomp_data."""
    a = x = 0
    mem: list[int | None] = [None] * 16
    pc = 0
    while True:
        code, jt, jf, k = insns[pc]
        pc += 1
        cls = code & 0x07
        if cls == RET:
            return (a if code & 0x18 == RVAL_A else k) & _M32
        if cls == LD:
            mode = code & 0xE0
            if mode == ABS:
                a = struct.unpack_from("=I", data, k)[0]
            elif mode == LEN:
                a = SECCOMP_DATA_SIZE
            elif mode == IMM:
                a = k
            else:
                a = _load(mem, k, pc)
        elif cls == LDX:
            mode = code & 0xE0
            x = SECCOMP_DATA_SIZE if mode == LEN else k if mode == IMM else _load(mem, k, pc)
        elif cls == ST:
            mem[k] = a
        elif cls == STX:
            mem[k] = x
        elif cls == ALU:
            op = code & 0xF0
            if op == NEG:
                a = -a & _M32
                continue
            src = x if code & X else k
            if op == ADD:
                a = (a + src) & _M32
            elif op == SUB:
                a = (a - src) & _M32
            elif op == MUL:
                a = (a * src) & _M32
            elif op == DIV:
                if src == 0:
                    return 0  # classic BPF: division by zero X aborts with 0
                a //= src
            elif op == OR:
                a |= src
            elif op == AND:
                a &= src
            elif op == XOR:
                a ^= src
            elif op == LSH:
                # Counts >= 32 are undefined in classic BPF; the kernel's
                # checker only rejects them for K.  Mask like x86 does.
                a = (a << (src & 31)) & _M32
            elif op == RSH:
                a >>= src & 31
        elif cls == JMP:
            op = code & 0xF0
            if op == JA:
                pc += k
                continue
            src = x if code & X else k
            if op == JEQ:
                taken = a == src
            elif op == JGT:
                taken = a > src
            elif op == JGE:
                taken = a >= src
            else:
                taken = bool(a & src)
            pc += jt if taken else jf
        else:  # MISC
            if code & 0xF8 == TXA:
                a = x
            else:
                x = a


def _load(mem: list[int | None], k: int, pc: int) -> int:
    v = mem[k]
    if v is None:
        raise BPFError(f"{pc - 1}: read of uninitialised scratch M[{k}]")
    return v
