"""The suite's shared fixtures (tests/fixtures.py: the Ollama emulator and Corral services as
real processes) for every test directory: tests/, services/*/tests and tools/*/tests."""

import sys
from pathlib import Path

# `pytest_plugins` is imported while this file loads, before pytest's own `pythonpath`
# setting takes effect, so the repository root goes on the path here (a bare `pytest`, unlike
# `python -m pytest`, does not start from it).
ROOT = str(Path(__file__).resolve().parent)
if ROOT not in sys.path:
    sys.path.insert(0, ROOT)

pytest_plugins = ["tests.fixtures"]
