"""Root hosts: a Mount (or a program) below a directory other users cannot search is reachable
through the sandbox's own mount namespace, and nothing else from that directory is."""

import os
import shutil
import tempfile

import pytest

import evalbox
from ft_helpers import describe

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="the mount namespace tier is for root hosts")


@pytest.fixture
def hidden_home():
    home = tempfile.mkdtemp(prefix="evalbox-hidden-home-")  # 0700, like /root
    try:
        shared = os.path.join(home, "tools")
        os.makedirs(shared)
        os.chmod(shared, 0o755)
        with open(os.path.join(shared, "data.txt"), "w") as f:
            f.write("reachable\n")
        os.chmod(os.path.join(shared, "data.txt"), 0o644)
        with open(os.path.join(home, "secret.txt"), "w") as f:
            f.write("root's own\n")
        os.chmod(os.path.join(home, "secret.txt"), 0o644)  # only the 0700 parent protects it
        shutil.copy("/bin/echo", os.path.join(shared, "myecho"))
        os.chmod(os.path.join(shared, "myecho"), 0o755)
        yield home, shared
    finally:
        shutil.rmtree(home)


def test_mount_below_an_unsearchable_directory(hidden_home):
    home, shared = hidden_home
    assert os.stat(home).st_mode & 0o777 == 0o700
    out = evalbox.run(["sh", "-c", f"cat {shared}/data.txt; cat {home}/secret.txt; ls {home}"],
                      mounts=[evalbox.Mount.ro(shared)], timeout=10)
    # (in the jail, or below a private /tmp, the hidden directory may be listed: it then holds only what was granted)
    assert out.stdout in (b"reachable\n", b"reachable\n" + os.path.basename(shared).encode() + b"\n"), describe(out)
    assert b"root's own" not in out.stdout + out.stderr and b"secret" not in out.stdout, describe(out)


def test_program_below_an_unsearchable_directory(hidden_home):
    home, shared = hidden_home
    out = evalbox.run([f"{shared}/myecho", "ran"], timeout=10)
    assert out.success and out.stdout == b"ran\n", describe(out)


def test_the_hidden_directory_is_untouched_on_the_host(hidden_home):
    home, shared = hidden_home
    before = sorted(os.listdir(home))
    evalbox.run(["sh", "-c", f"touch {shared}/new {home}/new2"], mounts=[evalbox.Mount.ro(shared)], timeout=10)
    assert sorted(os.listdir(home)) == before
    assert not os.path.exists(os.path.join(shared, "new"))
