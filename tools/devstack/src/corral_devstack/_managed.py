"""`with` support for the things devstack starts: entering starts, leaving (or a failed start)
stops."""

from __future__ import annotations

from types import TracebackType
from typing import Self


class Managed:
    def start(self) -> None:
        raise NotImplementedError

    def close(self) -> None:
        raise NotImplementedError

    def __enter__(self) -> Self:
        try:
            self.start()
        except BaseException:
            # A start that failed halfway (a node up, its readiness never came) is undone too.
            self.close()
            raise
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()
