"""The server's Prometheus metrics (prometheus-client), in a registry of each app's own, so that
two apps in one process (tests) count apart."""

from __future__ import annotations

from collections.abc import Callable

from bertkit.serve.batcher import BatchStats

ENDPOINTS = ("/", "/health", "/info", "/metrics", "/v1/embeddings", "/v1/models", "/embed", "/predict", "/fill-mask", "/tokenize")
LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30)
SIZE_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024, 2048)
TOKEN_BUCKETS = (64, 256, 1024, 2048, 4096, 8192, 16384, 32768, 65536)


def endpoint_label(path: str) -> str:
    """The path when it is one of ours, else "other": unknown paths must not grow the label set."""
    return path if path in ENDPOINTS else "other"


class Metrics:
    def __init__(self) -> None:
        from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

        self.registry = CollectorRegistry()
        r = self.registry
        self.requests = Counter("bertkit_requests", "HTTP requests answered, by endpoint and status.",
                                ["endpoint", "status"], registry=r)
        self.errors = Counter("bertkit_errors", "Error responses, by endpoint and error type.",
                              ["endpoint", "type"], registry=r)
        self.latency = Histogram("bertkit_request_duration_seconds", "Time from request to response.",
                                 ["endpoint"], buckets=LATENCY_BUCKETS, registry=r)
        self.queue_depth = Gauge("bertkit_queue_depth", "Inputs waiting for a batch.", registry=r)
        self.in_flight = Gauge("bertkit_requests_in_flight", "Requests waiting for or using the model.", registry=r)
        self.batch_size = Histogram("bertkit_batch_size", "Inputs per batch.", buckets=SIZE_BUCKETS, registry=r)
        self.batch_tokens = Histogram("bertkit_batch_tokens", "Tokens per batch, padding included.",
                                      buckets=TOKEN_BUCKETS, registry=r)
        self.batch_latency = Histogram("bertkit_batch_duration_seconds", "Time the model takes per batch.",
                                       buckets=LATENCY_BUCKETS, registry=r)
        self.input_tokens = Counter("bertkit_input_tokens", "Tokens of the inputs sent to the model.", registry=r)

    def watch(self, *, queue_depth: Callable[[], float], in_flight: Callable[[], float]) -> None:
        """Gauges read when scraped."""
        self.queue_depth.set_function(queue_depth)
        self.in_flight.set_function(in_flight)

    def observe_batch(self, stats: BatchStats) -> None:
        self.batch_size.observe(stats.items)
        self.batch_tokens.observe(stats.padded_tokens)
        self.batch_latency.observe(stats.seconds)

    def observe_request(self, path: str, status: int, seconds: float) -> None:
        endpoint = endpoint_label(path)
        self.requests.labels(endpoint, str(status)).inc()
        self.latency.labels(endpoint).observe(seconds)

    def observe_error(self, path: str, type: str) -> None:
        self.errors.labels(endpoint_label(path), type).inc()

    def render(self) -> tuple[bytes, str]:
        from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

        return generate_latest(self.registry), CONTENT_TYPE_LATEST
