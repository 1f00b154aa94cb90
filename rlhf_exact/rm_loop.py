"""Reward-model training: Bradley-Terry on preference pairs, on the same FSDP2 trainer
group, run directory, metrics and checkpoints as the GRPO loop (loop.py), without
samplers. `RewardModelLoop.step` is one optimizer step:

  batch     preference.pairs_per_step pairs from a seeded, resumable stream (data/stream.py)
  train     one Bradley-Terry update over them (trainer/group.py `train_pairs`; the loss is
            algo/preference.py's); train/loss, train/accuracy, train/margin from the
            training forward's scores (before the update)
  evaluate  every preference.eval_every steps and after the last: the held-out pairs
            scored (`pair_scores`): heldout/accuracy, heldout/margin, heldout/loss. The
            initial model is scored before step 1 (heldout/initial/*, in step 1's row)

The model: a Qwen3ForSequenceClassification directory at model.path, or, with
model.tiny.enabled, the tiny reward model built into the run directory from run.seed.
The final model is exported as run_dir/final_model (a Hugging Face reward-model
directory, models/reward.py). Checkpoints hold the trainer state, the driver's RNG and
the data position, so a run resumed from step k reproduces an uninterrupted one bit
for bit (every op is batch-invariant and the plan is a function of the data).

    python -m rlhf_exact.train_rm recipe=rm_qwen3_tiny     # entry point: train_rm.py
"""
from __future__ import annotations

import contextlib
import logging
import pathlib
import time

import torch

from rlhf_exact.loop import NonFiniteLossError
from rlhf_exact.runtime.console import starting
from rlhf_exact.models.reward import REWARD_ARCHITECTURE
from rlhf_exact.types import PreferencePair

log = logging.getLogger("rlhf_exact")


def prepare_reward_model(cfg, run_dir: pathlib.Path) -> pathlib.Path:
    """The reward-model directory the run starts from (the tiny one is built into the run
    directory, deterministically from run.seed, on the first start)."""
    if not cfg.model.tiny.enabled:
        return pathlib.Path(cfg.model.path)
    path = run_dir / "initial_model"
    if not (path / "config.json").exists():
        from rlhf_exact.models.tiny import make_tiny_reward_model_dir

        make_tiny_reward_model_dir(path, seed=cfg.run.seed, std=0.05,
                                   **cfg.model.tiny.shape() | {"tie_word_embeddings": False})
    return path


def load_pairs(cfg, tokenizer, model_path: pathlib.Path) -> tuple[list[dict], list[dict], int]:
    """(training pair rows, held-out pair rows, rows skipped) from the preference section."""
    from rlhf_exact.data import SyntheticTask, read_chat_template
    from rlhf_exact.data.preferences import load_preference_pairs, synthetic_pairs
    from rlhf_exact.models.hf_io import read_config

    pc = cfg.preference
    if pc.name == "synthetic":
        d = cfg.data.synthetic
        task = SyntheticTask(seed=0, vocab_size=d.vocab_size or tokenizer.get_vocab_size(),
                             num_targets=d.num_targets, prompt_len=d.prompt_len,
                             num_target_sets=d.num_target_sets,
                             reserved_ids=tuple(sorted(tokenizer.get_added_tokens_decoder())))
        n, length = pc.synthetic.num_pairs, pc.synthetic.completion_len
        return synthetic_pairs(task, n, 0, length), synthetic_pairs(task, pc.heldout_pairs, n, length), 0
    kw = dict(vocab_size=read_config(model_path, REWARD_ARCHITECTURE).vocab_size, max_tokens=pc.max_tokens,
              chat_template=read_chat_template(model_path), on_malformed=pc.on_malformed)
    rows, skipped = load_preference_pairs(pc.train_files, tokenizer, **kw)
    if pc.heldout_files:
        heldout, more = load_preference_pairs(pc.heldout_files, tokenizer, **kw)
        return rows, heldout[:pc.heldout_pairs], skipped + more
    if len(rows) <= pc.heldout_pairs:
        raise ValueError(f"preference.train_files hold {len(rows)} pairs, not more than preference.heldout_pairs="
                         f"{pc.heldout_pairs} to hold out; lower it or give preference.heldout_files")
    return rows[:-pc.heldout_pairs], rows[-pc.heldout_pairs:], skipped


def _pair(row: dict) -> PreferencePair:
    return PreferencePair(torch.tensor(row["prompt_ids"], dtype=torch.int64),
                          torch.tensor(row["chosen_ids"], dtype=torch.int64),
                          torch.tensor(row["rejected_ids"], dtype=torch.int64))


def _score_metrics(prefix: str, scores: list[torch.Tensor]) -> dict[str, float]:
    from rlhf_exact.algo.preference import bradley_terry_loss, preference_metrics

    s = torch.stack(scores)  # [P, 2]
    m = preference_metrics(s[:, 0], s[:, 1])
    return {f"{prefix}/accuracy": m["accuracy"], f"{prefix}/margin": m["margin"],
            f"{prefix}/loss": float(bradley_terry_loss(s[:, 0], s[:, 1], len(scores)))}


class RewardModelLoop:
    def __init__(self, cfg, run_dir: pathlib.Path, verified: pathlib.Path | None = None):
        self.cfg, self.run_dir = cfg, pathlib.Path(run_dir)
        self.verified = pathlib.Path(verified).resolve() if verified else None

    def setup(self) -> None:
        from rlhf_exact.data import PromptStream
        from rlhf_exact.data.loader import load_tokenizer
        from rlhf_exact.runtime.cluster import start_ray
        from rlhf_exact.runtime.metrics import MetricsLogger
        from rlhf_exact.trainer.group import TrainerGroup

        cfg = self.cfg
        self.model_path = prepare_reward_model(cfg, self.run_dir)
        tokenizer = load_tokenizer(self.model_path)
        rows, heldout, self.skipped = load_pairs(cfg, tokenizer, self.model_path)
        self.stream = PromptStream(rows, seed=cfg.run.seed, batch_size=cfg.preference.pairs_per_step,
                                   shuffle=cfg.data.shuffle)
        self.heldout = [_pair(r) for r in heldout]
        with starting("Ray " + (f"(joining {cfg.cluster.ray_address})" if cfg.cluster.ray_address else
                                 f"(private, on {cfg.cluster.ray_host})")):
            start_ray(cfg.cluster)
        with starting(f"{cfg.trainer.world_size} trainer rank(s) (FSDP2 on {cfg.cluster.device}, reward model)"):
            self.trainer = TrainerGroup.from_config(cfg, self.model_path, architecture=REWARD_ARCHITECTURE)
        self.start_step = self._maybe_resume()
        self.metrics = MetricsLogger(self.run_dir, cfg, resume_step=self.start_step)
        torch.set_num_threads(1)

    def _maybe_resume(self) -> int:
        from rlhf_exact.runtime.checkpoint import discard_checkpoints_after, load_run_checkpoint, restore_rng_state
        from rlhf_exact.runtime.rundir import resume_checkpoint

        path = resume_checkpoint(self.cfg, self.run_dir)
        if path is None:
            return 0
        tensors, meta = load_run_checkpoint(path, checksums=path.resolve() != self.verified)
        discard_checkpoints_after(self.run_dir, int(meta["step"]))
        self.trainer.load_state({k: tensors[k] for k in ("model", "optimizer")}, meta["trainer"])
        restore_rng_state(tensors["rng"], meta["rng"])
        self.stream.load_state_dict(meta["data"])
        log.info("resumed from %s at step %d", path, meta["step"])
        return int(meta["step"])

    def evaluate(self, prefix: str = "heldout") -> dict[str, float]:
        """Held-out accuracy, margin and loss of the current model."""
        return _score_metrics(prefix, self.trainer.pair_scores(self.heldout))

    def step(self, step: int) -> dict[str, float]:
        """One Bradley-Terry update (step is 0-based); its metrics."""
        t0 = time.perf_counter()
        m = self.evaluate("heldout/initial") if step == 0 else {}
        t1 = time.perf_counter()
        pairs = [_pair(r) for r in next(self.stream)]
        out = self.trainer.train_pairs(pairs)
        if out.nonfinite:
            raise NonFiniteLossError(f"step {step + 1}: non-finite loss or gradient; the update was not applied, "
                                     f"the run stops")
        lr = self.trainer.end_step()
        m |= _score_metrics("train", out.scores) | {"train/loss": out.loss, "train/grad_norm": out.grad_norm,
                                                    "train/lr": lr, "data/skipped_rows": float(self.skipped)}
        t2 = time.perf_counter()
        every, done = self.cfg.preference.eval_every, step + 1
        if done == self.cfg.run.steps or (every and done % every == 0):
            m |= self.evaluate()
        m |= {"time/train": t2 - t1, "time/eval": time.perf_counter() - t2 + t1 - t0,
              "time/step": time.perf_counter() - t0}
        return m

    def checkpoint(self, step: int) -> pathlib.Path:
        """Run checkpoint after `step` steps (atomic; rank 0 writes)."""
        from rlhf_exact.runtime.checkpoint import save_step_checkpoint

        return save_step_checkpoint(self.run_dir, step, self.trainer, self.stream, self.cfg.run.keep_last)

    def export(self) -> pathlib.Path:
        """The final reward model as a Hugging Face Qwen3ForSequenceClassification directory."""
        from rlhf_exact.models.hf_io import read_config, save_model

        weights = self.trainer.full_weights(self.cfg.model.dtype)
        return save_model(weights, self.run_dir / "final_model", config=read_config(self.model_path,
                                                                                     REWARD_ARCHITECTURE),
                          dtype=getattr(torch, self.cfg.model.dtype), tokenizer_from=self.model_path,
                          architecture=REWARD_ARCHITECTURE)

    def run(self) -> dict:
        """The whole run (the driver in exact mode too, restored afterwards, as loop.Loop.run)."""
        from exact_kernels import exact_mode

        with exact_mode() if self.cfg.kernels == "exact" else contextlib.nullcontext():
            return self._run()

    def _run(self) -> dict:
        cfg = self.cfg
        self.setup()
        first = last = None
        try:
            for step in range(self.start_step, cfg.run.steps):
                m = self.step(step)
                done = step + 1
                self.metrics.log(done, m)
                log.info("%s", progress_line(done, cfg.run.steps, m))
                if cfg.run.save_every and done % cfg.run.save_every == 0:
                    self.checkpoint(done)
                first, last = first or m, m
            log.info("exported the final reward model to %s", self.export())
        finally:
            self.close()
        return {"first": first, "last": last}

    def close(self) -> None:
        for name in ("metrics", "trainer"):
            obj = getattr(self, name, None)
            if obj is not None:
                try:
                    obj.close() if name == "metrics" else obj.shutdown()
                except Exception as e:  # noqa: BLE001 - shutting down after an error must not mask it
                    log.warning("closing %s: %s", name, e)


def progress_line(step: int, steps: int, m: dict[str, float]) -> str:
    """The console line of a step (1-based)."""
    held = (f"  held-out accuracy {m['heldout/accuracy']:.3f} margin {m['heldout/margin']:.3f}"
            if "heldout/accuracy" in m else "")
    return (f"step {step}/{steps}: loss {m['train/loss']:.4f} accuracy {m['train/accuracy']:.3f} "
            f"margin {m['train/margin']:.3f}{held}  time {m['time/step']:.1f}s")


def run(cfg, run_dir, verified: pathlib.Path | None = None) -> dict:
    """Entry point from train_rm.py: the whole run; returns the first and last metrics."""
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    return RewardModelLoop(cfg, pathlib.Path(run_dir), verified).run()


def summarize(result: dict) -> str:
    f, l_ = result.get("first") or {}, result.get("last") or {}
    nan = float("nan")
    return (f"held-out accuracy: initial {f.get('heldout/initial/accuracy', nan):.4f} final "
            f"{l_.get('heldout/accuracy', nan):.4f}  margin: initial {f.get('heldout/initial/margin', nan):.4f} "
            f"final {l_.get('heldout/margin', nan):.4f}")
