"""List a SavedModel's tag sets and signatures, in the style of ``saved_model_cli show``.

Works for any SavedModel, TF1 or TF2, by reading ``saved_model.pb`` (or ``saved_model.pbtxt``)
as a protocol buffer; nothing is loaded or run.
"""

from __future__ import annotations

import os
from pathlib import Path

from google.protobuf import text_format
from tensorflow.core.framework import types_pb2
from tensorflow.core.protobuf import meta_graph_pb2, saved_model_pb2


def read_saved_model(path: str | os.PathLike[str]) -> saved_model_pb2.SavedModel:
    """Parse ``saved_model.pb`` (or ``saved_model.pbtxt``) in directory ``path``."""
    directory = Path(path)
    binary, text = directory / "saved_model.pb", directory / "saved_model.pbtxt"
    saved_model = saved_model_pb2.SavedModel()
    if binary.is_file():
        saved_model.ParseFromString(binary.read_bytes())
    elif text.is_file():
        text_format.Parse(text.read_text(), saved_model)
    else:
        raise FileNotFoundError(f"no saved_model.pb or saved_model.pbtxt in {directory}")
    return saved_model


def tag_set_name(meta_graph: meta_graph_pb2.MetaGraphDef) -> str:
    """A meta graph's tags joined by ``", "``, as ``saved_model_cli`` prints them."""
    return ", ".join(meta_graph.meta_info_def.tags)


def find_meta_graph(
    saved_model: saved_model_pb2.SavedModel, tag_set: str
) -> meta_graph_pb2.MetaGraphDef:
    """The meta graph whose tags equal the comma-separated ``tag_set``."""
    wanted = {tag.strip() for tag in tag_set.split(",") if tag.strip()}
    for meta_graph in saved_model.meta_graphs:
        if set(meta_graph.meta_info_def.tags) == wanted:
            return meta_graph
    available = ", ".join(repr(tag_set_name(m)) for m in saved_model.meta_graphs)
    raise LookupError(f"no MetaGraphDef with tag-set {tag_set!r}; available: {available}")


def format_tag_sets(saved_model: saved_model_pb2.SavedModel) -> str:
    """The tag sets of every meta graph."""
    lines = ["The given SavedModel contains the following tag-sets:"]
    lines += [repr(tag_set_name(m)) for m in saved_model.meta_graphs]
    return "\n".join(lines)


def format_signature_keys(meta_graph: meta_graph_pb2.MetaGraphDef) -> str:
    """The signature keys of one meta graph, sorted."""
    lines = ["The given SavedModel MetaGraphDef contains SignatureDefs with the following keys:"]
    lines += [f'SignatureDef key: "{key}"' for key in sorted(meta_graph.signature_def)]
    return "\n".join(lines)


def format_signature(signature: meta_graph_pb2.SignatureDef, indent: str = "") -> str:
    """A signature's inputs and outputs (alias, dtype, shape, tensor name) and method name."""
    lines = [f"{indent}The given SavedModel SignatureDef contains the following input(s):"]
    lines += _tensor_infos("inputs", signature.inputs, indent + "  ")
    lines.append(f"{indent}The given SavedModel SignatureDef contains the following output(s):")
    lines += _tensor_infos("outputs", signature.outputs, indent + "  ")
    lines.append(f"{indent}Method name is: {signature.method_name}")
    return "\n".join(lines)


def format_all(saved_model: saved_model_pb2.SavedModel) -> str:
    """Every meta graph's signatures in full, like ``saved_model_cli show --all``."""
    blocks = []
    for meta_graph in saved_model.meta_graphs:
        lines = [
            f"MetaGraphDef with tag-set: {tag_set_name(meta_graph)!r} "
            "contains the following SignatureDefs:"
        ]
        for key in sorted(meta_graph.signature_def):
            lines += ["", f"signature_def[{key!r}]:"]
            lines.append(format_signature(meta_graph.signature_def[key], indent="  "))
        blocks.append("\n".join(lines))
    return "\n\n".join(blocks)


def show(
    path: str | os.PathLike[str],
    tag_set: str | None = None,
    signature_def: str | None = None,
    show_all: bool = False,
) -> str:
    """The text ``python -m export show`` prints for these options.

    ``show_all`` lists everything; otherwise a ``signature_def`` gives that signature, a
    ``tag_set`` gives its signature keys, and neither gives the tag sets. A ``signature_def``
    without a ``tag_set`` is looked up in the only meta graph if there is exactly one.
    Raises ``FileNotFoundError`` or ``LookupError`` with a readable message.
    """
    saved_model = read_saved_model(path)
    if show_all:
        return format_all(saved_model)
    if tag_set is None and signature_def is None:
        return format_tag_sets(saved_model)
    if tag_set is not None:
        meta_graph = find_meta_graph(saved_model, tag_set)
    elif len(saved_model.meta_graphs) == 1:
        meta_graph = saved_model.meta_graphs[0]
    else:
        raise LookupError("this SavedModel has several tag-sets; choose one with --tag_set")
    if signature_def is None:
        return format_signature_keys(meta_graph)
    if signature_def not in meta_graph.signature_def:
        keys = ", ".join(sorted(meta_graph.signature_def))
        raise LookupError(f"no SignatureDef {signature_def!r}; available: {keys}")
    return format_signature(meta_graph.signature_def[signature_def])


def _tensor_infos(kind: str, infos: dict[str, meta_graph_pb2.TensorInfo], indent: str) -> list:
    lines = []
    for alias in sorted(infos):
        info = infos[alias]
        lines += [
            f"{indent}{kind}[{alias!r}] tensor_info:",
            f"{indent}    dtype: {types_pb2.DataType.Name(info.dtype)}",
            f"{indent}    shape: {_shape(info)}",
            f"{indent}    name: {_tensor_name(info)}",
        ]
    return lines


def _shape(info: meta_graph_pb2.TensorInfo) -> str:
    if info.tensor_shape.unknown_rank:
        return "unknown_rank"
    return "(" + ", ".join(str(dim.size) for dim in info.tensor_shape.dim) + ")"


def _tensor_name(info: meta_graph_pb2.TensorInfo) -> str:
    encoding = info.WhichOneof("encoding")
    if encoding == "coo_sparse":
        sparse = info.coo_sparse
        return (
            f"coo_sparse(values={sparse.values_tensor_name}, "
            f"indices={sparse.indices_tensor_name}, "
            f"dense_shape={sparse.dense_shape_tensor_name})"
        )
    if encoding == "composite_tensor":
        return "composite_tensor"
    return info.name
