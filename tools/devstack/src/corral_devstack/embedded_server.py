"""The embedded model's server: llama-cpp-python's OpenAI-compatible server, started as
`python -m llama_cpp.server` starts it (the same arguments), except that `GET /v1/models` answers
at once.

Its own `/v1/models` takes the model's lock, so while a generation runs it waits for the
generation to end (and with `--interrupt_requests true`, its default, it ends the generation
instead). Corral asks for the model list to see that the server is there, with a short timeout:
a long answer would make the server look down. The list is fixed for the server's life (the
aliases it was started with), so it is answered without the lock.

Run by the embedded model's own interpreter (its venv, where llama_cpp is installed), by path;
Corral's services never import it.
"""

from __future__ import annotations

import argparse
import os
from typing import Any

import uvicorn  # type: ignore[import-not-found, unused-ignore]
from llama_cpp.server.app import create_app  # type: ignore[import-not-found, unused-ignore]
from llama_cpp.server.cli import (  # type: ignore[import-not-found, unused-ignore]
    add_args_from_model,
    parse_model_from_args,
)
from llama_cpp.server.settings import (  # type: ignore[import-not-found, unused-ignore]
    ModelSettings,
    ServerSettings,
    Settings,
)


def main() -> None:
    parser = argparse.ArgumentParser(description="llama-cpp-python's server for Corral")
    add_args_from_model(parser, Settings)
    args = parser.parse_args()
    server = parse_model_from_args(ServerSettings, args)
    model = parse_model_from_args(ModelSettings, args)
    app = create_app(server_settings=server, model_settings=[model])
    aliases = [model.model_alias or model.model]

    async def models() -> dict[str, Any]:
        data = [{"id": a, "object": "model", "owned_by": "me", "permissions": []} for a in aliases]
        return {"object": "list", "data": data}

    # First in the list, so it is matched before the server's own route (FastAPI keeps an
    # included router as one entry, whose routes cannot be taken out one by one).
    app.add_api_route("/v1/models", models, methods=["GET"])
    app.router.routes.insert(0, app.router.routes.pop())

    uvicorn.run(
        app,
        host=os.getenv("HOST", server.host),
        port=int(os.getenv("PORT", server.port)),
        ssl_keyfile=server.ssl_keyfile,
        ssl_certfile=server.ssl_certfile,
    )


if __name__ == "__main__":
    main()
