"""What a command hands back to the CLI to show: the data `--json` prints, the text a person
reads, the exit code, and a note for stderr."""

from __future__ import annotations

import argparse
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from corralctl.client import Gateway
from corralctl.tables import table

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


# A table column: its header, and what it shows of one listed item.
Column = tuple[str, Callable[[dict[str, Any]], Any]]


def listed(
    answer: dict[str, Any],
    key: str,
    columns: Sequence[Column],
    empty: str,
    footer: Callable[[list[dict[str, Any]]], str] | None = None,
) -> Outcome:
    """A list endpoint's answer (its items under `key`) as a table, `empty` when it has none."""
    items: list[dict[str, Any]] = answer.get(key) or []
    if not items:
        return Outcome(answer, empty)
    shown = table(
        [header for header, _ in columns], [[get(i) for _, get in columns] for i in items]
    )
    return Outcome(answer, shown if footer is None else f"{shown}\n\n{footer(items)}")
