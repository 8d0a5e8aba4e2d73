"""asyncio face: runs on the running loop, streams, cancels by killing, never blocks the loop."""

import asyncio
import os
import threading
import time
import uuid

import pytest

import evalbox
from proc_helpers import alive_with, wait_until


def test_arun():
    out = asyncio.run(evalbox.arun(["sh", "-c", "echo hi"]))
    assert out.success and out.stdout == b"hi\n"


def test_no_threads_are_started():
    before = threading.active_count()

    async def main():
        outs = await evalbox.arun_many([["true"]] * 6, concurrency=3)
        assert threading.active_count() == before
        return outs

    assert all(o.success for o in asyncio.run(main()))


def test_events_stream_before_completion():
    async def main():
        async with evalbox.AsyncExecutor() as ex:
            sb = await ex.spawn(evalbox.Plan(["sh", "-c", "echo first; read x; echo second"]))
            seen = []
            async for ev in sb.events():
                seen.append(ev)
                if isinstance(ev, evalbox.Stdout) and ev.data == b"first\n":
                    sb.write_stdin(b"go\n")
                    sb.close_stdin()
            out = await sb.wait()
            return seen, out

    seen, out = asyncio.run(main())
    assert isinstance(seen[-1], evalbox.Completed)
    assert b"".join(e.data for e in seen if isinstance(e, evalbox.Stdout)) == b"first\nsecond\n"
    assert out.success


def test_loop_keeps_running_while_sandboxes_run():
    async def main():
        ticks = 0

        async def ticker():
            nonlocal ticks
            while True:
                await asyncio.sleep(0.01)
                ticks += 1

        t = asyncio.create_task(ticker())
        outs = await evalbox.arun_many([["sleep", "0.5"]] * 4, concurrency=4)
        t.cancel()
        return ticks, outs

    ticks, outs = asyncio.run(main())
    assert all(o.success for o in outs)
    assert ticks >= 10  # the loop ran the ticker while four sandboxes slept


def test_timeout_in_asyncio():
    out = asyncio.run(evalbox.arun(["sleep", "10"], timeout=0.3))
    assert out.status is evalbox.Status.TIMEOUT


def test_cancelling_kills_and_reaps_the_whole_tree():
    marker = f"60.{uuid.uuid4().int % 10**9:09d}"  # a unique sleep duration marks the processes

    async def main():
        task = asyncio.create_task(evalbox.arun(["sh", "-c", f"sleep {marker} & sleep {marker}"], timeout=60))
        await asyncio.sleep(0)  # let it spawn
        deadline = time.monotonic() + 10
        while not alive_with(marker) and time.monotonic() < deadline:
            await asyncio.sleep(0.02)
        assert alive_with(marker), "the sandboxed grandchild never started"
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task

    asyncio.run(main())
    assert wait_until(lambda: not alive_with(marker)), "a cancelled sandbox's process survived"


def test_arun_many_keeps_order_and_reports_bad_items():
    async def main():
        return await evalbox.arun_many([["sh", "-c", f"sleep 0.{9 - i}; echo {i}"] for i in range(5)] + [[]],
                                       concurrency=5)

    outs = asyncio.run(main())
    assert [o.stdout for o in outs[:5]] == [f"{i}\n".encode() for i in range(5)]
    assert isinstance(outs[5], evalbox.ValidationError)
