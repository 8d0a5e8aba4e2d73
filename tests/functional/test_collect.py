"""Plan.collect: files a run wrote, taken out after it ended, never more than the workspace held."""

from __future__ import annotations

import os
import tempfile

import pytest

import evalbox
from evalbox.process import collect as collect_module
from ft_helpers import describe, sh


def test_files_and_directories_are_returned():
    out = sh("echo hi > a.txt; mkdir -p d/e; printf x > d/b; printf y > d/e/c", collect=["a.txt", "d", "missing"])
    assert out.success, describe(out)
    assert out.files == {"a.txt": b"hi\n", "d/b": b"x", "d/e/c": b"y"}


def test_nothing_is_collected_unless_asked():
    assert sh("echo hi > a.txt").files == {}


def test_a_symlink_is_not_followed_even_to_a_file_the_sandbox_may_read():
    # /etc/hostname is readable inside; through a link the host would still read on the program's word
    out = sh("ln -s /etc/hostname h; mkdir d; ln -s /etc d/etc; ln -s .. up", collect=["h", "d", "up"])
    assert out.success, describe(out)
    assert out.files == {}


def test_a_link_to_a_host_secret_made_outside_is_not_read():
    secret_dir = tempfile.mkdtemp(prefix="evalbox-collect-secret-")
    secret = os.path.join(secret_dir, "secret")
    try:
        with open(secret, "w") as f:
            f.write("top secret")
        # a hard link attempt from inside fails (Landlock, uid); a symlink to it is not followed
        out = sh(f"ln {secret} hard 2>/dev/null; ln -s {secret} soft; echo done", collect=["hard", "soft"])
        assert out.success, describe(out)
        assert out.files == {}
    finally:
        os.unlink(secret)
        os.rmdir(secret_dir)


def test_hard_links_fifos_and_devices_are_skipped_without_blocking():
    out = sh("echo a > one; ln one two; mkfifo fifo; echo ok", collect=["one", "two", "fifo"])
    assert out.success, describe(out)
    assert out.files == {}  # one and two have two links each; the fifo is not a regular file


def test_the_budget_bounds_what_the_host_reads(monkeypatch):
    monkeypatch.setattr("evalbox.process.sandbox.COLLECT_BUDGET", 1000)
    out = sh("head -c 600 /dev/zero > a; head -c 600 /dev/zero > b; head -c 5000 /dev/zero > big",
             collect=["big", "a", "b"])
    assert out.success, describe(out)
    assert set(out.files) == {"a"}  # big is over the budget; after a, b no longer fits


def test_file_count_is_bounded(monkeypatch):
    monkeypatch.setattr(collect_module, "MAX_FILES", 5)
    out = sh("mkdir d; for i in 1 2 3 4 5 6 7 8 9; do echo $i > d/$i; done", collect=["d"])
    assert out.success, describe(out)
    assert 0 < len(out.files) < 5


@pytest.mark.parametrize("bad", ["/etc/passwd", "../x", "a/../../x", ""])
def test_paths_outside_the_workspace_are_refused_up_front(bad):
    with pytest.raises(evalbox.ValidationError, match="collect path"):
        evalbox.Plan(["true"], collect=[bad])


def test_paths_are_normalised_and_deduplicated():
    assert evalbox.Plan(["true"], collect=["./a//b", "a/b", "c"]).collect == ("a/b", "c")
    assert evalbox.Plan(["true"], collect="one").collect == ("one",)
