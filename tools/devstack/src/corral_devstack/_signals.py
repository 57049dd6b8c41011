"""Make SIGTERM unwind the stack like Ctrl-C does, so `finally` blocks stop child processes."""

from __future__ import annotations

import signal
import threading
from types import FrameType


def _interrupt(signum: int, frame: FrameType | None) -> None:
    # KeyboardInterrupt rather than SystemExit: pytest reports a SystemExit inside a test as a
    # failure and carries on, whereas an interrupt ends the session and runs its teardowns.
    raise KeyboardInterrupt


def sigterm_interrupts() -> None:
    """If SIGTERM still has its default (silent kill) action, make it act like Ctrl-C.

    Only possible from the main thread; a handler someone else installed is left alone.
    """
    if threading.current_thread() is not threading.main_thread():
        return
    if signal.getsignal(signal.SIGTERM) is signal.SIG_DFL:
        signal.signal(signal.SIGTERM, _interrupt)
