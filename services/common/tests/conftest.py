"""What the logging tests share: logging configured to write into a buffer."""

from __future__ import annotations

import io
import logging
import sys
from collections.abc import Callable, Iterator
from typing import Any

import pytest
import structlog

from corral_common.logging import configure_logging


class _Stderr:
    """Stands in for sys.stderr: structlog writes bytes to `.buffer`, the standard library's
    handler text to the stream itself."""

    def __init__(self, buffer: io.BytesIO) -> None:
        self.buffer = buffer

    def write(self, text: str) -> int:
        return self.buffer.write(text.encode())

    def flush(self) -> None:
        pass


LogsToBuffer = Callable[..., io.BytesIO]


@pytest.fixture
def logs_to_buffer() -> Iterator[LogsToBuffer]:
    """`configure_logging("test", level, **options)` writing into the buffer it returns.

    Both loggers take their stream when configured, so stderr is swapped only for that moment
    (pytest swaps its own capture back in between a test's phases)."""

    def configure(level: str = "info", **options: Any) -> io.BytesIO:
        out = io.BytesIO()
        with pytest.MonkeyPatch.context() as patch:
            patch.setattr(sys, "stderr", _Stderr(out))
            configure_logging("test", level, **options)
        return out

    yield configure
    structlog.reset_defaults()
    logging.getLogger().handlers.clear()
