"""`python -m corral_devstack run` as a child process, for the launcher tests: its output read
line by line on a thread, so a test waits for a line (with a timeout) instead of sleeping."""

from __future__ import annotations

import queue
import signal
import subprocess
import sys
import threading

import pytest


class Launcher:
    """`python -m corral_devstack run` in a child process, its output read line by line."""

    def __init__(self, args: list[str], env: dict[str, str]) -> None:
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "corral_devstack", "run", *args],
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        self.lines: queue.Queue[str | None] = queue.Queue()
        self.seen: list[str] = []
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            self.lines.put(line.rstrip("\n"))
        self.lines.put(None)

    def wait_for(self, text: str, timeout: float = 60) -> None:
        while True:
            line = self.lines.get(timeout=timeout)
            if line is None:
                pytest.fail(f"launcher ended before {text!r}:\n" + "\n".join(self.seen))
            self.seen.append(line)
            if text in line:
                return

    def finish(self, timeout: float = 60) -> tuple[int, str]:
        code = self.proc.wait(timeout=timeout)
        while (line := self.lines.get(timeout=timeout)) is not None:
            self.seen.append(line)
        return code, "\n".join(self.seen)

    def close(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            self.proc.wait(timeout=60)

    def stop(self) -> str:
        """SIGTERM, as Ctrl-C would; it must exit cleanly. Everything it said."""
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        code, said = self.finish()
        assert code == 0, said
        return said
