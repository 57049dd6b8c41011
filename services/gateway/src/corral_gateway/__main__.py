from __future__ import annotations

from corral_common.service import run_service
from corral_gateway.app import create_app
from corral_gateway.settings import GatewaySettings


def main() -> None:
    settings = GatewaySettings()
    run_service(
        "gateway",
        lambda: create_app(settings),
        settings.gateway_host,
        settings.gateway_port,
        settings.log_level,
        http_server_spans=True,
    )


if __name__ == "__main__":
    main()
