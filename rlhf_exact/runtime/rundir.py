"""The run directory: where it is, whether it may be reused, which checkpoint to resume.

    run_dir = locate_run_dir(cfg)                # where it is (creates nothing); sets cfg.run.name
    run_dir = prepare_run_dir(cfg)               # the same, created
    save_config(cfg, run_dir / "config.yaml")
    ckpt = resume_checkpoint(cfg, run_dir)       # None: start at step 0

Rules (run.output_dir = OUT):
  run.name set           OUT/<name>. resume=never refuses a directory that already holds
                         a run (config.yaml, metrics.jsonl or checkpoints/); resume=auto
                         refuses one that does not (a mistyped name would start afresh),
                         naming the nearest runs; resume=auto_or_new takes either.
  run.name null          resume=never: a new OUT/<recipe>-<YYYYmmdd-HHMMSS>;
                         resume=auto: the newest existing OUT/<recipe>-<timestamp> (none is
                         an error); auto_or_new: that, else a new one.
  run.resume=<path>      a run directory (its latest complete checkpoint) or a checkpoint
                         directory .../checkpoints/step_NNNNNN; the run continues in that
                         run directory.

Layout of a run directory: config.yaml, metrics.jsonl, checkpoints/step_NNNNNN/,
wandb/, plots/ (python -m rlhf_exact.plot RUN_DIR), and whatever the loop adds
(tiny_model/).
"""
from __future__ import annotations

import difflib
import re
import time
from pathlib import Path

from rlhf_exact.config.schema import RESUME_WORDS, ConfigError, TrainConfig

from .checkpoint import COMPLETE, latest_checkpoint

_RUN_MARKERS = ("config.yaml", "metrics.jsonl", "checkpoints")


def _holds_run(d: Path) -> bool:
    return d.is_dir() and any((d / m).exists() for m in _RUN_MARKERS)


def is_checkpoint_dir(p: Path) -> bool:
    return p.parent.name == "checkpoints" and re.fullmatch(r"step_\d+", p.name) is not None


def prepare_run_dir(cfg: TrainConfig, now: float | None = None) -> Path:
    """Create (or pick, when resuming) the run directory per the module rules; sets
    cfg.run.name (and cfg.run.output_dir for a resume path) to match it."""
    run_dir = locate_run_dir(cfg, now)
    run_dir.mkdir(parents=True, exist_ok=True)
    return run_dir


def locate_run_dir(cfg: TrainConfig, now: float | None = None) -> Path:
    """The run directory prepare_run_dir would create (or pick), without creating it:
    checks before the run starts look at it and leave nothing behind when they fail.
    Sets cfg.run.name (and cfg.run.output_dir) like prepare_run_dir."""
    out = Path(cfg.run.output_dir)
    resume = cfg.run.resume
    if resume not in RESUME_WORDS:
        path = Path(resume)
        run_dir = path.parent.parent if is_checkpoint_dir(path) else path
        if not _holds_run(run_dir):
            raise ConfigError(f"run.resume={resume!r}: {run_dir} is not a run directory (no "
                              f"{', '.join(_RUN_MARKERS)})")
    elif cfg.run.name:
        run_dir = out / cfg.run.name
        if resume == "never" and _holds_run(run_dir):
            raise ConfigError(f"run directory {run_dir} already holds a run: continue it with run.resume=auto, "
                              f"or start another with run.name=NEW_NAME")
        if resume == "auto" and not _holds_run(run_dir):
            raise ConfigError(f"run.resume=auto: no run named {cfg.run.name!r} in {out}{_nearest(cfg.run.name, out)}; "
                              f"run.resume=auto_or_new starts a new run of that name")
    else:
        stem = Path(cfg.recipe).stem
        previous = sorted(p for p in out.glob(f"{stem}-*")
                          if p.is_dir() and re.fullmatch(re.escape(stem) + r"-\d{8}-\d{6}(-\d+)?", p.name))
        if resume != "never" and previous:
            run_dir = previous[-1]
        elif resume == "auto":
            raise ConfigError(f"run.resume=auto: no run of recipe {stem} in {out} to continue; run.resume=auto_or_new "
                              f"starts one")
        else:
            base = out / f"{stem}-{time.strftime('%Y%m%d-%H%M%S', time.localtime(now))}"
            run_dir, n = base, 1
            while run_dir.exists():
                n += 1
                run_dir = base.with_name(f"{base.name}-{n}")
    cfg.run.name = run_dir.name
    cfg.run.output_dir = str(run_dir.parent.resolve())
    return run_dir.resolve()


def _nearest(name: str, out: Path) -> str:
    """' (nearest: a, b)': the runs in `out` whose names are closest to `name`, or the newest."""
    runs = [d for d in out.iterdir() if _holds_run(d)] if out.is_dir() else []
    if not runs:
        return " (it holds no runs)"
    names = difflib.get_close_matches(name, [d.name for d in runs], n=3, cutoff=0.5)
    if names:
        return f" (nearest: {', '.join(names)})"
    newest = sorted(runs, key=lambda d: d.stat().st_mtime)[-3:][::-1]
    return f" (newest: {', '.join(d.name for d in newest)})"


def resume_checkpoint(cfg: TrainConfig, run_dir: str | Path) -> Path | None:
    """The checkpoint to resume from: None for resume=never or a fresh resume=auto."""
    resume = cfg.run.resume
    if resume == "never":
        return None
    if resume in ("auto", "auto_or_new"):
        return latest_checkpoint(run_dir)
    path = Path(resume)
    if is_checkpoint_dir(path):
        if not (path / COMPLETE).is_file():
            raise ConfigError(f"run.resume={resume!r} is an incomplete checkpoint (no {COMPLETE} marker)")
        return path
    found = latest_checkpoint(path)
    if found is None:
        raise ConfigError(f"run.resume={resume!r}: the run directory has no complete checkpoint")
    return found


def prepare_model(cfg, run_dir: Path) -> Path:
    """The HF model directory the run starts from (the tiny model is built into the run
    directory, deterministically from run.seed, on the first start)."""
    if not cfg.model.tiny.enabled:
        return Path(cfg.model.path)
    path = run_dir / "initial_model"
    if not (path / "config.json").exists():
        from rlhf_exact.models.tiny import make_tiny_model_dir

        make_tiny_model_dir(path, seed=cfg.run.seed, std=0.05, **cfg.model.tiny.shape())
    return path
