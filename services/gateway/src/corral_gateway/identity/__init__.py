"""Identity at the edge: who is calling (API keys, or the client's address with auth off),
what each route asks of them, their rate limits and quotas, and the audit of admin actions.
docs/security.md states the threat model."""
