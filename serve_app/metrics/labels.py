"""What the metrics are called and labelled: the shared vocabulary of recording and scraping.

A request's labels come from the typed call and its answer (``serve_app.calls``), never from the
request's bytes: the model and signature from ``ModelCall.spec`` (REST Predict's signature from
its parsed JSON, ``ModelCall.signature``), the API and protocol from ``ModelCall.api`` and
``ModelCall.wire``, the version from the route the ingress resolved, and the status from the
reply's gRPC code (``ModelReply.code``, or the error of a call that did not parse). A model or
signature name that is no served one becomes ``UNKNOWN`` when it is recorded
(``recording.RequestRecorder``): a client sending made-up names adds no series.
"""

from __future__ import annotations

from typing import NamedTuple

from compat.errors import StatusCode
from compat.protos import model_pb2
from serve_app.calls import Api, ModelCall, Wire

PREFIX = "ray_tfserving_"
"""What our families are called once exported (Ray adds ``ray_`` to every name)."""
LATENCY_BUCKETS = [
    0.0005,
    0.001,
    0.0025,
    0.005,
    0.01,
    0.025,
    0.05,
    0.1,
    0.25,
    0.5,
    1.0,
    2.5,
    5.0,
    10.0,
    30.0,
]
BUCKET_LABELS = [*(repr(float(b)) for b in LATENCY_BUCKETS), "+Inf"]
"""The ``le`` label of each latency bucket, as Prometheus writes it (the last one unbounded)."""
BATCH_BUCKETS = [1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024]
LOAD_BUCKETS = [0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0, 600.0]
EXACT_SUM = "_exact_sum"
"""Suffix of the counter that keeps a histogram's exact sum (``recording._Histogram``)."""
PER_BUCKET = "_per_bucket"
"""Suffix of a counter of observations per bucket (label ``le``, not cumulative) that
``scraping.merge`` turns into the histogram of the name without it (``RequestRecorder``)."""
DEFAULT_SIGNATURE = "serving_default"
"""The ``signature`` label of a call that names none (TF Serving's default signature)."""
UNKNOWN = "__unknown__"
"""The ``model`` or ``signature`` label of a call naming a model or signature not served."""
MAX_SIGNATURES = 1024
"""The (model, signature) pairs a process labels by name; beyond, they are ``UNKNOWN`` too."""
NO_SIGNATURE_APIS = frozenset({Api.METADATA, Api.MULTI_INFERENCE})
"""APIs whose ``signature`` label is empty: they name no signature (or one per task)."""


class RequestLabels(NamedTuple):
    """The labels of one answered model request, in the order of ``REQUEST_LABELS``."""

    model: str
    version: str
    """The resolved version; "" when the call failed before a version was chosen."""
    signature: str
    api: str
    """``Api``'s value."""
    protocol: str
    """``Wire``'s value."""
    status: str
    """The gRPC status code's name (``OK``, ``NOT_FOUND``, ...)."""

    @classmethod
    def of_call(cls, call: ModelCall, version: int | None, code: StatusCode) -> RequestLabels:
        """A parsed call, the version it was routed to (None: not resolved) and its status."""
        return cls(
            str(call.spec.name),
            "" if version is None else str(version),
            "" if call.api in NO_SIGNATURE_APIS else call.signature or DEFAULT_SIGNATURE,
            call.api.value,
            call.wire.value,
            code.name,
        )

    @classmethod
    def unparsed(
        cls, spec: model_pb2.ModelSpec, api: Api, wire: Wire, code: StatusCode
    ) -> RequestLabels:
        """A call whose request did not parse: the model from the path, no version, no
        signature."""
        return cls(str(spec.name), "", "", api.value, wire.value, code.name)

    @property
    def error(self) -> bool:
        return self.status != StatusCode.OK.name

    def tags(self) -> dict[str, str]:
        """The labels as Ray's metric tags."""
        return self._asdict()


REQUEST_LABELS: tuple[str, ...] = RequestLabels._fields
"""The request series' labels: model, version, signature, api, protocol, status."""
