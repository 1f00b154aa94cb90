"""The on-policy GRPO loop over two actor groups, the samplers (sampler/group.py: vLLM
with the exact plugin) and the FSDP2 trainer (trainer/group.py). `Loop.step` runs one
step as these phases, each a method of the same name over typed records (types.py):

  sample       prompts_per_step prompts x group_size completions, per-request seeds
               derived from (run.seed, step, prompt) -> Episodes (token ids, sampler
               logprobs, finish reason); with an environment (env.name), group_size
               multi-turn episodes per prompt (envs/episode.py: each turn one request
               whose prompt is the episode's ids so far), an episode whose environment
               failed dropped from its group
  score        decode, reward functions from config (+ the environment's reward, + the
               reward model's score: in the driver or by its scorer actor group), group
               advantages (+ DAPO filter); the arithmetic is algo/rollout.py's
  recompute    the trainer's logprobs of every sampled token in its own micro-batches
               (multi-turn: every model token of every turn, under the loss mask);
               parity metrics sampler vs trainer (exact mode: every bit must agree,
               else warn or stop, by config) -> TrainSeqs
  train        epochs x minibatches of PPO-clip updates (old logprobs = the sampler's in
               exact mode, which ARE the trainer's; the trainer's with TIS otherwise)
  sync_weights trainer -> samplers, bf16 tensors in buckets, timed
  step_metrics the step's metrics; `run` logs them to metrics.jsonl (+ W&B) and
               checkpoints every run.save_every steps

    python -m rlhf_exact.train recipe=grpo_qwen3_tiny     # entry point: train.py

Everything that decides a step's numbers (data order, seeds, the micro-batch plan) is
a function of the config, the step and the checkpointed state, so a run resumed from
step k reproduces an uninterrupted one bit for bit.
"""
from __future__ import annotations

import contextlib
import logging
import math
import os
import pathlib
import time

import torch

from rlhf_exact.runtime.console import Clock, progress_line, starting
from rlhf_exact.runtime.deadline import DeadlineExceeded
from rlhf_exact.types import Episode, TrainSeq

log = logging.getLogger("rlhf_exact")


class ParityError(RuntimeError):
    """Exact mode and the sampler's logprobs differ from the trainer's."""


class NonFiniteLossError(RuntimeError):
    """A step's loss or gradient was not finite: the update was not applied."""


# ---------------------------------------------------------------------------------- setup

# ---------------------------------------------------------------------------------- the loop

class Loop:
    def __init__(self, cfg, run_dir: pathlib.Path, verified: pathlib.Path | None = None):
        """verified: a checkpoint whose SHA-256s were checked before any actor started
        (preflight's report.verified); resuming from it checks sizes only."""
        self.cfg, self.run_dir = cfg, pathlib.Path(run_dir)
        self.exact = cfg.kernels == "exact"
        self.verified = pathlib.Path(verified).resolve() if verified else None

    # setup --------------------------------------------------------------------------
    def setup(self) -> None:
        from rlhf_exact.data import load_tokenizer
        from rlhf_exact.envs.collect import Collector
        from rlhf_exact.eval import Evaluator
        from rlhf_exact.rewards import import_reward_modules
        from rlhf_exact.runtime.cluster import start_ray
        from rlhf_exact.runtime.metrics import MetricsLogger
        from rlhf_exact.runtime.rundir import prepare_model
        from rlhf_exact.sampler.group import SamplerGroup
        from rlhf_exact.trainer.group import TrainerGroup

        cfg = self.cfg
        import_reward_modules(cfg.run.imports)  # their rewards are looked up by name in this process
        self.model_path = prepare_model(cfg, self.run_dir)
        self.tokenizer = load_tokenizer(self.model_path)
        self.rows, self.stream = _load_data(cfg, self.tokenizer, self.model_path)
        with starting("Ray " + (f"(joining {cfg.cluster.ray_address})" if cfg.cluster.ray_address else
                                 f"(private, on {cfg.cluster.ray_host})")):
            start_ray(cfg.cluster)  # private and leaving nothing behind, or the cluster at cluster.ray_address
        m = cfg.reward.model  # a scorer group needs Ray
        with (starting(f"{m.num_scorers} reward model scorer(s) on {m.resolved_device(cfg.cluster.device)}")
              if m.path and m.num_scorers else contextlib.nullcontext()):
            self.collector = Collector.from_config(cfg, self.tokenizer, self.model_path)
        self.evaluator = Evaluator.from_config(cfg, self.tokenizer, self.model_path, self.collector)
        backend = "vLLM" if cfg.sampler.backend == "vllm" else cfg.sampler.backend
        with starting(f"{cfg.sampler.num_samplers} sampler engine(s) ({backend}, kernels={cfg.kernels})"):
            self.samplers = SamplerGroup.from_config(cfg, self.model_path)
        with starting(f"{cfg.trainer.world_size} trainer rank(s) (FSDP2 on {cfg.cluster.device})"):
            self.trainer = TrainerGroup.from_config(cfg, self.model_path)
        self.start_state = self._driver_state()  # for a trainer restart before the first checkpoint
        self.start_step = self._maybe_resume()
        self.metrics = MetricsLogger(self.run_dir, cfg, resume_step=self.start_step)
        self.step_seconds: list[float] = []  # this process's steps, for the ETA
        self.trainer_restarts = 0
        torch.set_num_threads(1)

    def _driver_state(self):
        from rlhf_exact.runtime.checkpoint import capture_rng_state
        return capture_rng_state(), self.stream.state_dict()

    def restart_trainer(self, error: BaseException) -> int:
        """A trainer rank died or missed a call's deadline (DeadlineExceeded): a new trainer
        group from the newest checkpoint (the initial model before the first one), the
        driver's RNG and data position restored, the samplers re-synced, the metrics after
        that step dropped (the steps run again, bit for bit). Returns the step to continue
        from. At most trainer.max_restarts times; then an error naming what happened."""
        from rlhf_exact.runtime.checkpoint import latest_checkpoint
        from rlhf_exact.trainer.group import TrainerGroup

        self.trainer_restarts += 1
        why = str(error) if isinstance(error, DeadlineExceeded) else f"a trainer rank died ({type(error).__name__})"
        if self.trainer_restarts > self.cfg.trainer.max_restarts:
            raise RuntimeError(f"{why}; trainer.max_restarts={self.cfg.trainer.max_restarts} restarts used up, "
                               f"the run stops") from error
        path = latest_checkpoint(self.run_dir)
        log.warning("%s; restarting the trainer group from %s (restart %d of %d)", why,
                    path.name if path else "the initial model", self.trainer_restarts, self.cfg.trainer.max_restarts)
        try:
            self.trainer.shutdown()
        except Exception:  # noqa: BLE001 - the group is broken; its actors are killed either way
            pass
        with starting(f"{self.cfg.trainer.world_size} trainer rank(s) again"):
            self.trainer = TrainerGroup.from_config(self.cfg, self.model_path)
        step = self._restore(path)
        self.metrics.rewind(step)
        return step

    def _maybe_resume(self) -> int:
        from rlhf_exact.runtime.checkpoint import discard_checkpoints_after
        from rlhf_exact.runtime.rundir import resume_checkpoint

        path = resume_checkpoint(self.cfg, self.run_dir)
        if path is None:
            if self.cfg.run.resume in ("auto", "auto_or_new"):
                log.info("resume=%s: no checkpoint in %s, starting at step 0", self.cfg.run.resume, self.run_dir)
            return 0
        step = self._restore(path, checksums=path.resolve() != self.verified)
        discard_checkpoints_after(self.run_dir, step)  # a later resume=auto must not jump ahead
        log.info("resumed from %s at step %d", path, step)
        return step

    def _restore(self, path: pathlib.Path | None, checksums: bool = True) -> int:
        """The trainer's state, the driver's RNG and the data position from the run
        checkpoint at `path` (None: the start, the trainer on the initial model), then the
        samplers synced to the trainer (they started from the initial model); returns the
        checkpoint's step."""
        from rlhf_exact.runtime.checkpoint import load_run_checkpoint, restore_rng_state

        if path is None:
            (rng_t, rng_meta), data = self.start_state
            step = 0
        else:
            tensors, meta = load_run_checkpoint(path, checksums=checksums)
            self.trainer.load_state({k: tensors[k] for k in ("model", "optimizer")}, meta["trainer"])
            (rng_t, rng_meta), data, step = (tensors["rng"], meta["rng"]), meta["data"], int(meta["step"])
        restore_rng_state(rng_t, rng_meta)
        self.stream.load_state_dict(data)
        self.sync_weights()
        return step

    # one step -----------------------------------------------------------------------
    def step(self, step: int) -> dict[str, float]:
        """One step, phase by phase (module docstring); returns its metrics."""
        clock = Clock()
        with clock("time/sample"):
            rows, episodes, env_metrics = self.sample(step)
        with clock("time/reward"):
            episodes = self.score(rows, episodes)
        self.log_samples(step + 1, rows, episodes)
        with clock("time/recompute"):
            seqs, parity = self.recompute(step, episodes)
        with clock("time/train"):
            train = self.train(step, episodes, seqs)
        with clock("time/sync"):
            gather_s, update_s = self.sync_weights()
        clock.times["time/step"] = clock.total()
        return self.step_metrics(episodes, parity, train, gather_s, update_s, clock.times) | env_metrics

    def sample(self, step: int) -> tuple[list[dict], list[Episode], dict[str, float]]:
        """The step's prompt rows, their group_size episodes each (group-major; one turn
        each without an environment), and the episode/* metrics when there is one."""
        from rlhf_exact.algo.rollout import request_seed

        cfg, g = self.cfg, self.cfg.algorithm.group_size
        rows = next(self.stream)
        seeds = [request_seed(cfg.run.seed, step, i, g) for i in range(len(rows))]
        episodes, metrics = self.collector.collect(self.samplers, rows, seeds, g, where=f"step {step + 1}")
        return rows, episodes, metrics

    def score(self, rows: list[dict], episodes: list[Episode]) -> list[Episode]:
        """Rewards (envs/collect.py; the reward model scores once), group advantages, the filter."""
        from rlhf_exact.algo.rollout import score

        a = self.cfg.algorithm
        episodes, rewards, errors = self.collector.reward_episodes(rows, episodes)
        return score(episodes, rewards, errors, a.group_size, a.normalize_std, a.filter_equal_reward_groups)

    def log_samples(self, step: int, rows: list[dict], episodes: list[Episode]) -> None:
        """logging.samples_per_step completions (the first of each of the first groups) to
        samples.jsonl and W&B, every logging.samples_every steps (1-based `step`)."""
        lg = self.cfg.logging
        if not lg.samples_every or step % lg.samples_every:
            return
        firsts = [e for i, e in enumerate(episodes) if i == 0 or episodes[i - 1].group != e.group]
        self.metrics.log_samples(step, [
            {"prompt": rows[e.group].get("prompt_text", rows[e.group].get("prompt", "")),
             "completion": self.tokenizer.decode(e.completion.tolist()), "reward": e.reward,
             "advantage": e.advantage, "finish_reason": e.finish_reason, "reward_error": e.reward_error}
            for e in firsts[:lg.samples_per_step]])

    def recompute(self, step: int, episodes: list[Episode]) -> tuple[list[TrainSeq], dict[str, float]]:
        """The trainer's logprobs of every sampled token and the parity metrics against the
        sampler's; returns the sequences to train on and the parity metrics."""
        from rlhf_exact.algo.grpo import parity_metrics, tis_weights
        from rlhf_exact.algo.rollout import on_loss_tokens

        a = self.cfg.algorithm
        plain = [TrainSeq(e.prompt, e.completion, loss_mask=e.loss_mask) for e in episodes]
        trainer_lp = self.trainer.logprobs(plain)  # per episode [num_loss_tokens]
        sampler_lp = [e.sampler_logprobs for e in episodes]  # per episode [model tokens]
        sel = [e.model_in_loss() for e in episodes]  # None: every loss token is a model token
        model_lp = [t if m is None else t[m] for t, m in zip(trainer_lp, sel)]
        par = parity_metrics(torch.cat(sampler_lp), torch.cat(model_lp))
        ref_lp = self.trainer.logprobs(plain, reference=True) if a.kl_coef > 0 else None
        if par["parity/tokens_bitwise_equal_frac"] != 1.0:
            self._violation(f"at step {step + 1}: sampler and trainer logprobs differ (bitwise-equal fraction "
                            f"{par['parity/tokens_bitwise_equal_frac']:.6f}, max |diff| "
                            f"{par['parity/logprob_abs_diff_max']:.3e}, KL {par['parity/kl']:.3e})")
        # the ratio's denominator: the sampler's logprobs, which exact mode makes the trainer's
        # (observation tokens an environment marked trained have none: the trainer's own)
        old = [on_loss_tokens(s, t, m) for s, t, m in zip(sampler_lp, trainer_lp, sel)] if self.exact else trainer_lp
        return [TrainSeq(e.prompt, e.completion, old_logprobs=old[i], advantage=e.advantage,
                         tis=on_loss_tokens(tis_weights(model_lp[i], sampler_lp[i], a.tis_cap),
                                             torch.ones_like(trainer_lp[i]), sel[i]) if a.tis else None,
                         ref_logprobs=ref_lp[i] if ref_lp else None, loss_mask=e.loss_mask)
                for i, e in enumerate(episodes)], par

    def train(self, step: int, episodes: list[Episode], seqs: list[TrainSeq]) -> dict[str, float]:
        """epochs x minibatches of whole kept groups, then the LR schedule's step; returns
        the train/* metrics and the first update's importance ratio range."""
        from rlhf_exact.algo.rollout import loss_norm, minibatch_split, ratio_range, update_metrics

        a = self.cfg.algorithm
        updates, ratio = [], (math.nan, math.nan)
        splits = minibatch_split(episodes, a.group_size, a.num_minibatches)
        for epoch in range(a.epochs):
            for k, ids in enumerate(splits):
                norm = loss_norm([episodes[i] for i in ids], a.loss_aggregation, self.collector.max_loss_tokens)
                out = self.trainer.train_minibatch([seqs[i] for i in ids], norm)
                if out.nonfinite:
                    raise NonFiniteLossError(f"step {step + 1}: non-finite loss or gradient (epoch {epoch}, "
                                             f"minibatch {k}); the update was not applied, the run stops")
                if epoch == 0 and k == 0:
                    sel = [episodes[i].model_in_loss() for i in ids]
                    ratio = ratio_range([f if m is None else f[m] for f, m in zip(out.forward_logprobs, sel)],
                                        [episodes[i].sampler_logprobs for i in ids])
                updates.append(out)
        if updates and ratio != (1.0, 1.0):
            self._violation(f"at step {step + 1}: first-minibatch importance ratio {ratio} != 1")
        return {**update_metrics(updates, self.trainer.end_step(), kl=a.kl_coef > 0, entropy=a.entropy_coef > 0),
                "parity/ratio_min": ratio[0], "parity/ratio_max": ratio[1]}

    def sync_weights(self) -> tuple[float, float]:
        """Trainer -> samplers (cluster.weight_sync: through the host, or the trainer's GPU
        buffer by CUDA IPC); (gather seconds, slowest sampler's update seconds)."""
        t0 = time.perf_counter()
        if self.cfg.cluster.resolved_weight_sync() == "cuda_ipc":
            weights = self.trainer.share_weights(self.cfg.model.dtype)
        else:
            weights = self.trainer.full_weights(self.cfg.model.dtype)
        return time.perf_counter() - t0, self.samplers.update_weights(weights)

    def step_metrics(self, episodes: list[Episode], parity: dict, train: dict, gather_s: float, update_s: float,
                     times: dict[str, float]) -> dict[str, float]:
        """The step's metrics (names: docs/training.md)."""
        from rlhf_exact.algo.rollout import rollout_metrics

        train_tokens = self.cfg.algorithm.epochs * float(sum(e.num_tokens for e in episodes if e.kept))
        sample_tokens = float(sum(e.completion.numel() for e in episodes))
        return {**rollout_metrics(episodes), **parity, **train, **self.collector.scorer_metrics(),
                "perf/sample_tokens_per_s": sample_tokens / max(times["time/sample"], 1e-9),
                "perf/train_tokens_per_s": train_tokens / max(times["time/train"], 1e-9),
                "sync/gather_s": gather_s, "sync/update_s": update_s, "sampler/restarts": float(self.samplers.restarts),
                "data/skipped_rows": float(getattr(self.rows, "skipped", 0)),
                **times}

    def _violation(self, what: str) -> None:
        """Exact mode broke: stop or log loudly, by run.on_parity_mismatch. (With
        kernels=default, differences are what the run measures: nothing to report.)"""
        if not self.exact:
            return
        msg = f"EXACT MODE VIOLATED {what}"
        if self.cfg.run.on_parity_mismatch == "stop":
            raise ParityError(msg)
        log.error(msg)

    def checkpoint(self, step: int) -> pathlib.Path:
        """Run checkpoint after `step` steps (atomic; rank 0 writes)."""
        from rlhf_exact.runtime.checkpoint import save_step_checkpoint

        return save_step_checkpoint(self.run_dir, step, self.trainer, self.stream, self.cfg.run.keep_last)

    def export(self) -> pathlib.Path:
        """The final policy as a Hugging Face model directory (transformers / vLLM load it)."""
        from rlhf_exact.models.hf_io import read_config, save_model

        weights = self.trainer.full_weights(self.cfg.model.dtype)
        return save_model(weights, self.run_dir / "final_model", config=read_config(self.model_path),
                          dtype=getattr(torch, self.cfg.model.dtype), tokenizer_from=self.model_path)

    def run(self) -> dict:
        """The whole run. The driver is switched to exact mode too (one switch on every
        process; its parity arithmetic is elementwise) and restored afterwards, so a
        caller's process (a test, a notebook) gets its stock kernels back."""
        from exact_kernels import exact_mode

        with exact_mode() if self.exact else contextlib.nullcontext():
            return self._run()

    def _run(self) -> dict:
        cfg = self.cfg
        self.setup()
        first = last = None
        try:
            from tqdm import tqdm

            from ray.exceptions import RayActorError

            bar = tqdm(desc="steps", initial=self.start_step, total=cfg.run.steps,
                       disable=None if cfg.logging.progress_bars else True)
            step, export = self.start_step, None
            while export is None:
                # every trainer call (the step, the checkpoint after it, the export) is covered:
                # a rank that dies or hangs in any of them restarts the group from the newest
                # checkpoint; the samplers restart their own
                try:
                    if step == cfg.run.steps:
                        export = self.export()
                        continue
                    m = self.step(step)
                    self.finish_step(step + 1, m)
                except (RayActorError, DeadlineExceeded) as e:
                    step = self.restart_trainer(e)
                    bar.reset(total=cfg.run.steps)
                    bar.update(step)
                    continue
                first = first or m
                last = m
                bar.set_postfix(reward=f"{m['reward/mean']:.3f}", kl=f"{m['parity/kl']:.1e}")
                bar.update(1)
                step += 1
            log.info("exported the final policy to %s", export)
        finally:
            self.close()
        return {"first": first, "last": last}

    def finish_step(self, done: int, m: dict[str, float]) -> None:
        """After step `done` (1-based): eval when due, the metrics row and step line, the
        checkpoint when due."""
        m["trainer/restarts"] = float(self.trainer_restarts)
        self.step_seconds.append(m["time/step"])
        if self.evaluator is not None and self.evaluator.due(done):
            m |= self.evaluator.evaluate(self.samplers, done)
        self.metrics.log(done, m)
        log.info("%s", progress_line(done, self.cfg.run.steps, m, self.step_seconds, self.exact))
        if self.cfg.run.save_every and done % self.cfg.run.save_every == 0:
            self.checkpoint(done)

    def close(self) -> None:
        for name in ("metrics", "samplers", "trainer", "collector"):
            obj = getattr(self, name, None)
            if obj is not None:
                try:
                    obj.close() if name in ("metrics", "collector") else obj.shutdown()
                except Exception as e:  # noqa: BLE001 - shutting down after an error must not mask it
                    log.warning("closing %s: %s", name, e)


def _load_data(cfg, tokenizer, model_path: pathlib.Path):
    from rlhf_exact.data import PromptStream, load_prompt_rows, read_chat_template

    rows = load_prompt_rows(cfg, tokenizer, chat_template=read_chat_template(model_path))
    return rows, PromptStream(rows, seed=cfg.run.seed, batch_size=cfg.algorithm.prompts_per_step,
                              shuffle=cfg.data.shuffle)


def run(cfg, run_dir, verified: pathlib.Path | None = None) -> dict:
    """Entry point from train.py: the whole run; returns the first and last metrics.
    verified: the checkpoint preflight verified (Loop)."""
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    os.environ.setdefault("RAY_DEDUP_LOGS", "1")
    return Loop(cfg, pathlib.Path(run_dir), verified).run()
