"""TF Serving's BatchingParameters and MonitoringConfig text files.

The tensorflow-serving-api wheel ships neither ``session_bundle_config.proto`` nor
``monitoring_config.proto``, so their messages are declared here from TF Serving's .proto files
(field names and numbers as there) and parsed with protobuf's own ``text_format``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from google.protobuf import (
    descriptor_pb2,
    descriptor_pool,
    message_factory,
    text_format,
    wrappers_pb2,
)

from compat.errors import InvalidArgument

_F = descriptor_pb2.FieldDescriptorProto
_INT64 = ".google.protobuf.Int64Value"


def _build() -> dict[str, Any]:
    fd = descriptor_pb2.FileDescriptorProto(
        name="ray_tfserving/text_configs.proto",
        package="tensorflow.serving",
        syntax="proto3",
        dependency=["google/protobuf/wrappers.proto"],
    )
    batching = fd.message_type.add(name="BatchingParameters")
    for number, name, kind, type_name, label in [
        (1, "max_batch_size", _F.TYPE_MESSAGE, _INT64, _F.LABEL_OPTIONAL),
        (2, "batch_timeout_micros", _F.TYPE_MESSAGE, _INT64, _F.LABEL_OPTIONAL),
        (3, "max_enqueued_batches", _F.TYPE_MESSAGE, _INT64, _F.LABEL_OPTIONAL),
        (4, "num_batch_threads", _F.TYPE_MESSAGE, _INT64, _F.LABEL_OPTIONAL),
        (5, "thread_pool_name", _F.TYPE_MESSAGE, ".google.protobuf.StringValue", _F.LABEL_OPTIONAL),
        (6, "allowed_batch_sizes", _F.TYPE_INT64, None, _F.LABEL_REPEATED),
        (7, "pad_variable_length_inputs", _F.TYPE_BOOL, None, _F.LABEL_OPTIONAL),
        (
            8,
            "enable_large_batch_splitting",
            _F.TYPE_MESSAGE,
            ".google.protobuf.BoolValue",
            _F.LABEL_OPTIONAL,
        ),
        (9, "max_execution_batch_size", _F.TYPE_MESSAGE, _INT64, _F.LABEL_OPTIONAL),
    ]:
        field = batching.field.add(name=name, number=number, type=kind, label=label)
        if type_name:
            field.type_name = type_name
    prometheus = fd.message_type.add(name="PrometheusConfig")
    prometheus.field.add(name="enable", number=1, type=_F.TYPE_BOOL, label=_F.LABEL_OPTIONAL)
    prometheus.field.add(name="path", number=2, type=_F.TYPE_STRING, label=_F.LABEL_OPTIONAL)
    monitoring = fd.message_type.add(name="MonitoringConfig")
    monitoring.field.add(
        name="prometheus_config",
        number=1,
        type=_F.TYPE_MESSAGE,
        type_name=".tensorflow.serving.PrometheusConfig",
        label=_F.LABEL_OPTIONAL,
    )
    pool = descriptor_pool.DescriptorPool()
    pool.AddSerializedFile(wrappers_pb2.DESCRIPTOR.serialized_pb)
    pool.Add(fd)
    return {
        name: message_factory.GetMessageClass(
            pool.FindMessageTypeByName(f"tensorflow.serving.{name}")
        )
        for name in ("BatchingParameters", "MonitoringConfig")
    }


_MESSAGES = _build()
BatchingParameters = _MESSAGES["BatchingParameters"]
MonitoringConfig = _MESSAGES["MonitoringConfig"]

DEFAULT_PROMETHEUS_PATH = "/monitoring/prometheus/metrics"


def _parse(path: str | Path, message: Any, what: str) -> Any:
    try:
        text = Path(path).read_text()
    except OSError as e:
        raise InvalidArgument(f"Could not read {what} file {path}: {e.strerror}") from None
    try:
        return text_format.Parse(text, message())
    except text_format.ParseError as e:
        raise InvalidArgument(f"Invalid protobuf file: '{path}': {e}") from None


def read_batching_parameters(path: str | Path) -> dict[str, Any]:
    """BatchingParameters text -> the keyword arguments of ``serve_app.args.BatchingArgs``."""
    p = _parse(path, BatchingParameters, "batching parameters")
    knobs: dict[str, Any] = {"enabled": True}
    for name in (
        "max_batch_size",
        "batch_timeout_micros",
        "max_enqueued_batches",
        "num_batch_threads",
    ):
        if p.HasField(name):
            knobs[name] = getattr(p, name).value
    if p.allowed_batch_sizes:
        knobs["allowed_batch_sizes"] = list(p.allowed_batch_sizes)
    knobs["pad_variable_length_inputs"] = p.pad_variable_length_inputs
    return knobs


def read_prometheus_path(path: str | Path) -> str | None:
    """MonitoringConfig text -> the metrics path, or None when Prometheus export is off."""
    config = _parse(path, MonitoringConfig, "monitoring config")
    prometheus = config.prometheus_config
    if not prometheus.enable:
        return None
    return prometheus.path or DEFAULT_PROMETHEUS_PATH
