"""The on-policy GRPO loop over two actor groups, the samplers (sampler/group.py: vLLM
with the exact plugin) and the FSDP2 trainer (trainer/group.py). `Loop.step` runs one
step as these phases, each a method of the same name over typed records (types.py):

  sample       prompts_per_step prompts x group_size completions, per-request seeds
               derived from (run.seed, step, prompt) -> Episodes (token ids, sampler
               logprobs, finish reason); with an environment (env.name), group_size
               multi-turn episodes per prompt (envs/episode.py: each turn one request
               whose prompt is the episode's ids so far), an episode whose environment
               failed dropped from its group
  score        decode, reward functions from config (+ the environment's reward), group
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
from collections.abc import Sequence

import torch

from rlhf_exact.runtime.deadline import DeadlineExceeded
from rlhf_exact.types import Episode, TrainSeq

log = logging.getLogger("rlhf_exact")


class ParityError(RuntimeError):
    """Exact mode and the sampler's logprobs differ from the trainer's."""


class NonFiniteLossError(RuntimeError):
    """A step's loss or gradient was not finite: the update was not applied."""


# ---------------------------------------------------------------------------------- setup

def prepare_model(cfg, run_dir: pathlib.Path) -> pathlib.Path:
    """The HF model directory the run starts from (the tiny model is built into the run
    directory, deterministically from run.seed, on the first start)."""
    if not cfg.model.tiny.enabled:
        return pathlib.Path(cfg.model.path)
    path = run_dir / "initial_model"
    if not (path / "config.json").exists():
        from rlhf_exact.models.tiny import make_tiny_model_dir

        make_tiny_model_dir(path, seed=cfg.run.seed, std=0.05, **cfg.model.tiny.shape())
    return path


def init_ray(cfg) -> None:
    """A private local Ray that leaves nothing behind, or the cluster at cluster.ray_address
    (runtime/cluster.py)."""
    from rlhf_exact.runtime.cluster import start_ray

    start_ray(cfg.cluster)


class _Clock:
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
        from rlhf_exact.runtime.metrics import MetricsLogger
        from rlhf_exact.sampler.group import SamplerGroup
        from rlhf_exact.trainer.group import TrainerGroup

        from rlhf_exact.eval import Evaluator
        from rlhf_exact.rewards import import_reward_modules

        cfg, sp = self.cfg, self.cfg.sampling
        import_reward_modules(cfg.run.imports)  # their rewards are looked up by name in this process
        self.model_path = prepare_model(cfg, self.run_dir)
        self.tokenizer = _load_tokenizer(self.model_path)
        self.rows, self.stream = _load_data(cfg, self.tokenizer, self.model_path)
        self.evaluator = Evaluator.from_config(cfg, self.tokenizer, self.model_path)
        with _starting("Ray " + (f"(joining {cfg.cluster.ray_address})" if cfg.cluster.ray_address else
                                 f"(private, on {cfg.cluster.ray_host})")):
            init_ray(cfg)
        backend = "vLLM" if cfg.sampler.backend == "vllm" else cfg.sampler.backend
        with _starting(f"{cfg.sampler.num_samplers} sampler engine(s) ({backend}, kernels={cfg.kernels})"):
            self.samplers = SamplerGroup.from_config(cfg, self.model_path)
        self.env = None
        if cfg.env.name:
            from rlhf_exact.envs import EnvRunner, Limits
            from rlhf_exact.models.hf_io import read_config

            e = cfg.env
            self.env = EnvRunner(e.name, e.kwargs, self.tokenizer, vocab_size=read_config(self.model_path).vocab_size,
                                 num_workers=e.num_workers, timeout_s=e.timeout_s, imports=cfg.run.imports)
            self.limits = Limits(max_turns=e.max_turns, max_turn_tokens=sp.max_tokens,
                                 max_episode_tokens=e.max_episode_tokens or cfg.sampler.max_model_len - 1)
        # Dr. GRPO's constant L (loss_aggregation seq_mean_token_sum): the most tokens a sequence trains on
        self.max_loss_tokens = sp.max_tokens if self.env is None else \
            min(self.limits.max_turns * sp.max_tokens, self.limits.max_episode_tokens)
        with _starting(f"{cfg.trainer.world_size} trainer rank(s) (FSDP2 on {cfg.cluster.device})"):
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
        from rlhf_exact.runtime.checkpoint import latest_checkpoint, load_run_checkpoint, restore_rng_state
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
        with _starting(f"{self.cfg.trainer.world_size} trainer rank(s) again"):
            self.trainer = TrainerGroup.from_config(self.cfg, self.model_path)
        if path is None:
            (rng_t, rng_meta), data = self.start_state
            step = 0
        else:
            tensors, meta = load_run_checkpoint(path)
            self.trainer.load_state({k: tensors[k] for k in ("model", "optimizer")}, meta["trainer"])
            (rng_t, rng_meta), data, step = (tensors["rng"], meta["rng"]), meta["data"], int(meta["step"])
        restore_rng_state(rng_t, rng_meta)
        self.stream.load_state_dict(data)
        self.sync_weights()
        self.metrics.rewind(step)
        return step

    def _maybe_resume(self) -> int:
        from rlhf_exact.runtime.checkpoint import discard_checkpoints_after, load_run_checkpoint, restore_rng_state
        from rlhf_exact.runtime.rundir import resume_checkpoint

        path = resume_checkpoint(self.cfg, self.run_dir)
        if path is None:
            if self.cfg.run.resume in ("auto", "auto_or_new"):
                log.info("resume=%s: no complete checkpoint in %s, starting at step 0", self.cfg.run.resume,
                         self.run_dir)
            return 0
        tensors, meta = load_run_checkpoint(path, checksums=path.resolve() != self.verified)
        discard_checkpoints_after(self.run_dir, int(meta["step"]))  # a later resume=auto must not jump ahead
        self.trainer.load_state({k: tensors[k] for k in ("model", "optimizer")}, meta["trainer"])
        restore_rng_state(tensors["rng"], meta["rng"])
        self.stream.load_state_dict(meta["data"])
        self.sync_weights()  # the engines started from the initial checkpoint
        log.info("resumed from %s at step %d", path, meta["step"])
        return int(meta["step"])

    # one step -----------------------------------------------------------------------
    def step(self, step: int) -> dict[str, float]:
        """One step, phase by phase (module docstring); returns its metrics."""
        clock = _Clock()
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
        """The step's prompt rows, their group_size completions (or episodes) each
        (group-major), and the episode/* metrics when there is an environment."""
        from rlhf_exact.algo.rollout import request_seed

        cfg, g = self.cfg, self.cfg.algorithm.group_size
        rows = next(self.stream)
        seeds = [request_seed(cfg.run.seed, step, i, g) for i in range(len(rows))]
        if self.env is not None:
            episodes, metrics = self.sample_episodes(step, rows, seeds)
            return rows, episodes, metrics
        prompts = [list(r["prompt_ids"]) for r in rows]
        results = self.samplers.sample(prompts, g, seeds)
        bad = [(i, r.error) for i, r in enumerate(results) if r.error]
        if bad:
            raise RuntimeError(f"step {step + 1}: the sampler refused prompt(s) {bad[:3]}")
        return rows, [Episode(group=i, prompt=torch.tensor(prompts[i], dtype=torch.int64),
                              completion=torch.tensor(c.token_ids, dtype=torch.int64),
                              sampler_logprobs=c.logprobs, finish_reason=c.finish_reason)
                      for i, r in enumerate(results) for c in r.completions], {}

    def sample_episodes(self, step: int, rows: list[dict], seeds: list[int]) -> tuple[list[Episode], dict]:
        """group_size multi-turn episodes per row (episode j of row i seeded seeds[i] + j,
        as completion j would be); the episodes whose environment failed are logged,
        counted (episode/errors) and left out."""
        from rlhf_exact.envs import episode_metrics, run_episodes

        g = self.cfg.algorithm.group_size
        trajectories = run_episodes(self.env, [r for r in rows for _ in range(g)],
                                    lambda prompts, params, s: self.samplers.sample(prompts, 1, s, params),
                                    limits=self.limits, params=self.samplers.params,
                                    seeds=[seed + j for seed in seeds for j in range(g)], decode=self.tokenizer.decode)
        failed = [t.error for t in trajectories if t.failed]
        if len(failed) == len(trajectories):
            raise RuntimeError(f"step {step + 1}: every episode failed (nothing to train on); first: {failed[0]}")
        if failed:
            log.warning("step %d: %d episode(s) dropped, environment or sampler failed; first: %s", step + 1,
                        len(failed), failed[0])
        return [Episode(group=k // g, prompt=torch.tensor(t.prompt_ids, dtype=torch.int64),
                        completion=torch.tensor(t.token_ids, dtype=torch.int64), sampler_logprobs=t.sampler_logprobs,
                        finish_reason=t.finish_reason, reward=t.reward, model_mask=t.model_mask,
                        loss_mask=t.loss_mask, turns=t.num_turns, tool_errors=t.tool_errors)
                for k, t in enumerate(trajectories) if not t.failed], episode_metrics(trajectories)

    def score(self, rows: list[dict], episodes: list[Episode]) -> list[Episode]:
        """Rewards of the decoded completions (multi-turn: the environment's reward plus the
        reward functions on the model's tokens of all turns), group advantages, the
        equal-reward filter."""
        from rlhf_exact.algo.rollout import score
        from rlhf_exact.rewards import compute_rewards

        cfg, a = self.cfg, self.cfg.algorithm
        ids = [(e.completion if e.model_mask is None else e.completion[e.model_mask]).tolist() for e in episodes]
        rewards, errors = [0.0] * len(episodes), [None] * len(episodes)
        if cfg.reward.functions:
            rewards, errors = compute_rewards([(f.name, f.weight) for f in cfg.reward.functions],
                                              [self.tokenizer.decode(t) for t in ids], ids,
                                              [rows[e.group] for e in episodes], on_error=cfg.reward.on_error,
                                              timeout_s=cfg.reward.timeout_s)
        if self.env is not None:  # an episode whose reward failed is dropped from its group by score()
            rewards = [0.0 if err else e.reward + r for e, r, err in zip(episodes, rewards, errors)]
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
        old = [_on_loss_tokens(s, t, m) for s, t, m in zip(sampler_lp, trainer_lp, sel)] if self.exact else trainer_lp
        return [TrainSeq(e.prompt, e.completion, old_logprobs=old[i], advantage=e.advantage,
                         tis=_on_loss_tokens(tis_weights(model_lp[i], sampler_lp[i], a.tis_cap),
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
                norm = loss_norm([episodes[i] for i in ids], a.loss_aggregation, self.max_loss_tokens)
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
        return {**rollout_metrics(episodes), **parity, **train,
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
        from rlhf_exact.runtime.checkpoint import capture_rng_state, save_run_checkpoint

        tensors, trainer_meta = self.trainer.state()  # {"model", "optimizer"}
        rng_tensors, rng_meta = capture_rng_state()
        meta = {"step": step, "trainer": trainer_meta, "data": self.stream.state_dict(), "rng": rng_meta}
        return save_run_checkpoint(self.run_dir, step, tensors | {"rng": rng_tensors}, meta,
                                   keep_last=self.cfg.run.keep_last)

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
        for name in ("metrics", "samplers", "trainer", "env"):
            obj = getattr(self, name, None)
            if obj is not None:
                try:
                    obj.close() if name in ("metrics", "env") else obj.shutdown()
                except Exception as e:  # noqa: BLE001 - shutting down after an error must not mask it
                    log.warning("closing %s: %s", name, e)


@contextlib.contextmanager
def _starting(what: str):
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
            + (f"  eval: {ev}" if ev else "") + f"  ETA {_hms(eta)}")


def _hms(seconds: float) -> str:
    s = int(round(seconds))
    return f"{s // 3600}:{s // 60 % 60:02d}:{s % 60:02d}"


def _on_loss_tokens(model_values: torch.Tensor, fill: torch.Tensor, model_in_loss: torch.Tensor | None):
    """A per-loss-token tensor: `model_values` at the model's tokens, `fill` at observation
    tokens an environment marked trained (model_in_loss: Episode.model_in_loss())."""
    if model_in_loss is None:
        return model_values
    out = fill.clone()
    out[model_in_loss] = model_values
    return out


def _load_tokenizer(model_path: pathlib.Path):
    from tokenizers import Tokenizer

    f = model_path / "tokenizer.json"
    if not f.exists():
        raise FileNotFoundError(f"{model_path}: no tokenizer.json (a Hugging Face fast tokenizer is needed)")
    return Tokenizer.from_file(str(f))


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


def summarize(result: dict, keys: Sequence[str] = ("reward/mean", "parity/kl")) -> str:
    """The run's last console line: the first and last value of each key. Parity figures are
    0 or in scientific notation: a KL of 2e-5 at four decimals would read 0.0000, exact."""
    f, l_ = result.get("first") or {}, result.get("last") or {}

    def num(k: str, v: float) -> str:
        return f"{v:.4f}" if not k.startswith("parity/") else "0" if v == 0 else f"{v:.3e}"

    return "  ".join(f"{k}: first {num(k, f.get(k, float('nan')))} last {num(k, l_.get(k, float('nan')))}"
                     for k in keys)
