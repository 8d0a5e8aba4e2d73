"""Ray is an optional extra: importing evalbox never imports it, and asking for a cluster
without it says how to install it. (No cluster needed: these run everywhere.)"""

import os
import subprocess
import sys
import textwrap


HIDE_RAY = "import sys; sys.modules['ray'] = None  # as if not installed\n"


def python_without_ray(code, *args):
    return subprocess.run([sys.executable, "-c", HIDE_RAY + textwrap.dedent(code), *args], capture_output=True, text=True,
                          timeout=120, stdin=subprocess.DEVNULL, env={**os.environ, "RAY_ADDRESS": ""})


def test_import_evalbox_never_imports_ray():
    done = subprocess.run([sys.executable, "-X", "importtime", "-c", "import evalbox; evalbox.run_many; evalbox.arun_many"],
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    imported = [line.rsplit("|", 1)[-1].strip() for line in done.stderr.splitlines() if "|" in line]
    assert "evalbox.faces.batch" in imported  # the report is what we think it is
    assert not [m for m in imported if m == "ray" or m.startswith("ray.") or m == "evalbox.faces.cluster"]


def test_cluster_without_ray_says_how_to_install_it():
    done = python_without_ray("""
        import evalbox
        try:
            evalbox.run_many([["true"]], cluster="ray")
        except evalbox.ClusterError as e:
            print(e)
    """)
    assert "pip install 'evalbox-sandbox[ray]'" in done.stdout, done.stderr


def test_cli_cluster_without_ray(tmp_path):
    infile = tmp_path / "plans.jsonl"
    infile.write_text('{"cmd": ["true"]}\n')
    done = python_without_ray("""
        import sys
        from evalbox.faces.cli import main
        main(["batch", sys.argv[1], "--cluster", "ray"])
    """, str(infile))
    assert done.returncode == 125
    assert "pip install 'evalbox-sandbox[ray]'" in done.stderr and "--cluster" in done.stderr
    assert done.stdout == ""


def test_serve_cluster_without_ray():
    done = python_without_ray("""
        import evalbox.faces.server  # the server itself never needs Ray
        from evalbox.faces.cli import main
        main(["serve", "--port", "1", "--cluster", "ray"])
    """)
    assert done.returncode == 2, done.stderr
    assert "pip install 'evalbox-sandbox[ray]'" in done.stderr and "--cluster" in done.stderr
