"""Corral's Ollama emulator: Ollama's HTTP API with deterministic replies, configurable
latency and failures, model management (pull, copy, create, delete), deterministic embeddings,
and a record of concurrent backend work.

Replies are `"Echo: " + <last user message | prompt>`; use `expected_reply` and friends to
compute them in tests.
"""

from corral_emulator.app import create_app
from corral_emulator.cli import main
from corral_emulator.config import EmulatorConfig
from corral_emulator.control_client import EmulatorControl
from corral_emulator.embedding import normalized_embedding, raw_embedding
from corral_emulator.failures import FailureMode
from corral_emulator.models import DEFAULT_MODELS, ModelSpec, canonical_model_name
from corral_emulator.registry import DEFAULT_REGISTRY
from corral_emulator.reply_plan import fit_messages
from corral_emulator.serve import RunningEmulator, running_emulator, start_emulator
from corral_emulator.state import CONFIG_KEY, STATE_KEY, EmulatorState
from corral_emulator.tokens import (
    PROMPT_TOKENS_PER_MESSAGE,
    REPLY_PREFIX,
    count_message_tokens,
    count_prompt_tokens,
    expected_done_reason,
    expected_reply,
    reply_tokens,
    tokenize,
)

__all__ = [
    "CONFIG_KEY",
    "DEFAULT_MODELS",
    "DEFAULT_REGISTRY",
    "PROMPT_TOKENS_PER_MESSAGE",
    "REPLY_PREFIX",
    "STATE_KEY",
    "EmulatorConfig",
    "EmulatorControl",
    "EmulatorState",
    "FailureMode",
    "ModelSpec",
    "RunningEmulator",
    "canonical_model_name",
    "count_message_tokens",
    "count_prompt_tokens",
    "create_app",
    "expected_done_reason",
    "expected_reply",
    "fit_messages",
    "main",
    "normalized_embedding",
    "raw_embedding",
    "reply_tokens",
    "running_emulator",
    "start_emulator",
    "tokenize",
]
