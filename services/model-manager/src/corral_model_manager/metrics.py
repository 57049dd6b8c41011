"""The model manager's Prometheus metrics (served on its /metrics)."""

from __future__ import annotations

from prometheus_client import Counter, Gauge

UNLOADS = Counter(
    "corral_model_unloads_total",
    "Models unloaded by the model manager, by reason (idle, memory)",
    ["reason"],
)
UNLOADS_SKIPPED = Counter(
    "corral_model_unloads_skipped_total",
    "Unloads not done, by reason (no_status, busy, model_busy, failed, submit_failed)",
    ["reason"],
)
HOST_MEMORY = Gauge("corral_host_memory_percent", "Host memory in use, percent")
SERVER_MEMORY = Gauge(
    "corral_backend_memory_percent",
    "A model server's memory in use, percent: its loaded models' size of its budget, or the "
    "host's for a local server without one (docs/models.md)",
    ["server"],
)
SERVER_LOADED_BYTES = Gauge(
    "corral_backend_loaded_bytes",
    "The size of a model server's loaded models, by its own /api/ps",
    ["server"],
)
PULLS = Counter(
    "corral_model_pulls_total", "Pulls finished, by outcome (success, error)", ["outcome"]
)
PUSHES = Counter(
    "corral_model_pushes_total", "Pushes finished, by outcome (success, error)", ["outcome"]
)
BLOB_UPLOADS = Counter(
    "corral_blob_uploads_total",
    "Blob uploads relayed to the backend, by outcome (created, present, refused, failed)",
    ["outcome"],
)
BLOB_BYTES = Counter("corral_blob_upload_bytes_total", "Blob bytes relayed to the backend")
