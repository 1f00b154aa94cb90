"""Typed training config: schema (dataclasses, comments, validate()) and composition of
recipes with Hydra's compose API.

    schema.py   TrainConfig and its sections; ConfigError; field_docs() for --help
    compose.py  load_config(argv) -> TrainConfig, save_config(cfg, path), recipe discovery

Names are imported on use, so `rlhf_exact.config.schema` (standard library only) loads
without Hydra: `python -m rlhf_exact.train --help` stays fast.
"""
from rlhf_exact.imports import lazy_exports

__all__, __getattr__ = lazy_exports(__name__, {
    "schema": ("TrainConfig", "RunConfig", "ModelConfig", "TinyModelConfig", "DataConfig", "SyntheticDataConfig",
               "RewardConfig", "RewardFunctionConfig", "RewardModelConfig", "EnvConfig", "AlgorithmConfig",
               "SamplingConfig", "SamplerConfig", "TrainerConfig", "ClusterConfig", "LoggingConfig", "EvalConfig",
               "PreferenceConfig", "SyntheticPreferenceConfig", "ConfigError"),
    "compose": ("load_config", "save_config", "config_to_dict", "config_to_yaml", "available_recipes",
                "config_groups", "repo_root"),
})
