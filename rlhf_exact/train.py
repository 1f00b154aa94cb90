"""Entry point: `python -m rlhf_exact.train recipe=NAME key=value ...`.

    python -m rlhf_exact.train recipe=grpo_qwen3_tiny                 # CPU, embedded tiny model
    python -m rlhf_exact.train recipe=grpo_qwen3 model.path=/path/to/Qwen3-0.6B algorithm=dapo
    python -m rlhf_exact.train recipe=grpo_qwen3_tiny --print-config   # resolved YAML, then exit
    python -m rlhf_exact.train --help [SECTION|all]                    # recipes, blocks, fields

Parses the arguments, composes and validates the config (rlhf_exact/config), creates
the run directory (rlhf_exact/runtime/rundir.py), saves config.yaml there and calls
`rlhf_exact.loop.run(cfg, run_dir)`. Nothing heavy is imported before the arguments
are parsed: --help reads only recipes/, configs/ and schema.py (no torch, Hydra, Ray,
vLLM or W&B). A config error prints one line and exits with status 2.
"""
from __future__ import annotations

import dataclasses
import sys

USAGE = """usage: python -m rlhf_exact.train [recipe=NAME|FILE.yaml] [GROUP=OPTION ...] [SECTION.KEY=VALUE ...]
                                 [--print-config]
       python -m rlhf_exact.train --help [SECTION|all]"""


def _summary(path) -> str:
    """The first sentence of a recipe's opening comment."""
    words = []
    for line in path.read_text().splitlines():
        if not line.startswith("#") or line.startswith("#  "):
            break
        words.append(line.lstrip("#").strip())
    text = " ".join(words)
    return text.split(". ")[0].rstrip(".") + "." if text else ""


def help_text(topic: str | None = None) -> str:
    from rlhf_exact.config import compose, schema

    out = [USAGE, ""]
    sections = schema.section_types()
    docs = schema.field_docs()
    if topic in (None, ""):
        out.append(f"recipes (recipes/*.yaml; default {compose.DEFAULT_RECIPE}):")
        recipes = compose.available_recipes()
        width = max(map(len, recipes), default=0)
        out += [f"  {name:<{width}}  {_summary(p)}" for name, p in recipes.items()]
        out.append("\nconfig blocks (configs/GROUP/OPTION.yaml; swap one with GROUP=OPTION):")
        out += [f"  {g:<10} {', '.join(opts)}" for g, opts in compose.config_groups().items()]
        out.append("\ntop-level fields (SECTION.KEY=VALUE sets one; --help SECTION lists a section's keys):")
        for f in dataclasses.fields(schema.TrainConfig):
            doc = docs["TrainConfig"].get(f.name, "")
            out.append(f"  {f.name:<10} {doc}")
        out.append("\nflags: --print-config (or print_config=true) prints the resolved config and exits;"
                   "\n       -h/--help [SECTION|all].")
        out.append("An unknown key is an error that names the nearest valid key. Runs go to "
                   "run.output_dir/run.name (config.yaml, metrics.jsonl, checkpoints/).")
        return "\n".join(out)
    names = list(sections) if topic == "all" else [topic]
    for name in names:
        if name not in sections:
            raise KeyError(f"no config section {name!r} (sections: {', '.join(sections)}, all)")
        cls = sections[name]
        out.append(f"{name}: {(cls.__doc__ or '').strip().splitlines()[0]}")
        for f in dataclasses.fields(cls):
            default = f.default if f.default is not dataclasses.MISSING else f.default_factory()
            if isinstance(default, list) and default and dataclasses.is_dataclass(default[0]):
                default = [dataclasses.asdict(d) for d in default]
            out.append(f"  {name}.{f.name}: {f.type} = {default!r}")
            out.append(f"      {docs[cls.__name__].get(f.name, '')}")
        out.append("")
    return "\n".join(out)


def parse_args(argv: list[str]) -> tuple[list[str], bool, str | None]:
    """(config arguments, print_config, help topic or None). Help topic "" means --help
    with no section."""
    config_args, print_config = [], False
    i = 0
    while i < len(argv):
        a = argv[i]
        if a in ("-h", "--help"):
            topic = argv[i + 1] if i + 1 < len(argv) and "=" not in argv[i + 1] and not argv[i + 1].startswith("-") \
                else ""
            return config_args, print_config, topic
        if a == "--print-config":
            print_config = True
        elif a.startswith("print_config="):
            value = a.partition("=")[2].lower()
            if value not in ("true", "false"):
                raise ValueError(f"print_config must be true or false, got {value!r}")
            print_config = value == "true"
        elif a.startswith("-"):
            raise ValueError(f"unknown flag {a!r} (flags: --print-config, --help); config values are KEY=VALUE")
        else:
            config_args.append(a)
        i += 1
    return config_args, print_config, None


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    try:
        config_args, print_config, topic = parse_args(argv)
        if topic is not None:
            print(help_text(topic))
            return 0
    except (ValueError, KeyError) as e:
        print(f"error: {e.args[0]}", file=sys.stderr)
        return 2

    from rlhf_exact.config import compose
    from rlhf_exact.config.schema import ConfigError

    try:
        cfg = compose.load_config(config_args, check_files=not print_config)
        if print_config:
            print(compose.config_to_yaml(cfg), end="")
            return 0
        import importlib.util

        if importlib.util.find_spec("rlhf_exact.loop") is None:
            print("error: the training loop (rlhf_exact.loop) is not installed in this checkout", file=sys.stderr)
            return 1
        from rlhf_exact.runtime.rundir import prepare_run_dir

        run_dir = prepare_run_dir(cfg)
        compose.save_config(cfg, run_dir / "config.yaml")
    except ConfigError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(f"run directory: {run_dir}", file=sys.stderr)

    from rlhf_exact import loop

    try:
        result = loop.run(cfg, run_dir)
    except (loop.ParityError, loop.NonFiniteLossError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 3
    print(loop.summarize(result))
    print(f"metrics: {run_dir / 'metrics.jsonl'}  plots: python -m rlhf_exact.plot {run_dir}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
