"""Startup checks: a gateway without keys serves only this machine, unless told otherwise.

`check_exposure` runs before the gateway listens. It refuses (ExposureError, a message saying
what to change) to serve without keys on an address other than loopback unless
`CORRAL_ALLOW_OPEN=1`, an operator key shorter than 32 characters, and trusted proxies it
cannot read; it returns the warnings to log (serving open on purpose, auth on without an
operator key).
"""

from __future__ import annotations

from corral_common.api_keys import MIN_OPERATOR_KEY_LENGTH
from corral_gateway.host_check import bound_to_loopback
from corral_gateway.identity.addresses import TrustedProxies
from corral_gateway.settings import GatewaySettings


class ExposureError(Exception):
    """The settings would expose the gateway; the message says what to change."""


def operator_key(settings: GatewaySettings) -> str | None:
    """`CORRAL_ADMIN_KEY`, None when unset or empty."""
    if settings.admin_key is None:
        return None
    return settings.admin_key.get_secret_value() or None


def check_exposure(settings: GatewaySettings) -> list[str]:
    """The warnings to log at startup; ExposureError when the gateway must not start."""
    key = operator_key(settings)
    if key is not None and len(key) < MIN_OPERATOR_KEY_LENGTH:
        raise ExposureError(
            f"CORRAL_ADMIN_KEY is {len(key)} characters long; it must have at least "
            f"{MIN_OPERATOR_KEY_LENGTH} (for example the output of "
            "`python -c 'import secrets; print(secrets.token_urlsafe(32))'`)"
        )
    try:
        TrustedProxies.parse(settings.trusted_proxies)
    except ValueError as exc:
        raise ExposureError(str(exc)) from None
    warnings: list[str] = []
    host = settings.gateway_host
    if settings.auth == "off":
        if not bound_to_loopback(host):
            if not settings.allow_open:
                raise ExposureError(
                    f"CORRAL_AUTH=off while binding {host!r}, which is not a loopback address: "
                    "anyone who can reach it could use it without a key. Set CORRAL_AUTH=on "
                    "(with CORRAL_ADMIN_KEY to create keys), or bind 127.0.0.1, or set "
                    "CORRAL_ALLOW_OPEN=1 to serve without keys anyway"
                )
            warnings.append(
                f"serving without API keys on {host!r} (CORRAL_AUTH=off, CORRAL_ALLOW_OPEN=1): "
                "every caller can use every route, admin routes included"
            )
        if key is not None:
            warnings.append("CORRAL_ADMIN_KEY is set but CORRAL_AUTH=off: no key is checked")
    elif key is None:
        warnings.append(
            "CORRAL_AUTH=on without CORRAL_ADMIN_KEY: only keys already stored work. To create "
            "keys, set CORRAL_ADMIN_KEY to a random string of 32+ characters (`make run` "
            "generates one under the data dir) and POST /admin/keys with it"
        )
    return warnings
