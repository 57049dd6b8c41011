from __future__ import annotations

from corral_common.service import run_service
from corral_scheduler.app import create_app
from corral_scheduler.settings import SchedulerSettings

if __name__ == "__main__":
    run_service("scheduler", create_app, SchedulerSettings(), http_client_spans=True)
