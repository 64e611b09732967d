"""
Define every Prometheus metric of workspaced and its bridge, in one registry.

Names follow Prometheus conventions: a `workspaced_` prefix, base units
(seconds, records), `_total` on counters, and only bounded labels (topic
roles, event types, states, triggers, tools, outcomes, status codes, reasons
cut to a category); never a chat, call or workspace id. docs/operations.md
lists them with suggested alerts.
"""

from __future__ import annotations

from prometheus_client import (
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    PlatformCollector,
    ProcessCollector,
)

REGISTRY = CollectorRegistry(auto_describe=True)
ProcessCollector(registry=REGISTRY)  # CPU seconds, RSS, open fds of the process
PlatformCollector(registry=REGISTRY)

# Reaction paths are milliseconds; waits for builds and agents are minutes.
_FAST_S = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)
_SLOW_S = (0.1, 0.5, 1, 2, 5, 10, 30, 60, 120, 300, 600, 1200, 3600)

# The daemon ------------------------------------------------------------------

EVENTS_CONSUMED = Counter(
    "workspaced_events_consumed_total",
    "Input records consumed, by topic role and decoded kind ('invalid' when unreadable).",
    ["topic", "type"],
    registry=REGISTRY,
)
TRANSITIONS = Counter(
    "workspaced_transitions_total",
    "State transitions decided, by source state, destination state and trigger.",
    ["from_state", "to_state", "trigger"],
    registry=REGISTRY,
)
TOOL_RESULTS = Counter(
    "workspaced_tool_results_total",
    "Tool results written, by tool and outcome (created, already_exists, stopped, ..., error).",
    ["tool", "outcome"],
    registry=REGISTRY,
)
STATE_DURATION = Histogram(
    "workspaced_state_duration_seconds",
    "Time a chat spent in a state, observed when it left it.",
    ["state"],
    buckets=_SLOW_S,
    registry=REGISTRY,
)
TOOL_CALL_DURATION = Histogram(
    "workspaced_tool_call_duration_seconds",
    "From a tool call's arrival to its result being written, by tool.",
    ["tool"],
    buckets=_SLOW_S,
    registry=REGISTRY,
)
BATCH_RECORDS = Histogram(
    "workspaced_batch_records",
    "Records per applied batch.",
    buckets=(1, 2, 5, 10, 20, 50, 100, 200, 500, 1000, 5000),
    registry=REGISTRY,
)
BATCH_DURATION = Histogram(
    "workspaced_batch_transaction_seconds",
    "Time to apply one batch in PostgreSQL, retries included.",
    buckets=_FAST_S,
    registry=REGISTRY,
)
CONSUMER_LAG = Gauge(
    "workspaced_consumer_lag_records",
    "Records between the consumer's position and the partition's high watermark.",
    ["topic", "partition"],
    registry=REGISTRY,
)
PARTITIONS_ASSIGNED = Gauge(
    "workspaced_partitions_assigned",
    "Input partitions this instance holds.",
    registry=REGISTRY,
)
OUTBOX_ROWS = Gauge(
    "workspaced_outbox_rows",
    "Outbox rows not yet acknowledged by Kafka (read at scrape time).",
    registry=REGISTRY,
)
OUTBOX_OLDEST_AGE = Gauge(
    "workspaced_outbox_oldest_age_seconds",
    "Age of the oldest outbox row, 0 when empty (read at scrape time).",
    registry=REGISTRY,
)
RELAY_PUBLISH_DURATION = Histogram(
    "workspaced_relay_publish_seconds",
    "Time to publish one outbox batch and get every acknowledgement.",
    buckets=_FAST_S,
    registry=REGISTRY,
)
RELAY_PUBLISHED = Counter(
    "workspaced_relay_published_total",
    "Outbox records published and acknowledged.",
    registry=REGISTRY,
)
RELAY_LEADER = Gauge(
    "workspaced_relay_leader",
    "1 while this instance leads the outbox relay.",
    registry=REGISTRY,
)
PARKED = Counter(
    "workspaced_outbox_parked_total",
    "Outbox records the broker refused for good, parked in outbox_parked.",
    registry=REGISTRY,
)
TIMERS_PENDING = Gauge(
    "workspaced_timers_pending",
    "Chats with a deadline set (read at scrape time).",
    registry=REGISTRY,
)
TIMERS_FIRED = Counter(
    "workspaced_timers_fired_total",
    "Deadlines fired.",
    registry=REGISTRY,
)
TIMER_LATENESS = Histogram(
    "workspaced_timer_lateness_seconds",
    "How long after its deadline a timer fired.",
    buckets=(*_FAST_S, 30.0, 60.0, 300.0),
    registry=REGISTRY,
)
DEAD_LETTERS = Counter(
    "workspaced_dead_letters_total",
    "Input records dead-lettered, by reason category.",
    ["reason"],
    registry=REGISTRY,
)
STORAGE_ERRORS = Counter(
    "workspaced_postgres_errors_total",
    "PostgreSQL errors met by a batch, by kind (unavailable, conflict, other).",
    ["kind"],
    registry=REGISTRY,
)
KAFKA_ERRORS = Counter(
    "workspaced_kafka_errors_total",
    "Kafka errors, by operation (fetch, commit, publish).",
    ["operation"],
    registry=REGISTRY,
)

# The bridge ------------------------------------------------------------------

CODER_REQUESTS = Counter(
    "workspaced_coder_requests_total",
    "Calls to Coder's API, by operation and HTTP status ('error' when none came).",
    ["operation", "status"],
    registry=REGISTRY,
)
CODER_WATCHES_OPEN = Gauge(
    "workspaced_coder_watches",
    "Workspaces this bridge instance watches.",
    registry=REGISTRY,
)
CODER_WATCH_RECONNECTS = Counter(
    "workspaced_coder_watch_reconnects_total",
    "Watch streams that ended or broke and were opened again.",
    registry=REGISTRY,
)
BRIDGE_COMMANDS = Counter(
    "workspaced_bridge_commands_total",
    "Commands the bridge answered, by result type.",
    ["result"],
    registry=REGISTRY,
)
BRIDGE_HEARTBEATS = Counter(
    "workspaced_bridge_heartbeats_total",
    "Agent heartbeats the bridge published.",
    registry=REGISTRY,
)


def reason_category(reason: str) -> str:
    """
    Cut a dead letter's reason to a bounded label value.
    """
    text = reason.lower()
    for needle, category in (
        ("too large", "too_large"),
        ("not json", "not_json"),
        ("utf-8", "not_utf8"),
        ("cloudevents", "envelope"),
        ("unknown event type", "unknown_type"),
        ("nul character", "nul"),
        ("could not be applied", "apply_failed"),
    ):
        if needle in text:
            return category
    return "invalid"
