"""The package's faces and layers, checked from its source and the import system, so that
what the docs and the export tables say cannot drift from the code:

  * every name a package exports imports (`from rlhf_exact.models import load_model`
    once raised ModuleNotFoundError: its table named a submodule that had been renamed),
    and the config face has every class of the schema;
  * pyproject's package list has every package (a wheel built from it ships only those);
  * imports point down the layers of docs/design.md ("Shape of the system"), and no two
    packages import each other;
  * Ray is imported where docs/design.md says, and the model and the kernels import none
    of Ray, vLLM or W&B.

The import graph is read with `ast` from every `import` statement, deferred ones inside
functions included: a deferred import is still a dependency.

    python -m pytest -q tests/test_package.py
"""
import ast
import importlib
import inspect
import pathlib
import tomllib

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[1]
PACKAGE_DIRS = {"rlhf_exact": ROOT / "rlhf_exact", "exact_kernels": ROOT / "kernels"}

# Lowest first: a module may import its own layer's modules and lower layers' only. The
# components (sampler, trainer) never import the config: their group's from_config reads
# it duck-typed and hands them plain values. docs/design.md ("Shape of the system") says
# the same; a change here is a change there.
LAYERS = (
    ("exact_kernels",),
    ("rlhf_exact", "rlhf_exact.imports", "rlhf_exact.types"),
    ("rlhf_exact.models", "rlhf_exact.algo"),
    ("rlhf_exact.data", "rlhf_exact.rewards", "rlhf_exact.envs", "rlhf_exact.runtime.deadline",
     "rlhf_exact.runtime.checkpoint"),
    ("rlhf_exact.sampler", "rlhf_exact.trainer"),
    ("rlhf_exact.config",),
    ("rlhf_exact.runtime",),
    ("rlhf_exact.eval",),
    ("rlhf_exact.loop", "rlhf_exact.preflight"),
    ("rlhf_exact.rm_loop",),
    ("rlhf_exact.train", "rlhf_exact.train_rm", "rlhf_exact.plot"),
)
# docs/design.md: "Ray is imported only ..."; a change here is a change there.
IMPORTS_RAY = {"rlhf_exact.runtime.cluster", "rlhf_exact.runtime.deadline", "rlhf_exact.sampler.group",
               "rlhf_exact.trainer.group", "rlhf_exact.rewards.scorer_group", "rlhf_exact.loop"}


def modules() -> dict[str, pathlib.Path]:
    """Dotted module name -> file, for both packages (packages by their __init__.py)."""
    found = {}
    for top, folder in PACKAGE_DIRS.items():
        for path in sorted(folder.rglob("*.py")):
            parts = path.relative_to(folder).with_suffix("").parts
            if parts[-1] == "__init__":
                parts = parts[:-1]
            found[".".join((top, *parts))] = path
    return found


def imports(name: str, path: pathlib.Path, known: set[str]) -> set[str]:
    """Every module `name` imports, deferred imports included; `from pkg import sub` counts
    as an import of pkg.sub when that is a module."""
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    out = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            out.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")[:len(package.split(".")) - node.level + 1]
                base = ".".join([*anchor, base] if base else anchor)
            for a in node.names:
                out.add(f"{base}.{a.name}" if f"{base}.{a.name}" in known else base)
    return out


def unit(module: str) -> str:
    """The entry of LAYERS a module belongs to: its longest prefix there (the bare
    "rlhf_exact" is the package's __init__ only, so a new top-level module needs a row)."""
    units = [u for layer in LAYERS for u in layer
             if module == u or (u != "rlhf_exact" and module.startswith(u + "."))]
    assert units, f"{module} is in no layer of LAYERS: add it"
    return max(units, key=len)


def layer(module: str) -> int:
    return next(i for i, names in enumerate(LAYERS) if unit(module) in names)


@pytest.fixture(scope="module")
def graph() -> dict[str, set[str]]:
    found = modules()
    return {name: imports(name, path, set(found)) for name, path in found.items()}


def test_every_exported_name_imports():
    faces = {name: path for name, path in modules().items() if path.name == "__init__.py"}
    checked = set()
    for name in faces:
        package = importlib.import_module(name)
        exported = getattr(package, "__all__", None)
        if exported is None:
            continue
        namespace = {}
        exec(f"from {name} import *", namespace)  # what a user's star import does: every name resolves
        assert set(exported) <= set(namespace), f"{name}.__all__ names what it lacks"
        checked.update(f"{name}.{n}" for n in exported)
    assert {"rlhf_exact.models.load_model", "rlhf_exact.config.load_config",
            "exact_kernels.token_logprobs", "rlhf_exact.envs.make_env"} <= checked


def test_config_face_has_every_schema_class():
    from rlhf_exact import config
    from rlhf_exact.config import schema

    defined = {n for n, obj in vars(schema).items()
               if inspect.isclass(obj) and obj.__module__ == schema.__name__ and not n.startswith("_")}
    assert defined - set(config.__all__) == set()
    assert {"TrainConfig", "EnvConfig", "EvalConfig"} <= defined


def test_pyproject_lists_every_package():
    setuptools = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]
    packages = {name for name, path in modules().items() if path.name == "__init__.py"}
    assert set(setuptools["packages"]) == packages
    assert {top: str(folder.relative_to(ROOT)) for top, folder in PACKAGE_DIRS.items()} == setuptools["package-dir"]


def test_imports_point_down(graph):
    upward = sorted(f"{src} -> {dst}" for src, dsts in graph.items() for dst in dsts
                    if dst in graph and layer(dst) > layer(src))
    assert upward == []


def test_no_two_packages_import_each_other(graph):
    edges = {(unit(src), unit(dst)) for src, dsts in graph.items() for dst in dsts
             if dst in graph and unit(src) != unit(dst)}
    assert sorted(f"{a} <-> {b}" for a, b in edges if (b, a) in edges and a < b) == []


def test_the_layer_table_is_read(graph):
    # the checks above are not vacuous: known downward edges are seen
    assert "rlhf_exact.imports" in graph["rlhf_exact.sampler.backend"]
    assert "rlhf_exact.models.hf_io" in graph["rlhf_exact.trainer.worker"]
    assert layer("rlhf_exact.imports") < layer("rlhf_exact.sampler.backend") < layer("rlhf_exact.config.imports")


def test_ray_is_imported_where_the_design_says(graph):
    assert {m for m, dsts in graph.items() if any(d == "ray" or d.startswith("ray.") for d in dsts)} == IMPORTS_RAY


def test_model_and_kernels_import_no_ray_vllm_or_wandb(graph):
    stack = ("ray", "vllm", "wandb")
    bad = sorted(f"{m} -> {d}" for m, dsts in graph.items() for d in dsts
                 if m.startswith(("rlhf_exact.models", "exact_kernels")) and d.split(".")[0] in stack)
    assert bad == []


def test_the_import_resolver_is_a_stdlib_leaf(graph):
    import sys

    assert {d.split(".")[0] for d in graph["rlhf_exact.imports"]} <= sys.stdlib_module_names | {"__future__"}


def test_functions_and_the_loop_stay_short():
    # sizes a reader can hold: no function over 60 lines (decorators and docstring included), the loop at most 400
    long = sorted(f"{path.relative_to(ROOT)}:{node.lineno} {node.name} ({node.end_lineno - node.lineno + 1} lines)"
                  for path in (ROOT / "rlhf_exact").rglob("*.py")
                  for node in ast.walk(ast.parse(path.read_text(), str(path)))
                  if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef))
                  and node.end_lineno - node.lineno + 1 > 60)
    assert long == []
    assert len((ROOT / "rlhf_exact" / "loop.py").read_text().splitlines()) <= 400


def test_no_script_imports_tests():
    """scripts/ are the product's tools: a harness built on a test oracle lives in tests/."""
    import ast

    for path in sorted((ROOT / "scripts").glob("*.py")):
        tree = ast.parse(path.read_text())
        names = [a.name for n in ast.walk(tree) if isinstance(n, ast.Import) for a in n.names]
        names += [n.module or "" for n in ast.walk(tree) if isinstance(n, ast.ImportFrom) and not n.level]
        assert not [m for m in names if m.split(".")[0] == "tests"], path.name


def test_every_module_imports():
    """Each module of the package imports (a name moved out of a module is found here,
    not by the one CLI run that reaches it)."""
    import importlib

    for path in sorted((ROOT / "rlhf_exact").rglob("*.py")):
        parts = path.relative_to(ROOT).with_suffix("").parts
        importlib.import_module(".".join(parts[:-1] if parts[-1] == "__init__" else parts))
