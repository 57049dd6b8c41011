"""Stopping a helper program a test started with `subprocess.Popen` (Prometheus, a collector,
Podman's API service): asked to stop, then killed if it has not within the timeout."""

from __future__ import annotations

import subprocess
from typing import Any


def stop(process: subprocess.Popen[Any], timeout_s: float = 10.0) -> None:
    process.terminate()
    try:
        process.wait(timeout_s)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()
