"""Compose a recipe into a validated `TrainConfig` with Hydra's compose API.

    from rlhf_exact.config import load_config, save_config
    cfg = load_config(["recipe=grpo_qwen3_tiny", "algorithm.lr=1e-4", "algorithm=dapo"])
    save_config(cfg, run_dir / "config.yaml")

How a config is built, last wins:
  1. the schema defaults (schema.py, registered in Hydra's ConfigStore);
  2. the recipe (recipes/NAME.yaml, or any YAML path) and the blocks its defaults list
     picks from configs/<group>/<option>.yaml (groups: model, data, reward, algorithm,
     cluster); a block file holds the fields of its section, unprefixed;
  3. the command line: `group=option` swaps a block, `section.field=value` sets a value
     (Hydra override grammar: lists `[1,2]`, null, quoted strings).
Because the schema comes first, Hydra rejects any key it does not declare; those errors
(and type errors) are rephrased into one line that names the dotted key and the nearest
valid key. Command-line keys are checked before Hydra sees them.

Departures from plain Hydra: the recipe is chosen with `recipe=` but is not a config
group (it is the body of the primary config, so a recipe is an ordinary Hydra primary
config and a saved run config.yaml is itself a recipe); Hydra never runs an app, so it
does not touch logging, the working directory or outputs/. `algorithm.name=X` on the
command line also selects the preset block `algorithm=X` (a name without its preset
would label a GRPO run "dapo"); a recipe whose algorithm.name disagrees with its preset is
an error.

Interpolations: `${repo_root:}` is the repository root (the parent of the rlhf_exact
package); `${oc.env:VAR,default}` reads the environment. Paths are made absolute after
composition, so Ray workers with another working directory read the same files.
"""
from __future__ import annotations

import dataclasses
import difflib
import os
import re
from pathlib import Path

from .schema import (RESUME_WORDS, ConfigError, TrainConfig, list_of_records_keys, mapping_keys, renamed_keys,
                     section_types, valid_keys)

DEFAULT_RECIPE = "grpo_qwen3_tiny"
_MAIN = "rlhf_exact_main"  # the primary config: [schema, recipe, _self_] (ConfigStore)
_SCHEMA = "rlhf_exact_schema"  # TrainConfig in the ConfigStore


def repo_root() -> Path:
    import rlhf_exact

    return Path(rlhf_exact.__file__).resolve().parents[1]


def recipes_dir() -> Path:
    return repo_root() / "recipes"


def configs_dir() -> Path:
    return repo_root() / "configs"


def available_recipes() -> dict[str, Path]:
    """Recipe name -> file, from recipes/."""
    return {p.stem: p for p in sorted(recipes_dir().glob("*.yaml"))}


def config_groups() -> dict[str, list[str]]:
    """Config group -> its options (configs/<group>/<option>.yaml)."""
    return {d.name: sorted(p.stem for p in d.glob("*.yaml"))
            for d in sorted(configs_dir().iterdir()) if d.is_dir() and any(d.glob("*.yaml"))}


# ---------------------------------------------------------------------------------------
# errors


def _suggest(key: str, candidates: list[str]) -> str:
    """' (did you mean 'x'?)' for the nearest candidate, or ''. Tries the same section's
    fields first, then whole dotted keys, then the last segment anywhere."""
    head, _, leaf = key.rpartition(".")
    same = [c for c in candidates if c.rpartition(".")[0] == head]
    match = difflib.get_close_matches(key, same, n=1, cutoff=0.5) if head else []
    match = match or difflib.get_close_matches(key, candidates, n=1, cutoff=0.6)
    if not match:
        by_leaf: dict[str, str] = {}
        for c in candidates:
            by_leaf.setdefault(c.rpartition(".")[2], c)
        leaf_match = difflib.get_close_matches(leaf, list(by_leaf), n=1, cutoff=0.7)
        match = [by_leaf[leaf_match[0]]] if leaf_match else []
    return f" (did you mean '{match[0]}'?)" if match else ""


def unknown_key_error(key: str, where: str = "") -> ConfigError:
    """`unknown config key 'algorithm.lrr' (did you mean 'algorithm.lr'?)`, or for a key of
    an earlier version `config key 'model.tiny_head_dim' is now 'model.tiny.head_dim'`."""
    key = re.sub(r"\[(\d+)\]", r".\1", key)
    if key in renamed_keys():
        return ConfigError(f"config key '{key}'{where} is now '{renamed_keys()[key]}'")
    for lkey, item in list_of_records_keys().items():  # reward.functions.0.nme
        m = re.fullmatch(re.escape(lkey) + r"(\.\d+)?\.(.+)", key)
        if m:
            fields = [f"{lkey}{m.group(1) or ''}.{f.name}" for f in dataclasses.fields(item)]
            return ConfigError(f"unknown config key '{key}'{where}{_suggest(key, fields)}")
    sections = [f.name for f in dataclasses.fields(TrainConfig)]
    return ConfigError(f"unknown config key '{key}'{where}{_suggest(key, valid_keys() + sections)}")


def _check_override(ov: str, groups: dict[str, list[str]]) -> str:
    """Check one command-line override against the schema; returns it normalized
    (`+a.b=1` on a declared key is `a.b=1`: every key exists already)."""
    if ov.startswith("~"):
        raise ConfigError(f"cannot delete config keys ({ov!r}); set a value instead")
    key, sep, value = ov.partition("=")
    if not sep or not key.strip("+"):
        raise ConfigError(f"command-line argument {ov!r} is not KEY=VALUE (see --help)")
    plain = key.lstrip("+")
    if plain in groups:
        if value not in groups[plain]:
            close = difflib.get_close_matches(value, groups[plain], n=1, cutoff=0.5)
            hint = f"did you mean '{close[0]}'? " if close else ""
            raise ConfigError(f"unknown option '{value}' for config group '{plain}' ({hint}available: "
                              f"{', '.join(groups[plain])}; files in configs/{plain}/)")
        return ov
    if plain == "hydra" or plain.startswith("hydra."):
        raise ConfigError(f"{plain!r}: Hydra settings are not used here (Hydra only composes the config)")
    if plain in valid_keys():
        return f"{plain}={value}"
    if any(plain.startswith(k + ".") for k in mapping_keys()):
        return f"++{plain}={value}"  # a mapping's key: set it whether or not the recipe has it
    for lkey, item in list_of_records_keys().items():
        m = re.fullmatch(re.escape(lkey) + r"\.(\d+)(?:\.(\w+))?", plain)
        if m and (m.group(2) is None or m.group(2) in {f.name for f in dataclasses.fields(item)}):
            return f"{plain}={value}"
    raise unknown_key_error(plain)


def _source_of(msg: str, recipe_dir: Path) -> str:
    """' in configs/algorithm/grpo.yaml' from Hydra's "In 'algorithm/grpo': ..." prefix."""
    m = re.match(r"In '([^']+)'", msg)
    if not m:
        return ""
    name = m.group(1)
    for base in (configs_dir(), recipe_dir):
        path = base / f"{name}.yaml"
        if path.is_file():
            return f" in {path.relative_to(repo_root()) if path.is_relative_to(repo_root()) else path}"
    return f" in '{name}'"


def _rephrase(exc: BaseException, recipe_dir: Path) -> ConfigError:
    """One-line ConfigError for a Hydra/OmegaConf composition failure."""
    from omegaconf.errors import ConfigKeyError, OmegaConfBaseException, ValidationError

    chain, e = [], exc
    while e is not None and e not in chain:
        chain.append(e)
        e = e.__cause__ or e.__context__
    where = _source_of(str(exc), recipe_dir)
    # an error inside a command-line value (a list of records) names the key within it
    m = re.match(r"(?:Error merging override|Could not override) '?([\w.]+)", str(exc))
    prefix = m.group(1) + "." if m else ""
    for e in chain:
        if isinstance(e, OmegaConfBaseException) and getattr(e, "full_key", None):
            first = str(e).splitlines()[0] if str(e) else type(e).__name__
            top = re.split(r"[.\[]", e.full_key)[0]
            key = e.full_key if top in {f.name for f in dataclasses.fields(TrainConfig)} else prefix + e.full_key
            if key in renamed_keys():  # model.tiny: true, a section now
                return unknown_key_error(key, where)
            if isinstance(e, ConfigKeyError) and "not in" in first:
                return unknown_key_error(key, where)
            if isinstance(e, ValidationError):
                return ConfigError(f"invalid value for '{key}'{where}: {first}")
            return ConfigError(f"'{key}'{where}: {first}")
    # a value where a nested section is (`model: {tiny: true}` of an earlier version): OmegaConf
    # names the section's class, not the key
    m = re.search(r"is not a subclass of (\w+)", str(exc))
    if m and m.group(1) in _nested_sections():
        key = _nested_sections()[m.group(1)]
        return unknown_key_error(key, where) if key in renamed_keys() else ConfigError(
            f"'{key}'{where} is a section: set its fields ({key}.FIELD)")
    lines = [ln.strip() for ln in str(exc).splitlines() if ln.strip() and not ln.startswith(("\t", "    "))]
    return ConfigError(" ".join(lines[:2]) or type(exc).__name__)


def _nested_sections() -> dict[str, str]:
    """Class name -> dotted key of the sections inside sections (model.tiny, data.synthetic)."""
    out = {}
    for name, cls in section_types().items():
        for f in dataclasses.fields(cls):
            default = f.default_factory() if f.default_factory is not dataclasses.MISSING else None
            if dataclasses.is_dataclass(default):
                out[type(default).__name__] = f"{name}.{f.name}"
    return out


# ---------------------------------------------------------------------------------------
# composition


def _register() -> None:
    from hydra.core.config_store import ConfigStore
    from omegaconf import OmegaConf

    if not OmegaConf.has_resolver("repo_root"):
        OmegaConf.register_new_resolver("repo_root", lambda: str(repo_root()))
    ConfigStore.instance().store(name=_SCHEMA, node=TrainConfig)


def _resolve_recipe(recipe: str) -> tuple[Path, str]:
    """(config dir, config name) of a recipe name or YAML path."""
    if recipe.endswith((".yaml", ".yml")):
        path = Path(recipe).expanduser()
        if not path.is_file():
            raise ConfigError(f"recipe file {recipe!r} does not exist")
        return path.resolve().parent, path.stem
    recipes = available_recipes()
    if recipe not in recipes:
        close = difflib.get_close_matches(recipe, list(recipes), n=1, cutoff=0.5)
        hint = f"did you mean '{close[0]}'? " if close else ""
        raise ConfigError(f"unknown recipe '{recipe}' ({hint}available: {', '.join(recipes)}; or give a path "
                          f"to a YAML file)")
    return recipes_dir(), recipe


def split_recipe(argv: list[str]) -> tuple[str, list[str]]:
    """(recipe, the other arguments) from `recipe=X` among argv (the last one wins)."""
    recipe, rest = DEFAULT_RECIPE, []
    for a in argv:
        if a.startswith("recipe="):
            recipe = a.partition("=")[2]
        else:
            rest.append(a)
    if not recipe:
        raise ConfigError("recipe= is empty: give a name from recipes/ or a path to a YAML file")
    return recipe, rest


def compose(recipe: str, overrides: list[str]):
    """The composed, typed DictConfig (schema <- recipe <- overrides), unresolved, and
    the group choices {group: option}."""
    from hydra import compose as hydra_compose
    from hydra import initialize_config_dir
    from hydra.core.config_store import ConfigStore
    from omegaconf import OmegaConf, open_dict

    config_dir, name = _resolve_recipe(recipe)
    groups = config_groups()
    overrides = [_check_override(ov, groups) for ov in overrides]
    keys = {ov.partition("=")[0].lstrip("+"): ov.partition("=")[2] for ov in overrides}
    if "algorithm.name" in keys and "algorithm" not in keys and keys["algorithm.name"] in groups.get("algorithm", []):
        overrides.append(f"algorithm={keys['algorithm.name']}")

    _register()
    ConfigStore.instance().store(name=_MAIN, node={"defaults": [_SCHEMA, name, "_self_"]})
    searchpath = f"hydra.searchpath=[file://{configs_dir()}]"
    try:
        with initialize_config_dir(config_dir=str(config_dir), version_base="1.3"):
            cfg = hydra_compose(_MAIN, overrides=[searchpath, *overrides], return_hydra_config=True)
    except Exception as e:  # Hydra and OmegaConf raise many types; all are config errors here
        raise _rephrase(e, config_dir) from e
    choices = dict(cfg.hydra.runtime.choices)
    with open_dict(cfg):
        del cfg["hydra"]
    OmegaConf.set_struct(cfg, True)
    if not cfg.recipe:
        cfg.recipe = name if config_dir == recipes_dir() else str(config_dir / f"{name}.yaml")
    preset = choices.get("algorithm")
    if preset and cfg.algorithm.name != preset:
        raise ConfigError(f"algorithm.name={cfg.algorithm.name!r} but the algorithm block is '{preset}': choose "
                          f"the preset with algorithm={cfg.algorithm.name} (it sets algorithm.name)")
    return cfg, {k: v for k, v in choices.items() if k in groups}


def _absolutize(cfg: TrainConfig) -> None:
    def ab(p: str) -> str:
        return os.path.abspath(os.path.expanduser(p))

    if cfg.model.path:
        cfg.model.path = ab(cfg.model.path)
    cfg.data.train_files = [ab(f) for f in cfg.data.train_files]
    cfg.eval.files = [ab(f) for f in cfg.eval.files]
    cfg.preference.train_files = [ab(f) for f in cfg.preference.train_files]
    cfg.preference.heldout_files = [ab(f) for f in cfg.preference.heldout_files]
    cfg.run.output_dir = ab(cfg.run.output_dir)
    if cfg.run.resume not in (*RESUME_WORDS, ""):
        cfg.run.resume = ab(cfg.run.resume)


def load_config(argv: list[str], check_files: bool = True) -> TrainConfig:
    """The validated TrainConfig for command-line style arguments: `recipe=NAME|PATH`
    (default grpo_qwen3_tiny) and overrides. check_files=False skips the file checks
    (model.path, data files, resume path), for --print-config. Raises ConfigError."""
    from omegaconf import OmegaConf
    from omegaconf.errors import OmegaConfBaseException

    recipe, overrides = split_recipe(list(argv))
    dcfg, _ = compose(recipe, overrides)
    try:
        cfg = OmegaConf.to_object(dcfg)
    except OmegaConfBaseException as e:  # interpolation errors, missing values
        raise _rephrase(e, recipes_dir()) from e
    _absolutize(cfg)
    cfg.validate()
    if check_files:
        cfg.check_files()
    return cfg


# ---------------------------------------------------------------------------------------
# output


def config_to_dict(cfg: TrainConfig) -> dict:
    """Plain nested dict (for W&B and JSON)."""
    return dataclasses.asdict(cfg)


def config_to_yaml(cfg: TrainConfig) -> str:
    from omegaconf import OmegaConf

    return OmegaConf.to_yaml(OmegaConf.structured(cfg))


def save_config(cfg: TrainConfig, path: str | os.PathLike) -> Path:
    """Write the resolved config as YAML (atomically). The file is itself a recipe:
    `recipe=<path>` reproduces the run's config."""
    path = Path(path)
    text = (f"# Resolved config of run '{cfg.run.name}' (recipe: {cfg.recipe}).\n"
            f"# Reproduce: python -m rlhf_exact.train recipe={path}\n") + config_to_yaml(cfg)
    tmp = path.with_name(f".{path.name}.tmp")
    with open(tmp, "w") as f:
        f.write(text)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)
    return path
