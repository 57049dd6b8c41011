"""Identity at the edge: who is calling (API keys, or the client's address with auth off),
what each route asks of them, their rate limits and quotas, and the audit of admin actions.
docs/security.md states the threat model.

- `principal`: the `Caller` every handler reads (`caller_of`), and the routes' `Access` levels.
- `gate`: the `Gatekeeper` every surface route passes (surfaces.py): authentication, scope,
  request rate limits with their headers, failed-authentication refusals, the audit record.
- `credentials`: the key a request presents; `addresses`: the client's address behind trusted
  proxies; `key_cache`: resolved keys remembered briefly, evicted on `KeyChanged`.
- `limits`: request-rate and failed-authentication arithmetic; `quotas`: generated-token quotas
  (checked and charged by the job ticket).
- `directory`: the session store's `IDENTITY` methods behind one interface (`KeyDirectory`).
- `exposure`: the startup checks (no keys beyond loopback, the operator key's length).
- `metrics`: `corral_auth_failures_total`, `corral_rate_limited_total` and their kin.
"""
