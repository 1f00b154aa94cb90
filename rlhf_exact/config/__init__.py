"""Typed training config: schema (dataclasses, comments, validate()) and composition of
recipes with Hydra's compose API.

    schema.py   TrainConfig and its sections; ConfigError; field_docs() for --help
    compose.py  load_config(argv) -> TrainConfig, save_config(cfg, path), recipe discovery

Names are imported on use, so `rlhf_exact.config.schema` (standard library only) loads
without Hydra: `python -m rlhf_exact.train --help` stays fast.
"""
from __future__ import annotations

import importlib

_EXPORTS = {
    "TrainConfig": "schema", "RunConfig": "schema", "ModelConfig": "schema", "DataConfig": "schema",
    "RewardConfig": "schema", "RewardFunctionConfig": "schema", "AlgorithmConfig": "schema",
    "SamplingConfig": "schema", "SamplerConfig": "schema", "TrainerConfig": "schema",
    "ClusterConfig": "schema", "LoggingConfig": "schema", "ConfigError": "schema",
    "load_config": "compose", "save_config": "compose", "config_to_dict": "compose",
    "config_to_yaml": "compose", "available_recipes": "compose", "config_groups": "compose",
    "repo_root": "compose",
}
__all__ = sorted(_EXPORTS)


def __getattr__(name: str):
    if name in _EXPORTS:
        return getattr(importlib.import_module(f"{__name__}.{_EXPORTS[name]}"), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
