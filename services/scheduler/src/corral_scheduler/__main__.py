from __future__ import annotations

from corral_common.service import run_service
from corral_scheduler.app import create_app
from corral_scheduler.settings import SchedulerSettings


def main() -> None:
    settings = SchedulerSettings()
    run_service(
        "scheduler",
        lambda: create_app(settings),
        settings.health_host,
        settings.health_port,
        settings.log_level,
        http_client_spans=True,
    )


if __name__ == "__main__":
    main()
