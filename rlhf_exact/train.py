"""Entry point: `python -m rlhf_exact.train recipe=NAME key=value ...`.

    python -m rlhf_exact.train recipe=grpo_qwen3_tiny                 # CPU, embedded tiny model
    python -m rlhf_exact.train recipe=grpo_qwen3 model.path=/path/to/Qwen3-0.6B algorithm=dapo
    python -m rlhf_exact.train recipe=grpo_qwen3_tiny --print-config   # resolved YAML, then exit
    python -m rlhf_exact.train --help [SECTION|all]                    # recipes, blocks, fields

Parses the arguments, composes and validates the config (rlhf_exact/config; a resumed
run composes its own saved config.yaml: rlhf_exact/runtime/resume.py), checks
every name and file it refers to (rlhf_exact/preflight.py: rewards, model directory,
data files, checkpoints to resume), creates the run directory
(rlhf_exact/runtime/rundir.py), saves config.yaml there and calls
`rlhf_exact.loop.run(cfg, run_dir)`. Nothing heavy is imported before the arguments
are parsed: --help reads only recipes/, configs/ and schema.py (no torch, Hydra, Ray,
vLLM or W&B).

What the user sees, by exit status:
  0    the run finished (or a resumed run was already finished: one line says so)
  2    a config error, found before anything starts: one line naming the key, file, line;
       no run directory is left behind
  3    exact mode violated, or a non-finite loss: one line naming the step (1-based, as
       the step lines count)
  130  Ctrl-C (SIGINT) or SIGTERM: "interrupted after step N; resume with run.resume=auto run.name=..."
  1    Ray could not place the actors within their deadline (a shared cluster without the
       CPUs or GPUs they ask for): one line naming the resource;
       a reward function that raised (reward.on_error=stop): its traceback once and one
       line naming the reward, the sample and its data row; anything else: its traceback,
       once
"""
from __future__ import annotations

import dataclasses
import os
import signal
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


def _first_paragraph(doc: str | None) -> str:
    return " ".join((doc or "").strip().split("\n\n")[0].split())


def _print(text: str) -> None:
    """print to stdout; a reader that went away (`--help | head`) is not an error."""
    try:
        print(text)
        sys.stdout.flush()
    except BrokenPipeError:
        # the interpreter flushes stdout again at exit: point it at /dev/null first
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())


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
        out.append(f"{name}: {_first_paragraph(cls.__doc__)}")
        out += _field_lines(name, cls, docs)
        out.append("")
    return "\n".join(out)


def _field_lines(prefix: str, cls, docs: dict) -> list[str]:
    """`prefix.field: type = default` and its comment, for every field; a nested section
    (model.tiny) lists its own fields under its dotted name."""
    out = []
    for f in dataclasses.fields(cls):
        default = f.default if f.default is not dataclasses.MISSING else f.default_factory()
        if dataclasses.is_dataclass(default):
            out.append(f"  {prefix}.{f.name}: {docs[cls.__name__].get(f.name, '')}")
            out += _field_lines(f"{prefix}.{f.name}", type(default), docs)
            continue
        if isinstance(default, list) and default and dataclasses.is_dataclass(default[0]):
            default = [dataclasses.asdict(d) for d in default]
        out.append(f"  {prefix}.{f.name}: {f.type} = {default!r}")
        out.append(f"      {docs[cls.__name__].get(f.name, '')}")
    return out


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


def main(argv: list[str] | None = None, reward_model: bool = False) -> int:
    """reward_model: run `python -m rlhf_exact.train_rm` (default recipe rm_qwen3_tiny, the
    reward-model preflight and rlhf_exact.rm_loop) instead of the GRPO loop."""
    argv = sys.argv[1:] if argv is None else list(argv)
    try:
        config_args, print_config, topic = parse_args(argv)
        if topic is not None:
            _print(help_text(topic))
            return 0
    except (ValueError, KeyError) as e:
        print(f"error: {e.args[0]}", file=sys.stderr)
        return 2

    if reward_model:
        config_args = ["recipe=rm_qwen3_tiny", *config_args]  # a recipe= given wins (the last one)
    prepared = _prepare(config_args, print_config, reward_model)
    if isinstance(prepared, int):
        return prepared
    cfg, report = prepared
    run_dir = report.run_dir
    print(f"run directory: {run_dir}", file=sys.stderr)
    # The loop raises the first failure of a group of actor calls itself; Ray would
    # print the others (the same failure, seen by the ranks it took down) a second time.
    os.environ.setdefault("RAY_IGNORE_UNHANDLED_ERRORS", "1")

    from rlhf_exact import loop
    from rlhf_exact.runtime.console import routed, summarize

    runner = loop
    if reward_model:
        from rlhf_exact import rm_loop as runner
    with routed(cfg.run.console, run_dir) as console_log:
        print(f"full log: {console_log}" + (" (run.console=full shows it here too)"
                                            if cfg.run.console == "quiet" else ""), file=sys.stderr)
        status = _run(runner, cfg, run_dir, report)
        if isinstance(status, int):
            return status
        print(runner.summarize(status) if reward_model else summarize(status))
        print(f"metrics: {run_dir / 'metrics.jsonl'}  plots: python -m rlhf_exact.plot {run_dir}")
    return 0


def _run(runner, cfg, run_dir, report):
    """The run's result, or the exit status of a run that failed (one line, or a reward's
    traceback and one line)."""
    from rlhf_exact import loop
    from rlhf_exact.rewards import RewardError
    from rlhf_exact.runtime.deadline import PlacementTimeout

    previous = signal.signal(signal.SIGTERM, lambda *_: _terminated(cfg, run_dir))
    try:
        return runner.run(cfg, run_dir, report.verified)
    except (loop.ParityError, loop.NonFiniteLossError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 3
    except KeyboardInterrupt:
        print(interrupted_message(cfg, run_dir), file=sys.stderr)
        return 130
    except PlacementTimeout as e:  # a shared cluster without room (preflight checked a local Ray's)
        print(f"error: {e}", file=sys.stderr)
        return 1
    except RewardError as e:  # user code: its own traceback once, then what happened
        import traceback

        traceback.print_exception(e.__cause__ or e, file=sys.stderr)
        print(f"error: {e} (reward.on_error=skip drops such samples instead)", file=sys.stderr)
        return 1
    finally:
        signal.signal(signal.SIGTERM, previous)


def _prepare(config_args: list[str], print_config: bool, reward_model: bool = False):
    """(config, preflight report) of a run to start, its directory made and config.yaml
    saved in it; or the exit status when there is none to start (--print-config, a
    finished run, a config error: one line). reward_model: the reward-model preflight."""
    from rlhf_exact.config import compose
    from rlhf_exact.config.schema import ConfigError

    try:
        from rlhf_exact.runtime.resume import load_run_config

        cfg, notes = load_run_config(config_args, check_files=not print_config)
        if print_config:
            _print(compose.config_to_yaml(cfg).rstrip("\n"))
            return 0
        from rlhf_exact.preflight import preflight, preflight_reward_model
        from rlhf_exact.runtime.rundir import locate_run_dir

        report = (preflight_reward_model if reward_model else preflight)(cfg, locate_run_dir(cfg))
        if report.finished:
            print(report.finished, file=sys.stderr)
            return 0
        for note in notes + report.notes:
            print(f"note: {note}", file=sys.stderr)
        report.run_dir.mkdir(parents=True, exist_ok=True)
        compose.save_config(cfg, report.run_dir / "config.yaml")
    except ConfigError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    return cfg, report


def _terminated(cfg, run_dir) -> None:
    """SIGTERM (schedulers, `timeout`, `docker stop`): what Ctrl-C says, and exit at once.
    Sent to the process group, it has stopped Ray's GCS and raylet too, and every Ray call
    of an orderly shutdown would wait for them (a minute, then Ray aborts the process).
    Nothing is lost: metrics lines and checkpoints are on disk whole or not at all, and the
    watcher of runtime/cluster.py stops what is left of Ray and deletes its files."""
    print(interrupted_message(cfg, run_dir), file=sys.stderr, flush=True)
    sys.stdout.flush()
    os._exit(130)


def interrupted_message(cfg, run_dir) -> str:
    """Where an interrupted run stopped and the command line that continues it."""
    from rlhf_exact.runtime.checkpoint import latest_checkpoint
    from rlhf_exact.runtime.metrics import METRICS_FILE, read_metrics

    steps = [r["step"] for r in read_metrics(run_dir)] if (run_dir / METRICS_FILE).is_file() else []
    ckpt = latest_checkpoint(run_dir)
    where = (f" (it continues from checkpoint {ckpt.name})" if ckpt else
             " (no checkpoint yet: it starts again at step 0)")
    out = "" if cfg.run.output_dir == os.path.abspath("runs") else f" run.output_dir={cfg.run.output_dir}"
    return (f"interrupted after step {max(steps, default=0)}; resume with run.resume=auto run.name={cfg.run.name}"
            f"{out}{where}")


if __name__ == "__main__":
    sys.exit(main())
