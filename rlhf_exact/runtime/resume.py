"""A resumed run is the run that was interrupted: its config is the one it saved.

    cfg, notes = load_run_config(argv)     # train.py: the config to run, and what changed

`run.resume=auto run.name=T` (or auto_or_new, or a path to T's directory or checkpoint)
composes T's own config.yaml, the resolved config T started with, and applies the command
line on top of it, instead of composing the command line's (or the default) recipe.
So the resume hint printed by an interrupted run, pasted alone, continues that run.

What the command line changes is compared key by key with the saved config. A change to
what the run learns from and how (recipe, model, algorithm, data, run.seed, and a block
swapped with GROUP=OPTION) is refused in one line that lists every such change: the
checkpoint's weights, optimizer state and data position belong to the saved config.
Other changes (run.steps, most often to train longer; logging, cluster, deadlines) are
allowed and listed in a note. A command line that starts a run (resume=never, or
auto_or_new on a new name) composes its recipe as before.
"""
from __future__ import annotations

import copy
import dataclasses
from pathlib import Path

from rlhf_exact.config import compose
from rlhf_exact.config.schema import ConfigError, TrainConfig

from .rundir import locate_run_dir

# keys (or prefixes) whose change makes a resumed run another run
REFUSED = ("recipe", "model.", "algorithm.", "data.", "run.seed")
IGNORED = ("run.resume",)  # the resume command line sets it; it says how to start, not what to run


def load_run_config(argv: list[str], check_files: bool = True) -> tuple[TrainConfig, list[str]]:
    """The config for command-line arguments (module docstring) and notes for the console.
    Raises ConfigError: a config error, no run to resume (resume=auto), a refused change."""
    cfg = compose.load_config(argv, check_files=False)
    saved_file = saved_config_file(cfg)
    if saved_file is None:
        if check_files:
            cfg.check_files()
        return cfg, []
    saved = compose.load_config([f"recipe={saved_file}"], check_files=False)
    recipe, rest = compose.split_recipe(argv)
    refused, kept = _refused_arguments(argv, recipe, rest, saved)
    resumed = compose.load_config([f"recipe={saved_file}", *kept], check_files=False)
    changes = config_changes(saved, resumed)
    refused += [c for k, c in changes.items() if k.startswith(REFUSED)]
    if refused:
        raise ConfigError(f"run.resume={cfg.run.resume}: the command line changes what run {saved.run.name} learns: "
                          f"{'; '.join(refused)} (a resumed run keeps its recipe, model, algorithm, data and "
                          f"run.seed; run.name=NEW_NAME starts another run)")
    if check_files:
        resumed.check_files()
    notes = [f"resuming run {saved.run.name} with its config {saved_file}"
             + (f"; the command line changes {'; '.join(changes.values())}" if changes else "")]
    return resumed, notes


def saved_config_file(cfg: TrainConfig) -> Path | None:
    """config.yaml of the run that `cfg` resumes; None when it starts a run."""
    if cfg.run.resume == "never":
        return None
    path = locate_run_dir(copy.deepcopy(cfg)) / "config.yaml"
    return path if path.is_file() else None


def _refused_arguments(argv: list[str], recipe: str, rest: list[str], saved: TrainConfig):
    """(refused changes, the other arguments) for what cannot be applied to a saved config
    key by key: another recipe, a swapped block (GROUP=OPTION), another algorithm.name
    (it swaps the algorithm block)."""
    groups = compose.config_groups()
    refused, kept = [], []
    if any(a.startswith("recipe=") for a in argv) and recipe != saved.recipe:
        refused.append(f"recipe {saved.recipe} -> {recipe}")
    for a in rest:
        key, _, value = a.partition("=")
        key = key.lstrip("+")
        if key in groups:
            refused.append(f"{a} (swaps a block)")
        elif key == "algorithm.name":
            if value != saved.algorithm.name:
                refused.append(f"algorithm.name {saved.algorithm.name} -> {value}")
        else:
            kept.append(a)
    return refused, kept


def config_changes(before: TrainConfig, after: TrainConfig) -> dict[str, str]:
    """Dotted key -> 'key old -> new' for every value that differs (IGNORED left out)."""
    a, b = _flat(dataclasses.asdict(before)), _flat(dataclasses.asdict(after))
    return {k: f"{k} {a.get(k)} -> {b.get(k)}" for k in sorted(a.keys() | b.keys())
            if a.get(k) != b.get(k) and k not in IGNORED}


def _flat(d: dict, prefix: str = "") -> dict:
    out = {}
    for k, v in d.items():
        if isinstance(v, dict) and v:
            out |= _flat(v, f"{prefix}{k}.")
        else:
            out[f"{prefix}{k}"] = v
    return out
