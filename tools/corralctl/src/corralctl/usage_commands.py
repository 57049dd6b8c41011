"""`usage`: what a gateway served since it started (`GET /admin/usage`): requests, errors and
tokens in all, by model and by caller, and the session store's session counts. Per gateway
replica: with several, ask each (`--url`)."""

from __future__ import annotations

import argparse
from typing import Any

from corralctl.client import Gateway
from corralctl.outcome import Outcome
from corralctl.tables import fields, moment, seconds, table


def register(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    usage = commands.add_parser(
        "usage", help="requests, errors and tokens by model and caller (this gateway's)"
    )
    usage.set_defaults(run=usage_report)


def usage_report(gateway: Gateway, args: argparse.Namespace) -> Outcome:
    report: dict[str, Any] = gateway.call("GET", "/admin/usage")
    tokens = report.get("tokens") or {}
    sessions = report.get("sessions") or {}
    summary = fields(
        [
            ("gateway", report.get("gateway_id")),
            ("since", f"{moment(report.get('since'))} ({seconds(report.get('uptime_s'))})"),
            ("requests", report.get("requests")),
            ("errors", report.get("errors")),
            (
                "tokens",
                f"{tokens.get('total')} ({tokens.get('prompt')} prompt, "
                f"{tokens.get('generated')} generated)",
            ),
            (
                "sessions",
                f"{sessions.get('active')} active, {sessions.get('total')} in all, "
                f"{sessions.get('archived_today')} archived today"
                if sessions.get("total") is not None
                else "not counted yet",
            ),
        ]
    )
    parts = [summary]
    for title, rows in (("MODEL", report.get("by_model")), ("CALLER", report.get("by_caller"))):
        if rows:
            parts.append(_breakdown(title, rows))
    return Outcome(report, "\n\n".join(parts))


def _breakdown(title: str, rows: dict[str, dict[str, Any]]) -> str:
    return table(
        [title, "REQUESTS", "ERRORS", "PROMPT", "GENERATED", "TOKENS"],
        (
            [
                name,
                row.get("requests"),
                row.get("errors"),
                (row.get("tokens") or {}).get("prompt"),
                (row.get("tokens") or {}).get("generated"),
                (row.get("tokens") or {}).get("total"),
            ]
            for name, row in rows.items()
        ),
    )
