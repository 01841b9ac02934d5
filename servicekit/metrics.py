"""Prometheus metrics of every service, in one registry served on the HTTP port at /metrics."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

REGISTRY = CollectorRegistry(auto_describe=True)

# every gRPC server
RPCS = Counter(
    "mirror_rpc_requests", "RPCs served, by method and status code", ["method", "code"],
    registry=REGISTRY,
)
RPC_SECONDS = Histogram(
    "mirror_rpc_duration_seconds",
    "Time to serve an RPC (a stream: until it ends)",
    ["method"],
    buckets=(0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 120),
    registry=REGISTRY,
)

# gateway
EVENTS_RECEIVED = Counter(
    "mirror_events_received", "Registry events received", ["source", "action"], registry=REGISTRY
)
EVENTS_DEDUPLICATED = Counter(
    "mirror_events_deduplicated", "Events dropped as duplicates", registry=REGISTRY
)
EVENTS_REJECTED = Counter(
    "mirror_events_rejected", "Webhook requests refused", ["reason"], registry=REGISTRY
)
INBOX_DEPTH = Gauge("mirror_inbox_depth", "Events recorded but not yet acted on", registry=REGISTRY)
RUNS = Counter("mirror_runs", "Policy runs by final state", ["state"], registry=REGISTRY)
POLICY_RUNS = Counter(
    "mirror_policy_runs", "Runs of each policy by final state", ["policy", "state"],
    registry=REGISTRY,
)
POLICY_LAST_SUCCESS = Gauge(
    "mirror_policy_last_success_timestamp_seconds",
    "When each policy last mirrored an image (Unix time)",
    ["policy"],
    registry=REGISTRY,
)
EVENT_DELIVERIES = Counter(
    "mirror_event_deliveries",
    "Outbound event (subscription) delivery attempts by outcome: delivered, retried, failed",
    ["outcome"],
    registry=REGISTRY,
)

# policy
EVALUATIONS = Counter(
    "mirror_policy_evaluations", "Policy evaluations", ["matched"], registry=REGISTRY
)

# transfer
TRANSFERS = Counter("mirror_transfers", "Transfers by final state", ["state"], registry=REGISTRY)
TRANSFERS_ACTIVE = Gauge(
    "mirror_transfers_active", "Transfers waiting or running", ["state"], registry=REGISTRY
)
BYTES_COPIED = Counter("mirror_bytes_copied", "Blob bytes uploaded", registry=REGISTRY)
BLOBS = Counter("mirror_blobs", "Blobs by outcome", ["outcome"], registry=REGISTRY)
COPY_SECONDS = Histogram(
    "mirror_copy_duration_seconds",
    "Time to copy one image",
    buckets=(0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300, 900),
    registry=REGISTRY,
)
SPOOL_BYTES = Gauge("mirror_spool_bytes", "Bytes held in the spool folder", registry=REGISTRY)
REGISTRY_ERRORS = Counter(
    "mirror_registry_errors", "Registry errors", ["registry", "code"], registry=REGISTRY
)

# scanner
SCANS = Counter("mirror_scans", "Image scans", ["result"], registry=REGISTRY)
