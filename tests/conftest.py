import os
import sys

# tests/bpf_interpreter.py is a shared test helper
sys.path.insert(0, os.path.dirname(__file__))
