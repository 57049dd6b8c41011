"""Corral's Grafana dashboards, as code: `uv run python deploy/grafana/generate.py` writes
`deploy/grafana/dashboards/*.json` (provisioned by `provisioning/dashboards/corral.yml`);
`--check` only says whether the committed files are what this script makes.

Every panel queries series the services export (or the RabbitMQ Prometheus plugin's, where the
broker is scraped). Panels about events a healthy cluster may never have (dead letters,
truncations, unloads) end in `or on() vector(0)`, so they show 0 instead of "No data".
tests/deploy/test_dashboards.py runs every query against a live Prometheus scraping a cluster,
and checks every Corral series named is one a service declares.
"""

from __future__ import annotations

import argparse
import json
import sys
from dataclasses import dataclass
from pathlib import Path

from grafana_foundation_sdk.builders import common as common_builders
from grafana_foundation_sdk.builders import dashboard as dash
from grafana_foundation_sdk.builders import prometheus, stat, timeseries
from grafana_foundation_sdk.cog.encoder import JSONEncoder
from grafana_foundation_sdk.models import common
from grafana_foundation_sdk.models import dashboard as model

HERE = Path(__file__).resolve().parent
OUT_DIR = HERE / "dashboards"

# The datasource provisioned by provisioning/datasources/prometheus.yml.
DATASOURCE = model.DataSourceRef(type_val="prometheus", uid="corral-prometheus")
RATE = "$__rate_interval"
ZERO = " or on() vector(0)"
# A template variable over the models seen in the lane; "All" matches every model.
MODEL_VARIABLE = "model"
MODEL = f'model=~"${MODEL_VARIABLE}"'


@dataclass(frozen=True)
class Q:
    """One query of a panel and how its series are named."""

    expr: str
    legend: str = ""


@dataclass(frozen=True)
class P:
    """One panel: a time series (the default) or a single stat."""

    title: str
    description: str
    queries: tuple[Q, ...]
    unit: str = "short"
    kind: str = "timeseries"
    width: int = 12
    height: int = 8


def quantiles(metric: str, by: str = "", selector: str = "", *qs: float) -> tuple[Q, ...]:
    """p50/p95/p99 (or `qs`) of a histogram, per `by` labels when given."""
    labels = f"le, {by}" if by else "le"
    legend_by = "".join(f" {{{{{label.strip()}}}}}" for label in by.split(",") if label.strip())
    return tuple(
        Q(
            f"histogram_quantile({q}, sum by ({labels}) "
            f"(rate({metric}_bucket{{{selector}}}[{RATE}])))",
            f"p{round(q * 100)}{legend_by}",
        )
        for q in (qs or (0.5, 0.95, 0.99))
    )


def build_panel(panel: P, panel_id: int) -> stat.Panel | timeseries.Panel:
    builder: stat.Panel | timeseries.Panel
    if panel.kind == "stat":
        builder = (
            stat.Panel()
            .graph_mode(common.BigValueGraphMode.AREA)
            .color_mode(common.BigValueColorMode.VALUE)
            .reduce_options(common_builders.ReduceDataOptions().calcs(["lastNotNull"]))
        )
    else:
        builder = (
            timeseries.Panel()
            .fill_opacity(10)
            .line_width(1)
            .legend(
                common_builders.VizLegendOptions()
                .display_mode(common.LegendDisplayMode.LIST)
                .placement(common.LegendPlacement.BOTTOM)
                .show_legend(True)
            )
            .tooltip(
                common_builders.VizTooltipOptions()
                .mode(common.TooltipDisplayMode.MULTI)
                .sort(common.SortOrder.DESCENDING)
            )
        )
    builder = (
        builder.id(panel_id)
        .title(panel.title)
        .description(panel.description)
        .datasource(DATASOURCE)
        .unit(panel.unit)
        .span(panel.width)
        .height(panel.height)
    )
    for index, query in enumerate(panel.queries):
        target = (
            prometheus.Dataquery()
            .expr(query.expr)
            .legend_format(query.legend or "__auto")
            .ref_id(chr(ord("A") + index))
            .datasource(DATASOURCE)
        )
        builder = builder.with_target(target)
    return builder


def model_variable() -> dash.QueryVariable:
    return (
        dash.QueryVariable(MODEL_VARIABLE)
        .label("Model")
        .datasource(DATASOURCE)
        .query("label_values(corral_queue_wait_seconds_count, model)")
        .refresh(model.VariableRefresh.ON_TIME_RANGE_CHANGED)
        .sort(model.VariableSort.ALPHABETICAL_ASC)
        .multi(True)
        .include_all(True)
        .all_value(".*")
        .current(model.VariableOption(selected=True, text="All", value="$__all"))
    )


@dataclass(frozen=True)
class Board:
    uid: str
    title: str
    description: str
    panels: tuple[P, ...]
    with_model: bool = False


def build_board(board: Board) -> dict[str, object]:
    builder = (
        dash.Dashboard(f"Corral / {board.title}")
        .uid(board.uid)
        .description(board.description)
        .tags(["corral"])
        .time("now-1h", "now")
        .refresh("30s")
        .timezone("browser")
        .editable()
        .tooltip(model.DashboardCursorSync.CROSSHAIR)
        .link(
            dash.DashboardLink("Corral")
            .type(model.DashboardLinkType.DASHBOARDS)
            .tags(["corral"])
            .as_dropdown(True)
            .include_vars(False)
            .keep_time(True)
        )
    )
    if board.with_model:
        builder = builder.with_variable(model_variable())
    for panel_id, panel in enumerate(board.panels, start=1):
        builder = builder.with_panel(build_panel(panel, panel_id))
    encoded: dict[str, object] = json.loads(json.dumps(builder.build(), cls=JSONEncoder))
    return encoded


# -- the dashboards --------------------------------------------------------------------------

OVERVIEW = Board(
    "corral-overview",
    "Overview",
    "Requests, errors, latency and tokens per second across the cluster.",
    (
        P(
            "Targets up",
            "Scraped Corral processes answering /metrics, per job (two for the scheduler: "
            "active and standby).",
            (Q("sum by (job) (up)", "{{job}}"),),
            kind="stat",
            width=8,
            height=5,
        ),
        P(
            "Requests in flight",
            "Generation requests being served by the gateways.",
            (Q("sum(corral_gateway_in_flight_requests)", "in flight"),),
            kind="stat",
            width=8,
            height=5,
        ),
        P(
            "Error ratio (5m)",
            "Share of generation requests that did not end in `done` over the last 5 minutes.",
            (
                Q(
                    'sum(rate(corral_requests_total{outcome!="done"}[5m]))'
                    " / clamp_min(sum(rate(corral_requests_total[5m])), 1e-9)",
                    "errors",
                ),
            ),
            unit="percentunit",
            kind="stat",
            width=8,
            height=5,
        ),
        P(
            "Requests per second",
            "Generation requests finished at the gateways, by endpoint and outcome.",
            (
                Q(
                    f"sum by (endpoint, outcome) (rate(corral_requests_total[{RATE}]))",
                    "{{endpoint}} {{outcome}}",
                ),
            ),
            unit="reqps",
        ),
        P(
            "Errors per second",
            "Generation requests that did not end in `done`, by outcome (the error type).",
            (
                Q(
                    f'sum by (outcome) (rate(corral_requests_total{{outcome!="done"}}[{RATE}]))'
                    + ZERO,
                    "{{outcome}}",
                ),
            ),
            unit="reqps",
        ),
        P(
            "Request latency",
            "From arrival at the gateway to the last byte, generation requests.",
            quantiles("corral_request_duration_seconds"),
            unit="s",
        ),
        P(
            "Time to first token (client)",
            "From arrival at the gateway to the first token written to the client.",
            quantiles("corral_client_time_to_first_token_seconds"),
            unit="s",
        ),
        P(
            "Tokens per second",
            "Tokens the backend processed, by model and kind (prompt, completion).",
            (
                Q(
                    f"sum by (model, kind) (rate(corral_tokens_total{{{MODEL}}}[{RATE}]))",
                    "{{model}} {{kind}}",
                ),
            ),
            unit="short",
        ),
        P(
            "Jobs finished",
            "Jobs the scheduler finished, by outcome.",
            (Q(f"sum by (outcome) (rate(corral_jobs_total[{RATE}]))", "{{outcome}}"),),
            unit="ops",
        ),
        P(
            "Generation speed",
            "Completion tokens per second of backend generation time, per model.",
            (
                Q(
                    "sum by (model) (rate(corral_tokens_total"
                    f'{{kind="completion", {MODEL}}}[{RATE}]))'
                    " / sum by (model) (rate(corral_generation_seconds_sum"
                    f"{{{MODEL}}}[{RATE}]))",
                    "{{model}}",
                ),
            ),
            unit="short",
        ),
        P(
            "Refused at the edge",
            "Authentications refused, by reason, and requests answered 429 by a rate limit or "
            "quota, by limit.",
            (
                Q(
                    f"sum by (reason) (increase(corral_auth_failures_total[{RATE}]))" + ZERO,
                    "auth {{reason}}",
                ),
                Q(
                    f"sum by (limit) (increase(corral_rate_limited_total[{RATE}]))" + ZERO,
                    "429 {{limit}}",
                ),
            ),
        ),
        P(
            "Gateway connections",
            "Client connections open, and the ones the gateway closed to bound them.",
            (
                Q("sum(corral_gateway_open_connections)", "open"),
                Q(
                    "sum by (reason) "
                    f"(increase(corral_gateway_connections_closed_total[{RATE}]))" + ZERO,
                    "closed {{reason}}",
                ),
            ),
        ),
        P(
            "Garbage-collection pauses",
            "Share of each process's time stopped by CPython's garbage collector, by generation. "
            "The oldest generation is collected every CORRAL_GC_FULL_INTERVAL_S; the slowest "
            "pauses are in corral_gc_pause_seconds_bucket.",
            (
                Q(
                    f"sum by (job, generation) (rate(corral_gc_pause_seconds_sum[{RATE}]))",
                    "{{job}} gen {{generation}}",
                ),
            ),
            unit="percentunit",
        ),
    ),
    with_model=True,
)

QUEUE = Board(
    "corral-queue",
    "Queue",
    "The lane: depth, waits, positions, wait-estimate error and fairness between callers.",
    (
        P(
            "Queue depth",
            "Jobs admitted and waiting for the backend, and jobs running.",
            (
                Q("sum(corral_queue_depth)", "waiting"),
                Q("sum(corral_queue_running)", "running"),
            ),
        ),
        P(
            "Queue wait",
            "From enqueue to backend start, per model.",
            quantiles("corral_queue_wait_seconds", "model", MODEL, 0.5, 0.95),
            unit="s",
        ),
        P(
            "Jobs started per second",
            "Jobs that left the queue for the backend, per model.",
            (
                Q(
                    f"sum by (model) (rate(corral_queue_wait_seconds_count{{{MODEL}}}[{RATE}]))",
                    "{{model}}",
                ),
            ),
            unit="ops",
        ),
        P(
            "Backend servers",
            "Each server of the pool: answering the last status probe (up), running a job "
            "(busy), and in rotation (0 while it is out after failing to answer).",
            (
                Q("min by (server) (corral_backend_server_up)", "up {{server}}"),
                Q("max by (server) (corral_backend_server_busy)", "busy {{server}}"),
                Q(
                    "min by (server) (corral_backend_server_in_rotation)",
                    "in rotation {{server}}",
                ),
            ),
        ),
        P(
            "Jobs per server",
            "Jobs run per second on each server of the pool, and jobs moved off a server that "
            "did not answer.",
            (
                Q(
                    f"sum by (server) (rate(corral_backend_server_jobs_total[{RATE}]))",
                    "{{server}}",
                ),
                Q(
                    f"sum by (server) (rate(corral_backend_server_failovers_total[{RATE}]))" + ZERO,
                    "failed over from {{server}}",
                ),
            ),
            unit="ops",
        ),
        P(
            "Positions given",
            "The first position each admitted job was told (0: it started at once).",
            (
                Q(
                    "histogram_quantile(0.95, sum by (le) "
                    f"(rate(corral_queue_position_bucket[{RATE}])))",
                    "p95 position",
                ),
                Q(
                    f"sum(rate(corral_queue_position_sum[{RATE}]))"
                    f" / sum(rate(corral_queue_position_count[{RATE}]))",
                    "mean position",
                ),
            ),
        ),
        P(
            "Wait estimate error",
            "Absolute error of the first wait estimate a job was given.",
            quantiles("corral_wait_estimate_error_seconds", "", "", 0.5, 0.95),
            unit="s",
        ),
        P(
            "Wait estimate bias",
            "Estimate minus real wait (median, and the 10th and 90th percentiles): above 0, "
            "clients were told too long. The histogram has negative buckets, so no _sum.",
            quantiles("corral_wait_estimate_bias_seconds", "", "", 0.1, 0.5, 0.9),
            unit="s",
        ),
        P(
            "Fair share: jobs started per caller",
            "Jobs started per second per caller (its API key id, or anonymous): fair share "
            "lets callers take turns, so no one caller's burst starves the others.",
            (
                Q(
                    f"sum by (caller) (rate(corral_caller_queue_wait_seconds_count[{RATE}]))",
                    "{{caller}}",
                ),
            ),
            unit="ops",
        ),
        P(
            "Fair share: wait per caller",
            "Mean and p95 queue wait per caller.",
            (
                Q(
                    f"sum by (caller) (rate(corral_caller_queue_wait_seconds_sum[{RATE}]))"
                    " / sum by (caller) "
                    f"(rate(corral_caller_queue_wait_seconds_count[{RATE}]))",
                    "mean {{caller}}",
                ),
                Q(
                    "histogram_quantile(0.95, sum by (le, caller) "
                    f"(rate(corral_caller_queue_wait_seconds_bucket[{RATE}])))",
                    "p95 {{caller}}",
                ),
            ),
            unit="s",
        ),
        P(
            "Lane state",
            "1 while the lane is paused or draining, or stuck (the watchdog's verdict).",
            (
                Q("max by (state) (corral_lane_state)" + ZERO, "{{state}}"),
                Q("max(corral_lane_stuck)", "stuck"),
            ),
        ),
        P(
            "Refusals and cancellations",
            "Jobs refused or ended early, by outcome, and cancellations by stage.",
            (
                Q(
                    f'sum by (outcome) (rate(corral_jobs_total{{outcome!="done"}}[{RATE}]))' + ZERO,
                    "{{outcome}}",
                ),
                Q(
                    f"sum by (stage) (rate(corral_cancellations_total[{RATE}]))" + ZERO,
                    "cancelled {{stage}}",
                ),
            ),
            unit="ops",
        ),
    ),
    with_model=True,
)

MODELS = Board(
    "corral-models",
    "Models",
    "Model loads, swaps and unloads, operations run through the lane, and memory.",
    (
        P(
            "Model loads",
            "Model loads observed on the backend, per model.",
            (
                Q(
                    f"sum by (model) (increase(corral_model_loads_total[{RATE}]))" + ZERO,
                    "{{model}}",
                ),
            ),
        ),
        P(
            "Model swaps",
            "Jobs that ran on a different model than the one before, in all and per server.",
            (
                Q(f"sum(increase(corral_model_swaps_total[{RATE}]))", "swaps"),
                Q(
                    "sum by (server) "
                    f"(increase(corral_backend_server_model_swaps_total[{RATE}]))" + ZERO,
                    "{{server}}",
                ),
            ),
        ),
        P(
            "Model load time",
            "Model loads the gateways' requests waited for (the backend's load_duration).",
            quantiles("corral_gateway_model_load_time_seconds", "model", "", 0.5, 0.95),
            unit="s",
        ),
        P(
            "Unloads",
            "Models the model manager unloaded (idle, memory), and unloads it skipped.",
            (
                Q(
                    f"sum by (reason) (increase(corral_model_unloads_total[{RATE}]))" + ZERO,
                    "unloaded {{reason}}",
                ),
                Q(
                    "sum by (reason) "
                    f"(increase(corral_model_unloads_skipped_total[{RATE}]))" + ZERO,
                    "skipped {{reason}}",
                ),
            ),
        ),
        P(
            "Model operations",
            "Loads and unloads run through the lane, by kind and outcome.",
            (
                Q(
                    "sum by (kind, outcome) "
                    f"(increase(corral_model_operations_total[{RATE}]))" + ZERO,
                    "{{kind}} {{outcome}}",
                ),
            ),
        ),
        P(
            "Memory",
            "Each model server's memory in use: its loaded models' size of its budget, or the "
            "host's for a local server without one (the model manager unloads above its "
            "limit); and the host's own.",
            (
                Q("max by (server) (corral_backend_memory_percent)", "{{server}}"),
                Q("max(corral_host_memory_percent)", "host"),
            ),
            unit="percent",
        ),
        P(
            "Loaded models' size",
            "The size of each server's loaded models, by its own /api/ps.",
            (Q("max by (server) (corral_backend_loaded_bytes)", "{{server}}"),),
            unit="bytes",
        ),
        P(
            "Pulls and pushes",
            "Model pulls and pushes finished, by outcome.",
            (
                Q(
                    f"sum by (outcome) (increase(corral_model_pulls_total[{RATE}]))" + ZERO,
                    "pull {{outcome}}",
                ),
                Q(
                    f"sum by (outcome) (increase(corral_model_pushes_total[{RATE}]))" + ZERO,
                    "push {{outcome}}",
                ),
            ),
        ),
        P(
            "Request normalisation",
            "Requests whose num_ctx was rewritten to avoid a reload, or keep_alive clamped.",
            (
                Q(
                    f"sum by (model) (increase(corral_num_ctx_normalised_total[{RATE}]))" + ZERO,
                    "num_ctx {{model}}",
                ),
                Q(
                    f"sum by (model) (increase(corral_keep_alive_clamped_total[{RATE}]))" + ZERO,
                    "keep_alive {{model}}",
                ),
            ),
        ),
        P(
            "Backend errors and retries",
            "Backend failures by reason, and retries by what failed.",
            (
                Q(
                    f"sum by (reason) (increase(corral_backend_errors_total[{RATE}]))" + ZERO,
                    "error {{reason}}",
                ),
                Q(
                    f"sum by (reason) (increase(corral_backend_retries_total[{RATE}]))" + ZERO,
                    "retry {{reason}}",
                ),
            ),
        ),
    ),
)

SESSIONS = Board(
    "corral-sessions",
    "Sessions",
    "The session store: turns written, context truncations and assembly time, lifecycle.",
    (
        P(
            "Turns written",
            "Turn events handled, by outcome (stored, duplicate, rejected, invalid).",
            (
                Q(
                    f"sum by (outcome) (increase(corral_turns_written_total[{RATE}]))",
                    "{{outcome}}",
                ),
                Q(
                    f"sum(increase(corral_turn_write_errors_total[{RATE}]))",
                    "write errors (retried)",
                ),
            ),
        ),
        P(
            "Context truncations",
            "Assembled contexts that dropped stored turns to fit the window, per model, and "
            "requests refused because they cannot fit.",
            (
                Q(
                    f"sum by (model) (increase(corral_context_truncations_total[{RATE}]))" + ZERO,
                    "truncated {{model}}",
                ),
                Q(
                    "sum by (model) "
                    f"(increase(corral_context_limit_exceeded_total[{RATE}]))" + ZERO,
                    "refused {{model}}",
                ),
                Q(
                    "sum by (model) "
                    f"(increase(corral_gateway_context_truncations_total[{RATE}]))" + ZERO,
                    "answered truncated {{model}}",
                ),
            ),
        ),
        P(
            "Context assembly time",
            "History read, token budget and truncation, per assembled context.",
            quantiles("corral_context_assembly_seconds", "", "", 0.5, 0.95, 0.99),
            unit="s",
        ),
        P(
            "Truncation rate",
            "Share of assembled contexts that were truncated.",
            (
                Q(
                    f"sum(rate(corral_context_truncations_total[{RATE}]))"
                    f" / clamp_min(sum(rate(corral_context_assembly_seconds_count[{RATE}])), 1e-9)"
                    + ZERO,
                    "truncated",
                ),
            ),
            unit="percentunit",
        ),
        P(
            "Session lifecycle",
            "Sessions archived after idling, resumed by a chat, and purged after retention.",
            (
                Q(f"sum(increase(corral_sessions_archived_total[{RATE}]))", "archived"),
                Q(f"sum(increase(corral_sessions_resumed_total[{RATE}]))", "resumed"),
                Q(f"sum(increase(corral_sessions_purged_total[{RATE}]))", "purged"),
            ),
        ),
        P(
            "Token estimate calibration",
            "Per-model factor applied to the token estimator (1 = uncalibrated).",
            (Q("max by (model) (corral_token_estimate_factor)" + ZERO, "{{model}}"),),
        ),
    ),
)

DLQ_QUEUE = "scheduler.jobs.dlq"

BROKER = Board(
    "corral-broker",
    "Broker",
    "RabbitMQ as Corral uses it: confirmed publishes, redeliveries and dead letters. The "
    "rabbitmq_* series come from the broker's Prometheus plugin (job `rabbitmq`).",
    (
        P(
            "Confirmed publishes",
            "Durable publishes (jobs, final events, model operations) by the broker's answer, "
            "per service.",
            (
                Q(
                    f"sum by (job, outcome) (rate(corral_broker_publishes_total[{RATE}]))",
                    "{{job}} {{outcome}}",
                ),
            ),
            unit="ops",
        ),
        P(
            "Publishes refused",
            "Publishes the broker did not confirm: queue full (nacked), unroutable, unavailable.",
            (
                Q(
                    "sum by (job, outcome) (increase(corral_broker_publishes_total"
                    f'{{outcome!="confirmed"}}[{RATE}]))' + ZERO,
                    "{{job}} {{outcome}}",
                ),
            ),
        ),
        P(
            "Redeliveries",
            "Jobs the broker delivered again (a scheduler died or lost its connection holding "
            "them), and takeovers of the lane by a standby.",
            (
                Q(
                    f"sum(increase(corral_jobs_redelivered_total[{RATE}]))"
                    f" or on() sum(increase(rabbitmq_global_messages_redelivered_total[{RATE}]))"
                    + ZERO,
                    "redelivered",
                ),
                Q(
                    f"sum(increase(corral_takeover_graces_total[{RATE}]))",
                    "takeovers",
                ),
            ),
        ),
        P(
            "Dead-letter queue depth",
            f"Messages waiting in `{DLQ_QUEUE}` (the scheduler reads it on every status "
            "broadcast; the broker plugin's per-queue series without a scheduler).",
            (
                Q(
                    "max(corral_dead_letter_queue_messages)"
                    f' or on() sum(rabbitmq_detailed_queue_messages{{queue="{DLQ_QUEUE}"}})' + ZERO,
                    "messages",
                ),
            ),
            kind="stat",
            width=6,
        ),
        P(
            "Dead letters",
            "Jobs dead-lettered: by the scheduler (refused, unreadable), and as their "
            "submitters saw them come back (by RabbitMQ's reason).",
            (
                Q(
                    f"sum by (reason) (increase(corral_jobs_dead_lettered_total[{RATE}]))" + ZERO,
                    "scheduler {{reason}}",
                ),
                Q(
                    f"sum by (reason) (increase(corral_dead_letters_total[{RATE}]))" + ZERO,
                    "returned {{reason}}",
                ),
            ),
            width=18,
        ),
        P(
            "Broker confirms (RabbitMQ)",
            "Publisher confirms the broker sent, all clients (needs the RabbitMQ Prometheus "
            "plugin; 0 without it).",
            (
                Q(
                    f"sum(rate(rabbitmq_global_messages_confirmed_total[{RATE}]))" + ZERO,
                    "confirmed",
                ),
            ),
            unit="ops",
        ),
        P(
            "Queue messages (RabbitMQ)",
            "Messages ready and unacknowledged in Corral's queues (needs the RabbitMQ "
            "Prometheus plugin's detailed queue metrics; 0 without them).",
            (
                Q(
                    'sum by (queue) (rabbitmq_detailed_queue_messages{queue=~"scheduler.*"})'
                    + ZERO,
                    "{{queue}}",
                ),
            ),
        ),
    ),
)

BOARDS = (OVERVIEW, QUEUE, MODELS, SESSIONS, BROKER)


def render() -> dict[str, str]:
    """Every dashboard's file name and JSON text, as committed."""
    return {
        f"{board.uid}.json": json.dumps(build_board(board), indent=2, sort_keys=True) + "\n"
        for board in BOARDS
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true", help="fail if the files are stale")
    args = parser.parse_args(argv)
    rendered = render()
    stale = [
        name
        for name, text in rendered.items()
        if not (OUT_DIR / name).exists() or (OUT_DIR / name).read_text() != text
    ]
    extra = sorted(p.name for p in OUT_DIR.glob("*.json") if p.name not in rendered)
    if args.check:
        for name in stale:
            print(f"stale: {OUT_DIR / name}", file=sys.stderr)
        for name in extra:
            print(f"not generated: {OUT_DIR / name}", file=sys.stderr)
        return 1 if stale or extra else 0
    OUT_DIR.mkdir(parents=True, exist_ok=True)
    for name, text in rendered.items():
        (OUT_DIR / name).write_text(text)
    for name in extra:
        (OUT_DIR / name).unlink()
    print(f"wrote {len(rendered)} dashboards to {OUT_DIR}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
