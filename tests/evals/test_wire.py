"""The channel's value format: what the candidate sends is decoded into fresh built-in data only."""

from __future__ import annotations

import math

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from evalbox.evals import wire

scalars = st.one_of(st.none(), st.booleans(), st.integers(), st.integers(min_value=-(1 << 200), max_value=1 << 200),
                    st.floats(allow_nan=False), st.text(), st.binary(), st.complex_numbers(allow_nan=False))
hashables = st.recursive(scalars, lambda inner: st.one_of(st.tuples(inner, inner), st.frozensets(inner, max_size=4)),
                         max_leaves=8)
values = st.recursive(
    scalars,
    lambda inner: st.one_of(st.lists(inner, max_size=4), st.tuples(inner, inner), st.dictionaries(hashables, inner, max_size=4),
                            st.sets(hashables, max_size=4), st.frozensets(hashables, max_size=4)),
    max_leaves=20)


def same(a: object, b: object) -> bool:
    """Equal, and of exactly the same types all the way down (a tuple is not a list)."""
    if type(a) is not type(b):
        return False
    if isinstance(a, (list, tuple)):
        return len(a) == len(b) and all(same(x, y) for x, y in zip(a, b))  # type: ignore[arg-type]
    if isinstance(a, dict):
        return list(a) == list(b) and all(same(a[k], b[k]) for k in a)  # type: ignore[index]
    if isinstance(a, float) and math.isnan(a):
        return math.isnan(b)  # type: ignore[arg-type]
    return a == b


@settings(max_examples=300, deadline=None)
@given(values)
def test_round_trip_keeps_values_and_types(value):
    assert same(wire.decode(wire.encode(value)), value)


def test_special_values():
    for value in (float("nan"), float("inf"), -0.0, 1 << 5000, -(1 << 64), "\udc80 lone surrogate", b"\x00\xff",
                  complex(float("inf"), -1), [(), {}, set(), frozenset()], True, bytearray(b"ab")):
        decoded = wire.decode(wire.encode(value))
        expected = bytes(value) if isinstance(value, bytearray) else value
        assert same(decoded, expected) or (isinstance(value, float) and math.isnan(decoded)), value
    assert math.copysign(1, wire.decode(wire.encode(-0.0))) == -1  # type: ignore[arg-type]


def test_objects_that_claim_equality_arrive_as_plain_data():
    class Yes(int):
        def __eq__(self, other): return True
        __hash__ = int.__hash__

    class Text(str):
        def __eq__(self, other): return True
        __hash__ = str.__hash__

    decoded = wire.decode(wire.encode([Yes(3), Text("a"), {Text("k"): Yes(1)}]))
    assert same(decoded, [3, "a", {"k": 1}]) and decoded != [4, "b", {"k": 1}]


def test_anything_else_cannot_be_sent():
    class AlwaysEqual:
        def __eq__(self, other): return True

    for value in (AlwaysEqual(), iter([1]), len, object, [AlwaysEqual()], {1: AlwaysEqual()}):
        with pytest.raises(TypeError, match="plain data only"):
            wire.encode(value)
    deep: list = []
    for _ in range(wire.MAX_DEPTH + 5):
        deep = [deep]
    with pytest.raises(ValueError, match="nested"):
        wire.encode(deep)


@pytest.mark.parametrize("data", [
    b'{"a": 1}', b'["d", "k"]', b'["x", 1]', b'["c", "1", 2]', b'["I", "zz"]', b'["I", 5]', b'["b", "\\u0100"]',
    b"[]", b"[1, 2]", b"not json", b"\xff", b'["s", ["l", 1]]', b'["d", ["l"], 1]', b"[" * 100000 + b"]" * 100000,
    b"1" * 5000, b'["l",' * (wire.MAX_DEPTH + 5) + b"1" + b"]" * (wire.MAX_DEPTH + 5),
])
def test_malformed_values_are_refused(data):
    with pytest.raises(wire.WireError):
        wire.decode(data)


def test_frames_in_chunks_and_bounds():
    stream = wire.frame(wire.REPLY, b"abc") + wire.frame(wire.DONE, b"") + wire.frame(wire.CALL, b"x" * 70000)
    reader = wire.FrameReader()
    got = []
    for i in range(0, len(stream), 7):
        got += reader.feed(stream[i:i + 7])
    assert got == [(wire.REPLY, b"abc"), (wire.DONE, b""), (wire.CALL, b"x" * 70000)]
    with pytest.raises(wire.WireError):
        wire.FrameReader().feed(wire.HEADER.pack(wire.REPLY, wire.MAX_FRAME + 1))
    with pytest.raises(ValueError):
        wire.frame(wire.REPLY, b"x" * (wire.MAX_FRAME + 1))


def test_calls_carry_plain_data_only():
    args = ([1, 2.5, "s"], (1,), {"k": {1, 2}}, b"b", None, 1 << 100)
    name, got_args, kwargs = wire.decode_call(wire.encode_call("f", args, {"x": 1}))
    assert name == "f" and same(got_args, args) and kwargs == {"x": 1}
    with pytest.raises(TypeError, match="plain data only"):
        wire.encode_call("f", (object(),), {})
