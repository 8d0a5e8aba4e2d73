"""Regressions found in review: uid leases, fork safety, event delivery, determinism."""

import asyncio
import os
import shutil
import tempfile

import pytest

import evalbox
from portability import known_nonroot_gap
from evalbox.process.identity import UidLease, is_sandbox_uid

root_only = pytest.mark.skipif(os.geteuid() != 0, reason="per-sandbox uids exist on root hosts")


@root_only
def test_uid_leases_are_exclusive_across_processes():
    mine = UidLease()
    try:
        r, w = os.pipe()
        pid = os.fork()
        if pid == 0:  # another "evalbox process": must not get the same uid
            other = UidLease()
            os.write(w, str(other.uid).encode())
            os._exit(0)
        os.waitpid(pid, 0)
        theirs = int(os.read(r, 32))
        assert theirs != mine.uid and is_sandbox_uid(theirs)
    finally:
        mine.release()
    again = UidLease()
    try:
        assert again.uid not in (mine.uid, theirs)  # never reused, even once released (issue 9)
    finally:
        again.release()


@known_nonroot_gap("once in two full non-root runs one forked child's run failed (order-dependent; "
                  "passes alone); its Output is now printed on stderr to find why")
def test_forked_children_do_not_share_the_parents_recycled_cgroups():
    assert evalbox.run(["true"]).success  # the parent now holds a recycled group
    children = []
    for _ in range(2):
        pid = os.fork()
        if pid == 0:
            out = evalbox.run(["sh", "-c", "sleep 0.3; echo ok"], timeout=10)
            if not (out.stdout == b"ok\n" and out.success):
                os.write(2, f"forked child's run: {out!r}\n".encode())
            os._exit(0 if out.stdout == b"ok\n" and out.success else 1)
        children.append(pid)
    codes = [os.waitstatus_to_exitcode(os.waitpid(pid, 0)[1]) for pid in children]
    assert codes == [0, 0]


def test_run_keeps_other_sandboxes_events():
    with evalbox.Executor() as ex:
        first = ex.spawn(evalbox.Plan(["echo", "first"]), close_stdin=True)
        assert ex.run(evalbox.Plan(["sh", "-c", "sleep 0.2; echo second"])).stdout == b"second\n"
        events = []
        while ex.active_count or not events:
            events += ex.poll(timeout=5)
            if not ex.active_count:
                break
    done = [e for e in events if isinstance(e, evalbox.Completed) and e.id == first]
    assert done and done[0].output.stdout == b"first\n"


def test_output_limit_status_is_deterministic():
    for _ in range(8):
        out = evalbox.run(["python3", "-c", "import sys; sys.stdout.write('x' * 60000)"], max_output=1000)
        assert out.status is evalbox.Status.OUTPUT_LIMIT and out.stdout_truncated and len(out.stdout) == 1000


def test_closing_an_async_executor_ends_event_iterators():
    async def main():
        ex = evalbox.AsyncExecutor()
        await ex.__aenter__()
        sb = await ex.spawn(evalbox.Plan(["sleep", "30"]), close_stdin=True)

        async def consume():
            async for _ in sb.events():
                pass

        task = asyncio.create_task(consume())
        await asyncio.sleep(0.05)
        await ex.__aexit__(None, None, None)
        with pytest.raises(evalbox.SandboxError):
            await asyncio.wait_for(task, 5)

    asyncio.run(main())


@root_only
def test_virtualize_respects_file_modes_for_a_sandbox_uid():
    d = tempfile.mkdtemp(prefix="evalbox-vmodes-")
    try:
        os.chmod(d, 0o755)
        with open(os.path.join(d, "open.txt"), "w") as f:
            f.write("readable\n")
        os.chmod(os.path.join(d, "open.txt"), 0o644)
        with open(os.path.join(d, "private.txt"), "w") as f:
            f.write("TOPSECRET\n")
        os.chmod(os.path.join(d, "private.txt"), 0o600)
        os.mkdir(os.path.join(d, "closed"), 0o700)
        with open(os.path.join(d, "closed", "inner.txt"), "w") as f:
            f.write("TOPSECRET\n")
        os.chmod(os.path.join(d, "closed", "inner.txt"), 0o644)
        out = evalbox.run(["sh", "-c", "cat /data/open.txt; cat /data/private.txt; cat /data/closed/inner.txt"],
                          notify=evalbox.NotifyMode.VIRTUALIZE, virtual_paths={"/data": d}, timeout=10)
        assert out.stdout == b"readable\n"
        assert b"TOPSECRET" not in out.stdout
        assert out.stderr.count(b"Permission denied") == 2
        closed = tempfile.mkdtemp(prefix="evalbox-vclosed-")  # 0700: refused up front
        try:
            with pytest.raises(evalbox.ValidationError, match="chmod"):
                evalbox.Plan(["true"], notify=evalbox.NotifyMode.VIRTUALIZE, virtual_paths={"/data": closed})
                evalbox.run(["true"], notify=evalbox.NotifyMode.VIRTUALIZE, virtual_paths={"/data": closed})
        finally:
            os.rmdir(closed)
    finally:
        shutil.rmtree(d)
