"""`python -m corral_emulator`: command-line entry point."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path

import orjson

from corral_emulator.config import EmulatorConfig
from corral_emulator.models import ModelSpec, model_spec_from_mapping
from corral_emulator.serve import serve_forever


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m corral_emulator",
        description="Deterministic Ollama emulator for Corral's tests, benchmarks and demos.",
    )
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=11434)
    parser.add_argument(
        "--token-delay-ms", type=float, default=0.0, help="delay before each generated token"
    )
    parser.add_argument(
        "--load-ms", type=float, default=0.0, help="load time of a model that is not loaded"
    )
    parser.add_argument(
        "--prompt-ms-per-token", type=float, default=0.0, help="prompt evaluation time per token"
    )
    parser.add_argument(
        "--models",
        type=Path,
        help="JSON file with a list of model specs replacing the built-in catalogue",
    )
    parser.add_argument(
        "--pull-step-ms", type=float, default=2.0, help="delay per progress step of a pull"
    )
    parser.add_argument(
        "--registry",
        type=Path,
        help="JSON file with a list of model specs replacing the pullable registry",
    )
    parser.add_argument(
        "--record-limit", type=int, default=50, help="request bodies kept per endpoint"
    )
    parser.add_argument(
        "--openai-only",
        action="store_true",
        help="serve only the OpenAI-compatible /v1 API (like llama-cpp-python's server)",
    )
    return parser


def config_from_args(argv: Sequence[str] | None = None) -> EmulatorConfig:
    args = build_parser().parse_args(argv)
    config = EmulatorConfig(
        host=args.host,
        port=args.port,
        token_delay_ms=args.token_delay_ms,
        load_ms=args.load_ms,
        prompt_ms_per_token=args.prompt_ms_per_token,
        pull_step_ms=args.pull_step_ms,
        record_limit=args.record_limit,
        openai_only=args.openai_only,
    )
    if args.models is not None:
        config.models = _specs_file(args.models)
    if args.registry is not None:
        config.registry = _specs_file(args.registry)
    return config


def _specs_file(path: Path) -> tuple[ModelSpec, ...]:
    return tuple(model_spec_from_mapping(spec) for spec in orjson.loads(path.read_bytes()))


def main(argv: Sequence[str] | None = None) -> int:
    try:
        config = config_from_args(argv)
    except (OSError, ValueError) as exc:
        print(f"corral_emulator: {exc}", file=sys.stderr)
        return 2
    serve_forever(config)
    return 0
