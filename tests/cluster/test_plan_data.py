"""Plans travel between processes and machines: pickling, copying, and the plain-data form."""

import copy
import errno
import pickle

import pytest

import evalbox
from evalbox import Mount, NotifyMode, Plan, Syscalls


def full_plan() -> Plan:
    return Plan(
        ["python3", "main.py", "x"],
        files={"main.py": "print(1)", "lib/data.bin": b"\x00\xff", "run.sh": evalbox.File("echo", executable=True)},
        stdin=b"in", env={"SEED": "1"}, cwd="work/lib", timeout=5, cpu_time=2, memory="64M", max_pids=8,
        max_output="1M", max_open_files=32, max_file_size="1M", network=True,
        mounts=[Mount.ro("/usr/share"), Mount.rw("/tmp", "scratch")],
        syscalls=Syscalls(allow=["personality"], deny=["ptrace"]),
        notify=NotifyMode.MONITOR, intercept=["openat"],
    )


PLANS = {
    "full": full_plan,
    "python runtime": lambda: evalbox.python.plan("print(6 * 7)", env={"A": "b"}),
    "shell runtime": lambda: evalbox.shell.plan("echo hi", stdin=b"x"),
    "virtualize": lambda: Plan(["cat", "/data/x"], notify=NotifyMode.VIRTUALIZE, virtual_paths={"/data": "/tmp"}),
    "defaults": lambda: Plan(["true"]),
}


@pytest.mark.parametrize("make", PLANS.values(), ids=PLANS.keys())
def test_pickle_and_copy_keep_the_plan(make):
    plan = make()
    for clone in (pickle.loads(pickle.dumps(plan)), copy.copy(plan), copy.deepcopy(plan)):
        assert clone == plan
        with pytest.raises(TypeError, match="immutable"):
            clone.env["X"] = "1"  # still a value after the trip


@pytest.mark.parametrize("make", PLANS.values(), ids=PLANS.keys())
def test_plain_data_round_trip(make):
    plan = make()
    data = plan.to_dict()
    assert Plan.from_dict(pickle.loads(pickle.dumps(data))) == plan

    def plain(value):  # only builtin data types: nothing that needs evalbox (or code) to unpickle
        if isinstance(value, dict):
            return all(isinstance(k, str) and plain(v) for k, v in value.items())
        if isinstance(value, list):
            return all(plain(v) for v in value)
        return value is None or type(value) in (str, bytes, int, float, bool)

    assert plain(data)


def test_round_trip_runs_the_same():
    plan = evalbox.python.plan("import os; print(open('data.txt').read(), os.environ['K'])",
                               files={"data.txt": "hi"}, env={"K": "v"})
    assert evalbox.run(Plan.from_dict(plan.to_dict())).stdout == b"hi v\n"


def test_supervisor_cannot_travel_as_data():
    plan = Plan(["true"], notify=NotifyMode.SUPERVISE, intercept=["openat"],
                supervisor=lambda req: evalbox.Decision.deny(errno.EACCES))
    with pytest.raises(evalbox.ValidationError, match="supervisor"):
        plan.to_dict()
    with pytest.raises(evalbox.ValidationError, match="supervisor"):
        Plan.from_dict({"argv": ["true"], "supervisor": "os.system"})


@pytest.mark.parametrize("data, words", [
    ({"argv": ["true"], "shell": True}, "unknown plan field"),
    ({"argv": ["true"], "files": {"../x": {"content": b""}}}, "leaves the workspace"),
    ({"argv": ["true"], "files": {"x": {"content": b"", "mode": 7}}}, "malformed"),
    ({"argv": ["true"], "mounts": [{"source": "relative"}]}, "absolute"),
    ({"argv": []}, "argv is empty"),
    (["true"], "must be a dict"),
])
def test_bad_data_is_a_validation_error(data, words):
    with pytest.raises(evalbox.ValidationError, match=words):
        Plan.from_dict(data)
