from __future__ import annotations

from corral_common.service import run_service
from corral_gateway.app import create_app
from corral_gateway.settings import GatewaySettings

if __name__ == "__main__":
    run_service("gateway", create_app, GatewaySettings(), http_server_spans=True)
