"""`corralctl`: the parser, the gateway's address and key, and how an outcome is shown.

Every command prints a table (or a few `name  value` lines) for people, or with `--json` the
gateway's own JSON, one document on stdout. Errors go to stderr as `corralctl: <status> <type>:
<the server's message>`. Exit codes: 0 done, 1 refused by the server (or the check failed: an
unhealthy cluster, a cancel of an unknown request), 2 a usage error, 3 the gateway not reached.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections.abc import Sequence

from corralctl import (
    key_commands,
    lane_commands,
    model_commands,
    session_commands,
    usage_commands,
)
from corralctl.client import ApiError, Gateway, Unreachable
from corralctl.outcome import REFUSED, UNREACHABLE, USAGE, Command, Outcome, UsageError

# The gateway's own default address (CORRAL_GATEWAY_HOST / CORRAL_GATEWAY_PORT).
DEFAULT_URL = "http://127.0.0.1:8000"
DEFAULT_TIMEOUT_S = 30.0
PROGRAM = "corralctl"


def parser() -> argparse.ArgumentParser:
    top = argparse.ArgumentParser(
        prog=PROGRAM,
        description="Operate a Corral cluster through its gateway's HTTP API.",
        epilog="Exit codes: 0 done, 1 refused by the server, 2 usage, 3 gateway not reached.",
    )
    top.add_argument(
        "--url",
        default=os.environ.get("CORRAL_URL", DEFAULT_URL),
        help="the gateway (default: $CORRAL_URL or %(default)s)",
    )
    top.add_argument(
        "--key",
        default=os.environ.get("CORRAL_API_KEY"),
        help="an API key, sent as Authorization: Bearer (default: $CORRAL_API_KEY)",
    )
    top.add_argument("--json", action="store_true", help="the server's JSON instead of tables")
    top.add_argument(
        "--timeout",
        type=float,
        default=DEFAULT_TIMEOUT_S,
        help="seconds to wait for an answer (a stream: between its lines; default %(default)s)",
    )
    commands = top.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for area in (lane_commands, model_commands, session_commands, key_commands, usage_commands):
        area.register(commands)
    for leaf in _leaves(top):
        # `corralctl queue list --json` as well as `corralctl --json queue list`: given after
        # the command, an option replaces the top level's; not given, it leaves it alone.
        leaf.add_argument(
            "--json",
            action="store_true",
            default=argparse.SUPPRESS,
            help="the server's JSON instead of tables",
        )
        leaf.add_argument("--url", default=argparse.SUPPRESS, help=argparse.SUPPRESS)
        leaf.add_argument("--key", default=argparse.SUPPRESS, help=argparse.SUPPRESS)
        leaf.add_argument(
            "--timeout", type=float, default=argparse.SUPPRESS, help=argparse.SUPPRESS
        )
    return top


def _leaves(parser: argparse.ArgumentParser) -> list[argparse.ArgumentParser]:
    """The parsers that take a command's own arguments (those without subcommands)."""
    below = [
        child
        for action in parser._actions
        if isinstance(action, argparse._SubParsersAction)
        for child in action.choices.values()
    ]
    if not below:
        return [parser]
    return [leaf for child in below for leaf in _leaves(child)]


def run(args: argparse.Namespace) -> Outcome:
    command: Command = args.run
    return command(Gateway(args.url, args.key, args.timeout), args)


def main(argv: Sequence[str] | None = None) -> int:
    args = parser().parse_args(argv)
    try:
        outcome = run(args)
    except ApiError as exc:
        return _fail(args, str(exc), REFUSED, exc.body)
    except Unreachable as exc:
        return _fail(args, str(exc), UNREACHABLE)
    except (UsageError, argparse.ArgumentTypeError, OSError) as exc:
        return _fail(args, str(exc), USAGE)
    except KeyboardInterrupt:
        return 130
    if args.json and outcome.data is not None:
        print(json.dumps(outcome.data, indent=2, ensure_ascii=False))
    elif not args.json and outcome.text is not None:
        print(outcome.text)
    if outcome.note:
        print(f"{PROGRAM}: {outcome.note}", file=sys.stderr)
    return outcome.code


def _fail(args: argparse.Namespace, message: str, code: int, body: object = None) -> int:
    """The reason on stderr; with `--json`, the server's error document on stdout too."""
    if args.json and body is not None:
        print(json.dumps(body, indent=2, ensure_ascii=False))
    print(f"{PROGRAM}: error: {message}", file=sys.stderr)
    return code
