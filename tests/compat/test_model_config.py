"""``compat.model_config``: TF Serving's ModelServerConfig text files, parsed with its own protos,
and the checks ``ServerCore`` makes on a ``model_config_list`` (server_core.cc)."""

from __future__ import annotations

from pathlib import Path

import grpc
import pytest

from compat import model_config
from compat.errors import FailedPrecondition, InvalidArgument
from compat.model_config import ModelEntry


def entries(text: str) -> list[ModelEntry]:
    return model_config.entries(model_config.parse_text(text))


def test_tf_servings_good_model_config(testdata: Path) -> None:
    config = model_config.read_file(testdata / "good_model_config.txt")
    assert config.WhichOneof("config") == "model_config_list"
    assert [
        (e.name, e.base_path, e.policy, e.num_versions) for e in model_config.entries(config)
    ] == [
        ("half_plus_two", "${TEST_HALF_PLUS_TWO_DIR}", "latest", 1),
        ("half_plus_three", "${TEST_HALF_PLUS_THREE_DIR}", "latest", 1),
    ]


def test_tf_servings_bad_model_config_is_the_parsers_error(testdata: Path) -> None:
    path = testdata / "bad_model_config.txt"
    with pytest.raises(InvalidArgument) as e:
        model_config.read_file(path)
    assert e.value.code == grpc.StatusCode.INVALID_ARGUMENT
    assert e.value.message.startswith(
        f"Invalid protobuf file: '{path}'. Error parsing text-format "
        "tensorflow.serving.ModelServerConfig: 1:"
    )


def test_an_unreadable_file_names_it(tmp_path: Path) -> None:
    """ray-tfserving's message, which says what the file is for (TF Serving's Env error is
    NOT_FOUND ``<path>; No such file or directory``); both stop the server at startup."""
    with pytest.raises(InvalidArgument) as e:
        model_config.read_file(tmp_path / "missing.conf")
    assert e.value.message == (
        f"Could not read model config file {tmp_path / 'missing.conf'}: No such file or directory"
    )


def test_an_empty_config_serves_no_model() -> None:
    assert entries("") == []
    assert entries("model_config_list {}") == []


@pytest.mark.parametrize(
    ("policy", "kind", "num_versions", "versions"),
    [
        ("", "latest", 1, []),
        ("model_version_policy { latest {} }", "latest", 1, []),
        ("model_version_policy { latest { num_versions: 3 } }", "latest", 3, []),
        ("model_version_policy { all {} }", "all", 1, []),
        ("model_version_policy { specific { versions: 42 versions: 7 } }", "specific", 1, [42, 7]),
    ],
)
def test_version_policies(policy: str, kind: str, num_versions: int, versions: list[int]) -> None:
    """The default is the latest version only (model_server_config.proto); ``latest {}`` with
    no num_versions is one (file_system_storage_path_source.cc serves ``max(1, n)``)."""
    (entry,) = entries(f'model_config_list {{ config {{ name: "m" base_path: "/m" {policy} }} }}')
    assert (entry.policy, entry.num_versions, entry.versions) == (kind, num_versions, versions)


def test_version_labels() -> None:
    (entry,) = entries(
        'model_config_list { config { name: "m" base_path: "/m" '
        "version_labels { key: 'stable' value: 42 } version_labels { key: 'canary' value: 43 } "
        "version_labels { key: 'also_stable' value: 42 } } }"
    )
    assert entry.labels == {"stable": 42, "canary": 43, "also_stable": 42}


def test_duplicate_names_are_tf_servings_error() -> None:
    with pytest.raises(InvalidArgument) as e:
        entries(
            'model_config_list { config { name: "m" base_path: "/a" } '
            'config { name: "n" base_path: "/b" } config { name: "m" base_path: "/c" } }'
        )
    assert e.value.message == "Illegal to list model m multiple times in config list"


def test_an_empty_base_path_is_tf_servings_error() -> None:
    """ValidateModelConfigList: an empty base path is no absolute path or URI."""
    with pytest.raises(InvalidArgument) as e:
        entries('model_config_list { config { name: "m" } }')
    assert e.value.message == ("Expected model m to have an absolute path or URI; got base_path()=")


def test_a_model_without_a_name_is_refused() -> None:
    """Beyond TF Serving, which takes the empty name as a model's."""
    with pytest.raises(InvalidArgument) as e:
        entries('model_config_list { config { base_path: "/m" } }')
    assert e.value.message == "Model config has no name"


def test_platform_tensorflow_is_served_and_others_refused() -> None:
    (entry,) = entries(
        'model_config_list { config { name: "m" base_path: "/m" model_platform: "tensorflow" } }'
    )
    assert entry.name == "m"
    (untyped,) = entries('model_config_list { config { name: "m" base_path: "/m" } }')
    assert untyped.name == "m"  # beyond TF Serving, which wants a platform named
    with pytest.raises(FailedPrecondition) as e:
        entries(
            'model_config_list { config { name: "m" base_path: "/m" model_platform: "tflite" } }'
        )
    assert e.value.message == "PlatformConfigMap has no entry for platform tflite"


@pytest.mark.parametrize(
    ("fields", "message"),
    [
        (
            "model_type: OTHER",
            "ModelServerConfig::model_type choice 2 not supported.",
        ),
        (
            'model_type: TENSORFLOW model_platform: "tensorflow"',
            "Illegal setting both ModelServerConfig::model_type (deprecated) and "
            "ModelServerConfig::model_platform, model name is m",
        ),
    ],
)
def test_the_deprecated_model_type_is_checked_as_tf_serving_does(fields: str, message: str) -> None:
    """server_core.cc ``GetPlatform``."""
    with pytest.raises(InvalidArgument) as e:
        entries(f'model_config_list {{ config {{ name: "m" base_path: "/m" {fields} }} }}')
    assert e.value.message == message


def test_model_type_tensorflow_is_the_tensorflow_platform() -> None:
    (entry,) = entries(
        'model_config_list { config { name: "m" base_path: "/m" model_type: TENSORFLOW } }'
    )
    assert entry.name == "m"


def test_a_custom_model_config_is_refused() -> None:
    with pytest.raises(InvalidArgument) as e:
        entries('custom_model_config { type_url: "type.googleapis.com/x.Y" }')
    assert e.value.message == "custom_model_config is not supported"


LOGGING = """model_config_list {{ config {{ name: "m" base_path: "/m" logging_config {{
  {collector} sampling_config {{ sampling_rate: {rate} }} }} }} }}"""


def test_logging_config_is_the_request_log() -> None:
    (entry,) = entries(
        LOGGING.format(
            collector='log_collector_config { type: "tfrecord" filename_prefix: "/logs/m" }',
            rate=0.5,
        )
    )
    assert entry.request_log == {"filename_prefix": "/logs/m", "sampling_rate": 0.5}
    (plain,) = entries('model_config_list { config { name: "m" base_path: "/m" } }')
    assert plain.request_log is None


@pytest.mark.parametrize("rate", [0.0, 1.0])
def test_sampling_rate_edges_are_accepted(rate: float) -> None:
    (entry,) = entries(
        LOGGING.format(
            collector='log_collector_config { type: "tfrecord" filename_prefix: "/l" }', rate=rate
        )
    )
    assert entry.request_log == {"filename_prefix": "/l", "sampling_rate": rate}


@pytest.mark.parametrize(
    ("collector", "rate", "message"),
    [
        ('log_collector_config { type: "kafka" filename_prefix: "/l" }', 0.5, "'kafka'"),
        ("", 0.5, "log collector type '' is not supported"),
        ('log_collector_config { type: "tfrecord" }', 0.5, "has no filename_prefix"),
        ('log_collector_config { type: "tfrecord" filename_prefix: "/l" }', -0.5, "-0.5"),
    ],
)
def test_a_logging_config_that_cannot_be_honoured_is_refused(
    collector: str, rate: float, message: str
) -> None:
    with pytest.raises(InvalidArgument) as e:
        entries(LOGGING.format(collector=collector, rate=rate))
    assert e.value.message.startswith("Model m: ")
    assert message in e.value.message


def test_our_shadow_block_is_read_and_kept_through_the_binary_form() -> None:
    from compat.protos import model_server_config_pb2

    text = (
        "model_config_list { config { name: 'm' base_path: '/m' "
        "shadow { version_label: 'next' atol: 0.01 max_pending: 8 } } "
        "config { name: 'plain' base_path: '/p' shadow { version: 7 } } "
        "config { name: 'tf' base_path: '/t' } }"
    )
    config = model_config.parse_text(text)
    assert type(config) is model_server_config_pb2.ModelServerConfig  # TF Serving's message
    again = model_server_config_pb2.ModelServerConfig.FromString(config.SerializeToString())
    assert [e.shadow for e in model_config.entries(again)] == [
        {"version_label": "next", "atol": 0.01, "max_pending": 8, "sampling_rate": 1.0},
        {"version": 7, "sampling_rate": 1.0},
        None,
    ]


@pytest.mark.parametrize(
    ("block", "message"),
    [
        ("version: 2 version_label: 'a'", "Model m: shadow names both a version and"),
        ("sampling_rate: 1.5", "Model m: shadow sampling_rate 1.5 is not within [0, 1]"),
    ],
)
def test_a_shadow_block_that_cannot_be_is_invalid_argument(block: str, message: str) -> None:
    with pytest.raises(InvalidArgument) as e:
        entries(
            f"model_config_list {{ config {{ name: 'm' base_path: '/m' shadow {{ {block} }} }} }}"
        )
    assert e.value.message.startswith(message)


def test_a_field_the_shadow_block_lacks_is_the_parsers_error() -> None:
    with pytest.raises(InvalidArgument) as e:
        model_config.parse_text("model_config_list { config { name: 'm' shadow { bogus: 1 } } }")
    assert 'Message type "tensorflow.serving.ShadowConfig" has no field named "bogus"' in str(
        e.value.message
    )


def test_our_rollout_block_is_read_typed_and_kept_through_the_binary_form() -> None:
    from compat.protos import model_server_config_pb2
    from serve_app.config.args import RolloutPolicy, models_from_config

    text = (
        "model_config_list { config { name: 'm' base_path: '/m' rollout { shadow_requests: 5 "
        "max_diff_rate: 0.1 canary_weights: 0.2 canary_weights: 0.5 canary_requests: 4 "
        "max_p99_ratio: 3 shadow_seconds: 30 canary_seconds: 10 min_stage_requests: 5 } } "
        "config { name: 'defaults' base_path: '/d' rollout {} } "
        "config { name: 'tf' base_path: '/t' } }"
    )
    again = model_server_config_pb2.ModelServerConfig.FromString(
        model_config.parse_text(text).SerializeToString()
    )
    models = models_from_config(again)
    assert models[0].rollout == RolloutPolicy(
        shadow_requests=5,
        max_diff_rate=0.1,
        canary_weights=[0.2, 0.5],
        canary_requests=4,
        max_p99_ratio=3.0,
        shadow_seconds=30.0,
        canary_seconds=10.0,
        min_stage_requests=5,
    )
    assert models[1].rollout == RolloutPolicy()  # an empty block: every default
    assert models[2].rollout is None  # no block: TF Serving's rollout


@pytest.mark.parametrize(
    ("block", "message"),
    [
        ("canary_weights: 1.5", "Model m: rollout canary_weights.0: Input should be less than"),
        ("canary_weights: 0", "Model m: rollout canary_weights.0: Input should be greater than"),
        ("max_diff_rate: 2", "Model m: rollout max_diff_rate: Input should be less than"),
        ("canary_requests: 0", "Model m: rollout canary_requests: Input should be greater"),
        ("max_p99_ratio: 0", "Model m: rollout max_p99_ratio: Input should be greater than 0"),
        ("shadow_seconds: -1", "Model m: rollout shadow_seconds: Input should be greater"),
        ("min_stage_requests: 0", "Model m: rollout min_stage_requests: Input should be greater"),
    ],
)
def test_a_rollout_block_that_cannot_be_is_invalid_argument(block: str, message: str) -> None:
    from serve_app.config.args import models_from_config

    text = f"model_config_list {{ config {{ name: 'm' base_path: '/m' rollout {{ {block} }} }} }}"
    with pytest.raises(InvalidArgument) as e:
        models_from_config(model_config.parse_text(text))
    assert e.value.message.startswith(message), e.value.message


def test_a_field_the_rollout_block_lacks_is_the_parsers_error() -> None:
    with pytest.raises(InvalidArgument) as e:
        model_config.parse_text("model_config_list { config { name: 'm' rollout { shadow: 1 } } }")
    assert 'Message type "tensorflow.serving.RolloutConfig" has no field named "shadow"' in str(
        e.value.message
    )


def test_our_pinned_option_is_read_and_kept_through_the_binary_form() -> None:
    from compat.protos import model_server_config_pb2
    from serve_app.config.model_args import models_from_config

    text = (
        "model_config_list { config { name: 'hot' base_path: '/h' pinned: true } "
        "config { name: 'cold' base_path: '/c' } }"
    )
    config = model_config.parse_text(text)
    again = model_server_config_pb2.ModelServerConfig.FromString(config.SerializeToString())
    assert [e.pinned for e in model_config.entries(again)] == [True, False]
    assert [m.pinned for m in models_from_config(again)] == [True, False]
