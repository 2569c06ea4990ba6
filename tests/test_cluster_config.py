"""cluster.yaml is a valid Ray cluster launcher config with GPU workers."""

from __future__ import annotations

import json
from pathlib import Path

import jsonschema
import ray.autoscaler
import yaml

REPO = Path(__file__).resolve().parents[1]


def test_cluster_yaml_matches_rays_schema() -> None:
    config = yaml.safe_load((REPO / "cluster.yaml").read_text())
    schema = json.loads((Path(ray.autoscaler.__file__).parent / "ray-schema.json").read_text())
    jsonschema.validate(config, schema)
    workers = config["available_node_types"]["gpu_worker"]
    assert workers["max_workers"] >= 1
    assert config["head_node_type"] in config["available_node_types"]
    assert any("[gpu]" in c for c in config["setup_commands"])
