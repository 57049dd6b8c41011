"""Make SIGTERM unwind the stack like Ctrl-C does, so `finally` blocks stop child processes."""

from __future__ import annotations

import signal
import threading
from types import FrameType


def _raise_exit(signum: int, frame: FrameType | None) -> None:
    raise SystemExit(128 + signum)


def sigterm_raises_exit() -> None:
    """If SIGTERM still has its default (silent kill) action, make it raise SystemExit instead.

    Only possible from the main thread; a handler someone else installed is left alone.
    """
    if threading.current_thread() is not threading.main_thread():
        return
    if signal.getsignal(signal.SIGTERM) is signal.SIG_DFL:
        signal.signal(signal.SIGTERM, _raise_exit)
