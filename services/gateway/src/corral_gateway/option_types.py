"""`options` values checked as Ollama checks them (`Options.FromMap`, api/types.go).

Ollama decodes `options` as a free-form map and only types its values when it schedules the
model (`scheduleRunner` -> `modelOptions` -> `FromMap`): a value of the wrong JSON kind for a
known option is refused with `option "<name>" must be of type <type>`, which
`handleScheduleError` answers **500**; unknown keys are ignored (Corral's own extensions in
`options` among them). Corral answers the same at the edge instead of after a wait in the lane,
and so that nothing downstream mistakes such a value for a setting: before this, the
scheduler's load guard replaced a `num_ctx: "8192"` or `true` by the loaded context and the
request succeeded where Ollama refuses it.

What FromMap takes, by the Go field's kind: an int option any JSON number (a fraction is cut
off: `int64(t)`), never a bool or a string (Python's bool being an int does not make `true` a
number here); a float32 option any number; a bool option a bool; `stop` an array of strings.
`null` leaves the option unset. Ollama never reaches FromMap for its unload idiom (a chat
without messages or a generate without a prompt, with `keep_alive: 0`), so that is not checked.
"""

from __future__ import annotations

import re
from typing import Any, Literal

OptionKind = Literal["integer", "float32", "boolean", "strings"]

# api.Options and its embedded api.Runner, by JSON name.
OPTION_KINDS: dict[str, OptionKind] = {
    "num_keep": "integer",
    "seed": "integer",
    "num_predict": "integer",
    "top_k": "integer",
    "top_p": "float32",
    "min_p": "float32",
    "typical_p": "float32",
    "repeat_last_n": "integer",
    "temperature": "float32",
    "repeat_penalty": "float32",
    "presence_penalty": "float32",
    "frequency_penalty": "float32",
    "stop": "strings",
    "num_ctx": "integer",
    "num_batch": "integer",
    "num_gpu": "integer",
    "main_gpu": "integer",  # *int
    "use_mmap": "boolean",  # *bool
    "num_thread": "integer",
    "draft_num_predict": "integer",
}

# The requests whose handler schedules the model with the request's options.
CHECKED_KINDS = frozenset({"chat", "generate", "embed", "embeddings"})

_DURATION_PART = re.compile(r"(\d+(?:\.\d*)?|\.\d+)(ns|us|µs|ms|s|m|h)")
_UNIT_NS = {"ns": 1, "us": 1e3, "µs": 1e3, "ms": 1e6, "s": 1e9, "m": 60e9, "h": 3600e9}


def option_refusal(body: dict[str, Any], kind: str) -> str | None:
    """Ollama's refusal of `body`'s options for a request of `kind` (a validation.REQUEST_TYPES
    key), None when it takes them (always for other kinds and the unload idiom). Several bad
    options: Go's map order is random, so Ollama names any one of them; Corral the first sent."""
    options = body.get("options")
    if kind not in CHECKED_KINDS or not isinstance(options, dict) or _unloads(body, kind):
        return None
    for key, value in options.items():
        option_kind = OPTION_KINDS.get(key)
        if option_kind is None or value is None:
            continue
        message = _refusal(key, value, option_kind)
        if message is not None:
            return message
    return None


def _refusal(key: str, value: Any, kind: OptionKind) -> str | None:
    name = f'option "{key}"'  # Go's %q of a plain ASCII name
    number = isinstance(value, int | float) and not isinstance(value, bool)
    if kind == "integer" and not number:
        return f"{name} must be of type integer"
    if kind == "float32" and not number:
        return f"{name} must be of type float32"
    if kind == "boolean" and not isinstance(value, bool):
        return f"{name} must be of type boolean"
    if kind == "strings":
        if not isinstance(value, list):
            return f"{name} must be of type array"
        if not all(isinstance(item, str) for item in value):
            return f"{name} must be of an array of strings"
    return None


def _unloads(body: dict[str, Any], kind: str) -> bool:
    """Ollama's unload idiom, answered before the options are read (ChatHandler,
    GenerateHandler: `len(req.Messages) == 0` / `req.Prompt == ""` and a zero keep_alive)."""
    if kind == "chat":
        empty = not body.get("messages")
    elif kind == "generate":
        empty = not body.get("prompt")
    else:
        return False
    return empty and _zero_duration(body.get("keep_alive"))


def _zero_duration(value: Any) -> bool:
    """api.Duration is zero: a number of seconds under a nanosecond (negative is forever), or
    a Go duration string adding up to under one."""
    if isinstance(value, bool):
        return False
    if isinstance(value, int | float):
        return 0 <= value * 1e9 < 1
    if not isinstance(value, str):
        return False
    text = value.lstrip("+-")
    if text == "0":
        return True
    parts = _DURATION_PART.findall(text)
    if not parts or "".join(number + unit for number, unit in parts) != text:
        return False
    return sum(float(number) * _UNIT_NS[unit] for number, unit in parts) < 1
