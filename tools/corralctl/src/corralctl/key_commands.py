"""`keys list|create|show|revoke` and `audit`: API keys and the audit log of admin actions, over
`/admin/keys` and `/admin/audit` (an admin key; with `CORRAL_AUTH=off` anyone on loopback)."""

from __future__ import annotations

import argparse
from typing import Any

from corralctl.client import Gateway, segment
from corralctl.outcome import Outcome, listed
from corralctl.tables import fields, moment

LIMITS = ("requests_per_minute", "tokens_per_minute", "tokens_per_day", "max_queued")
PRIORITIES = ("interactive", "normal", "batch")


def register(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    keys = commands.add_parser("keys", help="API keys").add_subparsers(
        dest="action", required=True, metavar="ACTION"
    )
    listing = keys.add_parser("list", help="the keys, newest first (never their secrets)")
    listing.add_argument("--all", action="store_true", help="revoked keys too")
    listing.add_argument("--limit", type=int, default=100, help="how many (1-500)")
    listing.set_defaults(run=keys_list)
    create = keys.add_parser("create", help="create a key (shown this once)")
    create.add_argument(
        "--scope", choices=("user", "admin"), default="user", help="default: %(default)s"
    )
    create.add_argument("--label", help="what it is for (shown in lists)")
    create.add_argument(
        "--owner",
        help="whose it is: keys of one owner share conversations, limits and queue turn "
        "(default: the key is its own owner)",
    )
    create.add_argument(
        "--expires", help="when it stops working: an RFC 3339 time (2030-01-31T00:00:00Z)"
    )
    create.add_argument(
        "--max-priority", choices=PRIORITIES, help="the highest priority its requests may ask"
    )
    create.add_argument(
        "--limit",
        dest="limits",
        action="append",
        default=[],
        metavar="NAME=N",
        help=f"a limit of its own ({', '.join(LIMITS)}; 0 = none); repeatable",
    )
    create.set_defaults(run=keys_create)
    show = keys.add_parser("show", help="one key")
    show.add_argument("key_id", metavar="KEY_ID")
    show.set_defaults(run=keys_show)
    revoke = keys.add_parser("revoke", help="revoke a key (refused everywhere within seconds)")
    revoke.add_argument("key_id", metavar="KEY_ID")
    revoke.set_defaults(run=keys_revoke)

    audit = commands.add_parser("audit", help="the audit log of admin actions, newest first")
    audit.add_argument("--actor", help="one key's actions (its id, or `operator`)")
    audit.add_argument("--limit", type=int, default=50, help="how many (1-500)")
    audit.set_defaults(run=audit_list)


def limits_of(pairs: list[str]) -> dict[str, int]:
    """`--limit requests_per_minute=60` as the body's `limits`; argparse reports a bad one."""
    limits: dict[str, int] = {}
    for pair in pairs:
        name, sep, value = pair.partition("=")
        if not sep or name not in LIMITS or not value.isdigit():
            raise argparse.ArgumentTypeError(
                f"--limit {pair!r}: use NAME=N with NAME one of {', '.join(LIMITS)}"
            )
        limits[name] = int(value)
    return limits


def keys_list(gateway: Gateway, args: argparse.Namespace) -> Outcome:
    params = {"limit": str(args.limit)}
    if args.all:
        params["include_revoked"] = "true"
    answer: dict[str, Any] = gateway.call("GET", "/admin/keys", params=params)
    return listed(
        answer,
        "keys",
        [
            ("ID", lambda k: k.get("id")),
            ("PREFIX", lambda k: k.get("prefix")),
            ("SCOPE", lambda k: k.get("scope")),
            ("LABEL", lambda k: k.get("label")),
            ("OWNER", lambda k: k.get("owner")),
            ("CREATED", lambda k: moment(k.get("created_at"))),
            ("EXPIRES", lambda k: moment(k.get("expires_at"))),
            ("REVOKED", lambda k: moment(k.get("revoked_at"))),
        ],
        "no keys",
        lambda keys: f"{len(keys)} of {answer.get('total')}",
    )


def keys_create(gateway: Gateway, args: argparse.Namespace) -> Outcome:
    body: dict[str, Any] = {"scope": args.scope}
    optional = {
        "label": args.label,
        "owner": args.owner,
        "expires_at": args.expires,
        "max_priority": args.max_priority,
    }
    body.update({name: value for name, value in optional.items() if value is not None})
    if args.limits:
        body["limits"] = limits_of(args.limits)
    made: dict[str, Any] = gateway.call("POST", "/admin/keys", body=body)
    text = f"{made.get('key')}\n\n{_key_fields(made)}\n\nThe key is shown only this once."
    return Outcome(made, text)


def keys_show(gateway: Gateway, args: argparse.Namespace) -> Outcome:
    key: dict[str, Any] = gateway.call("GET", f"/admin/keys/{segment(args.key_id)}")
    return Outcome(key, _key_fields(key))


def keys_revoke(gateway: Gateway, args: argparse.Namespace) -> Outcome:
    key: dict[str, Any] = gateway.call("DELETE", f"/admin/keys/{segment(args.key_id)}")
    return Outcome(key, f"revoked {key.get('id')} at {moment(key.get('revoked_at'))}")


def audit_list(gateway: Gateway, args: argparse.Namespace) -> Outcome:
    params = {"limit": str(args.limit)}
    if args.actor:
        params["actor"] = args.actor
    answer: dict[str, Any] = gateway.call("GET", "/admin/audit", params=params)
    return listed(
        answer,
        "entries",
        [
            ("AT", lambda e: moment(e.get("at"))),
            ("ACTOR", lambda e: e.get("actor")),
            ("ACTION", lambda e: e.get("action")),
            ("TARGET", lambda e: e.get("target")),
            ("STATUS", lambda e: e.get("status")),
        ],
        "no audited actions",
    )


def _key_fields(key: dict[str, Any]) -> str:
    limits = {k: v for k, v in (key.get("limits") or {}).items() if v is not None}
    return fields(
        [
            ("id", key.get("id")),
            ("prefix", key.get("prefix")),
            ("scope", key.get("scope")),
            ("label", key.get("label")),
            ("owner", key.get("owner")),
            ("created", moment(key.get("created_at"))),
            ("created by", key.get("created_by")),
            ("expires", moment(key.get("expires_at"))),
            ("revoked", moment(key.get("revoked_at"))),
            ("max priority", key.get("max_priority")),
            ("limits", ", ".join(f"{k}={v}" for k, v in limits.items()) or "defaults"),
        ]
    )
