"""TF Serving's ModelServerConfig text format, parsed with its own protos and ``text_format``.

Three extensions of ours (beyond TF Serving): a model's ``config`` may hold a ``shadow { ... }``
block (``EXTENSION_FIELD``, a ``ShadowConfig``: which version receives a mirror of the model's
requests, what share of them, and the float tolerance its answers are compared with), a
``rollout { ... }`` block (``ROLLOUT_FIELD``, a ``RolloutConfig``: the stages and gates a new
version goes through, ``serve_app.config.model_args.RolloutPolicy``) and ``pinned: true``
(``PINNED_FIELD``: its versions stay resident under ``--model_memory_budget_mb``). The text is
parsed with ModelConfig's own descriptor plus those fields, then read back as TF Serving's
message (they are kept as unknown fields, so they survive a trip through the binary form, as in
``HandleReloadConfigRequest``): without them, parsing and errors are TF Serving's; a field a
block does not have is refused as any unknown field is.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from google.protobuf import descriptor_pb2, descriptor_pool, message_factory, text_format

from compat import platforms
from compat.errors import InvalidArgument
from compat.protos import model_server_config_pb2


@dataclass
class ModelEntry:
    """One ``config { ... }`` of a ``model_config_list``."""

    name: str
    base_path: str
    policy: str = "latest"
    num_versions: int = 1
    versions: list[int] = field(default_factory=list)
    labels: dict[str, int] = field(default_factory=dict)
    request_log: dict[str, object] | None = None
    """From ``logging_config``: ``filename_prefix`` and ``sampling_rate``."""
    shadow: dict[str, object] | None = None
    """From our ``shadow`` block (``ShadowConfig``'s fields that are set)."""
    rollout: dict[str, object] | None = None
    """From our ``rollout`` block (``RolloutConfig``'s fields that are set)."""
    pinned: bool = False
    """Our ``pinned``: its versions are never paged out (``--model_memory_budget_mb``)."""


EXTENSION_FIELD = 1001
"""The field number of ``ModelConfig.shadow``: far beyond TF Serving's own (1 to 8)."""
ROLLOUT_FIELD = 1002
"""The field number of ``ModelConfig.rollout``."""
PINNED_FIELD = 1003
"""The field number of ``ModelConfig.pinned`` (a bool)."""


def _extended() -> tuple[Any, Any]:
    """ModelServerConfig and ModelConfig with ``shadow`` (a ``ShadowConfig``) added to
    ModelConfig, in a pool of their own (the same full names, so TF Serving's messages)."""
    pool = descriptor_pool.DescriptorPool()
    added: set[str] = set()

    def add(file: Any, extra: Callable[[descriptor_pb2.FileDescriptorProto], None]) -> None:
        for dependency in file.dependencies:
            add(dependency, lambda _: None)
        if file.name in added:
            return
        proto = descriptor_pb2.FileDescriptorProto()
        file.CopyToProto(proto)
        extra(proto)
        pool.Add(proto)
        added.add(file.name)

    def shadow(proto: descriptor_pb2.FileDescriptorProto) -> None:
        F = descriptor_pb2.FieldDescriptorProto
        ext = descriptor_pb2.FileDescriptorProto(
            name="ray_tfserving/shadow_config.proto", package="tensorflow.serving", syntax="proto2"
        )
        message = ext.message_type.add(name="ShadowConfig")
        for number, name, kind, default in [
            (1, "version", F.TYPE_INT64, None),
            (2, "version_label", F.TYPE_STRING, None),
            (3, "sampling_rate", F.TYPE_DOUBLE, "1"),
            (4, "atol", F.TYPE_DOUBLE, None),
            (5, "rtol", F.TYPE_DOUBLE, None),
            (6, "max_pending", F.TYPE_INT32, None),
        ]:
            field = message.field.add(name=name, number=number, type=kind, label=F.LABEL_OPTIONAL)
            if default is not None:
                field.default_value = default
        rollout = ext.message_type.add(name="RolloutConfig")
        for number, name, kind in [
            (1, "shadow_requests", F.TYPE_INT64),
            (2, "max_diff_rate", F.TYPE_DOUBLE),
            (3, "atol", F.TYPE_DOUBLE),
            (4, "rtol", F.TYPE_DOUBLE),
            (5, "canary_weights", F.TYPE_DOUBLE),
            (6, "canary_requests", F.TYPE_INT64),
            (7, "max_error_rate_increase", F.TYPE_DOUBLE),
            (8, "max_p99_ratio", F.TYPE_DOUBLE),
            (9, "shadow_seconds", F.TYPE_DOUBLE),
            (10, "canary_seconds", F.TYPE_DOUBLE),
            (11, "min_stage_requests", F.TYPE_INT64),
        ]:
            repeated = name == "canary_weights"
            rollout.field.add(
                name=name,
                number=number,
                type=kind,
                label=F.LABEL_REPEATED if repeated else F.LABEL_OPTIONAL,
            )
        pool.Add(ext)
        added.add(ext.name)
        proto.dependency.append(ext.name)
        config = next(m for m in proto.message_type if m.name == "ModelConfig")
        for name, number in (("shadow", EXTENSION_FIELD), ("rollout", ROLLOUT_FIELD)):
            config.field.add(
                name=name,
                number=number,
                type=F.TYPE_MESSAGE,
                type_name=f".tensorflow.serving.{name.capitalize()}Config",
                label=F.LABEL_OPTIONAL,
            )
        config.field.add(
            name="pinned", number=PINNED_FIELD, type=F.TYPE_BOOL, label=F.LABEL_OPTIONAL
        )

    add(model_server_config_pb2.DESCRIPTOR, shadow)
    return tuple(  # type: ignore[return-value]
        message_factory.GetMessageClass(pool.FindMessageTypeByName(f"tensorflow.serving.{n}"))
        for n in ("ModelServerConfig", "ModelConfig")
    )


_ExtendedServerConfig, _ExtendedModelConfig = _extended()


def shadow_of(c: model_server_config_pb2.ModelConfig) -> dict[str, object] | None:
    """A config entry's ``shadow`` block (its fields that are set), or None; INVALID_ARGUMENT
    when it names both a version and a label, or a sampling rate beyond [0, 1]."""
    extended = _ExtendedModelConfig.FromString(c.SerializeToString())
    if not extended.HasField("shadow"):
        return None
    block = extended.shadow
    found: dict[str, object] = {
        f.name: value for f, value in block.ListFields() if f.name != "sampling_rate"
    }
    found["sampling_rate"] = block.sampling_rate
    if "version" in found and "version_label" in found:
        raise InvalidArgument(f"Model {c.name}: shadow names both a version and a version_label")
    if not 0.0 <= block.sampling_rate <= 1.0:
        raise InvalidArgument(
            f"Model {c.name}: shadow sampling_rate {block.sampling_rate} is not within [0, 1]"
        )
    return found


def rollout_of(c: model_server_config_pb2.ModelConfig) -> dict[str, object] | None:
    """A config entry's ``rollout`` block (its fields that are set; ``{}`` for an empty block:
    every default), or None; the values are checked where they are typed
    (``RolloutPolicy``)."""
    extended = _ExtendedModelConfig.FromString(c.SerializeToString())
    if not extended.HasField("rollout"):
        return None
    return {
        f.name: list(value) if f.name == "canary_weights" else value
        for f, value in extended.rollout.ListFields()
    }


def pinned_of(c: model_server_config_pb2.ModelConfig) -> bool:
    """A config entry's ``pinned`` (False when not set)."""
    return bool(_ExtendedModelConfig.FromString(c.SerializeToString()).pinned)


def parse_text(text: str, path: str | Path = "") -> model_server_config_pb2.ModelServerConfig:
    """Parse a ModelServerConfig in text format.

    A syntax error is INVALID_ARGUMENT with TF Serving's two messages in one: its own
    ``Invalid protobuf file: '<path>'`` (server.cc) and the protobuf parser's ``Error parsing
    text-format tensorflow.serving.ModelServerConfig: <line>:<column> ...``, which it logs.
    """
    config = _ExtendedServerConfig()
    try:
        text_format.Parse(text, config)
    except text_format.ParseError as e:
        raise InvalidArgument(
            f"Invalid protobuf file: '{path}'. Error parsing text-format "
            f"{config.DESCRIPTOR.full_name}: {e}"
        ) from None
    return model_server_config_pb2.ModelServerConfig.FromString(config.SerializeToString())


def read_file(path: str | Path) -> model_server_config_pb2.ModelServerConfig:
    try:
        text = Path(path).read_text()
    except OSError as e:
        raise InvalidArgument(f"Could not read model config file {path}: {e.strerror}") from None
    return parse_text(text, path)


def entries(config: model_server_config_pb2.ModelServerConfig) -> list[ModelEntry]:
    """The models of a config, with TF Serving's checks on names and duplicates."""
    if config.WhichOneof("config") == "custom_model_config":
        raise InvalidArgument("custom_model_config is not supported")
    result: list[ModelEntry] = []
    seen: set[str] = set()
    for c in config.model_config_list.config:
        if not c.name:
            raise InvalidArgument("Model config has no name")
        if c.name in seen:
            raise InvalidArgument(f"Illegal to list model {c.name} multiple times in config list")
        if not c.base_path:
            raise InvalidArgument(
                f"Expected model {c.name} to have an absolute path or URI; got base_path()="
            )
        check_platform(c)
        seen.add(c.name)
        entry = ModelEntry(name=c.name, base_path=c.base_path, labels=dict(c.version_labels))
        if c.HasField("logging_config"):
            entry.request_log = request_log(c.name, c.logging_config)
        entry.shadow = shadow_of(c)
        entry.rollout = rollout_of(c)
        entry.pinned = pinned_of(c)
        which = c.model_version_policy.WhichOneof("policy_choice")
        if which == "all":
            entry.policy = "all"
        elif which == "specific":
            entry.policy = "specific"
            entry.versions = list(c.model_version_policy.specific.versions)
        elif which == "latest":
            entry.num_versions = c.model_version_policy.latest.num_versions or 1
        result.append(entry)
    return result


def check_platform(c: model_server_config_pb2.ModelConfig) -> None:
    """TF Serving's ``GetPlatform`` and platform map (server_core.cc): the deprecated
    ``model_type`` or ``model_platform``, never both, naming the one platform served. An empty
    platform is taken as ``tensorflow`` (TF Serving refuses it: "Illegal setting neither ...")."""
    platform = c.model_platform
    if c.model_type != model_server_config_pb2.MODEL_TYPE_UNSPECIFIED:
        if platform:
            raise InvalidArgument(
                "Illegal setting both ModelServerConfig::model_type (deprecated) and "
                f"ModelServerConfig::model_platform, model name is {c.name}"
            )
        if c.model_type != model_server_config_pb2.TENSORFLOW:
            raise InvalidArgument(
                f"ModelServerConfig::model_type choice {c.model_type} not supported."
            )
        platform = "tensorflow"
    if platform:
        platforms.loader(platform)  # FAILED_PRECONDITION for a platform not served


LOG_COLLECTOR_TYPES = ("tfrecord",)
"""``log_collector_config.type`` values served: TFRecord files of PredictionLog."""


def request_log(model: str, config: object) -> dict[str, object] | None:
    """A ``logging_config`` -> the request log's settings; None when it samples nothing. An
    unknown collector type, or one without a file prefix, is INVALID_ARGUMENT (open-source TF
    Serving registers no collector, so it refuses every type)."""
    collector = config.log_collector_config  # type: ignore[attr-defined]
    sampling = config.sampling_config  # type: ignore[attr-defined]
    if config.HasField("custom_logging_config"):  # type: ignore[attr-defined]
        raise InvalidArgument(f"Model {model}: custom_logging_config is not supported")
    if collector.type not in LOG_COLLECTOR_TYPES:
        raise InvalidArgument(
            f"Model {model}: log collector type {collector.type!r} is not supported; the "
            f"supported types: {', '.join(LOG_COLLECTOR_TYPES)}"
        )
    if not collector.filename_prefix:
        raise InvalidArgument(f"Model {model}: log_collector_config has no filename_prefix")
    rate = sampling.sampling_rate
    if not 0.0 <= rate <= 1.0:
        raise InvalidArgument(f"Model {model}: sampling_rate {rate} is not within [0, 1]")
    return {"filename_prefix": collector.filename_prefix, "sampling_rate": rate}
