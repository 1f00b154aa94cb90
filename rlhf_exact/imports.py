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
    except Exception as e:  # noqa: BLE001 - any import failure of user code is a config error
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
