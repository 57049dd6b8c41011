"""Wait estimates from the backend's own measurements.

Each finished job reports `prompt_eval_count/duration`, `eval_count/duration`,
`load_duration` and `done_reason`; we keep an exponentially weighted speed per model and price
every queued job as load (if its model is not the loaded one) + prompt evaluation +
generation.

The reply's length is the largest unknown in a price. Each model keeps its recent reply lengths,
those cut off at their `num_predict` (`done_reason` "length") marked as such: a cut reply only
says the natural one would have been at least that long. The expected length of a reply capped
at `c` is E[min(L, c)] under the Kaplan-Meier estimate of the length's distribution, which takes
those cut replies into account instead of reading them as short ones (a mean of everything seen
would price an uncapped reply at the length of the capped ones around it). Where the finished
jobs' prompt lengths are known and replies follow them more closely than they vary on their own
(by the spread of their logarithms: a model asked to translate or repeat), the distribution is
of reply tokens per prompt character instead, scaled by each job's prompt.

Before a model has finished a job it borrows from the models that have (the same backend), and
before any has, it is priced on the priors, corrected by what the running job shows as it
streams (`SpeedBook.observe_live`): the time to its first token and its token rate.
"""

from __future__ import annotations

import bisect
import math
from collections import deque
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING, Any

from corral_common.messages import STREAMED_KINDS, JobKind
from corral_common.model_names import same_model
from corral_common.ollama_shapes import Metrics

if TYPE_CHECKING:
    from corral_scheduler.settings import SchedulerSettings

NS_PER_MS = 1_000_000
# Below this a reported load_duration is the backend touching an already-loaded model.
REAL_LOAD_MS = 50.0
CHARS_PER_TOKEN = 4.0
# Reply lengths kept per model for the length distribution.
REPLY_WINDOW = 64
# Replies with a known prompt length (not cut) needed before lengths may be read per prompt
# character, and how much less they must spread that way (variance of the logarithms).
PER_CHAR_MIN_REPLIES = 4
PER_CHAR_SPREAD = 0.5
# A model's own replies make its length distribution from this many on; before, every
# model's replies pooled (the length of a reply is more the workload's than the model's).
OWN_REPLIES = 8
# A live token rate is trusted from this many generated tokens on.
LIVE_MIN_TOKENS = 5
# A running job's live figures replace the ones before only when they moved this much (each
# change re-prices the queue).
LIVE_CHANGE = 0.1


@dataclass
class ModelSpeed:
    prompt_tokens_per_s: float
    eval_tokens_per_s: float
    load_ms: float
    eval_count: float
    samples: int = 0
    # Prompt characters per prompt token, as the backend counted them (learned when the
    # finished job's prompt length is known).
    chars_per_token: float = CHARS_PER_TOKEN


@dataclass(frozen=True)
class Reply:
    """One finished reply's length; `cut` when it stopped at its `num_predict`."""

    tokens: int
    cut: bool
    # The job's prompt length, when known (0: not).
    prompt_chars: int = 0


def estimate_prompt_tokens(prompt_chars: int, chars_per_token: float = CHARS_PER_TOKEN) -> int:
    return max(1, round(prompt_chars / chars_per_token))


class ReplyLengths:
    """Kaplan-Meier estimate of a reply length's distribution from replies some of which were
    cut off at their cap (right-censored)."""

    def __init__(self, replies: Iterable[Reply], per_char: bool = False) -> None:
        # The survival curve as steps: S(t) = survival[i] for times[i-1] <= t < times[i]
        # (times[-1] = 0 before the first), i.e. P(L > t).
        self.times: list[float] = []
        self.survival: list[float] = []
        # In tokens, or in tokens per prompt character (`per_char`).
        self.per_char = per_char
        values = [
            (r.tokens / r.prompt_chars if per_char else float(r.tokens), r.cut)
            for r in replies
            if r.prompt_chars > 0 or not per_char
        ]
        ordered = sorted(values)
        at_risk = len(ordered)
        alive = 1.0
        index = 0
        while index < len(ordered):
            length = ordered[index][0]
            ended = cut = 0
            while index < len(ordered) and ordered[index][0] == length:
                if ordered[index][1]:
                    cut += 1
                else:
                    ended += 1
                index += 1
            if ended:
                alive *= 1 - ended / at_risk
                self.times.append(float(length))
                self.survival.append(alive)
            at_risk -= ended + cut
        # Beyond the longest reply seen nothing is known: a curve still above 0 there (the
        # longest were cut) is cut off at the longest cut reply.
        self.longest = float(ordered[-1][0]) if ordered else 0.0

    def alive_at(self, t: float) -> float:
        """P(L > t)."""
        index = bisect.bisect_right(self.times, t)
        return 1.0 if index == 0 else self.survival[index - 1]

    def area(self, low: float, high: float) -> float:
        """The integral of P(L > t) from `low` to `high`."""
        high = min(high, self.longest)
        if high <= low:
            return 0.0
        total = 0.0
        start = low
        for time in self.times:
            if time <= start:
                continue
            if time >= high:
                break
            total += self.alive_at(start) * (time - start)
            start = time
        return total + self.alive_at(start) * (high - start)

    def expected(self, cap: float | None, produced: float = 0.0) -> float | None:
        """E[min(L, cap) | L > produced]: the reply's expected length, given it has already
        produced that many tokens; None when the curve says nothing past `produced`."""
        limit = self.longest if cap is None else min(cap, self.longest)
        alive = self.alive_at(produced)
        if alive <= 0 or produced >= limit:
            return None
        return produced + self.area(produced, limit) / alive


@dataclass
class LiveSample:
    """What a running job of a not yet measured model has shown so far."""

    eval_tokens_per_s: float | None
    load_ms: float | None


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
        self._replies: dict[str, deque[Reply]] = {}
        self._live: dict[str, LiveSample] = {}
        # Bumped by every observation: prices computed before are stale.
        self.version = 0
        self._lengths: dict[str | None, ReplyLengths] = {}
        self._replies_expected: dict[tuple[str, int | None, int], float] = {}

    @classmethod
    def from_settings(cls, settings: SchedulerSettings) -> SpeedBook:
        """A book that starts from the configured priors (`CORRAL_PRIOR_*`)."""
        return cls(
            prompt_tokens_per_s=settings.prior_prompt_tokens_per_s,
            eval_tokens_per_s=settings.prior_eval_tokens_per_s,
            load_ms=settings.prior_load_ms,
            eval_count=settings.prior_eval_count,
        )

    def speed(self, model: str) -> ModelSpeed:
        """The model's measured speed; else the measured models' average (the same backend);
        else the priors, with what a running job has shown in place of them."""
        key = model.lower()
        known = self._models.get(key)
        if known is not None:
            return known
        if self._models:
            measured = list(self._models.values())

            def mean(name: str) -> float:
                return float(sum(getattr(m, name) for m in measured)) / len(measured)

            return replace(
                self._prior,
                prompt_tokens_per_s=mean("prompt_tokens_per_s"),
                eval_tokens_per_s=mean("eval_tokens_per_s"),
                load_ms=mean("load_ms"),
                eval_count=mean("eval_count"),
                chars_per_token=mean("chars_per_token"),
            )
        live = self._live.get(key) or next(iter(self._live.values()), None)
        if live is None:
            return self._prior
        return replace(
            self._prior,
            eval_tokens_per_s=live.eval_tokens_per_s or self._prior.eval_tokens_per_s,
            load_ms=self._prior.load_ms if live.load_ms is None else live.load_ms,
        )

    def measured(self, model: str) -> bool:
        return model.lower() in self._models

    def observe(
        self, model: str, final: Metrics | Mapping[str, object], prompt_chars: int | None = None
    ) -> None:
        """Fold one finished job's timings into the model's running averages: a final chunk's
        `Metrics`, or any mapping of the same fields (the benchmarks replay recorded ones); each
        is read only when it is an int."""
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
        if prompt_count > 0 and prompt_chars:
            current.chars_per_token = blend(current.chars_per_token, prompt_chars / prompt_count)
        eval_count = _int(final.get("eval_count"))
        eval_ns = _int(final.get("eval_duration"))
        if eval_count > 0 and eval_ns > 0:
            current.eval_tokens_per_s = blend(
                current.eval_tokens_per_s, eval_count / (eval_ns / 1e9)
            )
        if eval_count > 0:
            current.eval_count = blend(current.eval_count, float(eval_count))
            replies = self._replies.setdefault(key, deque(maxlen=REPLY_WINDOW))
            replies.append(
                Reply(eval_count, final.get("done_reason") == "length", prompt_chars or 0)
            )
        load_ms = _int(final.get("load_duration")) / NS_PER_MS
        if load_ms >= REAL_LOAD_MS:
            current.load_ms = blend(current.load_ms, load_ms)
        current.samples += 1
        self._live.pop(key, None)
        self._changed()

    def observe_live(
        self,
        model: str,
        *,
        first_token_ms: float | None,
        tokens: int,
        generating_ms: float,
        prompt_chars: int,
        loaded: bool,
    ) -> None:
        """A running job of a model not measured yet, as far as it got: `first_token_ms` from
        its start to its first token (a load, when it was not `loaded`, and its prompt),
        `tokens` generated over `generating_ms` since. Stands in for the priors until a job of
        the model finishes; ignored for a measured model."""
        key = model.lower()
        if key in self._models:
            return
        rate = None
        if tokens >= LIVE_MIN_TOKENS and generating_ms > 0:
            rate = (tokens - 1) / (generating_ms / 1000)
        load = None
        if first_token_ms is not None and not loaded:
            prompt_ms = (
                1000.0 * estimate_prompt_tokens(prompt_chars) / self._prior.prompt_tokens_per_s
            )
            load = max(0.0, first_token_ms - prompt_ms)
        before = self._live.get(key) or LiveSample(None, None)
        sample = LiveSample(
            eval_tokens_per_s=_moved(before.eval_tokens_per_s, rate),
            load_ms=_moved(before.load_ms, load),
        )
        if sample != before:
            self._live[key] = sample
            self._changed()

    def _changed(self) -> None:
        self.version += 1
        self._lengths.clear()
        self._replies_expected.clear()

    def lengths(self, model: str) -> ReplyLengths | None:
        """The model's reply length distribution: of its own replies once it has OWN_REPLIES,
        else of every model's; per prompt character where every model's replies follow their
        prompts (`per_char_fits`). None before any reply."""
        key: str | None = model.lower()
        if len(self._replies.get(model.lower(), ())) < OWN_REPLIES:
            key = None
        if key not in self._lengths:
            pooled = [r for replies in self._replies.values() for r in replies]
            replies = pooled if key is None else list(self._replies[key])
            self._lengths[key] = ReplyLengths(replies, per_char=per_char_fits(pooled))
        found = self._lengths[key]
        return found if found.longest > 0 else None

    def reply_tokens(
        self, model: str, num_predict: int | None, produced: int = 0, prompt_chars: int = 0
    ) -> float:
        """The expected length of a reply capped at `num_predict` (None or <= 0: no cap), given
        `produced` tokens so far, to a prompt of `prompt_chars`."""
        cap = num_predict if num_predict is not None and num_predict > 0 else None
        lengths = self.lengths(model)
        per_char = lengths is not None and lengths.per_char
        cache_key = (model.lower(), cap, prompt_chars if per_char else 0)
        if produced == 0:
            cached = self._replies_expected.get(cache_key)
            if cached is not None:
                return cached
        expected = None
        if lengths is not None and not per_char:
            expected = lengths.expected(cap, produced)
        elif lengths is not None:
            scale = float(max(prompt_chars, 1))
            per = lengths.expected(None if cap is None else cap / scale, produced / scale)
            expected = None if per is None else per * scale
        if expected is None:
            # Nothing measured (or a reply past every one seen): lengths taken as exponential
            # with the mean reply length (what knowing only a mean says), so a cap counts by
            # the chance of reaching it, and a reply under way has as much again ahead.
            mean = max(self.speed(model).eval_count, 1.0)
            if cap is None:
                expected = produced + mean
            elif produced >= cap:
                expected = float(cap)
            else:
                expected = produced + mean * -math.expm1(-(cap - produced) / mean)
        expected = max(expected, float(produced))
        if produced == 0:
            self._replies_expected[cache_key] = expected
        return expected

    def load_ms(self, model: str, kind: JobKind = "chat") -> int:
        """What loading `model` costs, by its measured loads (nothing for an unload)."""
        return 0 if kind == "unload" else round(self.speed(model).load_ms)

    def prompt_ms(self, model: str, prompt_chars: int) -> float:
        speed = self.speed(model)
        tokens = estimate_prompt_tokens(prompt_chars, speed.chars_per_token)
        return 1000.0 * tokens / speed.prompt_tokens_per_s

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
        total += self.prompt_ms(model, prompt_chars)
        if kind in STREAMED_KINDS:
            tokens = self.reply_tokens(model, num_predict, prompt_chars=prompt_chars)
            total += 1000.0 * tokens / speed.eval_tokens_per_s
        return round(total)

    def remaining_ms(
        self, model: str, num_predict: int | None, produced: int, prompt_chars: int = 0
    ) -> int:
        """What is left of a job generating its reply, `produced` tokens in."""
        left = self.reply_tokens(model, num_predict, produced, prompt_chars) - produced
        return round(1000.0 * left / self.speed(model).eval_tokens_per_s)


@dataclass
class SimServer:
    """A server as the wait estimate plays the queue onto it."""

    name: str
    # When it will be free, from now.
    free_at_ms: int
    loaded: str | None


def grouped_order(
    models: list[str], overtaken: list[int], loaded: str | None, bound: int
) -> list[int]:
    """The order one server will run these jobs in (indices into the queue order), with the
    ordering's model grouping (ordering.Ordering._affinity): when the job due next would swap
    the model, the first job for the held model further back goes first, unless it would pass
    a job already passed `bound` times (`overtaken`, counted on as the play goes)."""
    if len(set(models)) <= 1:
        # One model throughout: nothing to group, whatever the server holds.
        return list(range(len(models)))
    remaining = list(range(len(models)))
    passed = list(overtaken)
    order: list[int] = []
    held = loaded
    while remaining:
        chosen_at = 0
        if bound > 0 and held is not None and not same_model(models[remaining[0]], held):
            for at, index in enumerate(remaining):
                if same_model(models[index], held):
                    chosen_at = at
                    break
                if passed[index] >= bound:
                    break
        for index in remaining[:chosen_at]:
            passed[index] += 1
        chosen = remaining.pop(chosen_at)
        order.append(chosen)
        held = models[chosen]
    return order


def pool_waits(
    servers: list[SimServer],
    jobs: list[tuple[int, int, str]],
    can_run: Callable[[SimServer, int], bool],
    laid: list[int] | None = None,
) -> list[int]:
    """The wait of each queued job (`(work_ms, load_ms, model)`, in the order they will run):
    each goes to the server that will be free first among those that can run it (at a tie,
    one that holds its model), and waits until then; that server is then busy for the job's
    work, plus its load when the job swaps the server's model. One server: what is left of
    the running job plus every job ahead, a load charged once per swap along the order.
    Given `laid`, the index of the server each job went to is appended to it; `servers` are
    left as the play ends (when each is free after every job), so one more job can be laid
    on without playing the others again (`lay`)."""
    if len(servers) == 1:
        return _one_server_waits(servers[0], jobs, laid)
    waits: list[int] = []
    for index, (work_ms, load_ms, model) in enumerate(jobs):
        able = [i for i, s in enumerate(servers) if can_run(s, index)] or range(len(servers))
        waits.append(lay(servers, able, work_ms, load_ms, model, laid))
    return waits


def _one_server_waits(
    server: SimServer, jobs: list[tuple[int, int, str]], laid: list[int] | None
) -> list[int]:
    """`pool_waits` for one server, which runs whatever it is given (a job it cannot run
    waits for it all the same): a running sum, a load wherever the model changes. Written out
    because it runs over the whole lane at every position round."""
    waits: list[int] = []
    free_at = server.free_at_ms
    held = server.loaded.lower() if server.loaded else None
    for work_ms, load_ms, model in jobs:
        wait = free_at if free_at > 0 else 0
        waits.append(wait)
        lowered = model.lower()
        free_at = wait + work_ms + (0 if lowered == held else load_ms)
        held = lowered or None
    if jobs:
        server.free_at_ms = free_at
        server.loaded = jobs[-1][2]
    if laid is not None:
        laid.extend([0] * len(jobs))
    return waits


def lay(
    servers: list[SimServer],
    able: Iterable[int],
    work_ms: int,
    load_ms: int,
    model: str,
    laid: list[int] | None = None,
) -> int:
    """One job laid onto the first free of `able` servers (see `pool_waits`): its wait."""
    lowered = model.lower()

    def holds(server: SimServer) -> bool:
        return bool(server.loaded) and str(server.loaded).lower() == lowered

    at = min(able, key=lambda i: (servers[i].free_at_ms, not holds(servers[i])))
    server = servers[at]
    wait = max(0, server.free_at_ms)
    swap = not holds(server)
    server.free_at_ms = wait + work_ms + (load_ms if swap else 0)
    server.loaded = model
    if laid is not None:
        laid.append(at)
    return wait


def per_char_fits(replies: Iterable[Reply]) -> bool:
    """Whether these replies' lengths follow their prompts': the finished (not cut) ones with
    a known prompt, enough of them, vary clearly less in tokens per prompt character than in
    tokens (by the variance of the logarithms: replies independent of their prompts vary
    more per character, by the prompts' own spread)."""
    whole = [r for r in replies if not r.cut and r.prompt_chars > 0 and r.tokens > 0]
    if len(whole) < PER_CHAR_MIN_REPLIES:
        return False
    absolute = _log_variance([float(r.tokens) for r in whole])
    relative = _log_variance([r.tokens / r.prompt_chars for r in whole])
    return relative < PER_CHAR_SPREAD * absolute


def _log_variance(values: list[float]) -> float:
    logs = [math.log(v) for v in values]
    mean = sum(logs) / len(logs)
    return sum((x - mean) ** 2 for x in logs) / len(logs)


def _moved(old: float | None, new: float | None) -> float | None:
    """`new` when there is one and it differs from `old` by more than LIVE_CHANGE."""
    if new is None:
        return old
    if old is None or abs(new - old) > LIVE_CHANGE * max(abs(old), 1.0):
        return new
    return old


def _int(value: Any) -> int:
    return value if isinstance(value, int) and not isinstance(value, bool) else 0
