"""TF Serving's BatchingParameters, MonitoringConfig and SSLConfig text files, and the
``key=value,...`` list of ``--grpc_channel_arguments``.

The tensorflow-serving-api wheel ships none of ``session_bundle_config.proto``,
``monitoring_config.proto`` and ``ssl_config.proto``, so their messages are declared here from
TF Serving's .proto files (field names and numbers as there) and parsed with protobuf's own
``text_format``.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
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
    ssl = fd.message_type.add(name="SSLConfig")
    for number, name, kind in [
        (1, "server_key", _F.TYPE_STRING),
        (2, "server_cert", _F.TYPE_STRING),
        (3, "custom_ca", _F.TYPE_STRING),
        (4, "client_verify", _F.TYPE_BOOL),
    ]:
        ssl.field.add(name=name, number=number, type=kind, label=_F.LABEL_OPTIONAL)
    pool = descriptor_pool.DescriptorPool()
    pool.AddSerializedFile(wrappers_pb2.DESCRIPTOR.serialized_pb)
    pool.Add(fd)
    return {
        name: message_factory.GetMessageClass(
            pool.FindMessageTypeByName(f"tensorflow.serving.{name}")
        )
        for name in ("BatchingParameters", "MonitoringConfig", "SSLConfig")
    }


_MESSAGES = _build()
BatchingParameters = _MESSAGES["BatchingParameters"]
MonitoringConfig = _MESSAGES["MonitoringConfig"]
SSLConfig = _MESSAGES["SSLConfig"]

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


BATCHING_DEFAULTS: dict[str, int] = {
    "max_batch_size": 1000,
    "batch_timeout_micros": 0,
    "max_enqueued_batches": 10,
    "num_batch_threads": 0,
}
"""What TF Serving's batching takes for a BatchingParameters field left unset (its scheduler's
``QueueOptions``: ``input_batch_size_limit`` 1000, ``batch_timeout_micros`` 0,
``max_enqueued_batches`` 10; ``Options::num_batch_threads``: ``port::MaxParallelism()``, every
core, which ``config.args.BatchingArgs`` writes 0), and with ``--enable_batching`` alone."""


def read_batching_parameters(path: str | Path) -> dict[str, Any]:
    """BatchingParameters text -> the keyword arguments of ``serve_app.config.args.BatchingArgs``;
    a field left unset takes TF Serving's default (``BATCHING_DEFAULTS``)."""
    p = _parse(path, BatchingParameters, "batching parameters")
    knobs: dict[str, Any] = {"enabled": True, **BATCHING_DEFAULTS}
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


BATCHING_PARAMS_FILE = "batching_params.pbtxt"
"""A version's own BatchingParameters, in its SavedModel directory
(``--enable_per_model_batching_parameters``)."""


def read_session_config(path: str | Path) -> str:
    """A TF ConfigProto text file (``--tensorflow_session_config_file``) -> its text, checked:
    a file that does not parse fails startup with TF Serving's message."""
    from tensorflow.core.protobuf import config_pb2

    _parse(path, config_pb2.ConfigProto, "session config")
    return Path(path).read_text()


def session_threads(text: str) -> tuple[int, int]:
    """The (intra-op, inter-op) threads a ConfigProto text sets; 0 where it sets none."""
    if not text:
        return 0, 0
    from tensorflow.core.protobuf import config_pb2

    config = text_format.Parse(text, config_pb2.ConfigProto())
    return config.intra_op_parallelism_threads, config.inter_op_parallelism_threads


def read_prometheus_path(path: str | Path) -> str | None:
    """MonitoringConfig text -> the metrics path, or None when Prometheus export is off."""
    config = _parse(path, MonitoringConfig, "monitoring config")
    prometheus = config.prometheus_config
    if not prometheus.enable:
        return None
    return prometheus.path or DEFAULT_PROMETHEUS_PATH


@dataclass(frozen=True)
class Tls:
    """An SSLConfig: the server's PEM key and certificate, the CA that client certificates must
    chain to, and whether a client must present one (mutual TLS)."""

    server_key: str
    server_cert: str
    custom_ca: str = ""
    client_verify: bool = False


def read_ssl_config(path: str | Path) -> Tls:
    """SSLConfig text (``--ssl_config_file``) -> ``Tls``, checked as far as a server can be
    before it binds: a key and a certificate that belong together, a CA that parses, and a CA
    when client certificates are to be verified (TF Serving verifies them against gRPC's
    default roots then; here a CA must be named)."""
    import ssl
    import tempfile

    config = _parse(path, SSLConfig, "SSL config")
    tls = Tls(config.server_key, config.server_cert, config.custom_ca, config.client_verify)
    if not tls.server_key or not tls.server_cert:
        raise InvalidArgument(f"SSL config {path} needs both server_key and server_cert")
    if tls.client_verify and not tls.custom_ca:
        raise InvalidArgument(
            f"SSL config {path}: client_verify needs custom_ca, the CA client certificates "
            "must chain to"
        )
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    with tempfile.TemporaryDirectory() as private:
        key, cert = Path(private, "key.pem"), Path(private, "cert.pem")
        key.write_text(tls.server_key)
        cert.write_text(tls.server_cert)
        try:
            context.load_cert_chain(cert, key)
        except (ssl.SSLError, ValueError) as e:
            raise InvalidArgument(
                f"SSL config {path}: server_key and server_cert are no PEM key and certificate "
                f"that belong together: {e}"
            ) from None
    if tls.custom_ca:
        try:
            context.load_verify_locations(cadata=tls.custom_ca)
        except (ssl.SSLError, ValueError) as e:
            raise InvalidArgument(
                f"SSL config {path}: custom_ca is no PEM certificate: {e}"
            ) from None
    return tls


INT32 = range(-(2**31), 2**31)


def parse_channel_arguments(text: str) -> dict[str, int | str]:
    """``--grpc_channel_arguments`` (``grpc.max_connection_age_ms=2000,key=value``) -> gRPC
    server arguments, as TF Serving's ``parseGrpcChannelArgs`` and ``BuildAndStart`` read
    them: split at commas, then at ``=`` (a second ``=`` ends the value); a value that reads
    as a 32-bit integer (``absl::SimpleAtoi``) is passed as one, any other as a string. An item
    without ``=`` is refused (TF Serving reads past the end of its split there)."""
    arguments: dict[str, int | str] = {}
    for item in text.split(","):
        if not item.strip():
            continue
        key, sep, value = item.partition("=")
        if not sep or not key.strip():
            raise InvalidArgument(
                f"--grpc_channel_arguments: {item!r} is not key=value "
                "(e.g. grpc.max_connection_age_ms=2000)"
            )
        # TF Serving's value is key_val[1] of Split(item, "="): a second "=" ends it
        arguments[key.strip()] = _int32(value.split("=")[0].strip())
    return arguments


def _int32(value: str) -> int | str:
    if re.fullmatch(r"[+-]?[0-9]+", value) is None:  # not int()'s "1_000" or other digits
        return value
    number = int(value, 10)
    return number if number in INT32 else value
