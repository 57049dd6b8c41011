"""The scheduler's Prometheus metrics (served on its /metrics)."""

from __future__ import annotations

from prometheus_client import Counter, Gauge, Histogram

from corral_common.metric_labels import zeroed

WAIT_BUCKETS = (0.01, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300, 600)

QUEUE_DEPTH = Gauge("corral_queue_depth", "Jobs admitted and waiting for the backend")
QUEUE_RUNNING = Gauge(
    "corral_queue_running", "Jobs running on the backend servers (at most one per server)"
)
# Each server of the pool (one server without CORRAL_BACKENDS), by its name.
SERVER_BUSY = Gauge("corral_backend_server_busy", "1 while the server runs a job", ["server"])
SERVER_IN_ROTATION = Gauge(
    "corral_backend_server_in_rotation",
    "1 while the server is in rotation, 0 while it is out after failing to answer",
    ["server"],
)
SERVER_UP = Gauge(
    "corral_backend_server_up",
    "1 when the server answered the scheduler's last status probe, 0 when it did not",
    ["server"],
)
SERVER_JOBS = Counter("corral_backend_server_jobs_total", "Jobs run, per server", ["server"])
SERVER_SWAPS = Counter(
    "corral_backend_server_model_swaps_total", "Model swaps, per server", ["server"]
)
SERVER_FAILOVERS = Counter(
    "corral_backend_server_failovers_total",
    "Jobs moved off a server that did not answer, to another, by the server left",
    ["server"],
)
QUEUE_WAIT = Histogram(
    "corral_queue_wait_seconds",
    "Time from enqueue to backend start",
    ["model"],
    buckets=WAIT_BUCKETS,
)
TIME_TO_FIRST_TOKEN = Histogram(
    "corral_time_to_first_token_seconds",
    "Time from backend start to the first token",
    ["model"],
    buckets=WAIT_BUCKETS,
)
GENERATION_SECONDS = Histogram(
    "corral_generation_seconds", "Backend time per job", ["model"], buckets=WAIT_BUCKETS
)
TOKENS = Counter("corral_tokens_total", "Tokens processed by the backend", ["model", "kind"])
JOBS = Counter("corral_jobs_total", "Jobs finished, by outcome", ["outcome"])
CANCELLATIONS = Counter("corral_cancellations_total", "Cancelled jobs, by stage", ["stage"])
BACKEND_ERRORS = Counter("corral_backend_errors_total", "Backend failures, by reason", ["reason"])
MODEL_LOADS = Counter("corral_model_loads_total", "Model loads observed on the backend", ["model"])
MODEL_SWAPS = Counter(
    "corral_model_swaps_total", "Jobs that ran on a different model than the last"
)
ESTIMATE_ERROR = Histogram(
    "corral_wait_estimate_error_seconds",
    "Absolute error of the first wait estimate a job was given",
    buckets=WAIT_BUCKETS,
)
ESTIMATE_BIAS = Histogram(
    "corral_wait_estimate_bias_seconds",
    "First wait estimate minus the real wait: positive when clients were told too long",
    buckets=(-300, -60, -10, -2.5, -1, -0.25, 0, 0.25, 1, 2.5, 10, 60, 300),
)
# A histogram with negative buckets exports no `_sum` (OpenMetrics), so the signed sum is its own
# series: the mean bias is this over `corral_wait_estimate_bias_seconds_count`.
ESTIMATE_BIAS_SUM = Gauge(
    "corral_wait_estimate_bias_sum_seconds",
    "Sum of every first wait estimate minus the real wait (signed)",
)
NUM_CTX_NORMALISED = Counter(
    "corral_num_ctx_normalised_total",
    "Requests whose num_ctx was rewritten to the loaded model's, avoiding a reload",
    ["model"],
)
KEEP_ALIVE_CLAMPED = Counter(
    "corral_keep_alive_clamped_total", "Requests whose keep_alive was clamped", ["model"]
)
MODEL_OPERATIONS = Counter(
    "corral_model_operations_total",
    "Loads and unloads run through the lane, by outcome",
    ["kind", "outcome"],
)
LANE_STATE = Gauge("corral_lane_state", "1 while the lane is paused or draining", ["state"])
TAKEOVER_GRACES = Counter(
    "corral_takeover_graces_total",
    "Takeover graces waited (once per takeover of the lane, not per handed-over job)",
)
LANE_STUCK = Gauge(
    "corral_lane_stuck", "1 while the watchdog finds the lane holding work without progress"
)
JOBS_DEAD_LETTERED = zeroed(
    Counter(
        "corral_jobs_dead_lettered_total",
        "Jobs the scheduler dead-lettered, by reason",
        ["reason"],
    ),
    "unreadable",
    "unroutable",
    "admission_failed",
    "failure_unpublished",
)
BACKEND_RETRIES = Counter(
    "corral_backend_retries_total",
    "Backend requests retried before their response started, by what failed",
    ["reason"],
)
BACKEND_RETRY_OUTCOMES = Counter(
    "corral_backend_retry_outcomes_total",
    "Jobs that retried the backend, by how it ended: recovered, exhausted (out of retries), "
    "deadline (the next retry would start past the request's deadline)",
    ["outcome"],
)
REQUEST_TIMEOUTS = Counter(
    "corral_request_timeouts_total",
    "Jobs stopped at their request's total deadline while running, by stage",
    ["stage"],
)
DLQ_MESSAGES = Gauge(
    "corral_dead_letter_queue_messages",
    "Jobs in the dead-letter queue (scheduler.jobs.dlq), read on every status broadcast",
)
JOBS_REDELIVERED = Counter(
    "corral_jobs_redelivered_total",
    "Jobs delivered again by the broker (a scheduler died or lost its connection holding them)",
)
FIRST_POSITION = Histogram(
    "corral_queue_position",
    "The first position each admitted job was told (0 when it started at once)",
    buckets=(0, 1, 2, 3, 5, 10, 20, 50, 100, 200, 500),
)
CALLER_QUEUE_WAIT = Histogram(
    "corral_caller_queue_wait_seconds",
    "Queue wait per caller (its API key id, or anonymous): what fair share evens out",
    ["caller"],
    buckets=WAIT_BUCKETS,
)
