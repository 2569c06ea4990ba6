"""Prometheus metrics: recorded with Ray's metrics API where they happen, served by any replica.

A request is answered by one serving replica (``runtime.ingress``), or forwarded from it to a
model's own deployment; any of them may have several replicas on several nodes. Three parts:

* ``labels``: what the families are called and labelled; a request's labels come from the typed
  ``ModelCall`` and the status of its ``ModelReply`` (``serve_app.calls``);
* ``recording``: each value recorded once, in the process that knows it (requests added up
  in-process and flushed every second: Ray's per-request metric calls cost a tiny model much of
  its throughput, measured as in the README's "Benchmark");
* ``scraping``: the page at ``prometheus_path``, merged from every node's Ray metrics agent,
  with the version states.

Exported names carry Ray's ``ray_`` prefix: ``ray_tfserving_requests_total``,
``ray_tfserving_request_errors_total``, ``ray_tfserving_request_latency_seconds``,
``ray_tfserving_batch_size``, ``ray_tfserving_model_load_latency_seconds``,
``ray_tfserving_lifecycle_errors_total``,
``ray_tfserving_request_log_records_total``, ``ray_tfserving_model_version_state``, and for
shadow traffic ``ray_tfserving_shadow_requests_total``, ``ray_tfserving_shadow_seconds_total``,
``ray_tfserving_shadow_max_abs_diff`` and the figures the page derives from them,
``ray_tfserving_shadow_diff_rate`` and ``ray_tfserving_shadow_latency_ratio``; under a memory
budget (``paging``) ``ray_tfserving_model_resident``, ``ray_tfserving_model_memory_bytes``,
``ray_tfserving_model_page_ins_total``, ``ray_tfserving_model_evictions_total``,
``ray_tfserving_model_cold_start_seconds`` and ``ray_tfserving_replica_model_bytes`` (and its
``_peak``).
"""

from serve_app.metrics.labels import RequestLabels
from serve_app.metrics.recording import (
    flush,
    learn_signatures,
    record_batch,
    record_lifecycle_error,
    record_load,
    record_model_call,
    record_request,
    record_request_log,
    record_shadow,
    serving,
)
from serve_app.metrics.scraping import merge, prometheus_text

__all__ = [
    "RequestLabels",
    "flush",
    "learn_signatures",
    "merge",
    "prometheus_text",
    "record_batch",
    "record_lifecycle_error",
    "record_load",
    "record_model_call",
    "record_request",
    "record_request_log",
    "record_shadow",
    "serving",
]
