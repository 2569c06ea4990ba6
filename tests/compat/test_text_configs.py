"""``compat.text_configs``: TF Serving's BatchingParameters and MonitoringConfig text files
(``--batching_parameters_file``, ``--monitoring_config_file``), read with messages declared as in
session_bundle_config.proto and monitoring_config.proto, and ``--grpc_channel_arguments`` read as
server.cc's ``parseGrpcChannelArgs`` and ``BuildAndStart`` read it. (SSLConfig: test_ssl_config.)
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import grpc
import pytest
from google.protobuf import text_format

from compat.errors import InvalidArgument
from compat.text_configs import (
    BATCHING_DEFAULTS,
    DEFAULT_PROMETHEUS_PATH,
    BatchingParameters,
    MonitoringConfig,
    SSLConfig,
    parse_channel_arguments,
    read_batching_parameters,
    read_prometheus_path,
)


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "config.txt"
    path.write_text(text)
    return path


#: (field, number) of each message, from TF Serving's .proto files.
PROTO_FIELDS = {
    BatchingParameters: [
        ("max_batch_size", 1),
        ("batch_timeout_micros", 2),
        ("max_enqueued_batches", 3),
        ("num_batch_threads", 4),
        ("thread_pool_name", 5),
        ("allowed_batch_sizes", 6),
        ("pad_variable_length_inputs", 7),
        ("enable_large_batch_splitting", 8),
        ("max_execution_batch_size", 9),
    ],
    MonitoringConfig: [("prometheus_config", 1)],
    SSLConfig: [("server_key", 1), ("server_cert", 2), ("custom_ca", 3), ("client_verify", 4)],
}


@pytest.mark.parametrize("message", list(PROTO_FIELDS), ids=lambda m: m.DESCRIPTOR.name)
def test_the_messages_are_tf_servings(message: Any) -> None:
    descriptor = message.DESCRIPTOR
    assert descriptor.full_name == f"tensorflow.serving.{descriptor.name}"
    assert sorted((f.name, f.number) for f in descriptor.fields) == sorted(PROTO_FIELDS[message])
    prometheus = MonitoringConfig.DESCRIPTOR.fields_by_name["prometheus_config"].message_type
    assert [(f.name, f.number) for f in prometheus.fields] == [("enable", 1), ("path", 2)]


def test_tf_servings_batching_config(testdata: Path) -> None:
    assert read_batching_parameters(testdata / "batching_config.txt") == {
        "enabled": True,
        "max_batch_size": 128,
        "batch_timeout_micros": 0,
        "max_enqueued_batches": 1000000,
        "num_batch_threads": 8,
        "pad_variable_length_inputs": False,
    }


def test_every_batching_field_served(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        "max_batch_size { value: 8 } batch_timeout_micros { value: 500 } "
        "max_enqueued_batches { value: 3 } num_batch_threads { value: 2 } "
        "allowed_batch_sizes: 2 allowed_batch_sizes: 4 allowed_batch_sizes: 8 "
        "pad_variable_length_inputs: true",
    )
    assert read_batching_parameters(path) == {
        "enabled": True,
        "max_batch_size": 8,
        "batch_timeout_micros": 500,
        "max_enqueued_batches": 3,
        "num_batch_threads": 2,
        "allowed_batch_sizes": [2, 4, 8],
        "pad_variable_length_inputs": True,
    }


def test_unset_batching_fields_take_tf_servings_defaults(tmp_path: Path) -> None:
    """A field left unset takes what TF Serving's scheduler takes for it (QueueOptions:
    input_batch_size_limit 1000, batch_timeout_micros 0, max_enqueued_batches 10; Options:
    num_batch_threads port::MaxParallelism(), written 0). Wrapper fields: unset is not zero
    (``batch_timeout_micros { value: 0 }`` is set)."""
    assert read_batching_parameters(write(tmp_path, "")) == {
        "enabled": True,
        "max_batch_size": 1000,
        "batch_timeout_micros": 0,
        "max_enqueued_batches": 10,
        "num_batch_threads": 0,
        "pad_variable_length_inputs": False,
    }
    knobs = read_batching_parameters(write(tmp_path, "batch_timeout_micros {}"))
    assert knobs["batch_timeout_micros"] == 0
    knobs = read_batching_parameters(write(tmp_path, "max_batch_size { value: 16 }"))
    assert knobs["max_batch_size"] == 16
    assert knobs["max_enqueued_batches"] == 10


def test_fields_tf_serving_has_and_this_server_ignores_parse(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        'thread_pool_name { value: "pool" } enable_large_batch_splitting { value: true } '
        "max_execution_batch_size { value: 16 } max_batch_size { value: 64 }",
    )
    assert read_batching_parameters(path) == {
        "enabled": True,
        **BATCHING_DEFAULTS,
        "max_batch_size": 64,
        "pad_variable_length_inputs": False,
    }


def test_a_malformed_file_is_tf_servings_error(tmp_path: Path) -> None:
    """proto_util.h ``ParseProtoTextFile``: INVALID_ARGUMENT ``Invalid protobuf file: '<file>'``
    (the parser's own detail follows)."""
    for text, reader in [
        ("max_batch_size: 128", read_batching_parameters),  # a wrapper, not a scalar
        ("unknown_field: 1", read_batching_parameters),
        ("prometheus_config { enable: maybe }", read_prometheus_path),
    ]:
        path = write(tmp_path, text)
        with pytest.raises(InvalidArgument) as e:
            reader(path)
        assert e.value.code == grpc.StatusCode.INVALID_ARGUMENT
        assert e.value.message.startswith(f"Invalid protobuf file: '{path}': ")


@pytest.mark.parametrize(
    ("reader", "what"),
    [
        (read_batching_parameters, "batching parameters"),
        (read_prometheus_path, "monitoring config"),
    ],
)
def test_a_missing_file_names_it(
    tmp_path: Path, reader: Callable[[Path], object], what: str
) -> None:
    """Says which flag's file it is (TF Serving's Env error: NOT_FOUND ``<path>; No such file
    or directory``); both stop the server at startup."""
    path = tmp_path / "missing.txt"
    with pytest.raises(InvalidArgument) as e:
        reader(path)
    assert e.value.message == f"Could not read {what} file {path}: No such file or directory"


def test_tf_servings_monitoring_config(testdata: Path) -> None:
    assert read_prometheus_path(testdata / "monitoring_config.txt") == (
        "/monitoring/prometheus/metrics"
    )


@pytest.mark.parametrize(
    ("text", "path"),
    [
        ("prometheus_config { enable: true }", DEFAULT_PROMETHEUS_PATH),
        ('prometheus_config { enable: true path: "/metrics" }', "/metrics"),
        ('prometheus_config { enable: false path: "/metrics" }', None),
        ("prometheus_config {}", None),
        ("", None),
    ],
)
def test_prometheus_path(tmp_path: Path, text: str, path: str | None) -> None:
    """Off unless enabled; an empty path is ``PrometheusExporter::kPrometheusPath``."""
    assert DEFAULT_PROMETHEUS_PATH == "/monitoring/prometheus/metrics"
    assert read_prometheus_path(write(tmp_path, text)) == path


def test_channel_arguments_are_ints_where_simple_atoi_reads_an_int32() -> None:
    assert parse_channel_arguments(
        "grpc.max_connection_age_ms=2000,grpc.primary_user_agent=tfs,grpc.keepalive_time_ms=-1"
    ) == {
        "grpc.max_connection_age_ms": 2000,
        "grpc.primary_user_agent": "tfs",
        "grpc.keepalive_time_ms": -1,
    }


@pytest.mark.parametrize(
    ("value", "parsed"),
    [
        ("2147483647", 2147483647),
        ("-2147483648", -2147483648),
        ("2147483648", "2147483648"),  # past int32: SimpleAtoi fails, a string
        ("-2147483649", "-2147483649"),
        ("+7", 7),
        ("007", 7),
        ("0", 0),
        ("0x10", "0x10"),  # base 10 only
        ("1_000", "1_000"),  # Python's int() would take it; SimpleAtoi does not
        ("1.5", "1.5"),
        ("", ""),
        ("١٢", "١٢"),  # digits that are not ASCII
    ],
)
def test_channel_argument_int32_edges(value: str, parsed: int | str) -> None:
    assert parse_channel_arguments(f"k={value}") == {"k": parsed}


def test_split_at_commas_then_equal_signs() -> None:
    """``Split(item, "=")`` and ``key_val[1]``: what follows a second ``=`` is dropped."""
    assert parse_channel_arguments("a=1=2,b=x=y") == {"a": 1, "b": "x"}
    assert parse_channel_arguments("") == {}


@pytest.mark.parametrize("text", ["grpc.max_connection_age_ms", "a=1,b", "=5"])
def test_an_item_without_key_and_value_is_refused(text: str) -> None:
    with pytest.raises(InvalidArgument) as e:
        parse_channel_arguments(text)
    assert e.value.message.startswith("--grpc_channel_arguments: ")
    assert "is not key=value" in e.value.message


def test_the_messages_round_trip_text_format() -> None:
    params = BatchingParameters()
    params.max_batch_size.value = 4
    params.allowed_batch_sizes.extend([2, 4])
    back = text_format.Parse(text_format.MessageToString(params), BatchingParameters())
    assert back == params
    assert BatchingParameters.FromString(params.SerializeToString()) == params
