"""The suite's shared fixtures (tests/fixtures.py: the Ollama emulator and Corral services as
real processes) for every test directory: tests/, services/*/tests and tools/*/tests."""

pytest_plugins = ["tests.fixtures"]
