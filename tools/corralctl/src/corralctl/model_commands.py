"""`models list|pulls|pull|load|unload|delete`: the backend's models, over Ollama's routes
(`/api/tags`, `/api/ps`, `/api/pull`, `/api/delete`) and the `/admin/models` lane jobs."""

from __future__ import annotations

import argparse
import json
import sys
from typing import Any
from urllib.parse import quote

from corralctl.client import ApiError, Gateway
from corralctl.outcome import Outcome, listed
from corralctl.progress import PullProgress
from corralctl.tables import millis, moment, size, table

NS_PER_MS = 1_000_000


def register(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    models = commands.add_parser("models", help="the backend's models").add_subparsers(
        dest="action", required=True, metavar="ACTION"
    )
    models.add_parser("list", help="the models pulled, and which are loaded").set_defaults(
        run=models_list
    )
    models.add_parser("pulls", help="running and recent pulls").set_defaults(run=models_pulls)
    pull = models.add_parser("pull", help="pull a model, with a progress bar")
    pull.add_argument("name", metavar="NAME")
    pull.set_defaults(run=models_pull)
    load = models.add_parser("load", help="warm a model up (through the lane)")
    load.add_argument("name", metavar="NAME")
    load.add_argument("--keep-alive", help="how long it stays loaded (e.g. 10m, 1h, -1)")
    load.set_defaults(run=models_load)
    unload = models.add_parser("unload", help="unload a model (through the lane)")
    unload.add_argument("name", metavar="NAME")
    unload.add_argument(
        "--force", action="store_true", help="even while requests for it are queued"
    )
    unload.set_defaults(run=models_unload)
    delete = models.add_parser("delete", help="delete a model from the backend")
    delete.add_argument("name", metavar="NAME")
    delete.set_defaults(run=models_delete)


def models_list(gateway: Gateway, args: argparse.Namespace) -> Outcome:
    tags: dict[str, Any] = gateway.call("GET", "/api/tags")
    running: dict[str, Any] = gateway.call("GET", "/api/ps")
    loaded = {str(m.get("name")): m for m in running.get("models") or []}
    rows = []
    for model in tags.get("models") or []:
        details = model.get("details") or {}
        live = loaded.get(str(model.get("name")))
        rows.append(
            [
                model.get("name"),
                size(model.get("size")),
                details.get("parameter_size"),
                details.get("quantization_level"),
                moment(model.get("modified_at")),
                f"until {moment(live.get('expires_at'))}" if live else "",
            ]
        )
    text = (
        table(["NAME", "SIZE", "PARAMS", "QUANT", "MODIFIED", "LOADED"], rows)
        if rows
        else "no models pulled"
    )
    return Outcome({"models": tags.get("models") or [], "loaded": running.get("models")}, text)


def models_pulls(gateway: Gateway, args: argparse.Namespace) -> Outcome:
    answer: dict[str, Any] = gateway.call("GET", "/admin/pulls")
    return listed(
        answer,
        "pulls",
        [
            ("MODEL", lambda p: p.get("model")),
            ("STATE", lambda p: p.get("state")),
            ("STATUS", lambda p: p.get("status")),
            ("DONE", _percent),
            ("UPDATED", lambda p: moment(p.get("updated_at"))),
            ("ERROR", lambda p: p.get("error")),
        ],
        "no pulls",
    )


def _percent(pull: dict[str, Any]) -> str | None:
    percent = pull.get("percent")
    return f"{percent:.0f}%" if isinstance(percent, int | float) else None


def models_pull(gateway: Gateway, args: argparse.Namespace) -> Outcome:
    """Ollama's streamed pull. With `--json` its progress lines go to stdout as they come
    (NDJSON); otherwise a bar per layer on stderr, and `pulled NAME` at the end."""
    progress = None if args.json else PullProgress(sys.stderr, live=sys.stderr.isatty())
    last: dict[str, Any] = {}
    try:
        for line in gateway.lines("POST", "/api/pull", {"model": args.name, "stream": True}):
            last = line
            if progress is None:
                print(json.dumps(line), flush=True)
            else:
                progress.update(line)
    finally:
        if progress is not None:
            progress.close()
    if last.get("status") != "success":
        # The stream ended without Ollama's last word (the gateway or backend went away).
        raise ApiError(
            200, f"the pull of {args.name} ended before success (last: {last.get('status')})"
        )
    return Outcome(None, f"pulled {args.name}")


def models_load(gateway: Gateway, args: argparse.Namespace) -> Outcome:
    params = {"keep_alive": args.keep_alive} if args.keep_alive else None
    answer: dict[str, Any] = gateway.call(
        "POST", f"/admin/models/{_path(args.name)}/load", params=params
    )
    return Outcome(answer, _operated(answer, "loaded"))


def models_unload(gateway: Gateway, args: argparse.Namespace) -> Outcome:
    params = {"force": "true"} if args.force else None
    answer: dict[str, Any] = gateway.call(
        "POST", f"/admin/models/{_path(args.name)}/unload", params=params
    )
    return Outcome(answer, _operated(answer, "unloaded"))


def models_delete(gateway: Gateway, args: argparse.Namespace) -> Outcome:
    gateway.call("DELETE", "/api/delete", body={"model": args.name})
    return Outcome({"model": args.name, "deleted": True}, f"deleted {args.name}")


def _operated(answer: dict[str, Any], done: str) -> str:
    text = f"{done} {answer.get('model')}"
    load_ns = answer.get("load_duration")
    if isinstance(load_ns, int) and load_ns > 0:
        text += f" in {millis(load_ns / NS_PER_MS)}"
    return text + f" (waited {millis(answer.get('waited_ms'))} in the lane)"


def _path(name: str) -> str:
    # A name may hold `/` and `:` (`namespace/model:tag`): the route takes both as they are.
    return quote(name, safe="/:")
