import os
import sys

# tests/bpf_interpreter.py is a shared test helper
sys.path.insert(0, os.path.dirname(__file__))


def pytest_collection_modifyitems(session, config, items):
    """The Ray tests last: a connected Ray driver leaves threads in this process, and the escape
    tests' signal checks need a test process whose threads are all their own."""
    items.sort(key=lambda item: "tests/cluster/" in str(item.path).replace(os.sep, "/"))
