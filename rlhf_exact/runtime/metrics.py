"""Per-step metrics: run_dir/metrics.jsonl always, W&B when enabled.

    logger = MetricsLogger(run_dir, cfg, resume_step=None)   # resume_step: the checkpoint's step
    logger.log(step, {"reward/mean": 0.4, "parity/kl": 0.0, "time/train": 1.2})
    logger.close()

metrics.jsonl holds one JSON object per line: {"step": int, "time": unix seconds,
"elapsed": seconds since this logger started, <metric>: float, ...}; each line is
flushed and fsynced, so a crash loses at most the line being written (read_metrics skips
a torn last line). Non-finite values are written as NaN / Infinity (Python's json reads
them; strict JSON parsers do not).

Resuming: MetricsLogger(..., resume_step=N) keeps the lines with step <= N and drops
the rest (steps that ran after the checkpoint and will run again); resume_step=None
starts metrics.jsonl empty. Steps are numbered by the caller; the checkpoint's step and
the metrics' step must use the same numbering.

W&B (imported only when enabled): wandb.init(dir=run_dir, mode=cfg.logging.wandb_mode,
config=the resolved config). "online" without WANDB_API_KEY or a netrc entry for the
W&B host falls back to "offline" with a printed note. The W&B run id is kept in
run_dir/wandb_run_id so a resumed run continues the same W&B run.

W&B after a resume: a killed process may not have handed its last steps to W&B, and
W&B refuses steps below the highest one it has. So a resumed logger first re-sends the
kept metrics.jsonl records (steps <= resume_step) from the W&B run's next step on
(online: the step W&B reports; offline: every kept step, each process writing its own
offline file, and `wandb sync` keeps the first copy of each step), and later does not
send steps W&B already has (a resumed run recomputes them bit for bit). So W&B ends
with every step once, as metrics.jsonl does.

Sample completions: `log_samples(step, rows)` appends rows of {prompt, completion,
reward, ...} to run_dir/samples.jsonl (truncated on resume like metrics.jsonl) and, with
W&B, adds them to the `samples` table (columns: step and the rows' keys).
"""
from __future__ import annotations

import json
import os
import sys
import time
from pathlib import Path

METRICS_FILE = "metrics.jsonl"
SAMPLES_FILE = "samples.jsonl"


def read_metrics(path: str | os.PathLike) -> list[dict]:
    """The records of a metrics.jsonl (a run dir or the file), skipping a torn last line."""
    path = Path(path)
    if path.is_dir():
        path = path / METRICS_FILE
    records = []
    with open(path) as f:
        lines = f.read().split("\n")
    for i, line in enumerate(lines):
        if not line.strip():
            continue
        try:
            records.append(json.loads(line))
        except ValueError:
            if i == len(lines) - 1:  # no newline after it: the write was cut off
                break
            raise ValueError(f"{path}:{i + 1}: not a JSON line: {line[:80]!r}") from None
    return records


def truncate_metrics(path: str | os.PathLike, max_step: int | None) -> int:
    """Keep only records with step <= max_step (None: keep none), atomically. Returns
    the number kept."""
    path = Path(path)
    if not path.exists():
        return 0
    keep = [] if max_step is None else [r for r in read_metrics(path) if r["step"] <= max_step]
    tmp = path.with_name(f".{path.name}.tmp")
    with open(tmp, "w") as f:
        for r in keep:
            f.write(json.dumps(r) + "\n")
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)
    return len(keep)


def wandb_credentials_present() -> bool:
    """WANDB_API_KEY is set, or the netrc has an entry for the W&B host."""
    if os.environ.get("WANDB_API_KEY"):
        return True
    import netrc
    from urllib.parse import urlparse

    host = urlparse(os.environ.get("WANDB_BASE_URL", "https://api.wandb.ai")).hostname
    try:
        return netrc.netrc(os.environ.get("NETRC")).authenticators(host) is not None
    except (OSError, netrc.NetrcParseError):
        return False


def _new_run_id() -> str:
    import secrets
    import string

    return "".join(secrets.choice(string.ascii_lowercase + string.digits) for _ in range(8))


def _number(key: str, value) -> float:
    try:
        return float(value)  # floats, ints, bools, numpy scalars, 0-d tensors
    except (TypeError, ValueError):
        raise TypeError(f"metric {key!r} is a {type(value).__name__}, not a number") from None


class MetricsLogger:
    """Appends one JSON line per step to run_dir/metrics.jsonl, and logs to W&B (module
    docstring)."""

    def __init__(self, run_dir: str | os.PathLike, cfg, resume_step: int | None = None):
        self.run_dir = Path(run_dir)
        self.path = self.run_dir / METRICS_FILE
        truncate_metrics(self.path, resume_step)
        truncate_metrics(self.run_dir / SAMPLES_FILE, resume_step)
        self._file = open(self.path, "a")
        self._t0 = time.time()
        self._wandb = None
        self._wandb_next = 0  # W&B refuses steps below this
        self._samples_table = None
        self.wandb_mode = cfg.logging.wandb_mode
        if self.wandb_mode != "disabled":
            self._wandb = self._init_wandb(cfg)
            self._wandb_next = self._wandb.step if self.wandb_mode == "online" else 0
            for r in read_metrics(self.path):  # the kept steps W&B may lack (module docstring)
                if r["step"] >= self._wandb_next:
                    self._wandb.log({k: v for k, v in r.items() if k not in ("step", "time", "elapsed")},
                                    step=r["step"])
                    self._wandb_next = r["step"] + 1

    def _init_wandb(self, cfg):
        if self.wandb_mode == "online" and not wandb_credentials_present():
            print("note: logging.wandb_mode=online but no WANDB_API_KEY and no `wandb login`; logging offline "
                  f"to {self.run_dir / 'wandb'} (upload later with `wandb sync`)", file=sys.stderr)
            self.wandb_mode = "offline"
        import wandb

        from rlhf_exact.config.compose import config_to_dict

        id_file = self.run_dir / "wandb_run_id"
        run_id = id_file.read_text().strip() if id_file.exists() else _new_run_id()
        id_file.write_text(run_id + "\n")
        return wandb.init(project=cfg.logging.wandb_project, entity=cfg.logging.wandb_entity, name=cfg.run.name,
                          id=run_id, resume="allow", dir=str(self.run_dir), mode=self.wandb_mode,
                          config=config_to_dict(cfg))

    def log(self, step: int, metrics: dict[str, float]) -> dict:
        """Write one step's metrics; returns the record written."""
        values = {k: _number(k, v) for k, v in metrics.items()}
        now = time.time()
        record = {"step": int(step), "time": now, "elapsed": now - self._t0, **values}
        self._file.write(json.dumps(record) + "\n")
        self._file.flush()
        os.fsync(self._file.fileno())
        if self._wandb is not None and step >= self._wandb_next:
            self._wandb.log(values, step=int(step))
            self._wandb_next = int(step) + 1
        return record

    def rewind(self, step: int) -> None:
        """Drop the records after `step` (they will be logged again: a trainer restarted from
        that step's checkpoint); W&B keeps the steps it has (the same numbers, recomputed)."""
        self._file.close()
        truncate_metrics(self.path, step)
        truncate_metrics(self.run_dir / SAMPLES_FILE, step)
        self._file = open(self.path, "a")

    def log_samples(self, step: int, rows: list[dict]) -> None:
        """Sample completions of a step: samples.jsonl, and W&B's `samples` table (call it
        before `log(step, ...)`: the table joins that step's W&B row)."""
        with open(self.run_dir / SAMPLES_FILE, "a") as f:
            for row in rows:
                f.write(json.dumps({"step": int(step), **row}) + "\n")
            f.flush()
            os.fsync(f.fileno())
        if self._wandb is not None and rows and step >= self._wandb_next:
            import wandb

            columns = ["step", *rows[0]]
            if self._samples_table is None:  # one table that grows; W&B logs a snapshot each time
                self._samples_table = wandb.Table(columns=columns, log_mode="INCREMENTAL")
            for row in rows:
                self._samples_table.add_data(int(step), *(row.get(c) for c in columns[1:]))
            self._wandb.log({"samples": self._samples_table}, step=int(step), commit=False)

    def close(self) -> None:
        if not self._file.closed:
            self._file.close()
        if self._wandb is not None:
            self._wandb.finish()
            self._wandb = None

    def __enter__(self) -> MetricsLogger:
        return self

    def __exit__(self, *exc) -> None:
        self.close()
