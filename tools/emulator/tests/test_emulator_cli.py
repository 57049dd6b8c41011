from __future__ import annotations

import asyncio
import socket
import sys
from pathlib import Path

import aiohttp
import orjson

from corral_emulator.cli import config_from_args, main
from corral_emulator.models import DEFAULT_MODELS
from corral_emulator.registry import DEFAULT_REGISTRY


def test_defaults() -> None:
    config = config_from_args([])
    assert (config.host, config.port) == ("127.0.0.1", 11434)
    assert (config.token_delay_ms, config.load_ms, config.prompt_ms_per_token) == (0, 0, 0)
    assert config.models == DEFAULT_MODELS


def test_flags_and_models_file(tmp_path: Path) -> None:
    models = tmp_path / "models.json"
    models.write_bytes(orjson.dumps([{"name": "solo", "context_length": 512}]))
    config = config_from_args(
        [
            "--host", "0.0.0.0", "--port", "1234", "--token-delay-ms", "2.5", "--load-ms", "100",
            "--prompt-ms-per-token", "0.1", "--models", str(models),
        ]
    )  # fmt: skip
    assert (config.host, config.port) == ("0.0.0.0", 1234)
    assert (config.token_delay_ms, config.load_ms, config.prompt_ms_per_token) == (2.5, 100, 0.1)
    assert [(m.name, m.context_length) for m in config.models] == [("solo", 512)]


def test_pull_flags_and_registry_file(tmp_path: Path) -> None:
    registry = tmp_path / "registry.json"
    registry.write_bytes(orjson.dumps([{"name": "remote:1b", "context_length": 128}]))
    config = config_from_args(["--pull-step-ms", "0", "--registry", str(registry)])
    assert config.pull_step_ms == 0
    assert [m.name for m in config.registry] == ["remote:1b"]
    assert config_from_args([]).registry == DEFAULT_REGISTRY


def test_bad_models_file_exits_2(tmp_path: Path) -> None:
    assert main(["--models", str(tmp_path / "missing.json")]) == 2


async def test_python_dash_m_serves() -> None:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    process = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "corral_emulator", "--port", str(port), "--token-delay-ms", "1",
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT,
    )  # fmt: skip
    try:
        assert process.stdout is not None
        async with asyncio.timeout(20):
            # run_app announces itself once the socket is listening.
            while b"Running on" not in await process.stdout.readline():
                pass
        async with aiohttp.ClientSession() as session:
            async with session.get(f"http://127.0.0.1:{port}/") as response:
                assert await response.text() == "Ollama is running"
            body = {"model": "tiny", "prompt": "cli", "stream": False}
            async with session.post(f"http://127.0.0.1:{port}/api/generate", json=body) as response:
                assert (await response.json())["response"] == "Echo: cli"
    finally:
        process.terminate()
        await process.wait()
