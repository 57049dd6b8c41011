"""`sessions list|export|import|delete|clear`: conversations, over the gateway's `/sessions`
routes (an admin key sees everyone's; a user key its own) and `DELETE /admin/sessions`."""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

from corralctl.client import Gateway, segment
from corralctl.outcome import Outcome, UsageError, listed
from corralctl.tables import moment

CLEAR_CONFIRMATION = "delete-all-sessions"


def register(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    sessions = commands.add_parser("sessions", help="conversations").add_subparsers(
        dest="action", required=True, metavar="ACTION"
    )
    listing = sessions.add_parser("list", help="sessions, most recent first")
    listing.add_argument("--limit", type=int, default=20, help="how many (1-500)")
    listing.add_argument("--offset", type=int, default=0)
    listing.add_argument("--archived", action="store_true", help="the archived ones")
    listing.set_defaults(run=sessions_list)
    export = sessions.add_parser("export", help="a session with every turn, as JSON")
    export.add_argument("session_id", metavar="ID")
    export.add_argument("-o", "--output", type=Path, help="write it here (default: stdout)")
    export.set_defaults(run=sessions_export)
    restore = sessions.add_parser("import", help="restore an export (idempotent by turn id)")
    restore.add_argument(
        "file",
        metavar="FILE",
        type=argparse.FileType("r", encoding="utf-8"),
        help="an export's JSON, or - for stdin",
    )
    restore.set_defaults(run=sessions_import)
    delete = sessions.add_parser("delete", help="delete a session and its turns")
    delete.add_argument("session_id", metavar="ID")
    delete.set_defaults(run=sessions_delete)
    clear = sessions.add_parser("clear", help="delete every session and turn")
    clear.add_argument(
        "--confirm",
        required=True,
        metavar=CLEAR_CONFIRMATION,
        help=f"must be exactly {CLEAR_CONFIRMATION}",
    )
    clear.set_defaults(run=sessions_clear)


def sessions_list(gateway: Gateway, args: argparse.Namespace) -> Outcome:
    params = {"limit": str(args.limit), "offset": str(args.offset)}
    if args.archived:
        params["archived"] = "true"
    answer: dict[str, Any] = gateway.call("GET", "/sessions", params=params)
    first = int(answer.get("offset") or args.offset)
    return listed(
        answer,
        "sessions",
        [
            ("ID", lambda s: s.get("session_id")),
            ("TITLE", lambda s: s.get("title")),
            ("MESSAGES", lambda s: s.get("message_count")),
            ("MODELS", lambda s: s.get("models")),
            ("LAST ACTIVITY", lambda s: moment(s.get("last_activity"))),
        ],
        "no sessions",
        lambda shown: f"{first + 1}-{first + len(shown)} of {answer.get('total')}",
    )


def sessions_export(gateway: Gateway, args: argparse.Namespace) -> Outcome:
    """The export as the gateway sends it; to a file with `-o` (then a line says so)."""
    exported: dict[str, Any] = gateway.call("GET", f"/sessions/{segment(args.session_id)}/export")
    text = json.dumps(exported, indent=2, ensure_ascii=False)
    if args.output is None:
        # The export is the output, in both modes: it is the file `import` reads.
        return Outcome(exported, text)
    args.output.write_text(text + "\n", encoding="utf-8")
    summary = {
        "session_id": args.session_id,
        "file": str(args.output),
        "turns": exported.get("turn_count"),
    }
    return Outcome(
        summary,
        f"exported session {args.session_id} ({exported.get('turn_count')} turns) to {args.output}",
    )


def sessions_import(gateway: Gateway, args: argparse.Namespace) -> Outcome:
    with args.file as source:
        raw = source.read()
    try:
        export = json.loads(raw)
    except ValueError as exc:
        raise UsageError(f"{args.file.name} is not JSON: {exc}") from None
    if not isinstance(export, dict):
        raise UsageError(f"{args.file.name} is not a session export (a JSON object)")
    answer: dict[str, Any] = gateway.call("POST", "/sessions/import", body=export)
    made = "created" if answer.get("created") else "updated"
    return Outcome(
        answer,
        f"imported session {answer.get('session_id')} ({made}): "
        f"{answer.get('turns_imported')} turns imported, "
        f"{answer.get('turns_skipped')} already there",
    )


def sessions_delete(gateway: Gateway, args: argparse.Namespace) -> Outcome:
    answer: dict[str, Any] = gateway.call("DELETE", f"/sessions/{segment(args.session_id)}")
    return Outcome(
        answer, f"deleted session {args.session_id} ({answer.get('turns_deleted')} turns)"
    )


def sessions_clear(gateway: Gateway, args: argparse.Namespace) -> Outcome:
    answer: dict[str, Any] = gateway.call(
        "DELETE", "/admin/sessions", params={"confirm": args.confirm}
    )
    return Outcome(
        answer,
        f"deleted {answer.get('sessions_deleted')} sessions ({answer.get('turns_deleted')} turns)",
    )
