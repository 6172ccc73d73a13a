"""The service's figures as Prometheus metrics, served on a port of their own.

:class:`PrometheusMetrics` keeps them in a registry of its own, so two apps in one process
(the tests') never share a figure. It takes the same calls as the EMF writer, with the
EMF metric names, and turns those it has a counterpart for into Prometheus metrics with the
labels ``model`` and ``model_version``; the others stay CloudWatch-only. :class:`MetricsServer`
serves the registry over HTTP on ``METRICS_PORT`` of the loopback interface: the collector
sidecar shares the task's network namespace, while the load balancer, which routes to
``PORT``, cannot reach it.

Metrics (``recommender_`` prefix):

- ``requests_total{outcome}``: requests by outcome, ``ok``, a fallback kind (``popularity``,
  ``store_timeout``, ``store_unavailable``) for answered ones (2xx), or ``error`` for 500s
  and requests refused for want of a model (503);
- ``request_latency_seconds``: time in the service per answered request;
- ``top_score``: score of the first title of model-ranked answers;
- ``shadow_overlap_at_k``: under the candidate's version, shared titles of both top-k lists;
- ``background_dropped_total{queue}``: jobs a full queue dropped (``predictions``,
  ``shadow``, ``features``, ``prediction_log``);
- ``prediction_write_errors_total``, ``prediction_log_write_errors_total``: records lost to a
  failed write to the predictions table or to the prediction log;
- ``experiment_exposures_total{experiment, cell}``: answers to members in an experiment's
  cell, under the version that ranked them;
- ``experiment_version_unavailable_total``: answers to members whose cell's version this
  task does not serve, so the primary version ranked them;
- ``model_info{candidate_version}``: 1, for the configured versions.
"""

from __future__ import annotations

import threading
from collections.abc import Mapping
from wsgiref.simple_server import WSGIRequestHandler, make_server

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, make_wsgi_app
from prometheus_client.exposition import ThreadingWSGIServer

MODEL_LABELS = ("model", "model_version")
# The service answers in about 10-50 ms; finer buckets there, coarse ones for the tail.
LATENCY_BUCKETS = (0.005, 0.01, 0.015, 0.02, 0.025, 0.03, 0.04, 0.05, 0.075, 0.1, 0.25, 0.5, 1.0)
# BPR scores (member . title + bias) are unbounded; trained models put top scores around 0-10.
# No negative bound: prometheus_client leaves out the _sum (so the mean) of a histogram with
# one, and a rare negative top score still counts, under le="0.0".
TOP_SCORE_BUCKETS = (0.0, 0.5, 1.0, 1.5, 2.0, 3.0, 4.0, 5.0, 6.0, 8.0, 10.0, 15.0)
OVERLAP_BUCKETS = tuple(step / 10 for step in range(11))
# How long stop() waits at most for the serving thread to notice.
SHUTDOWN_POLL_SECONDS = 0.05


class PrometheusMetrics:
    """The Prometheus side of the service's metrics, in a registry of its own."""

    def __init__(
        self, *, model_name: str, model_version: str, candidate_version: str | None
    ) -> None:
        self.registry = registry = CollectorRegistry()
        self._requests = Counter(
            "recommender_requests",
            "Requests by outcome: ok, the fallback kind of the answer, or error (5xx).",
            [*MODEL_LABELS, "outcome"],
            registry=registry,
        )
        self._latency = Histogram(
            "recommender_request_latency_seconds",
            "Time in the service per answered request.",
            MODEL_LABELS,
            buckets=LATENCY_BUCKETS,
            registry=registry,
        )
        dropped = Counter(
            "recommender_background_dropped",
            "Background jobs dropped by a full queue.",
            [*MODEL_LABELS, "queue"],
            registry=registry,
        )
        # EMF count name -> the counter and the values of its labels after the model's.
        self._counted: dict[str, tuple[Counter, tuple[str, ...]]] = {
            "Error": (self._requests, ("error",)),
            "PredictionWriteDropped": (dropped, ("predictions",)),
            "ShadowDropped": (dropped, ("shadow",)),
            "FeatureReadDropped": (dropped, ("features",)),
            "PredictionLogDropped": (dropped, ("prediction_log",)),
            "PredictionWriteError": (
                Counter(
                    "recommender_prediction_write_errors",
                    "Prediction records lost to a failed write to the predictions table.",
                    MODEL_LABELS,
                    registry=registry,
                ),
                (),
            ),
            "PredictionLogWriteError": (
                Counter(
                    "recommender_prediction_log_write_errors",
                    "Prediction records lost to a failed put to the prediction log.",
                    MODEL_LABELS,
                    registry=registry,
                ),
                (),
            ),
            "ExperimentVersionUnavailable": (
                Counter(
                    "recommender_experiment_version_unavailable",
                    "Answers to members whose cell's model version this task does not serve.",
                    MODEL_LABELS,
                    registry=registry,
                ),
                (),
            ),
        }
        self._exposures = Counter(
            "recommender_experiment_exposures",
            "Answers to members in an experiment's cell, by the version that ranked them.",
            [*MODEL_LABELS, "experiment", "cell"],
            registry=registry,
        )
        # EMF observation name -> its histogram.
        self._observed = {
            "TopScore": Histogram(
                "recommender_top_score",
                "Score of the first title of model-ranked answers.",
                MODEL_LABELS,
                buckets=TOP_SCORE_BUCKETS,
                registry=registry,
            ),
            "ShadowOverlapAtK": Histogram(
                "recommender_shadow_overlap_at_k",
                "Shared titles of the served and the candidate's top k / the longer list.",
                MODEL_LABELS,
                buckets=OVERLAP_BUCKETS,
                registry=registry,
            ),
        }
        Gauge(
            "recommender_model_info",
            "1, labelled with the configured model versions.",
            [*MODEL_LABELS, "candidate_version"],
            registry=registry,
        ).labels(model_name, model_version, candidate_version or "").set(1)

    def observe(self, dimensions: Mapping[str, str], name: str, value: float) -> None:
        """Record an EMF observation in its histogram, if it has one."""
        histogram = self._observed.get(name)
        if histogram is not None:
            histogram.labels(*_model_labels(dimensions)).observe(value)

    def count(self, dimensions: Mapping[str, str], name: str, amount: float = 1) -> None:
        """Add an EMF count to its counter, if it has one."""
        counted = self._counted.get(name)
        if counted is not None:
            counter, labels = counted
            counter.labels(*_model_labels(dimensions), *labels).inc(amount)

    def answered(self, dimensions: Mapping[str, str], *, outcome: str, seconds: float) -> None:
        """Record an answered request: its outcome and its latency."""
        labels = _model_labels(dimensions)
        self._requests.labels(*labels, outcome).inc()
        self._latency.labels(*labels).observe(seconds)

    def exposed(self, dimensions: Mapping[str, str], *, experiment: str, cell: str) -> None:
        """Count an answer to a member in ``cell`` of ``experiment``."""
        self._exposures.labels(*_model_labels(dimensions), experiment, cell).inc()


class MetricsServer:
    """Serves a registry in Prometheus' text format on its own port and thread."""

    def __init__(self, registry: CollectorRegistry, *, host: str, port: int) -> None:
        """Listen on ``host:port`` (port 0: one the system picks); raises OSError when busy."""
        self._server = make_server(
            host,
            port,
            make_wsgi_app(registry),
            server_class=ThreadingWSGIServer,
            handler_class=_QuietHandler,
        )
        self._thread = threading.Thread(
            target=self._server.serve_forever,
            kwargs={"poll_interval": SHUTDOWN_POLL_SECONDS},
            name="metrics-server",
            daemon=True,
        )

    @property
    def port(self) -> int:
        return self._server.server_port

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        """Stop serving and release the port."""
        self._server.shutdown()
        self._server.server_close()
        self._thread.join()


class _QuietHandler(WSGIRequestHandler):
    # A line per scrape would drown the service's own log lines.
    def log_message(self, *args: object) -> None:
        """Log nothing."""


def _model_labels(dimensions: Mapping[str, str]) -> tuple[str, str]:
    return dimensions["ModelName"], dimensions["ModelVersion"]
