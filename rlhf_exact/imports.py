"""Names resolved to objects on use, for the whole package. Standard library only and
importing nothing of rlhf_exact, so any layer may use it (the sampler, the rewards, the
environments, the config checks) without an upward import.

`import_object`: an import path 'package.module:attr' (attr may be dotted) resolved to
the object, with a one-line ValueError that says which part failed (the module does not
import, or lacks the attribute, with the nearest name). Reward functions
(reward.functions[i].name), environments (env.name) and sampler backends
(sampler.backend) resolve through it, at config time (preflight.py) and again in the
process that uses them.

    from rlhf_exact.imports import import_object
    fn = import_object("my_pkg.rewards:score", "reward", "function")

`lazy_exports`: the face of a package whose submodules are imported on use
(rlhf_exact.models, rlhf_exact.config), made from one table.
"""
from __future__ import annotations

import difflib
import importlib


def import_object(name: str, kind: str, what: str):
    """The object at import path `name` ('package.module:attr'); `kind` names it in
    errors ("reward", "sampler backend") and `what` says what the path should point to
    ("function", "Class")."""
    module, _, attr = name.partition(":")
    if not module or not attr:
        raise ValueError(f"{kind} {name!r}: an import path is 'package.module:{what}'")
    try:
        mod = importlib.import_module(module)
    except Exception as e:  # any import failure of user code is a config error
        raise ValueError(f"{kind} {name!r}: module {module!r} cannot be imported: {type(e).__name__}: {e}") from e
    obj = mod
    for part in attr.split("."):
        if not hasattr(obj, part):
            close = difflib.get_close_matches(part, [n for n in dir(obj) if not n.startswith("_")], n=1)
            hint = f"; did you mean '{module}:{close[0]}'?" if close else ""
            raise ValueError(f"{kind} {name!r}: module {module!r} ({getattr(mod, '__file__', '?')}) has no "
                             f"attribute {part!r}{hint}")
        obj = getattr(obj, part)
    return obj


def lazy_exports(package: str, by_module: dict[str, tuple[str, ...]]):
    """The face of a package whose submodules load on first use (torch, Hydra): one table,
    submodule -> the public names it defines, from which both `__all__` and the module
    `__getattr__` are made. `from package import name` imports only name's submodule.

        __all__, __getattr__ = lazy_exports(__name__, {"qwen3": ("Qwen3Config", ...), ...})
    """
    where = {name: module for module, names in by_module.items() for name in names}

    def __getattr__(name: str):
        if name in where:
            return getattr(importlib.import_module(f"{package}.{where[name]}"), name)
        raise AttributeError(f"module {package!r} has no attribute {name!r}")

    return sorted(where), __getattr__
