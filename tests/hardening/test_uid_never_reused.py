"""Class 2: a sandbox uid is never handed to a later run, so nothing one run leaves (files in rw
mounts) is within reach of another run's uid."""

from __future__ import annotations

import os
import shutil
import tempfile

import pytest

from hardening_kit import NOBODY, run_snippet


def test_uids_are_never_reused_across_runs_and_processes():
    if os.geteuid() != 0:
        pytest.skip("per-sandbox uids exist on root hosts only")
    code = """
        import os
        outs = [evalbox.run(["/usr/bin/id", "-u"]) for _ in range(40)]
        with evalbox.Executor() as ex:
            ids = [ex.spawn(evalbox.Plan(["/usr/bin/id", "-u"])) for _ in range(10)]
            while ex.active_count:
                for ev in ex.poll():
                    if isinstance(ev, evalbox.Completed):
                        outs.append(ev.output)
        pid = os.fork()
        if pid == 0:  # a forked child must not reuse its parent's reserved uids
            o = evalbox.run(["/usr/bin/id", "-u"])
            with open(os.environ.get("HARDEN_OUT", "/dev/null"), "w") as f:
                f.write(o.stdout.decode())
            os._exit(0)
        os.waitpid(pid, 0)
        outs.append(evalbox.run(["/usr/bin/id", "-u"]))
        emit({"uids": [int(o.stdout) for o in outs]})
    """
    out_file = tempfile.mktemp(prefix="harden-uid-")
    try:
        os.environ["HARDEN_OUT"] = out_file
        a = run_snippet("root", code.replace('os.environ.get("HARDEN_OUT", "/dev/null")', repr(out_file)))
        b = run_snippet("root", code.replace('os.environ.get("HARDEN_OUT", "/dev/null")', repr(out_file + "b")))
        child_a = int(open(out_file).read())
        child_b = int(open(out_file + "b").read())
    finally:
        os.environ.pop("HARDEN_OUT", None)
        for f in (out_file, out_file + "b"):
            if os.path.exists(f):
                os.unlink(f)
    every = a["uids"] + b["uids"] + [child_a, child_b]
    assert len(set(every)) == len(every), "a sandbox uid was handed out twice"
    assert min(b["uids"]) > max(a["uids"]), "the host-wide cursor went back"


def test_a_later_run_cannot_touch_what_an_earlier_run_left_in_an_rw_mount(caller):
    shared = tempfile.mkdtemp(prefix="harden-rw-")
    os.chmod(shared, 0o777)
    if caller == "nobody":
        os.chown(shared, NOBODY, NOBODY)
    try:
        got = run_snippet(caller, f"""
            d = {shared!r}
            first = evalbox.run(["/bin/sh", "-c", "echo mine > " + d + "/left.txt; chmod 600 " + d + "/left.txt; id -u"],
                                mounts=[evalbox.Mount.rw(d)])
            before = os.stat(d + "/left.txt")
            # later, unrelated runs (with and without the mount) attack the leftover by path
            attacks = []
            # (a caller that is not root shares its uid with its sandboxes: a run given the rw
            # mount may write what is in it; only runs without it are unrelated there)
            for mounts in ([], [evalbox.Mount.rw(d)]) if os.geteuid() == 0 else ([],):
                for _ in range(3):
                    o = evalbox.run(["/bin/sh", "-c",
                                     "chmod 666 " + d + "/left.txt; touch -d 2001-01-01 " + d + "/left.txt; "
                                     "chown $(id -u) " + d + "/left.txt; id -u"], mounts=mounts)
                    attacks.append(o.stdout.decode() + o.stderr.decode())
            emit({{"first": first.stdout.decode() + first.stderr.decode(), "attacks": attacks,
                  "before": [before.st_mode, before.st_uid, before.st_mtime_ns]}})
        """)
        st = os.stat(os.path.join(shared, "left.txt"))
        assert [st.st_mode, st.st_uid, st.st_mtime_ns] == got["before"], got
        assert st.st_mtime > 1_000_000_000 + 10 ** 8, got  # not re-dated to 2001
    finally:
        shutil.rmtree(shared)
