from __future__ import annotations

from corral_common.service import run_service
from corral_model_manager.app import SERVICE, create_app
from corral_model_manager.settings import ModelManagerSettings

if __name__ == "__main__":
    run_service(SERVICE, create_app, ModelManagerSettings(), http_client_spans=True)
