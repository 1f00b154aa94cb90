"""metrics.jsonl: one fsynced JSON line per step, truncation on resume, torn last line,
W&B offline (no network) and the online -> offline fallback."""
import json
import math

import pytest

from rlhf_exact.config import load_config
from rlhf_exact.runtime.metrics import MetricsLogger, read_metrics, truncate_metrics, wandb_credentials_present


@pytest.fixture
def cfg():
    c = load_config(["logging.wandb_mode=disabled", "run.name=m"])
    return c


@pytest.fixture
def wandb_env(tmp_path, monkeypatch):
    """W&B writes nothing outside tmp_path and finds no credentials."""
    for var in ("WANDB_CONFIG_DIR", "WANDB_CACHE_DIR", "WANDB_DATA_DIR", "WANDB_ARTIFACT_DIR"):
        monkeypatch.setenv(var, str(tmp_path / var.lower()))
    monkeypatch.delenv("WANDB_API_KEY", raising=False)
    monkeypatch.delenv("WANDB_MODE", raising=False)
    monkeypatch.setenv("NETRC", str(tmp_path / "no-netrc"))
    monkeypatch.setenv("WANDB_SILENT", "true")


def test_jsonl_lines(tmp_path, cfg):
    with MetricsLogger(tmp_path, cfg) as log:
        log.log(1, {"reward/mean": 0.5, "parity/kl": 0.0, "n": 3, "bad": float("nan")})
        log.log(2, {"reward/mean": 0.75})
    lines = (tmp_path / "metrics.jsonl").read_text().splitlines()
    assert len(lines) == 2
    first = json.loads(lines[0])
    assert first["step"] == 1 and first["reward/mean"] == 0.5 and first["n"] == 3.0 and math.isnan(first["bad"])
    assert first["time"] > 1e9 and first["elapsed"] >= 0
    with pytest.raises(TypeError, match="metric 'x'"):
        MetricsLogger(tmp_path, cfg, resume_step=2).log(3, {"x": "high"})


def test_resume_truncates_later_steps(tmp_path, cfg):
    with MetricsLogger(tmp_path, cfg) as log:
        for s in range(1, 6):
            log.log(s, {"a": float(s)})
    with MetricsLogger(tmp_path, cfg, resume_step=3) as log:
        log.log(4, {"a": 40.0})
    assert [(r["step"], r["a"]) for r in read_metrics(tmp_path)] == [(1, 1.0), (2, 2.0), (3, 3.0), (4, 40.0)]
    with MetricsLogger(tmp_path, cfg) as log:  # a fresh start: empty
        pass
    assert read_metrics(tmp_path) == []


def test_torn_last_line_is_skipped(tmp_path):
    p = tmp_path / "metrics.jsonl"
    p.write_text('{"step": 1, "a": 1.0}\n{"step": 2, "a"')
    assert read_metrics(p) == [{"step": 1, "a": 1.0}]
    assert truncate_metrics(p, 5) == 1 and p.read_text() == '{"step": 1, "a": 1.0}\n'
    p.write_text('{"step": 1}\ngarbage\n{"step": 2}\n')
    with pytest.raises(ValueError, match=":2: not a JSON line"):
        read_metrics(p)


def test_wandb_offline(tmp_path, wandb_env):
    cfg = load_config(["logging.wandb_mode=offline", "run.name=w"])
    with MetricsLogger(tmp_path, cfg) as log:
        log.log(1, {"reward/mean": 0.1, "parity/kl": 0.0})
    assert (tmp_path / "wandb").is_dir() and list((tmp_path / "wandb").glob("offline-run-*"))
    run_id = (tmp_path / "wandb_run_id").read_text().strip()
    assert len(run_id) == 8
    with MetricsLogger(tmp_path, cfg, resume_step=1) as log:  # resumed: same W&B run id
        log.log(2, {"reward/mean": 0.2})
    assert (tmp_path / "wandb_run_id").read_text().strip() == run_id
    assert [r["step"] for r in read_metrics(tmp_path)] == [1, 2]


def test_online_without_credentials_falls_back(tmp_path, wandb_env, capsys):
    assert not wandb_credentials_present()
    cfg = load_config(["logging.wandb_mode=online", "run.name=w"])
    log = MetricsLogger(tmp_path, cfg)
    log.close()
    assert log.wandb_mode == "offline" and "logging offline" in capsys.readouterr().err


def test_credentials_detection(tmp_path, wandb_env, monkeypatch):
    monkeypatch.setenv("WANDB_API_KEY", "x" * 40)
    assert wandb_credentials_present()
    monkeypatch.delenv("WANDB_API_KEY")
    netrc = tmp_path / "netrc"
    netrc.write_text("machine api.wandb.ai\n  login user\n  password secret\n")
    netrc.chmod(0o600)
    monkeypatch.setenv("NETRC", str(netrc))
    assert wandb_credentials_present()


def test_wandb_after_resume_gets_every_step_once(tmp_path, wandb_env):
    """Killed at step 8 with a checkpoint at 6: the resumed logger re-sends the kept steps
    to W&B (the killed process may not have handed them over) and the run goes on, so the
    resumed process's W&B history holds steps 1..10 once each, in order. What reaches W&B
    is recorded at the real (offline) run's `log`."""
    cfg = load_config(["logging.wandb_mode=offline", "run.name=w"])
    first = MetricsLogger(tmp_path, cfg)
    for s in range(1, 9):
        first.log(s, {"reward/mean": s / 10})
    first._file.close()  # the process dies here: no close(), W&B may have lost anything after step 3

    sent = []
    real_init = MetricsLogger._init_wandb

    def spy_init(self, cfg):
        run = real_init(self, cfg)
        log = run.log
        run.log = lambda data, step=None, commit=None: (sent.append((step, sorted(data))), log(data, step=step,
                                                                                               commit=commit))[1]
        return run

    MetricsLogger._init_wandb = spy_init
    try:
        second = MetricsLogger(tmp_path, cfg, resume_step=6)
        for s in range(7, 11):
            second.log_samples(s, [{"prompt": "p", "completion": f"c{s}", "reward": 0.5}])
            second.log(s, {"reward/mean": s / 10})
        second.close()
    finally:
        MetricsLogger._init_wandb = real_init
    metric_steps = [step for step, keys in sent if "reward/mean" in keys]
    assert metric_steps == list(range(1, 11))
    assert [step for step, keys in sent if keys == ["samples"]] == [7, 8, 9, 10]
    assert [r["step"] for r in read_metrics(tmp_path)] == list(range(1, 11))
    samples = [json.loads(line) for line in (tmp_path / "samples.jsonl").read_text().splitlines()]
    assert [(r["step"], r["completion"]) for r in samples] == [(s, f"c{s}") for s in range(7, 11)]
    # a second resume truncates samples.jsonl with the metrics
    MetricsLogger(tmp_path, load_config(["logging.wandb_mode=disabled"]), resume_step=8).close()
    assert [json.loads(line)["step"] for line in (tmp_path / "samples.jsonl").read_text().splitlines()] == [7, 8]
