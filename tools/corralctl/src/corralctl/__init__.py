"""corralctl: the operator's command line for a Corral cluster.

A thin client of the gateway's HTTP API (`/health`, `/admin/*`, `/sessions`, Ollama's model
routes): every command is one or two requests, shown as a table, or as the server's JSON with
`--json`. It imports no Corral package, so it can be installed wherever an operator works.
"""
