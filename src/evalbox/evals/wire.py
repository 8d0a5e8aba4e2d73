"""The channel between a trusted test sandbox and a candidate sandbox: frames and plain data.

This file runs in three places: on the host (framing only, never decoding a value), inside the
trusted test sandbox, and inside the candidate sandbox (shipped there as a file of its own, so it
imports nothing but the standard library, and nothing slow to import: no json, no re).

Frame: one kind byte, a 4-byte big-endian length, the payload. Sizes are bounded (MAX_FRAME).

Values from the candidate to the tests (its answers) are JSON text in which every container is a
tagged array, decoded by the trusted side into fresh built-in objects (None, bool, int, float,
str, list, tuple, dict, set, frozenset, bytes, complex): nothing the candidate made can claim
equality, override an operator or run code there.

    None, True/False, str, floats (inf and nan too)   as JSON (floats round-trip exactly)
    int                 as a JSON number, or ["I", hex] when it is long
    list / tuple        ["l", item...] / ["t", item...]
    set / frozenset     ["s", item...] / ["f", item...]
    dict                ["d", key, value, key, value...]   (order kept)
    bytes / bytearray   ["b", latin-1 text]  (decoded as bytes)
    complex             ["c", real, imag]

Anything else (a class instance, a generator, a function) cannot be sent: the sender raises
TypeError. The receiver checks everything: a wrong tag, a JSON object, too much nesting or a
frame that is not JSON raises WireError.

Calls from the tests to the candidate are `marshal` data: the trusted side made them, and the
candidate's side reads them with nothing to import. (marshal is never used to read what the
candidate sends.)
"""

from __future__ import annotations

import marshal
import os
import struct

try:
    from _json import encode_basestring_ascii as _json_string
except ImportError:  # a Python without the C accelerator
    from json.encoder import py_encode_basestring_ascii as _json_string

MAX_FRAME = 16 << 20  # bytes of one payload
MAX_DEPTH = 100  # nesting of a value
BIG_INT = 1 << 63  # ints at least this large travel as hex (decimal parsing of long ints is quadratic)
HEADER = struct.Struct(">cI")

# Frame kinds. Host -> trusted: PROBLEM, REPLY (a candidate frame, forwarded), GONE (the host saw the
# candidate end). Trusted -> host: CALL (forwarded to the candidate), DONE (the verdict).
# Candidate -> host: REPLY. Host -> candidate: CALL.
PROBLEM, REPLY, GONE, CALL, DONE = b"P", b"R", b"G", b"C", b"D"


class WireError(Exception):
    """Malformed frame or value."""


# -- values: candidate -> tests ---------------------------------------------------------------

def _float(x: float) -> str:
    if x != x:
        return "NaN"
    if x in (float("inf"), float("-inf")):
        return "Infinity" if x > 0 else "-Infinity"
    return float.__repr__(x)


def _items(tag: str, values: object, depth: int) -> str:
    return "".join(['["', tag, '"', *("," + _json(v, depth) for v in values), "]"])  # type: ignore[attr-defined]


def _json(value: object, depth: int) -> str:
    if depth > MAX_DEPTH:
        raise ValueError(f"value nested more than {MAX_DEPTH} deep")
    if value is None:
        return "null"
    if value is True:
        return "true"
    if value is False:
        return "false"
    if isinstance(value, str):
        return _json_string(str.__str__(value))
    if isinstance(value, int):
        n = int.__index__(value)
        return str(n) if -BIG_INT < n < BIG_INT else f'["I","{n:x}"]'
    if isinstance(value, float):
        return _float(float.__float__(value))
    depth += 1
    if isinstance(value, list):
        return _items("l", value, depth)
    if isinstance(value, tuple):
        return _items("t", value, depth)
    if isinstance(value, dict):
        return _items("d", [x for pair in value.items() for x in pair], depth)
    if isinstance(value, frozenset):
        return _items("f", value, depth)
    if isinstance(value, set):
        return _items("s", value, depth)
    if isinstance(value, (bytes, bytearray)):
        return '["b",' + _json_string(bytes(value).decode("latin-1")) + "]"
    if isinstance(value, complex):
        return f'["c",{_float(value.real)},{_float(value.imag)}]'
    raise TypeError(f"a value of type {type(value).__name__} cannot be passed between the tests and the candidate "
                    "(plain data only: None, bool, int, float, str, bytes, complex, list, tuple, dict, set)")


def encode(value: object) -> bytes:
    """Plain data -> JSON bytes (TypeError for anything else, ValueError when too deep)."""
    return _json(value, 0).encode("ascii")


def _number(x: object) -> float:
    if type(x) is float or (type(x) is int):
        return x  # type: ignore[return-value]
    raise WireError("expected a number")


def _value(node: object, depth: int) -> object:
    t = type(node)
    if node is None or t is bool or t is str or t is float or t is int:
        return node
    if t is not list or not node:
        raise WireError(f"unexpected {t.__name__} in a value")
    if depth > MAX_DEPTH:
        raise WireError("value nested too deep")
    tag, items = node[0], node[1:]  # type: ignore[index]
    depth += 1
    if tag == "l":
        return [_value(v, depth) for v in items]
    if tag == "t":
        return tuple(_value(v, depth) for v in items)
    if tag == "d":
        if len(items) % 2:
            raise WireError("dict with an odd number of items")
        out = {}
        for i in range(0, len(items), 2):
            out[_value(items[i], depth)] = _value(items[i + 1], depth)
        return out
    if tag == "s":
        return {_value(v, depth) for v in items}
    if tag == "f":
        return frozenset(_value(v, depth) for v in items)
    if tag == "I" and len(items) == 1 and type(items[0]) is str and len(items[0]) <= MAX_FRAME:
        try:
            return int(items[0], 16)
        except ValueError:
            raise WireError("bad long int") from None
    if tag == "b" and len(items) == 1 and type(items[0]) is str:
        try:
            return items[0].encode("latin-1")
        except UnicodeEncodeError:
            raise WireError("bad bytes") from None
    if tag == "c" and len(items) == 2:
        return complex(_number(items[0]), _number(items[1]))
    raise WireError(f"unknown tag {repr(tag)[:20]}")


def _no_objects(pairs: object) -> object:
    raise WireError("JSON objects are not part of the value format")


def decode(data: bytes) -> object:
    """JSON bytes from the other side -> fresh plain data; WireError for anything malformed."""
    if len(data) > MAX_FRAME:
        raise WireError("value too large")
    import json  # the trusted side only: slow to import, and the candidate's side never decodes JSON

    try:
        tree = json.loads(data, object_pairs_hook=_no_objects)
        return _value(tree, 0)
    except WireError:
        raise
    except (ValueError, TypeError, RecursionError, MemoryError, UnicodeDecodeError) as e:
        # TypeError: an unhashable key (a list as a dict key or set member)
        raise WireError(f"malformed value: {type(e).__name__}") from None


# -- calls: tests -> candidate ----------------------------------------------------------------

def encode_call(name: str, args: tuple, kwargs: dict) -> bytes:
    try:
        return marshal.dumps((name, args, kwargs))
    except ValueError as e:
        raise TypeError(f"the tests passed a value the candidate cannot receive ({e}); plain data only") from None


def decode_call(data: bytes) -> tuple:
    return marshal.loads(data)


# -- frames -----------------------------------------------------------------------------------

def frame(kind: bytes, payload: bytes) -> bytes:
    if len(payload) > MAX_FRAME:
        raise ValueError(f"frame of {len(payload)} bytes is over the {MAX_FRAME}-byte limit")
    return HEADER.pack(kind, len(payload)) + payload


class FrameReader:
    """Incremental parser for bytes that arrive in chunks (the host's side of a pipe)."""

    def __init__(self) -> None:
        self._buf = bytearray()

    def feed(self, data: bytes) -> list[tuple[bytes, bytes]]:
        """Add bytes; return the complete frames. Raises WireError on an oversized frame."""
        self._buf += data
        frames = []
        while len(self._buf) >= HEADER.size:
            kind, size = HEADER.unpack_from(self._buf)
            if size > MAX_FRAME:
                raise WireError(f"frame of {size} bytes announced (limit {MAX_FRAME})")
            end = HEADER.size + size
            if len(self._buf) < end:
                break
            frames.append((kind, bytes(self._buf[HEADER.size:end])))
            del self._buf[:end]
        return frames


class Channel:
    """Blocking frames over two raw fds (inside a sandbox). Reads take exactly one frame, never
    more, so that a forked child and its parent can take turns on the same pipe."""

    def __init__(self, read_fd: int, write_fd: int) -> None:
        self.read_fd = read_fd
        self.write_fd = write_fd
        self.mid_frame = False  # True while part of a frame has been consumed

    def _exactly(self, n: int) -> bytes:
        chunks = []
        while n:
            chunk = os.read(self.read_fd, min(n, 1 << 20))
            if not chunk:
                raise EOFError("channel closed")
            self.mid_frame = True
            chunks.append(chunk)
            n -= len(chunk)
        return b"".join(chunks)

    def receive(self) -> tuple[bytes, bytes]:
        header = self._exactly(HEADER.size)
        kind, size = HEADER.unpack(header)
        if size > MAX_FRAME:
            raise WireError(f"frame of {size} bytes announced (limit {MAX_FRAME})")
        payload = self._exactly(size)
        self.mid_frame = False
        return kind, payload

    def send(self, kind: bytes, payload: bytes) -> None:
        data = memoryview(frame(kind, payload))
        while data:
            data = data[os.write(self.write_fd, data):]
