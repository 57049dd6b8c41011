"""What a command hands back to the CLI to show: the data `--json` prints, the text a person
reads, the exit code, and a note for stderr."""

from __future__ import annotations

import argparse
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from corralctl.client import Gateway

# Exit codes: 0 done; 1 the server refused (or the command's check failed); 2 a usage error
# (argparse's own); 3 the gateway could not be reached.
REFUSED = 1
USAGE = 2
UNREACHABLE = 3


class UsageError(Exception):
    """A command's arguments cannot be used (a file that is not an export): exit 2."""


@dataclass(frozen=True)
class Outcome:
    data: Any
    """What `--json` prints; None when it was streamed already."""
    text: str | None
    """What a person reads on stdout; None for nothing."""
    code: int = 0
    note: str | None = None
    """A warning or a failure's reason, for stderr."""


Command = Callable[[Gateway, argparse.Namespace], Outcome]
