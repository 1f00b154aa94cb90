"""The on-policy GRPO loop: Ray sampler actors (vLLM with the exact plugin) and an FSDP2
trainer group, one step at a time:

  sample    prompts_per_step prompts x group_size completions, per-request seeds
            derived from (run.seed, step, prompt), token ids + sampler logprobs
  reward    decode, reward functions from config, group advantages (+ DAPO filter)
  recompute the trainer's logprobs of every sampled token in its own micro-batches;
            parity metrics sampler vs trainer (exact mode: every bit must agree,
            else warn or stop, by config)
  train     epochs x minibatches of PPO-clip updates (old logprobs = the sampler's in
            exact mode, which ARE the trainer's; the trainer's with TIS otherwise)
  sync      trainer -> samplers, bf16 tensors in buckets, timed
  log       metrics.jsonl (+ W&B), checkpoint every run.save_every steps

    python -m rlhf_exact.train recipe=grpo_qwen3_tiny     # entry point: train.py

Everything that decides a step's numbers (data order, seeds, the micro-batch plan) is
a function of the config, the step and the checkpointed state, so a run resumed from
step k reproduces an uninterrupted one bit for bit.
"""
from __future__ import annotations

import logging
import math
import os
import pathlib
import time
from collections.abc import Sequence

log = logging.getLogger("rlhf_exact")


class ParityError(RuntimeError):
    """Exact mode and the sampler's logprobs differ from the trainer's."""


class NonFiniteLossError(RuntimeError):
    """A step's loss or gradient was not finite: the update was not applied."""


# ---------------------------------------------------------------------------------- setup

def prepare_model(cfg, run_dir: pathlib.Path) -> pathlib.Path:
    """The HF model directory the run starts from (the tiny model is built into the run
    directory, deterministically from run.seed, on the first start)."""
    if not cfg.model.tiny:
        return pathlib.Path(cfg.model.path)
    path = run_dir / "initial_model"
    if not (path / "config.json").exists():
        from rlhf_exact.models.tiny import make_tiny_model_dir

        m = cfg.model
        make_tiny_model_dir(path, seed=cfg.run.seed, std=0.05, vocab_size=m.tiny_vocab_size,
                            hidden_size=m.tiny_hidden_size, intermediate_size=m.tiny_intermediate_size,
                            num_hidden_layers=m.tiny_num_hidden_layers, num_attention_heads=m.tiny_num_attention_heads,
                            num_key_value_heads=m.tiny_num_key_value_heads, head_dim=m.tiny_head_dim,
                            max_position_embeddings=m.tiny_max_position_embeddings,
                            tie_word_embeddings=m.tiny_tie_word_embeddings)
    return path


def request_seed(run_seed: int, step: int, prompt: int, group_size: int) -> int:
    """Seed of sample 0 of a prompt (sample j uses seed + j): distinct per (step, prompt)."""
    return ((run_seed * 1_000_003 + step) * 65_537 + prompt) * group_size % (2 ** 31 - group_size)


def init_ray(cfg) -> None:
    """A private local Ray that leaves nothing behind, or the cluster at cluster.ray_address
    (runtime/cluster.py)."""
    from rlhf_exact.runtime.cluster import start_ray

    start_ray(cfg.cluster)


class Samplers:
    """The sampler actors; restarts a dead one (Ray max_restarts) and re-sends the
    current weights before retrying its share of the step."""

    def __init__(self, cfg, model_path: pathlib.Path):
        import ray

        from rlhf_exact.sampler.actor import sampler_actor

        self.cfg = cfg
        exact = cfg.kernels == "exact"
        s, c = cfg.sampler, cfg.cluster
        opts = dict(max_restarts=3, max_task_retries=0)
        if c.device == "cuda":
            opts["num_gpus"] = 0.4 if c.colocate else 1
        env = {} if exact else {"VLLM_PLUGINS": "none"}
        env |= {"OMP_NUM_THREADS": "1", "VLLM_LOGGING_LEVEL": os.environ.get("VLLM_LOGGING_LEVEL", "WARNING")}
        opts["runtime_env"] = {"env_vars": env}
        cls = sampler_actor(num_cpus=0.5 if c.device == "cpu" else 1, **opts)
        kw = dict(temperature=cfg.sampling.temperature, dtype=cfg.model.dtype, max_model_len=s.max_model_len,
                  max_num_seqs=s.max_num_seqs, enable_prefix_caching=s.enable_prefix_caching, seed=cfg.run.seed,
                  exact=exact)
        if s.kv_cache_bytes:
            kw["kv_cache_memory_bytes"] = s.kv_cache_bytes
        if c.device == "cuda":
            kw["gpu_memory_utilization"] = s.gpu_memory_utilization
            if not s.kv_cache_bytes:
                kw["kv_cache_memory_bytes"] = None  # from gpu_memory_utilization
        self.actors = [cls.remote(str(model_path), **kw) for _ in range(s.num_samplers)]
        ray.get([a.ready.remote() for a in self.actors])  # surfaces an engine start error here
        self.weights = None  # the latest synced weights (re-sent to a restarted actor)
        self.restarts = 0

    def sample(self, prompts: list[list[int]], n: int, params, seeds: list[int]) -> list:
        import ray
        from ray.exceptions import RayActorError

        k = len(self.actors)
        shares = [list(range(i, len(prompts), k)) for i in range(k)]
        out = [None] * len(prompts)
        pending = {i: self.actors[i].sample.remote([prompts[j] for j in sh], n, params, [seeds[j] for j in sh])
                   for i, sh in enumerate(shares) if sh}
        for attempt in range(4):
            failed = []
            for i, ref in pending.items():
                try:
                    for j, r in zip(shares[i], ray.get(ref)):
                        out[j] = r
                except RayActorError as e:
                    log.warning("sampler %d died during sampling (%s); waiting for Ray to restart it", i,
                                type(e).__name__)
                    failed.append(i)
            if not failed:
                return out
            self.restarts += len(failed)
            pending = {}
            for i in failed:
                self._revive(i)
                pending[i] = self.actors[i].sample.remote([prompts[j] for j in shares[i]], n, params,
                                                          [seeds[j] for j in shares[i]])
        raise RuntimeError("sampler actors kept dying; giving up")

    def _revive(self, i: int) -> None:
        import ray
        from ray.exceptions import RayActorError

        for _ in range(120):
            try:
                ray.get(self.actors[i].ready.remote())
                break
            except RayActorError:
                time.sleep(1.0)
        if self.weights is not None:  # the restarted engine loaded the initial checkpoint
            ray.get(self.actors[i].update_weights.remote(self.weights, self.cfg.cluster.weight_sync_bucket_mb << 20))

    def update(self, weights: dict) -> float:
        """Send weights to every sampler; returns the slowest engine's seconds."""
        import ray
        from ray.exceptions import RayActorError

        self.weights = weights
        ref = ray.put(weights)
        refs = [a.update_weights.remote(ref, self.cfg.cluster.weight_sync_bucket_mb << 20) for a in self.actors]
        seconds = []
        for i, r in enumerate(refs):
            try:
                seconds.append(ray.get(r))
            except RayActorError:
                log.warning("sampler %d died during the weight update; waiting for Ray to restart it", i)
                self.restarts += 1
                self._revive(i)  # re-sends self.weights, the new ones
        return max(seconds, default=0.0)

    def shutdown(self) -> None:
        import ray

        for a in self.actors:
            try:
                ray.get(a.shutdown.remote(), timeout=30)
            except Exception:  # noqa: BLE001 - best effort at exit
                pass
            ray.kill(a)


# ---------------------------------------------------------------------------------- one step

def _slot(prompt, completion, **kw) -> dict:
    return dict(prompt=list(prompt), completion=list(completion), **kw)


class Loop:
    def __init__(self, cfg, run_dir: pathlib.Path):
        self.cfg, self.run_dir = cfg, pathlib.Path(run_dir)
        self.exact = cfg.kernels == "exact"

    # setup --------------------------------------------------------------------------
    def setup(self) -> None:
        import torch

        from rlhf_exact.runtime.metrics import MetricsLogger
        from rlhf_exact.trainer.group import TrainerGroup

        cfg = self.cfg
        self.model_path = prepare_model(cfg, self.run_dir)
        self.tokenizer = _load_tokenizer(self.model_path)
        self.rows, self.stream = _load_data(cfg, self.tokenizer, self.model_path)
        init_ray(cfg)
        self.samplers = Samplers(cfg, self.model_path)
        a = cfg.algorithm
        spec = dict(model_path=str(self.model_path), exact=self.exact, device=cfg.cluster.device,
                    compute_dtype=cfg.trainer.compute_dtype, temperature=cfg.sampling.temperature, lr=a.lr,
                    betas=(a.adam_beta1, a.adam_beta2), eps=a.adam_eps, weight_decay=a.weight_decay,
                    max_grad_norm=a.max_grad_norm if a.max_grad_norm > 0 else math.inf,
                    warmup_steps=a.warmup_steps, clip_eps_low=a.clip_eps_low, clip_eps_high=a.clip_eps_high,
                    kl_coef=a.kl_coef, kl_estimator=a.kl_estimator, entropy_coef=a.entropy_coef,
                    activation_checkpointing=cfg.model.activation_checkpointing)
        colocated = cfg.cluster.device == "cuda" and cfg.cluster.colocate
        self.trainer = TrainerGroup(spec, cfg.trainer.world_size, device=cfg.cluster.device,
                                    cpus_per_rank=0.5 if cfg.cluster.device == "cpu" else 1,
                                    gpus_per_rank=0.6 if colocated else 1.0)  # + a sampler's 0.4
        self.start_step = self._maybe_resume()
        self.metrics = MetricsLogger(self.run_dir, cfg, resume_step=self.start_step)
        torch.set_num_threads(1)

    def _maybe_resume(self) -> int:
        from rlhf_exact.runtime.checkpoint import discard_checkpoints_after, load_run_checkpoint, restore_rng_state
        from rlhf_exact.runtime.rundir import resume_checkpoint

        path = resume_checkpoint(self.cfg, self.run_dir)
        if path is None:
            if self.cfg.run.resume == "auto":
                log.info("resume=auto: no complete checkpoint in %s, starting at step 0", self.run_dir)
            return 0
        tensors, meta = load_run_checkpoint(path)
        discard_checkpoints_after(self.run_dir, int(meta["step"]))  # a later resume=auto must not jump ahead
        self.trainer.call_same("load_state", {k: tensors[k] for k in ("model", "optimizer")}, meta["trainer"])
        restore_rng_state(tensors["rng"], meta["rng"])
        self.stream.load_state_dict(meta["data"])
        self.sync_weights()  # the engines started from the initial checkpoint
        log.info("resumed from %s at step %d", path, meta["step"])
        return int(meta["step"])

    def sync_weights(self) -> tuple[float, float]:
        """(gather seconds, sampler update seconds)."""
        t0 = time.perf_counter()
        weights = self.trainer.call_same("full_weights", self.cfg.model.dtype)[0]
        t1 = time.perf_counter()
        return t1 - t0, self.samplers.update(weights)

    # one step -----------------------------------------------------------------------
    def step(self, step: int) -> dict:
        import torch

        from rlhf_exact.algo.grpo import equal_reward_groups, group_advantages, parity_metrics, tis_weights
        from rlhf_exact.rewards import compute_rewards
        from rlhf_exact.sampler.engine import SamplingConfig
        from rlhf_exact.trainer import plan as planner

        cfg, a = self.cfg, self.cfg.algorithm
        g = a.group_size
        times = {}
        t0 = time.perf_counter()
        rows = next(self.stream)
        prompts = [list(r["prompt_ids"]) for r in rows]
        seeds = [request_seed(cfg.run.seed, step, i, g) for i in range(len(prompts))]
        sp = cfg.sampling
        params = SamplingConfig(max_tokens=sp.max_tokens, top_k=sp.top_k, top_p=sp.top_p,
                                stop_token_ids=tuple(sp.stop_token_ids))
        results = self.samplers.sample(prompts, g, params, seeds)
        bad = [(i, r.error) for i, r in enumerate(results) if r.error]
        if bad:
            raise RuntimeError(f"step {step}: the sampler refused prompt(s) {bad[:3]}")
        times["time/sample"] = time.perf_counter() - t0

        t1 = time.perf_counter()
        seqs = [(prompts[i], c) for i, r in enumerate(results) for c in r.completions]  # group-major
        samples = [rows[i] for i, r in enumerate(results) for _ in r.completions]
        texts = [self.tokenizer.decode(c.token_ids) for _, c in seqs]
        rewards, errors = compute_rewards([(f.name, f.weight) for f in cfg.reward.functions], texts,
                                          [c.token_ids for _, c in seqs], samples, on_error=cfg.reward.on_error)
        rewards_t = torch.tensor(rewards, dtype=torch.float32)
        adv = group_advantages(rewards_t, g, normalize_std=a.normalize_std)
        keep_groups = torch.ones(len(prompts), dtype=torch.bool)
        if a.filter_equal_reward_groups:
            keep_groups = ~equal_reward_groups(rewards_t, g)
        keep = [i for i in range(len(seqs)) if bool(keep_groups[i // g])]
        times["time/reward"] = time.perf_counter() - t1

        # trainer recompute over every sampled sequence: the parity check
        t2 = time.perf_counter()
        lengths = [len(p) + len(c.token_ids) for p, c in seqs]
        W, mbt = cfg.trainer.world_size, cfg.trainer.micro_batch_tokens
        full_plan = planner.plan(lengths, W, mbt)
        plain = planner.scatter(full_plan, lambda i: _slot(seqs[i][0], seqs[i][1].token_ids))
        trainer_lp = planner.gather(full_plan, self.trainer.call("logprobs", plain), len(seqs))
        sampler_lp = [c.logprobs for _, c in seqs]
        par = parity_metrics(torch.cat(sampler_lp), torch.cat(trainer_lp))
        ref_lp = None
        if a.kl_coef > 0:
            ref_lp = planner.gather(full_plan, self.trainer.call("logprobs", plain, reference=True), len(seqs))
        if par["parity/tokens_bitwise_equal_frac"] != 1.0:
            self._violation(f"at step {step}: sampler and trainer logprobs differ (bitwise-equal fraction "
                            f"{par['parity/tokens_bitwise_equal_frac']:.6f}, max |diff| "
                            f"{par['parity/logprob_abs_diff_max']:.3e}, KL {par['parity/kl']:.3e})")
        # the ratio's denominator: the sampler's logprobs, which exact mode makes the trainer's
        old = sampler_lp if self.exact else trainer_lp
        tis = None
        if a.tis:
            tis = [tis_weights(t, s, a.tis_cap) for t, s in zip(trainer_lp, sampler_lp)]

        # updates: epochs x minibatches of whole groups
        mb_metrics, ratio_first = [], None
        kept_groups = len(keep) // g
        if kept_groups:
            splits = _minibatches(kept_groups, a.num_minibatches, g)
            for epoch in range(a.epochs):
                for mb_i, idx in enumerate(splits):
                    ids = [keep[k] for k in idx]
                    L = [len(seqs[i][1].token_ids) for i in ids]
                    agg = {"num_seqs": len(ids), "aggregation": a.loss_aggregation,
                           "loss_scale_tokens": sum(L) if a.loss_aggregation == "token_mean" else sp.max_tokens}
                    p = [[[ids[k] for k in micro] for micro in rank]
                         for rank in planner.plan([lengths[i] for i in ids], W, mbt)]

                    def make(i):
                        return _slot(seqs[i][0], seqs[i][1].token_ids, old_logprobs=old[i].tolist(),
                                     advantages=float(adv[i]), tis=tis[i].tolist() if tis else None,
                                     ref_logprobs=ref_lp[i].tolist() if ref_lp else None)

                    out = self.trainer.call("train_minibatch", planner.scatter(p, make), agg=agg)
                    if any(o["nonfinite"] for o in out):
                        raise NonFiniteLossError(f"step {step}: non-finite loss or gradient (epoch {epoch}, "
                                                 f"minibatch {mb_i}); the update was not applied, the run stops")
                    if epoch == 0 and mb_i == 0:
                        fwd = planner.gather(p, [o["forward_logprobs"] for o in out], len(seqs))
                        r = torch.cat([torch.exp(fwd[i] - sampler_lp[i]) for i in ids])
                        ratio_first = (float(r.min()), float(r.max()))
                    mb_metrics.append(out)
        lr = self.trainer.call_same("end_step")[0]
        times["time/train"] = time.perf_counter() - t2

        t3 = time.perf_counter()
        gather_s, update_s = self.sync_weights()
        times["time/sync"] = time.perf_counter() - t3
        times["time/step"] = time.perf_counter() - t0

        comp_lens = torch.tensor([len(c.token_ids) for _, c in seqs], dtype=torch.float32)
        sums = {k: sum(o["sums"][k] for out in mb_metrics for o in out) for k in ("loss", "clip_frac", "tokens",
                                                                              "kl", "entropy")}
        n_upd = max(1, len(mb_metrics))
        metrics = {
            "reward/mean": float(rewards_t.mean()), "reward/std": float(rewards_t.std(unbiased=False)),
            "reward/errors": float(sum(e is not None for e in errors)),
            "response_length/mean": float(comp_lens.mean()), "response_length/max": float(comp_lens.max()),
            "response_length/min": float(comp_lens.min()),
            **par,
            "parity/ratio_min": ratio_first[0] if ratio_first else float("nan"),
            "parity/ratio_max": ratio_first[1] if ratio_first else float("nan"),
            "train/loss": sums["loss"] / n_upd,
            "train/clip_frac": sums["clip_frac"] / max(sums["tokens"], 1.0),
            "train/grad_norm": sum(out[0]["grad_norm"] for out in mb_metrics) / n_upd,
            "train/lr": lr, "train/groups_kept": float(kept_groups), "train/groups": float(len(prompts)),
            "perf/sample_tokens_per_s": float(comp_lens.sum()) / max(times["time/sample"], 1e-9),
            "perf/train_tokens_per_s": a.epochs * float(sum(lengths[i] for i in keep)) / max(times["time/train"], 1e-9),
            "sync/gather_s": gather_s, "sync/update_s": update_s, "sampler/restarts": float(self.samplers.restarts),
            **times,
        }
        if a.kl_coef > 0:
            metrics["train/kl_ref"] = sums["kl"] / max(sums["tokens"], 1.0)
        if a.entropy_coef > 0:
            metrics["train/entropy"] = sums["entropy"] / max(sums["tokens"], 1.0)
        if ratio_first and ratio_first != (1.0, 1.0):
            self._violation(f"at step {step}: first-minibatch importance ratio {ratio_first} != 1")
        return metrics

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

        tensors, trainer_meta = self.trainer.call_same("state")[0]  # {"model", "optimizer"}
        rng_tensors, rng_meta = capture_rng_state()
        meta = {"step": step, "trainer": trainer_meta, "data": self.stream.state_dict(), "rng": rng_meta}
        return save_run_checkpoint(self.run_dir, step, tensors | {"rng": rng_tensors}, meta,
                                   keep_last=self.cfg.run.keep_last)

    def export(self) -> pathlib.Path:
        """The final policy as a Hugging Face model directory (transformers / vLLM load it)."""
        from rlhf_exact.models.checkpoint import read_config, save_model

        weights = self.trainer.call_same("full_weights", self.cfg.model.dtype)[0]
        import torch

        return save_model(weights, self.run_dir / "final_model", config=read_config(self.model_path),
                          dtype=getattr(torch, self.cfg.model.dtype), tokenizer_from=self.model_path)

    def run(self) -> dict:
        """The whole run. The driver is switched to exact mode too (one switch on every
        process; its parity arithmetic is elementwise) and restored afterwards, so a
        caller's process (a test, a notebook) gets its stock kernels back."""
        import contextlib

        from exact_kernels import exact_mode

        with exact_mode() if self.exact else contextlib.nullcontext():
            return self._run()

    def _run(self) -> dict:
        cfg = self.cfg
        self.setup()
        first = last = None
        try:
            from tqdm import tqdm

            bar = tqdm(range(self.start_step, cfg.run.steps), desc="steps", disable=None if cfg.logging.progress_bars else True,
                       initial=self.start_step, total=cfg.run.steps)
            for step in bar:
                m = self.step(step)
                self.metrics.log(step + 1, m)
                first = first or m
                last = m
                bar.set_postfix(reward=f"{m['reward/mean']:.3f}", kl=f"{m['parity/kl']:.1e}")
                log.info("step %d: reward %.4f  parity/kl %.3g  max|diff| %.3g  bitwise %.4f  ratio [%s, %s]  "
                         "time %.1fs (sample %.1f, train %.1f, sync %.1f)", step + 1, m["reward/mean"],
                         m["parity/kl"], m["parity/logprob_abs_diff_max"], m["parity/tokens_bitwise_equal_frac"],
                         m["parity/ratio_min"], m["parity/ratio_max"], m["time/step"], m["time/sample"],
                         m["time/train"], m["time/sync"])
                if cfg.run.save_every and (step + 1) % cfg.run.save_every == 0:
                    self.checkpoint(step + 1)
            export = self.export()
            log.info("exported the final policy to %s", export)
        finally:
            self.close()
        return {"first": first, "last": last}

    def close(self) -> None:
        for name in ("metrics", "samplers", "trainer"):
            obj = getattr(self, name, None)
            if obj is not None:
                try:
                    obj.close() if name == "metrics" else obj.shutdown()
                except Exception as e:  # noqa: BLE001 - shutting down after an error must not mask it
                    log.warning("closing %s: %s", name, e)


def _minibatches(num_groups: int, num_minibatches: int, group_size: int) -> list[list[int]]:
    from rlhf_exact.algo.grpo import minibatches

    return [list(map(int, m)) for m in minibatches(num_groups * group_size, min(num_minibatches, num_groups),
                                                   group_size)]


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


def run(cfg, run_dir) -> dict:
    """Entry point from train.py: the whole run; returns the first and last metrics."""
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    os.environ.setdefault("RAY_DEDUP_LOGS", "1")
    return Loop(cfg, pathlib.Path(run_dir)).run()


def summarize(result: dict, keys: Sequence[str] = ("reward/mean", "parity/kl")) -> str:
    f, l_ = result.get("first") or {}, result.get("last") or {}
    return "  ".join(f"{k}: first {f.get(k, float('nan')):.4f} last {l_.get(k, float('nan')):.4f}" for k in keys)
