from __future__ import annotations

from corral_common.service import run_service
from corral_session_store.app import create_app
from corral_session_store.rpc_api import SERVICE
from corral_session_store.settings import SessionStoreSettings

if __name__ == "__main__":
    run_service(SERVICE, create_app, SessionStoreSettings())
