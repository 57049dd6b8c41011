"""Wait estimates from the backend's own measurements.

Each finished job reports `prompt_eval_count/duration`, `eval_count/duration` and
`load_duration`; we keep an exponentially weighted speed per model and price every queued job
as load (if its model is not the loaded one) + prompt evaluation + generation.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from corral_common.messages import STREAMED_KINDS, JobKind

NS_PER_MS = 1_000_000
# Below this a reported load_duration is the backend touching an already-loaded model.
REAL_LOAD_MS = 50.0
CHARS_PER_TOKEN = 4.0


@dataclass
class ModelSpeed:
    prompt_tokens_per_s: float
    eval_tokens_per_s: float
    load_ms: float
    eval_count: float
    samples: int = 0


def estimate_prompt_tokens(prompt_chars: int) -> int:
    return max(1, round(prompt_chars / CHARS_PER_TOKEN))


class SpeedBook:
    def __init__(
        self,
        *,
        prompt_tokens_per_s: float,
        eval_tokens_per_s: float,
        load_ms: float,
        eval_count: float,
        weight: float = 0.3,
    ) -> None:
        self._prior = ModelSpeed(prompt_tokens_per_s, eval_tokens_per_s, load_ms, eval_count)
        self._weight = weight
        self._models: dict[str, ModelSpeed] = {}

    def speed(self, model: str) -> ModelSpeed:
        return self._models.get(model.lower(), self._prior)

    def observe(self, model: str, final: dict[str, Any]) -> None:
        """Fold one finished job's timings into the model's running averages."""
        key = model.lower()
        current = self._models.get(key)
        if current is None:
            current = ModelSpeed(**{**self._prior.__dict__, "samples": 0})
            self._models[key] = current
        first = current.samples == 0

        def blend(old: float, new: float) -> float:
            return new if first else old + self._weight * (new - old)

        prompt_count = _int(final.get("prompt_eval_count"))
        prompt_ns = _int(final.get("prompt_eval_duration"))
        if prompt_count > 0 and prompt_ns > 0:
            current.prompt_tokens_per_s = blend(
                current.prompt_tokens_per_s, prompt_count / (prompt_ns / 1e9)
            )
        eval_count = _int(final.get("eval_count"))
        eval_ns = _int(final.get("eval_duration"))
        if eval_count > 0 and eval_ns > 0:
            current.eval_tokens_per_s = blend(
                current.eval_tokens_per_s, eval_count / (eval_ns / 1e9)
            )
        if eval_count > 0:
            current.eval_count = blend(current.eval_count, float(eval_count))
        load_ms = _int(final.get("load_duration")) / NS_PER_MS
        if load_ms >= REAL_LOAD_MS:
            current.load_ms = blend(current.load_ms, load_ms)
        current.samples += 1

    def load_ms(self, model: str, kind: JobKind = "chat") -> int:
        """What loading `model` costs, by its measured loads (nothing for an unload)."""
        return 0 if kind == "unload" else round(self.speed(model).load_ms)

    def estimate_ms(
        self,
        model: str,
        prompt_chars: int,
        num_predict: int | None,
        loaded_model: str | None,
        kind: JobKind = "chat",
    ) -> int:
        if kind == "unload":
            return 0
        speed = self.speed(model)
        total = 0.0
        if loaded_model is None or loaded_model.lower() != model.lower():
            total += speed.load_ms
        if kind == "load":
            return round(total)
        total += 1000.0 * estimate_prompt_tokens(prompt_chars) / speed.prompt_tokens_per_s
        if kind in STREAMED_KINDS:
            tokens_out = num_predict if num_predict is not None and num_predict > 0 else None
            expected_out = min(tokens_out, speed.eval_count) if tokens_out else speed.eval_count
            total += 1000.0 * expected_out / speed.eval_tokens_per_s
        return round(total)


@dataclass
class SimServer:
    """A server as the wait estimate plays the queue onto it."""

    name: str
    # When it will be free, from now.
    free_at_ms: int
    loaded: str | None


def pool_waits(
    servers: list[SimServer],
    jobs: list[tuple[int, int, str]],
    can_run: Callable[[SimServer, int], bool],
) -> list[int]:
    """The wait of each queued job (`(work_ms, load_ms, model)`, in the order they will run):
    each goes to the server that will be free first among those that can run it (at a tie,
    one that holds its model), and waits until then; that server is then busy for the job's
    work, plus its load when the job swaps the server's model. One server: what is left of
    the running job plus every job ahead, a load charged once per swap along the order."""
    waits: list[int] = []
    for index, (work_ms, load_ms, model) in enumerate(jobs):
        able = [s for s in servers if can_run(s, index)] or servers
        server = min(
            able,
            key=lambda s: (s.free_at_ms, not (s.loaded and s.loaded.lower() == model.lower())),
        )
        waits.append(max(0, server.free_at_ms))
        swap = not (server.loaded and server.loaded.lower() == model.lower())
        server.free_at_ms = max(0, server.free_at_ms) + work_ms + (load_ms if swap else 0)
        server.loaded = model
    return waits


def _int(value: Any) -> int:
    return value if isinstance(value, int) and not isinstance(value, bool) else 0
