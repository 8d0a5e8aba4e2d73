"""Plan construction never lets anything but ValidationError escape, whatever it is given."""

from __future__ import annotations

import pytest

hypothesis = pytest.importorskip("hypothesis", reason="pip install hypothesis (in the [test] extra)")
from hypothesis import HealthCheck, given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402

import evalbox  # noqa: E402
from evalbox import Mount, Plan, ValidationError  # noqa: E402

names = st.one_of(
    st.text(min_size=0, max_size=20),
    st.text(alphabet="ab/.\0", min_size=0, max_size=30),
    st.builds(lambda n, k: "/".join(["a" * k] * n), st.integers(0, 3000), st.integers(1, 300)),
    st.integers(), st.none(), st.binary(max_size=10),
)
numbers = st.one_of(
    st.none(), st.booleans(), st.integers(min_value=-(2**80), max_value=2**80), st.floats(allow_nan=True),
    st.text(max_size=12), st.sampled_from(["1G", "64k", "1e300", "99999999999999999999999T", "0.5M", " 2 G "]),
    st.lists(st.integers(), max_size=2),
)
contents = st.one_of(st.text(max_size=5), st.binary(max_size=5), st.integers(), st.none(),
                     st.builds(evalbox.File, st.binary(max_size=5), st.booleans()))
mounts = st.lists(st.one_of(
    st.builds(lambda s, d, w: (s, d, w), st.sampled_from(["/usr", "/tmp", "usr", "/", "/a\0b"]),
              st.one_of(st.none(), names), st.booleans()),
    st.integers(), st.text(max_size=4)), max_size=3)


def _mount(spec):
    if isinstance(spec, tuple):
        return Mount(*spec)
    return spec


@settings(max_examples=400, deadline=None, suppress_health_check=list(HealthCheck))
@given(
    argv=st.one_of(st.lists(names, max_size=3), names),
    files=st.one_of(st.dictionaries(names, contents, max_size=4), st.lists(names, max_size=2), st.none()),
    env=st.one_of(st.dictionaries(names, names, max_size=3), st.text(max_size=3), st.none()),
    cwd=st.one_of(st.none(), names),
    limits=st.dictionaries(st.sampled_from(["timeout", "cpu_time", "memory", "max_pids", "max_output",
                                            "max_open_files", "max_file_size"]), numbers, max_size=7),
    mount_specs=mounts,
    stdin=st.one_of(st.binary(max_size=4), st.text(max_size=4), st.integers(), st.none()),
    notify=st.one_of(st.sampled_from(list(evalbox.NotifyMode)), st.text(max_size=8), st.integers()),
    intercept=st.one_of(st.lists(names, max_size=2), names),
    virtual_paths=st.one_of(st.dictionaries(names, names, max_size=2), st.none()),
    syscalls=st.one_of(st.none(), st.dictionaries(st.sampled_from(["allow", "deny", "x"]),
                                                  st.lists(names, max_size=2), max_size=2)),
)
def test_only_validation_error_escapes(argv, files, env, cwd, limits, mount_specs, stdin, notify, intercept,
                                       virtual_paths, syscalls):
    kwargs = dict(files=files, env=env, cwd=cwd, stdin=stdin, notify=notify, intercept=intercept,
                  virtual_paths=virtual_paths, **limits)
    if syscalls is not None:
        kwargs["syscalls"] = syscalls
    try:
        kwargs["mounts"] = [_mount(m) for m in mount_specs]
        Plan(argv, **kwargs)
    except ValidationError as e:
        assert str(e)  # says what is wrong


@pytest.mark.parametrize("kwargs, says", [
    (dict(files={"a": "x", "a/b": "y"}), "inside"),
    (dict(files={"a": "x", "./a": "y"}), "same file"),
    (dict(files={"x" * 300: "y"}), "255 bytes"),
    (dict(files={"/".join(["a"] * 3000): "y"}), "levels deep"),
    (dict(files={"/".join(["a" * 100] * 30): "y"}), "2048 bytes"),
    (dict(memory=1), "at least 4K"),
    (dict(max_pids=10**30), "at most"),
    (dict(timeout=1e300), "at most"),
    (dict(max_open_files=2**64 + 10), "at most"),
    (dict(cpu_time=2**64), "at most"),
    (dict(max_file_size=2**64), "at most"),
    (dict(memory="99999999999999T"), "at most"),
    (dict(mounts=[Mount.ro("/usr", "m"), Mount.ro("/tmp", "m/inner")]), "inside"),
    (dict(mounts=[Mount.ro("/usr", "m")], files={"m/x": "y"}), "inside"),
    (dict(mounts=[Mount.ro("/usr", "m")], cwd="work/m/sub"), "cwd"),
    (dict(mounts=[Mount.ro("/usr", "m"), Mount.ro("/tmp", "m")]), "also"),
])
def test_reported_bad_plans_say_what_to_do(kwargs, says):
    with pytest.raises(ValidationError, match=says):
        Plan(["true"], **kwargs)


def test_limits_at_the_bounds_are_kept_exactly():
    p = Plan(["true"], max_open_files=1 << 20, max_pids=1 << 22, memory=4096, timeout=2_000_000)
    assert (p.max_open_files, p.max_pids, p.memory, p.timeout) == (1 << 20, 1 << 22, 4096, 2_000_000.0)
