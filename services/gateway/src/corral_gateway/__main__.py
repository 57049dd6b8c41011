from __future__ import annotations

import sys

from corral_common.service import run_service
from corral_gateway.app import create_app
from corral_gateway.connections import guarded_runner
from corral_gateway.identity.exposure import ExposureError, check_exposure
from corral_gateway.settings import GatewaySettings

if __name__ == "__main__":
    settings = GatewaySettings()
    try:
        # create_app checks again and logs the warnings; this is the refusal alone, readable.
        check_exposure(settings)
    except ExposureError as exc:
        sys.exit(f"corral gateway: refusing to start: {exc}")
    run_service(
        "gateway",
        create_app,
        settings,
        http_server_spans=True,
        runner_factory=guarded_runner(
            per_ip=settings.max_connections_per_ip,
            total=settings.max_connections,
            header_timeout=settings.header_timeout_s,
            idle_timeout=settings.idle_timeout_s,
        ),
    )
