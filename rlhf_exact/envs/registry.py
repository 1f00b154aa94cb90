"""Environments by name or import path.

    get_env("gsm8k_calculator")              # a registered name
    get_env("my_project.envs:SandboxEnv")    # an import path: "package.module:Class"
    env = make_env("gsm8k_calculator", {"max_calls": 4}, tokenizer)

Built in: `synthetic_calculator` (envs/arithmetic.py: the tiny CPU recipe's task) and
`gsm8k_calculator` (envs/gsm8k.py). BUILTIN maps their names to import paths, resolved
when asked for, so this module imports no environment and the environments import
nothing from it (an environment module never registers itself). User environments, as
for rewards (rlhf_exact/rewards): name one by import path, or list its module in
`run.imports` and put `@register_env("name")` on the `Environment` subclass
(`make_env(..., imports=...)` imports those modules first, in every process that builds
the environment).
"""
from __future__ import annotations

import difflib
import importlib
from collections.abc import Callable, Mapping, Sequence
from typing import Any

from .base import Environment

BUILTIN: dict[str, str] = {
    "synthetic_calculator": "rlhf_exact.envs.arithmetic:SyntheticCalculatorEnv",
    "gsm8k_calculator": "rlhf_exact.envs.gsm8k:GSM8KCalculatorEnv",
}
ENVS: dict[str, type[Environment]] = {}  # registered with @register_env (user environments)


def register_env(name: str) -> Callable[[type[Environment]], type[Environment]]:
    """Class decorator adding an Environment subclass to ENVS under `name` (a duplicate
    name is an error)."""
    def add(cls: type[Environment]) -> type[Environment]:
        if name in ENVS or name in BUILTIN:
            raise ValueError(f"environment {name!r} is already registered ({ENVS.get(name) or BUILTIN[name]!r})")
        if not (isinstance(cls, type) and issubclass(cls, Environment)):
            raise TypeError(f"register_env({name!r}): {cls!r} is not an Environment subclass")
        ENVS[name] = cls
        return cls
    return add


def _import_path(name: str) -> type[Environment]:
    from rlhf_exact.imports import import_object

    obj = import_object(name, "environment", "Class")  # the resolver reward functions use
    if not (isinstance(obj, type) and issubclass(obj, Environment)):
        raise ValueError(f"environment {name!r} is {obj!r}, not an rlhf_exact.envs.Environment subclass")
    return obj


def get_env(name: str) -> type[Environment]:
    """The Environment class built in or registered as `name`, or at import path
    'package.module:Class'; ValueError naming the valid names or the import failure."""
    if name in BUILTIN:
        return _import_path(BUILTIN[name])
    if name in ENVS:
        return ENVS[name]
    if ":" not in name:
        known = sorted({*BUILTIN, *ENVS})
        close = difflib.get_close_matches(name, known, n=1)
        hint = f"; did you mean {close[0]!r}?" if close else ""
        raise ValueError(f"unknown environment {name!r} (registered: {', '.join(known)}; or give an "
                         f"import path 'package.module:Class'){hint}")
    return _import_path(name)


def make_env(name: str, kwargs: Mapping[str, Any] | None = None, tokenizer=None,
             imports: Sequence[str] = ()) -> Environment:
    """An instance of environment `name` built with the config's keyword arguments and the
    run's tokenizer, after importing the modules `imports` (run.imports: they register
    environments). A bad keyword or import is a ValueError naming the environment."""
    for module in imports:
        try:
            importlib.import_module(module)
        except Exception as e:  # any import failure of user code is a config error
            raise ValueError(f"run.imports: {module!r} cannot be imported: {type(e).__name__}: {e}") from e
    cls = get_env(name)
    try:
        return cls(tokenizer=tokenizer, **dict(kwargs or {}))
    except TypeError as e:
        raise ValueError(f"environment {name!r} ({cls.__module__}.{cls.__qualname__}): {e}") from e
