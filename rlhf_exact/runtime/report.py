"""Render a run's metrics.jsonl to PNGs and one self-contained HTML page, for people
without W&B.

    python -m rlhf_exact.plot runs/grpo_qwen3_tiny-20250101-120000 [--out DIR]
    # -> RUN_DIR/plots/{reward,parity,step_time,all_metrics}.png and report.html

Panels: reward/mean (with reward/std as a band when logged); the sampler/trainer parity
metrics parity/kl and parity/logprob_abs_diff_max (exact kernels: exactly 0 at every
step, said on the panel); the step time split time/sample, time/reward, time/recompute,
time/train, time/sync (stacked), without the first step after each start (engine warm-up and
compilation: one such step would flatten the rest; its time is given in the title); and
small multiples of every metric, each with its axes labelled. Every panel marks where
the run was resumed (a dashed line: the metrics logger restarts its clock, "elapsed", on
each start, so a new process is where time - elapsed moves on). report.html embeds the
PNGs as base64 and lists each metric's last value. Metrics that were never logged
are left out of their panel. matplotlib runs with the Agg backend (no display needed).
"""
from __future__ import annotations

import base64
import html
import math
import os
import time
from pathlib import Path

from .metrics import METRICS_FILE, read_metrics

REWARD = "reward/mean"
REWARD_STD = "reward/std"
PARITY = ("parity/kl", "parity/logprob_abs_diff_max")
STEP_TIME = ("time/sample", "time/reward", "time/recompute", "time/train", "time/sync")
_NOT_METRICS = {"step", "time", "elapsed"}
CLOCK_SLACK_S = 1.0  # time - elapsed of one process's records differ by rounding only (both are floats)
PARITY_LINEAR_SPAN = 100.0  # parity values within this ratio (largest / smallest positive) get a linear axis


def _series(records: list[dict], key: str) -> tuple[list[int], list[float]]:
    pts = [(r["step"], r[key]) for r in records if isinstance(r.get(key), (int, float))]
    return [p[0] for p in pts], [float(p[1]) for p in pts]


def _metric_keys(records: list[dict]) -> list[str]:
    keys: dict[str, None] = {}
    for r in records:
        for k, v in r.items():
            if k not in _NOT_METRICS and isinstance(v, (int, float)) and not isinstance(v, bool):
                keys[k] = None
    return sorted(keys)


def _clock_start(r: dict) -> float | None:
    """When the process that logged record r started its metrics clock: time - elapsed
    (the same for every record of one process)."""
    t, e = r.get("time"), r.get("elapsed")
    return t - e if isinstance(t, (int, float)) and isinstance(e, (int, float)) else None


def session_starts(records: list[dict]) -> list[int]:
    """Steps at which a (re)started process logged its first record: the first record and
    every record whose clock started later than its predecessor's (time - elapsed), or,
    without "time", whose "elapsed" is below its predecessor's. Comparing "elapsed" alone
    misses the resume of a short run: the new process's first step, start-up included,
    can take longer than the whole of the run before it."""
    starts = []
    for i, r in enumerate(records):
        prev = records[i - 1] if i else {}
        c0, c1 = _clock_start(prev), _clock_start(r)
        if c0 is not None and c1 is not None:
            new = c1 - c0 > CLOCK_SLACK_S
        else:
            e0, e1 = prev.get("elapsed"), r.get("elapsed")
            new = isinstance(e0, (int, float)) and isinstance(e1, (int, float)) and e1 < e0
        if i == 0 or new:
            starts.append(r["step"])
    return starts


def _mark_resumes(ax, records) -> None:
    for i, s in enumerate(session_starts(records)[1:]):
        ax.axvline(s - 0.5, color="gray", ls="--", lw=1, label="resumed" if i == 0 else None)


def _unit(key: str) -> str:
    if key.endswith("_per_s"):  # before "_s": perf/train_tokens_per_s is a rate, not seconds
        return key.rsplit("/", 1)[-1].removesuffix("_per_s").replace("_", " ") + " / s"
    if key.startswith("time/") or key.endswith("_s"):
        return "seconds"
    return key.rsplit("/", 1)[-1]


def _no_data(ax, what: str) -> None:
    ax.text(0.5, 0.5, f"no {what} logged", ha="center", va="center", transform=ax.transAxes, color="gray")


def _plot_reward(plt, records):
    fig, ax = plt.subplots(figsize=(7, 4))
    steps, mean = _series(records, REWARD)
    if steps:
        ax.plot(steps, mean, marker="o", ms=3, label=REWARD)
        s_steps, std = _series(records, REWARD_STD)
        if s_steps == steps:
            ax.fill_between(steps, [m - s for m, s in zip(mean, std)], [m + s for m, s in zip(mean, std)],
                            alpha=0.2, label=f"± {REWARD_STD}")
        _mark_resumes(ax, records)
        ax.legend()
    else:
        _no_data(ax, REWARD)
    ax.set(title="Reward", xlabel="step", ylabel="reward")
    ax.grid(alpha=0.3)
    fig.tight_layout()
    return fig


def _plot_parity(plt, records):
    fig, axes = plt.subplots(1, 2, figsize=(11, 4))
    for ax, key in zip(axes, PARITY):
        steps, vals = _series(records, key)
        if not steps:
            _no_data(ax, key)
        else:
            ax.plot(steps, vals, marker="o", ms=3, color="tab:red")
            finite = [v for v in vals if math.isfinite(v)]
            if finite and max(abs(v) for v in finite) == 0 and len(finite) == len(vals):
                ax.text(0.5, 0.85, f"exactly 0 at all {len(vals)} steps", ha="center", transform=ax.transAxes,
                        color="tab:green", fontsize=11)
            else:
                _parity_scale(ax, finite)
            _mark_resumes(ax, records)
        ax.set(title=key, xlabel="step", ylabel=_unit(key))
        ax.grid(alpha=0.3)
    fig.suptitle("Sampler vs trainer logprobs")
    fig.tight_layout()
    return fig


def _parity_scale(ax, values: list[float]) -> None:
    """Small positive numbers that may span decades: symlog when they do (its ticks are at
    decades, so it needs several in range; linthresh the smallest positive value), linear
    when they lie within PARITY_LINEAR_SPAN of each other, where symlog can show no tick,
    and so no number, at all (a default-kernel run's logprob differences: 0.016 to 0.06)."""
    positive = [abs(v) for v in values if v != 0]
    if positive and max(positive) / min(positive) > PARITY_LINEAR_SPAN:
        ax.set_yscale("symlog", linthresh=10 ** math.floor(math.log10(min(positive))))
    else:
        ax.ticklabel_format(axis="y", style="sci", scilimits=(-3, 3))


def _plot_step_time(plt, records):
    fig, ax = plt.subplots(figsize=(7, 4))
    present = [k for k in STEP_TIME if any(isinstance(r.get(k), (int, float)) for r in records)]
    title = "Step time"
    if present:
        by_step = {r["step"]: r for r in records}
        steps = sorted(s for s, r in by_step.items() if any(k in r for k in present))
        warm = [s for s in session_starts(records) if s in steps]
        if len(warm) < len(steps):  # leave the warm-up steps out, unless nothing else is left
            secs = [sum(float(by_step[s].get(k, 0.0)) for k in present) for s in warm]
            title += (f" (first step after each start left out: warm-up, "
                      f"{', '.join(f'{x:.1f}' for x in secs)} s)")
            steps = [s for s in steps if s not in warm]
        ys = [[float(by_step[s].get(k, 0.0)) for s in steps] for k in present]
        ax.stackplot(steps, *ys, labels=present, alpha=0.8)
        ax.set_ylim(0, 1.25 * max(map(sum, zip(*ys))))  # headroom for the legend
        _mark_resumes(ax, records)
        ax.legend(loc="upper center", ncol=len(present) + 1, fontsize=8)
    else:
        _no_data(ax, "time/*")
    ax.set_title(title, fontsize=10)
    ax.set(xlabel="step", ylabel="seconds")
    ax.grid(alpha=0.3)
    fig.tight_layout()
    return fig


def _plot_all(plt, records, keys):
    cols = 4
    rows = max(1, math.ceil(len(keys) / cols))
    fig, axes = plt.subplots(rows, cols, figsize=(3.2 * cols, 2.4 * rows), squeeze=False)
    for ax, key in zip(axes.flat, keys):
        steps, vals = _series(records, key)
        ax.plot(steps, vals, lw=1)
        _mark_resumes(ax, records)
        ax.set_title(key, fontsize=8)
        ax.set_xlabel("step", fontsize=7)
        ax.set_ylabel(_unit(key), fontsize=7)
        ax.tick_params(labelsize=7)
        ax.grid(alpha=0.3)
    for ax in list(axes.flat)[len(keys):]:
        ax.axis("off")
    fig.tight_layout()
    return fig


def figures(records: list[dict]) -> dict:
    """name -> matplotlib Figure of each panel (the caller saves and closes them)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return {"reward": _plot_reward(plt, records), "parity": _plot_parity(plt, records),
            "step_time": _plot_step_time(plt, records), "all_metrics": _plot_all(plt, records, _metric_keys(records))}


def _fmt(v) -> str:
    return f"{v:.6g}" if isinstance(v, float) else str(v)


def render(run_dir: str | os.PathLike, out_dir: str | os.PathLike | None = None) -> Path:
    """Write the PNGs and report.html for run_dir/metrics.jsonl into out_dir (default
    run_dir/plots); returns the HTML path."""
    import matplotlib.pyplot as plt

    run_dir = Path(run_dir)
    metrics = run_dir / METRICS_FILE
    if not metrics.is_file():
        raise FileNotFoundError(f"{metrics} does not exist (is {run_dir} a run directory?)")
    records = read_metrics(metrics)
    out = Path(out_dir) if out_dir is not None else run_dir / "plots"
    out.mkdir(parents=True, exist_ok=True)
    keys = _metric_keys(records)
    pngs = {}
    for name, fig in figures(records).items():
        pngs[name] = out / f"{name}.png"
        fig.savefig(pngs[name], dpi=80 if name == "all_metrics" else 100)
        plt.close(fig)

    last = {}
    for r in records:
        for k in keys:
            if k in r:
                last[k] = (r["step"], r[k])
    rows = "\n".join(f"<tr><td>{html.escape(k)}</td><td>{s}</td><td>{html.escape(_fmt(v))}</td></tr>"
                     for k, (s, v) in last.items())
    imgs = "\n".join(
        f'<h2>{html.escape(name.replace("_", " "))}</h2>\n<img alt="{name}" '
        f'src="data:image/png;base64,{base64.b64encode(p.read_bytes()).decode()}">' for name, p in pngs.items())
    steps = [r["step"] for r in records]
    title = html.escape(run_dir.resolve().name)
    page = f"""<!DOCTYPE html>
<html><head><meta charset="utf-8"><title>{title}</title>
<style>body{{font-family:sans-serif;margin:2em}} img{{max-width:100%}}
table{{border-collapse:collapse}} td,th{{border:1px solid #ccc;padding:2px 8px;text-align:left}}</style>
</head><body>
<h1>{title}</h1>
<p>{len(records)} steps logged{f" ({min(steps)}..{max(steps)})" if steps else ""}; rendered
{time.strftime("%Y-%m-%d %H:%M:%S")} from {html.escape(str(metrics.resolve()))}</p>
{imgs}
<h2>Last values</h2>
<table><tr><th>metric</th><th>step</th><th>value</th></tr>
{rows}
</table>
</body></html>
"""
    report = out / "report.html"
    report.write_text(page)
    return report
