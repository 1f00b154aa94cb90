"""metrics.jsonl -> PNGs + one self-contained HTML page, on a synthetic run."""
import base64
import json
import math
import re
import subprocess
import sys

import pytest

from rlhf_exact.runtime.report import render


def _synthetic_run(run_dir, steps=30, exact=True):
    run_dir.mkdir(parents=True, exist_ok=True)
    with open(run_dir / "metrics.jsonl", "w") as f:
        for s in range(1, steps + 1):
            rec = {"step": s, "time": 1.7e9 + 10 * s, "elapsed": 10.0 * s,
                   "reward/mean": 1 - math.exp(-s / 10), "reward/std": 0.1,
                   "parity/kl": 0.0 if exact else 1e-5 / s, "parity/logprob_abs_diff_max": 0.0 if exact else 0.01,
                   "time/sample": 4.0, "time/reward": 0.2, "time/train": 3.0 + s % 3, "time/sync": 0.5,
                   "loss": 1.0 / s, "grad_norm": 0.3}
            f.write(json.dumps(rec) + "\n")
    return run_dir


def _png_ok(path):
    data = path.read_bytes()
    return data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) > 2000


@pytest.mark.parametrize("exact", [True, False])
def test_render(tmp_path, exact):
    run = _synthetic_run(tmp_path / "run", exact=exact)
    report = render(run)
    out = run / "plots"
    assert report == out / "report.html"
    for name in ("reward", "parity", "step_time", "all_metrics"):
        assert _png_ok(out / f"{name}.png"), name
    page = report.read_text()
    imgs = re.findall(r'src="data:image/png;base64,([A-Za-z0-9+/=]+)"', page)
    assert len(imgs) == 4 and all(base64.b64decode(i)[:4] == b"\x89PNG" for i in imgs)
    assert "<td>reward/mean</td><td>30</td>" in page and "<td>time/sync</td>" in page
    assert "http" not in page.replace("http-equiv", "")  # self-contained


def test_sparse_metrics_and_cli(tmp_path):
    run = tmp_path / "run"
    run.mkdir()
    (run / "metrics.jsonl").write_text('{"step": 1, "loss": 2.0}\n{"step": 2, "loss": 1.0, "time/train": 3.0}\n')
    p = subprocess.run([sys.executable, "-m", "rlhf_exact.plot", str(run), "--out", str(tmp_path / "o")],
                       capture_output=True, text=True)
    assert p.returncode == 0, p.stderr
    assert (tmp_path / "o" / "report.html").is_file() and _png_ok(tmp_path / "o" / "parity.png")
    p = subprocess.run([sys.executable, "-m", "rlhf_exact.plot", str(tmp_path / "missing")],
                       capture_output=True, text=True)
    assert p.returncode == 1 and "metrics.jsonl does not exist" in p.stderr


def test_step_time_resumes_and_labels(tmp_path):
    """A warm-up step per start (37 s) must not flatten the panel; resumes are marked;
    every small multiple has axis labels."""
    import matplotlib.pyplot as plt

    from rlhf_exact.runtime.metrics import read_metrics
    from rlhf_exact.runtime.report import figures, session_starts

    run = _synthetic_run(tmp_path / "run", steps=12)
    records = read_metrics(run)
    for r in records:  # killed after step 8, resumed from the checkpoint at step 6: a new clock
        r["elapsed"] = 10.0 * (r["step"] - 6) if r["step"] > 6 else r["elapsed"]
    records = [r for r in records if r["step"] <= 6] + [r for r in records if r["step"] > 6]
    for s in (1, 7):
        records[s - 1]["time/sample"] = 37.0
    assert session_starts(records) == [1, 7]
    figs = figures(records)
    ax = figs["step_time"].axes[0]
    assert ax.get_ylim()[1] < 37.0  # the warm-up steps are out
    assert ax.get_title() == "Step time (first step after each start left out: warm-up, 41.7, 41.7 s)"
    for name in ("reward", "step_time"):
        resumes = [ln for ln in figs[name].axes[0].get_lines() if ln.get_linestyle() == "--"]
        assert [ln.get_xdata()[0] for ln in resumes] == [6.5], name
    for ax in figs["all_metrics"].axes:
        if ax.get_title():
            assert ax.get_xlabel() == "step" and ax.get_ylabel(), ax.get_title()
    assert [a.get_ylabel() for a in figs["all_metrics"].axes if a.get_title() == "time/train"] == ["seconds"]
    for f in figs.values():
        plt.close(f)


def _tick_labels(fig, ax) -> list[str]:
    """The y tick labels drawn inside the axis' range."""
    fig.canvas.draw()
    lo, hi = ax.get_ylim()
    return [t.get_text() for t in ax.get_yticklabels() if lo <= t.get_position()[1] <= hi and t.get_text()]


@pytest.mark.parametrize("span", ["one decade", "six decades", "with zeros"])
def test_parity_axis_has_numbers(span):
    """A default-kernel run's parity values (bf16 logprob differences of 0.016 to 0.06, KL
    near 2e-4) once drew a symlog axis without one tick in range: no numbers at all."""
    import matplotlib.pyplot as plt

    from rlhf_exact.runtime.report import figures

    def values(s):
        if span == "one decade":
            return 2e-4 * (1 + 0.3 * math.sin(s)), 0.0156 * (1 + s % 3)
        if span == "six decades":
            return 10.0 ** -(s % 7), 0.5 * 10.0 ** -(s % 7)
        return (0.0 if s % 2 else 1e-4), (0.0 if s % 3 else 0.03)

    records = [{"step": s, "parity/kl": values(s)[0], "parity/logprob_abs_diff_max": values(s)[1]}
               for s in range(1, 11)]
    fig = figures(records)["parity"]
    for ax in fig.axes:
        assert len(_tick_labels(fig, ax)) >= 2, (ax.get_title(), ax.get_yscale())
    assert [ax.get_yscale() for ax in fig.axes] == (["symlog"] * 2 if span == "six decades" else ["linear"] * 2)
    plt.close("all")


def test_resume_of_a_short_run_and_rate_units(tmp_path):
    """A 2-step run resumed from step 2: the new process's first step (start-up included,
    45 s) is longer than the old process's whole run (its last elapsed 40 s), so elapsed
    never went down; the clock's start (time - elapsed) marks the resume. tokens/s panels
    are labelled as rates, not seconds."""
    import matplotlib.pyplot as plt

    from rlhf_exact.runtime.report import figures, session_starts

    t0, t1 = 1.7e9, 1.7e9 + 100.0
    records = [{"step": 1, "time": t0 + 30, "elapsed": 30.0, "time/train": 30.0, "perf/train_tokens_per_s": 9.0},
               {"step": 2, "time": t0 + 40, "elapsed": 40.0, "time/train": 10.0, "perf/train_tokens_per_s": 9.5},
               {"step": 3, "time": t1 + 45, "elapsed": 45.0, "time/train": 45.0, "perf/train_tokens_per_s": 9.1},
               {"step": 4, "time": t1 + 55, "elapsed": 55.0, "time/train": 10.0, "perf/train_tokens_per_s": 9.2}]
    assert session_starts(records) == [1, 3]
    assert session_starts([{k: v for k, v in r.items() if k != "time"} for r in records]) == [1]  # elapsed alone
    figs = figures(records)
    resumes = [ln for ln in figs["step_time"].axes[0].get_lines() if ln.get_linestyle() == "--"]
    assert [ln.get_xdata()[0] for ln in resumes] == [2.5]
    assert figs["step_time"].axes[0].get_title() == "Step time (first step after each start left out: warm-up, " \
                                                    "30.0, 45.0 s)"
    units = {a.get_title(): a.get_ylabel() for a in figs["all_metrics"].axes if a.get_title()}
    assert units == {"perf/train_tokens_per_s": "train tokens / s", "time/train": "seconds"}
    plt.close("all")
