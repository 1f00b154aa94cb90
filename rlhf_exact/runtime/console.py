"""What a run prints to the console, apart from the loop that produces it: one line per
step (`progress_line`), the start-up lines around each slow start (`starting`), the
closing summary (`summarize`), and the per-phase clock the step line reads (`Clock`).
Pure formatting over the step's metrics dict, so it is tested without a run:

    with starting("2 sampler engine(s)"):    # 'starting ... ' now, '... ready (12.3 s)' after
        ...
    log.info("%s", progress_line(step, steps, metrics, step_seconds, exact=True))

And what reaches the console at all (`routed`, run.console): a run's actors (vLLM
engines, trainer ranks) and libraries print a hundred lines of INFO, banners and Ray
prefixes for each line of the run's own. By default ("quiet") the console shows the
run's lines, tracebacks, and warnings and errors of any source; everything, shown or
not, goes to <run_dir>/console.log, whose path the run prints first.
"""
from __future__ import annotations

import contextlib
import io
import logging
import os
import pathlib
import re
import sys
import time
from collections.abc import Sequence

log = logging.getLogger("rlhf_exact")


class Clock:
    """Seconds per phase (`with clock("time/sample"): ...`) and since the start."""

    def __init__(self):
        self.start, self.times = time.perf_counter(), {}

    @contextlib.contextmanager
    def __call__(self, name: str):
        t = time.perf_counter()
        yield
        self.times[name] = time.perf_counter() - t

    def total(self) -> float:
        return time.perf_counter() - self.start


@contextlib.contextmanager
def starting(what: str):
    """'starting WHAT ...' now and 'WHAT ready (N s)' after: start-up takes minutes on CPU."""
    log.info("starting %s ...", what)
    t = time.perf_counter()
    yield
    log.info("%s ready (%.1f s)", what, time.perf_counter() - t)


def progress_line(step: int, steps: int, m: dict[str, float], step_seconds: Sequence[float], exact: bool) -> str:
    """The console line of a step (1-based): k/N, reward (and reward errors), parity status,
    times, eval when it ran, ETA from this process's steps (the first, a warm-up, left out
    when there are others)."""
    errors = int(m.get("reward/errors", 0))
    reward = f"reward {m['reward/mean']:.4f}" + (f" ({errors} reward error{'s' * (errors != 1)}, dropped)"
                                                  if errors else "")
    if m["parity/tokens_bitwise_equal_frac"] == 1.0 and m["parity/kl"] == 0.0:
        parity = "parity exact (KL 0, every token bitwise equal" + (", ratio 1)" if m["parity/ratio_max"] == 1.0
                                                                   and m["parity/ratio_min"] == 1.0 else ")")
    else:
        parity = (f"parity {'VIOLATED' if exact else 'differs'}: KL {m['parity/kl']:.3g}, max|diff| "
                  f"{m['parity/logprob_abs_diff_max']:.3g}, bitwise {m['parity/tokens_bitwise_equal_frac']:.4f}")
    recent = list(step_seconds[1:] or step_seconds)
    eta = (steps - step) * sum(recent) / max(len(recent), 1)
    ev = " ".join(f"{k[5:]} {v:.3f}" for k, v in m.items() if k.startswith("eval/pass@") or k == "eval/greedy_pass@1")
    return (f"step {step}/{steps}: {reward}  {parity}  time {m['time/step']:.1f}s (sample {m['time/sample']:.1f}, "
            f"recompute {m['time/recompute']:.1f}, train {m['time/train']:.1f}, sync {m['time/sync']:.1f})"
            + (f"  eval: {ev}" if ev else "") + f"  ETA {hms(eta)}")


def hms(seconds: float) -> str:
    s = int(round(seconds))
    return f"{s // 3600}:{s // 60 % 60:02d}:{s % 60:02d}"


def summarize(result: dict, keys: Sequence[str] = ("reward/mean", "parity/kl")) -> str:
    """The run's closing line: each key's first and last step value. Parity figures are
    0 or in scientific notation: a KL of 2e-5 at four decimals would read 0.0000, exact."""
    f, l_ = result.get("first") or {}, result.get("last") or {}

    def num(k: str, v: float) -> str:
        return f"{v:.4f}" if not k.startswith("parity/") else "0" if v == 0 else f"{v:.3e}"

    return "  ".join(f"{k}: first {num(k, f.get(k, float('nan')))} last {num(k, l_.get(k, float('nan')))}"
                     for k in keys)


LOG_FILE = "console.log"
_ANSI = re.compile(r"\x1b\[[0-9;]*m")
_ACTOR = re.compile(r"^\((?:[\w.:-]+ )?pid=[^)]*\) ?")  # Ray's prefix of a line an actor printed
_STAMPS = re.compile(r"\((?:[\w.:-]+ )?pid=[^)]*\) ?|\d\d-\d\d \d\d:\d\d:\d\d ")  # who and when, not what
_LEVEL = re.compile(r"\b(WARNING|WARN|ERROR|CRITICAL|FATAL)\b")
_QUIET_DRIVER = (re.compile(r"^\d{4}-\d\d-\d\d [\d:,.]+\s+(DEBUG|INFO)\s+(?!rlhf_exact\b)"),  # Ray, root logger
                 re.compile(r"^(DEBUG|INFO) \d\d-\d\d "),  # vLLM's own format
                 re.compile(r"^wandb: (?!.*\b(WARNING|ERROR)\b)"))


def shown(line: str) -> bool:
    """Whether run.console=quiet shows a line (without its newline) on the console: the
    run's own lines and tracebacks, and warnings and errors of any source; not what
    actors print otherwise (vLLM and Ray INFO, their stdout), nor the driver's library
    INFO lines and W&B's banners."""
    text = _ANSI.sub("", line)
    actor = _ACTOR.match(text)
    if actor:
        return bool(_LEVEL.search(text[actor.end():actor.end() + 80]))
    return not any(p.match(text) for p in _QUIET_DRIVER)


def once(keep=shown):
    """`keep` that also shows an actor's warning only the first time: vLLM repeats each
    of its start-up warnings in every process it starts (engine core, workers), under
    other prefixes and times. What it hides is still in console.log."""
    seen = set()

    def keep_once(line: str) -> bool:
        if not keep(line):
            return False
        text = _ANSI.sub("", line)
        if not _ACTOR.match(text):
            return True
        key = _STAMPS.sub("", text)
        new = key not in seen
        seen.add(key)
        return new

    return keep_once


class ConsoleStream(io.TextIOBase):
    """sys.stdout or sys.stderr of a run: every line goes to the run's console.log, and
    the lines `keep` accepts to the console as well. A progress bar's redraw (a write
    that starts with a carriage return) goes to the console only."""

    def __init__(self, console, log_file, keep):
        super().__init__()
        self.console, self.log_file, self.keep, self._buf = console, log_file, keep, ""

    def writable(self) -> bool:
        return True

    def isatty(self) -> bool:
        return self.console.isatty()

    def fileno(self) -> int:
        return self.console.fileno()

    def write(self, s: str) -> int:
        if not self._buf and s.startswith("\r") and "\n" not in s:
            self.console.write(s)
            return len(s)
        *lines, self._buf = (self._buf + s).split("\n")
        for line in lines:
            if not self.log_file.closed:  # a logging handler made during a run of this process that ended
                self.log_file.write(_ANSI.sub("", line).split("\r")[-1] + "\n")
            if self.keep(line):
                self.console.write(line + "\n")
        return len(s)

    def flush(self) -> None:
        if not self.log_file.closed:
            self.log_file.flush()
        self.console.flush()


@contextlib.contextmanager
def routed(mode: str, run_dir: pathlib.Path):
    """sys.stdout and sys.stderr through ConsoleStream while the block runs: run.console
    "quiet" shows what `shown` accepts, "full" everything; both keep it all in
    run_dir/console.log (appended to: a resumed run adds to it). W&B is told to be quiet."""
    if mode == "quiet":
        os.environ.setdefault("WANDB_SILENT", "true")
    keep = once(shown) if mode == "quiet" else (lambda line: True)
    saved = sys.stdout, sys.stderr
    with open(run_dir / LOG_FILE, "a", buffering=1) as f:
        sys.stdout, sys.stderr = ConsoleStream(saved[0], f, keep), ConsoleStream(saved[1], f, keep)
        try:
            yield run_dir / LOG_FILE
        finally:
            for stream in (sys.stdout, sys.stderr):
                if stream._buf:
                    stream.write("\n")
            sys.stdout, sys.stderr = saved
