"""Launching child processes that cannot outlive their owner by accident."""

from __future__ import annotations

import contextlib
import ctypes
import os
import signal
import subprocess
import threading
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import IO

_PR_SET_PDEATHSIG = 1
_libc = ctypes.CDLL(None, use_errno=True)


def _die_with_parent(parent_pid: int) -> Callable[[], None]:
    def preexec() -> None:
        # If the owner is SIGKILLed, its children get SIGTERM instead of running on forever.
        _libc.prctl(_PR_SET_PDEATHSIG, signal.SIGTERM, 0, 0, 0)
        if os.getppid() != parent_pid:
            os._exit(1)

    return preexec


def spawn(
    argv: Sequence[str],
    *,
    env: Mapping[str, str],
    stdout: IO[bytes] | int,
    cwd: Path | None = None,
) -> subprocess.Popen[bytes]:
    """Start `argv` in its own session so a terminal Ctrl-C reaches only the owner.

    The owner then stops its children in order. The parent-death signal is only armed from the
    main thread because Linux fires it when the forking *thread* exits, which would kill a
    child started from a short-lived worker thread.
    """
    preexec = None
    if threading.current_thread() is threading.main_thread():
        preexec = _die_with_parent(os.getpid())
    return subprocess.Popen(
        list(argv),
        env=dict(env),
        stdin=subprocess.DEVNULL,
        stdout=stdout,
        stderr=subprocess.STDOUT,
        cwd=cwd,
        start_new_session=True,
        preexec_fn=preexec,
    )


def signal_group(proc: subprocess.Popen[bytes], sig: int) -> None:
    """Send `sig` to the process group led by `proc` (its helpers included).

    Never once the leader has been reaped by an earlier call: its pid, and so its group id, may
    have been handed to an unrelated process since (pid_max is small and tests spawn a lot).
    """
    if proc.returncode is not None:
        return
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(proc.pid, sig)


def terminate_group(proc: subprocess.Popen[bytes], timeout: float) -> None:
    """SIGTERM the group, wait up to `timeout`, then SIGKILL it and reap the leader."""
    if proc.returncode is not None:
        return
    signal_group(proc, signal.SIGTERM)
    with contextlib.suppress(subprocess.TimeoutExpired):
        proc.wait(timeout=timeout)
    # Helpers the leader spawned may outlive it in the group; sweep them now. The group id
    # cannot be reused while any member lives, and the window since the leader was reaped
    # just above is tiny.
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()


def tail(path: Path, n: int) -> str:
    """The last `n` lines of a text file, or "" if it does not exist."""
    try:
        with path.open("rb") as fh:
            fh.seek(0, os.SEEK_END)
            size = fh.tell()
            fh.seek(max(0, size - 256 * 1024))
            data = fh.read()
    except FileNotFoundError:
        return ""
    lines = data.decode("utf-8", errors="replace").splitlines()
    return "\n".join(lines[-n:])
