"""MONITOR's audit trail is bounded in the caller (findings 04-monitor-records-unbounded): at most
MAX_RECORDS records with paths cut to MAX_RECORD_PATH, then one record counting what was dropped."""

import evalbox
from evalbox import NotifyMode
from evalbox.policy.supervision import DROPPED_CALL, MAX_RECORD_PATH, MAX_RECORDS, TRUNCATED_MARK

OPENS = 20_000
CODE = f"""
import os
long = "/tmp/" + ("A" * 250 + "/") * 12   # ~3 KB path (ENOENT: still recorded)
for n in range({OPENS}):
    try:
        os.close(os.open(long + str(n), os.O_RDONLY))
    except OSError:
        pass
print("done")
"""


def test_monitor_keeps_a_bounded_trail_and_says_how_many_were_dropped():
    out = evalbox.run(["python3", "-I", "-S", "-c", CODE], notify=NotifyMode.MONITOR, intercept=["openat"],
                      timeout=120, memory="256M")
    assert out.stdout.strip() == b"done", (out.status, out.stderr[-2000:])
    assert len(out.syscalls) == MAX_RECORDS + 1
    kept, marker = out.syscalls[:-1], out.syscalls[-1]
    assert all(r.syscall == "openat" for r in kept)
    assert all(r.path is None or len(r.path) <= MAX_RECORD_PATH + len(TRUNCATED_MARK) for r in kept)
    assert any(r.path and r.path.endswith(TRUNCATED_MARK) for r in kept)
    assert marker.syscall == DROPPED_CALL
    dropped = marker.args[0]
    # every open of the loop was intercepted: kept + dropped covers them all (plus python's own opens)
    assert dropped >= OPENS - MAX_RECORDS
    assert str(dropped) in marker.decision and str(MAX_RECORDS) in marker.decision
