"""`python -m corral_devstack run [--emulator] [--data-dir DIR]`; `python -m corral_devstack
embedded-model` installs the embedded model server (if needed) and says where it is."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path

from corral_devstack import embedded_model, stack


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m corral_devstack")
    commands = parser.add_subparsers(dest="command", required=True)
    run = commands.add_parser(
        "run",
        help="start the whole cluster in the foreground; Ctrl-C stops everything it started",
    )
    run.add_argument(
        "--emulator",
        action="store_true",
        default=None,
        help="also start the Ollama emulator and point CORRAL_OLLAMA_URL at it "
        "(or set CORRAL_DEV_EMULATOR=1)",
    )
    run.add_argument(
        "--data-dir",
        type=Path,
        default=None,
        help="where logs, the local RabbitMQ node and the embedded store live "
        "(default: $CORRAL_DATA_DIR or ./.corral)",
    )
    commands.add_parser(
        "embedded-model",
        help="install the embedded model server make run falls back to (llama-cpp-python and "
        "SmolLM2-135M, cached under ~/.cache/corral; minutes the first time, then seconds)",
    )
    args = parser.parse_args(argv)
    if args.command == "run":
        return stack.run(args.data_dir, emulator=args.emulator)
    if args.command == "embedded-model":
        return embedded_model.main()
    parser.error(f"unknown command {args.command}")
    return 2


if __name__ == "__main__":
    sys.exit(main())
