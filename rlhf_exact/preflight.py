"""Checks that run after the config is composed and before anything starts (no run
directory created, no Ray, no engine): every name and file the config refers to.

    from rlhf_exact.preflight import preflight
    report = preflight(cfg, run_dir)   # run_dir from runtime.rundir.locate_run_dir (not created)
    report.finished                    # a message when a resumed run has nothing left to do
    report.notes                       # lines for the user (checkpoints set aside, rows skipped)
    report.verified                    # the checkpoint to resume from, its SHA-256s checked here

Raises ConfigError: one line that names the key and the file (and the line), which the
entry point prints with exit status 2. What is checked, in this order:

  cluster  what the actors ask Ray for (trainer ranks, samplers and reward model scorers,
           CPUs each and GPU shares: ClusterConfig.cpus_per_actor, gpus_per_actor) fits
           what a local Ray gets: cluster.num_cpus or os.cpu_count(), cluster.num_gpus or
           torch.cuda.device_count(); Ray would leave an actor that does not fit pending
           forever.
  rewards  run.imports import; each reward.functions name resolves (a registered name or
           an import path 'pkg.module:fn') to a function that takes
           (completion_text, completion_ids, sample).
  sampler  sampler.backend (unless "vllm") resolves like a reward import path to a class
           with every method of rlhf_exact.sampler.backend.SamplerBackend, signature by
           signature (backend.mismatches).
  model    model.path (unless model.tiny.enabled): config.json is a Qwen3 config with model_type,
           tokenizer.json loads, every safetensors header is readable, covers its file
           (a truncated file fails) and has the tensors with the config's shapes
           (models/hf_io.check_model_dir), every tensor is finite (hf_io.check_finite:
           a file damaged in place, same size, names its file and tensor instead of
           failing later as a parity or loss error), and its max_position_embeddings
           covers sampler.max_model_len (vLLM refuses more as its engines start).
  env      env.name (when set) resolves like a reward name to an Environment class whose
           constructor takes env.kwargs (names, then values: it is built once with them).
  data     data.train_files (and eval.files, as the evaluator loads them) are read row by
           row (file:line of the first bad row; a missing key says which data.*_key to set)
           and, when the model's tokenizer is at hand, tokenized with its chat template
           against data.max_prompt_tokens: the same
           code the loop runs (data/loader.py), so it cannot fail there later.
  resume   run.resume=auto or a run directory: a finished run (final_model/ written and
           metrics.jsonl at run.steps) is reported as finished; otherwise checkpoints are
           verified newest first (sizes and SHA-256, runtime/checkpoint.py) and a corrupt
           one is moved aside to checkpoints/corrupt-step_NNNNNN (kept for inspection),
           so the loop resumes from the newest intact one; a note says so. An explicit
           checkpoint path that does not verify is an error. The verified checkpoint
           is `report.verified`: the loop loads it without hashing it a second time.

Moving a corrupt checkpoint aside is the only change made to disk.
"""
from __future__ import annotations

import inspect
import os
from dataclasses import dataclass, field
from pathlib import Path

from rlhf_exact.config.schema import RESUME_WORDS, ConfigError, TrainConfig


@dataclass
class Preflight:
    run_dir: Path
    finished: str | None = None  # the run already did run.steps steps: say so and stop
    notes: list[str] = field(default_factory=list)
    verified: Path | None = None  # the checkpoint to resume from, its SHA-256s checked (None: none to resume)


def preflight_reward_model(cfg: TrainConfig, run_dir: Path) -> Preflight:
    """The checks of python -m rlhf_exact.train_rm: resume as for `train`; model.path a
    Qwen3ForSequenceClassification directory (num_labels=1); preference.*_files read and
    tokenized line by line, as the run will (file:line of the first bad pair)."""
    report = Preflight(Path(run_dir))
    if cfg.run.resume != "never":
        check_resume(cfg, report)
        if report.finished:
            return report
    from rlhf_exact.models.reward import REWARD_ARCHITECTURE

    check_resources(cfg, samplers=False)
    tokenizer, template = check_model(cfg, REWARD_ARCHITECTURE)
    check_preferences(cfg, tokenizer, template, report)
    return report


def check_preferences(cfg: TrainConfig, tokenizer, template, report: Preflight) -> None:
    pc = cfg.preference
    if pc.name != "jsonl":
        return check_synthetic_vocab(cfg)
    from rlhf_exact.data.preferences import load_preference_pairs

    if tokenizer is None:  # the tiny model: its tokenizer is trained, deterministically, at the start
        from rlhf_exact.models.tiny import CHAT_TEMPLATE, train_tokenizer

        tokenizer, template, vocab = train_tokenizer(cfg.model.tiny.vocab_size), CHAT_TEMPLATE, \
            cfg.model.tiny.vocab_size
    else:
        from rlhf_exact.models.hf_io import read_config
        from rlhf_exact.models.reward import REWARD_ARCHITECTURE

        vocab = read_config(cfg.model.path, REWARD_ARCHITECTURE).vocab_size
    skipped = 0
    for key in ("train_files", "heldout_files"):
        files = getattr(pc, key)
        if not files:
            continue
        try:
            skipped += load_preference_pairs(files, tokenizer, vocab_size=vocab, max_tokens=pc.max_tokens,
                                             chat_template=template, on_malformed=pc.on_malformed)[1]
        except (ValueError, FileNotFoundError) as e:
            raise ConfigError(f"preference.{key}: {e}") from None
    if skipped:
        report.notes.append(f"preference.on_malformed=skip: {skipped} malformed pairs skipped "
                            f"(counted in metrics as data/skipped_rows)")


def preflight(cfg: TrainConfig, run_dir: Path) -> Preflight:
    report = Preflight(Path(run_dir))
    if cfg.run.resume != "never":
        check_resume(cfg, report)
        if report.finished:
            return report
    check_resources(cfg)
    check_rewards(cfg)
    check_sampler_backend(cfg)
    tokenizer, template = check_model(cfg)
    check_reward_model(cfg, tokenizer)
    check_env(cfg, tokenizer)
    check_data(cfg, tokenizer, template, report)
    return report


# ---------------------------------------------------------------------------------------


def gpus_to_place(shares: list[float]) -> int:
    """GPUs that hold actors asking for these GPU shares (1.0, or COLOCATED_GPU_SHARE's
    0.55, 0.4 and 0.05 colocated), as Ray places fractional GPUs: no actor split over two
    GPUs, shares of one GPU summing to at most 1 (first fit, largest first; exact for these
    shares)."""
    free: list[float] = []
    for share in sorted(shares, reverse=True):
        i = next((i for i, f in enumerate(free) if f >= share - 1e-9), None)
        if i is None:
            free.append(1.0 - share)
        else:
            free[i] -= share
    return len(free)


def resource_demand(cfg: TrainConfig, samplers: bool = True) -> dict[str, tuple[float, str]]:
    """What the run's actors ask Ray for: resource ("CPU", "GPU") -> (amount, how it adds
    up), the trainer ranks', the samplers' and the reward model scorers' (trainer/group.py,
    sampler/group.py, rewards/scorer_group.py; samplers=False: the trainer ranks' only, as
    train_rm starts them)."""
    c, w, m = cfg.cluster, cfg.trainer.world_size, cfg.reward.model
    n = cfg.sampler.num_samplers if samplers else 0
    k = m.num_scorers if samplers and m.path else 0
    k_gpu = k if m.resolved_device(c.device) == "cuda" else 0

    def terms(rank: float, sampler: float, scorer: float, scorers: int) -> str:
        return (f"{w} trainer rank(s) x {rank:g}" + (f" + {n} sampler(s) x {sampler:g}" if n else "")
                + (f" + {scorers} scorer(s) x {scorer:g}" if scorers else ""))

    cpu = c.cpus_per_actor()
    out = {"CPU": ((w + n + k) * cpu, terms(cpu, cpu, cpu, k))}
    if c.device == "cuda":
        t, s, r = c.gpus_per_actor("trainer"), c.gpus_per_actor("sampler"), c.gpus_per_actor("scorer")
        out["GPU"] = (float(gpus_to_place([t] * w + [s] * n + [r] * k_gpu)),
                      terms(t, s, r, k_gpu) + (", colocated" if c.colocate else ""))
    return out


def check_resources(cfg: TrainConfig, samplers: bool = True) -> None:
    """A local Ray can give the run's actors what they ask for: CPUs (cluster.num_cpus, or
    os.cpu_count()) and on CUDA GPUs (cluster.num_gpus, or torch.cuda.device_count()).
    Otherwise Ray leaves an actor pending forever. A cluster at cluster.ray_address is
    not known here: the groups' placement deadlines cover it."""
    c = cfg.cluster
    if c.ray_address:
        return
    have = {"CPU": (c.num_cpus, "cluster.num_cpus") if c.num_cpus is not None else (os.cpu_count() or 1,
                                                                                   "os.cpu_count()")}
    if c.device == "cuda":
        import torch

        have["GPU"] = (c.num_gpus, "cluster.num_gpus") if c.num_gpus is not None else \
            (torch.cuda.device_count(), "torch.cuda.device_count()")
    for res, (need, what) in resource_demand(cfg, samplers).items():
        got, source = have[res]
        if need > got:
            hint = ("fewer, or cluster.num_cpus to let Ray share the cores" if res == "CPU" else
                    "fewer" if cfg.cluster.colocate else "fewer, or cluster.colocate=true (a rank and a sampler "
                    "share a GPU)")
            scorers = samplers and cfg.reward.model.path and cfg.reward.model.num_scorers
            keys = f"trainer.world_size={cfg.trainer.world_size}" + (
                f", sampler.num_samplers={cfg.sampler.num_samplers}" if samplers else "") + (
                f", reward.model.num_scorers={cfg.reward.model.num_scorers}" if scorers else "")
            raise ConfigError(f"{keys}: the actors need {need:g} {res} ({what}), Ray gets {got:g} ({source}); "
                              f"ask for {hint}")


def check_rewards(cfg: TrainConfig) -> None:
    from rlhf_exact.rewards import get_reward, import_reward_modules

    try:
        import_reward_modules(cfg.run.imports)
    except ValueError as e:
        raise ConfigError(str(e)) from None
    for i, f in enumerate(cfg.reward.functions):
        key = f"reward.functions[{i}].name"
        try:
            fn = get_reward(f.name)
        except ValueError as e:
            raise ConfigError(f"{key}: {e}") from None
        try:
            inspect.signature(fn).bind("text", [0], {})
        except TypeError:
            raise ConfigError(f"{key}: reward {f.name!r} has the signature {inspect.signature(fn)}, but rewards "
                              f"are called as fn(completion_text, completion_ids, sample)") from None
        except ValueError:  # builtins without a signature: nothing to check
            pass


def check_sampler_backend(cfg: TrainConfig) -> None:
    """sampler.backend (after run.imports, which check_rewards imported) is a class that
    implements the SamplerBackend protocol."""
    if cfg.sampler.backend == "vllm":
        return
    from rlhf_exact.sampler.backend import load_backend

    try:
        load_backend(cfg.sampler.backend)
    except ValueError as e:
        raise ConfigError(f"sampler.backend: {e}") from None


def check_env(cfg: TrainConfig, tokenizer=None) -> None:
    """env.name resolves (after run.imports, which check_rewards imported) to an
    Environment whose constructor takes env.kwargs and accepts their values: it is built
    once here, as the run builds it, with the run's tokenizer (`tokenizer`, or the tiny
    model's)."""
    if not cfg.env.name:
        return
    from rlhf_exact.envs import get_env

    try:
        cls = get_env(cfg.env.name)
    except ValueError as e:
        raise ConfigError(f"env.name: {e}") from None
    try:
        inspect.signature(cls).bind(tokenizer=None, **cfg.env.kwargs)
    except TypeError as e:
        raise ConfigError(f"env.kwargs: environment {cfg.env.name!r} takes {inspect.signature(cls)}: {e}") from None
    if tokenizer is None and cfg.model.tiny.enabled:
        from rlhf_exact.models.tiny import train_tokenizer

        tokenizer = train_tokenizer(cfg.model.tiny.vocab_size)
    try:
        cls(tokenizer=tokenizer, **cfg.env.kwargs)
    except Exception as e:  # noqa: BLE001 - user code refusing its arguments may raise anything
        named = [k for k in cfg.env.kwargs if k in str(e)]  # the key the message names, when it names one
        where = ", ".join(f"env.kwargs.{k}={v!r}" for k, v in cfg.env.kwargs.items() if k in named or not named)
        raise ConfigError(f"{where or 'env.kwargs'}: environment {cfg.env.name!r} refused it: "
                          f"{type(e).__name__}: {e}") from None


def check_model(cfg: TrainConfig, architecture: str = "Qwen3ForCausalLM"):
    """(tokenizer, chat template) of model.path, or (None, None) for the tiny model (built
    at the start of the run)."""
    if cfg.model.tiny.enabled:
        return None, None
    from tokenizers import Tokenizer

    from rlhf_exact.data import read_chat_template
    from rlhf_exact.models.hf_io import check_finite, check_model_dir

    try:
        config = check_model_dir(cfg.model.path, architecture)
        check_finite(cfg.model.path, architecture)
        template = read_chat_template(cfg.model.path)
    except ValueError as e:
        raise ConfigError(f"model.path: {e}") from None
    key, tokens = (("preference.max_tokens", cfg.preference.max_tokens) if architecture != "Qwen3ForCausalLM" else
                   ("sampler.max_model_len", cfg.sampler.max_model_len))
    if tokens > config.max_position_embeddings:  # vLLM refuses it as its engines start; the trainer would index
        # past its rotary table
        raise ConfigError(f"{key}={tokens}: the model has max_position_embeddings={config.max_position_embeddings} "
                          f"({os.path.join(cfg.model.path, 'config.json')}), the longest sequence it takes; "
                          f"set {key} <= {config.max_position_embeddings}")
    return Tokenizer.from_file(os.path.join(cfg.model.path, "tokenizer.json")), template


def check_reward_model(cfg: TrainConfig, tokenizer) -> None:
    """reward.model.path (when set): a Qwen3ForSequenceClassification directory (num_labels=1)
    whose files are whole and finite, whose tokenizer is the policy's (a token id must mean
    the same text to both), and whose positions cover the longest sequence it will score."""
    path = cfg.reward.model.path
    if not path:
        return
    from tokenizers import Tokenizer

    from rlhf_exact.models.hf_io import check_finite, check_model_dir
    from rlhf_exact.models.reward import REWARD_ARCHITECTURE

    if not os.path.isdir(path):
        raise ConfigError(f"reward.model.path: {path} is not a directory; point it at a reward model, such as the "
                          f"final_model of a `python -m rlhf_exact.train_rm` run")
    try:
        config = check_model_dir(path, REWARD_ARCHITECTURE)
        check_finite(path, REWARD_ARCHITECTURE)
    except ValueError as e:
        raise ConfigError(f"reward.model.path: {e}") from None
    if tokenizer is None:  # the tiny model: its tokenizer is trained, deterministically, at the start
        from rlhf_exact.models.tiny import train_tokenizer

        tokenizer = train_tokenizer(cfg.model.tiny.vocab_size)
    if Tokenizer.from_file(os.path.join(path, "tokenizer.json")).get_vocab() != tokenizer.get_vocab():
        raise ConfigError(f"reward.model.path: {os.path.join(path, 'tokenizer.json')} is not the policy's tokenizer "
                          f"(the reward model would read other text than the policy wrote); train the reward model "
                          f"on the policy's tokenizer")
    if cfg.sampler.max_model_len > config.max_position_embeddings:
        raise ConfigError(f"sampler.max_model_len={cfg.sampler.max_model_len}: the reward model has "
                          f"max_position_embeddings={config.max_position_embeddings} "
                          f"({os.path.join(path, 'config.json')}); set sampler.max_model_len <= "
                          f"{config.max_position_embeddings}")


def check_data(cfg: TrainConfig, tokenizer, template, report: Preflight) -> None:
    d = cfg.data
    if d.name == "synthetic":
        check_synthetic_vocab(cfg)
        return
    from rlhf_exact.data import load_prompt_rows, load_prompts
    from rlhf_exact.data.prompts import MalformedRowError

    try:
        if tokenizer is None:
            _, skipped = load_prompts(d.train_files, d.prompt_key, d.answer_key, d.on_malformed)
        else:
            skipped = load_prompt_rows(cfg, tokenizer, chat_template=template).skipped
    except MalformedRowError as e:
        hint = ""
        if e.field:
            what = "prompt text" if e.field == "prompt_key" else "reference answer"
            hint = f" (set data.{e.field}=FIELD, the record field holding the {what})"
        raise ConfigError(f"data.train_files: {e}{hint}") from None
    except ValueError as e:
        raise ConfigError(f"data.train_files: {e}") from None
    if cfg.eval.every_steps:
        from rlhf_exact.eval import load_eval_rows

        try:  # the rows the run's evaluator loads (tokenized against data.max_prompt_tokens), or read alone
            if tokenizer is None:
                load_prompts(cfg.eval.files, d.prompt_key, d.answer_key, d.on_malformed)
            else:
                load_eval_rows(cfg, tokenizer, template)
        except ValueError as e:
            raise ConfigError(f"eval.files: {e}") from None
    if skipped:
        report.notes.append(f"data.on_malformed=skip: {skipped} malformed prompt rows skipped "
                            f"(counted in metrics as data/skipped_rows)")


def check_synthetic_vocab(cfg: TrainConfig) -> None:
    """data.synthetic.vocab_size names ids the model can emit (its embedding rows)."""
    want = cfg.data.synthetic.vocab_size
    if want is None:
        return
    if cfg.model.tiny.enabled:
        have, where = cfg.model.tiny.vocab_size, "model.tiny.vocab_size"
    else:
        from rlhf_exact.models.hf_io import read_config

        have, where = read_config(cfg.model.path).vocab_size, f"{cfg.model.path}/config.json vocab_size"
    if want > have:
        raise ConfigError(f"data.synthetic.vocab_size={want}: the model has {have} token ids ({where}); "
                          f"set it <= {have} or null (the tokenizer's size)")


def check_resume(cfg: TrainConfig, report: Preflight) -> None:
    from rlhf_exact.runtime.checkpoint import CheckpointError, newest_intact_checkpoint, verify_checkpoint
    from rlhf_exact.runtime.rundir import is_checkpoint_dir

    resume, run_dir = cfg.run.resume, report.run_dir
    if resume not in RESUME_WORDS and is_checkpoint_dir(Path(resume)):
        try:
            verify_checkpoint(resume)
        except CheckpointError as e:
            raise ConfigError(f"run.resume: {e}") from None
        report.verified = Path(resume)
        return
    if not run_dir.is_dir():
        return
    done = finished_steps(run_dir)
    if done is not None and done >= cfg.run.steps:
        report.finished = (f"run {run_dir.name} is finished: {done} of run.steps={cfg.run.steps} steps, final model "
                           f"in {run_dir / 'final_model'} (train longer with a larger run.steps)")
        return
    newest, bad = newest_intact_checkpoint(run_dir)
    report.verified = newest
    for path, why in bad:
        aside = path.with_name(f"corrupt-{path.name}")
        os.replace(path, aside)
        report.notes.append(f"checkpoint {path.name} does not verify ({why}); moved it to {aside} and skipped it")
    if bad:
        if newest is None and resume not in RESUME_WORDS:  # a path named the run to resume
            raise ConfigError(f"run.resume={resume!r}: no intact checkpoint left in {run_dir / 'checkpoints'}")
        report.notes.append(f"resuming from {newest.name}, the newest intact checkpoint" if newest else
                            "no intact checkpoint left: the run starts again at step 0")


def finished_steps(run_dir: Path) -> int | None:
    """The steps a run directory has completed if it exported its final model, else None."""
    from rlhf_exact.runtime.metrics import METRICS_FILE, read_metrics

    if not (run_dir / "final_model" / "config.json").is_file() or not (run_dir / METRICS_FILE).is_file():
        return None
    records = read_metrics(run_dir)
    return max((r["step"] for r in records), default=0)
