"""`OracleSampler`: the paged generation oracle (generate.py) behind the product's
sampler interface (rlhf_exact/sampler/backend.py `SamplerBackend`), so the real
`SamplerGroup` and the real loop can run with it instead of vLLM:

    python -m rlhf_exact.train recipe=grpo_qwen3_tiny sampler.backend=tests.models.oracle_sampler:OracleSampler

(from the repository root, so Ray's workers import `tests`). The trainer then agrees bit
for bit with a second, independent sampler: its own Qwen3 (rlhf_exact/models/qwen3.py)
on the exact kernels, its own scheduler, KV blocks and sampling, and no vLLM.

Departures from vLLM (engine.Sampler): top-k / top-p are per-request errors (the oracle
draws from the full tempered distribution only); draws use the oracle's Gumbel-max, so
the same seed gives other tokens than vLLM; weights are copied in process (bucket_bytes
is unused). Everything the protocol promises holds: fp32 logprobs from
`exact_kernels.token_logprobs` at the engine temperature, whole-or-nothing weight
updates, per-request errors (the same checks as engine.Sampler), seeds[i] + j per sample.
Test code: the package never imports it.
"""
from __future__ import annotations

import json
import math
import os
import pathlib
import time
from collections.abc import Iterable, Mapping, Sequence

import torch

from rlhf_exact.models.hf_io import GENERATION_CONFIG, load_model
from rlhf_exact.models.ops import select_kernels
from rlhf_exact.sampler.engine import Completion, RequestParams, SampleResult, Sampler
from rlhf_exact.sampler.worker_ext import check_manifest, dtype_name

from .generate import GenerationRequest, generate


class OracleSampler:
    """The paged oracle as a SamplerBackend (module docstring)."""

    def __init__(self, model: str | os.PathLike, *, temperature: float = 1.0, dtype: str = "bfloat16",
                 max_model_len: int = 512, max_num_seqs: int = 16, max_num_batched_tokens: int | None = None,
                 seed: int = 0, exact: bool = True, device: str | None = None, **engine_kwargs):
        """max_num_batched_tokens: the token budget of one step (None: max_num_seqs *
        max_model_len, no prompt is split, as engine.Sampler on CPU); device: None: the
        actor's GPU when Ray gave it one (cluster.device=cuda), else CPU; engine_kwargs: vLLM's
        (enable_prefix_caching, kv_cache_memory_bytes, ...), unused."""
        if not exact:
            raise ValueError("OracleSampler runs the exact kernels only (kernels=exact)")
        if not (isinstance(temperature, (int, float)) and math.isfinite(temperature) and temperature > 0):
            raise ValueError(f"OracleSampler: temperature must be finite and > 0, got {temperature!r}")
        self.temperature, self.max_model_len = float(temperature), int(max_model_len)
        self.max_num_seqs = max_num_seqs
        self.max_num_batched_tokens = max_num_batched_tokens or max_num_seqs * self.max_model_len
        device = device or ("cuda" if torch.cuda.is_available() else "cpu")
        self.model, config = load_model(model, dtype=getattr(torch, dtype), device=device,
                                        ops=select_kernels("exact"))
        self.vocab_size = int(config.vocab_size)
        self.eos = _eos_ids(model, config)
        self.seed, self.calls = seed, 0

    # ------------------------------------------------------------------ sampling

    def sample(self, prompts: Sequence[Sequence[int]], n: int = 1,
               params: RequestParams | Sequence[RequestParams] | None = None,
               seeds: Sequence[int | None] | None = None) -> list[SampleResult]:
        params = params if params is not None else RequestParams()
        per = list(params) if isinstance(params, Sequence) else [params] * len(prompts)
        seeds = list(seeds) if seeds is not None else [None] * len(prompts)
        if len(per) != len(prompts) or len(seeds) != len(prompts):
            raise ValueError(f"sample: {len(prompts)} prompts but {len(per)} params and {len(seeds)} seeds")
        results = [SampleResult(i, [], self._check(prompt, n, p, s))
                   for i, (prompt, p, s) in enumerate(zip(prompts, per, seeds))]
        self.calls += 1
        for greedy in (True, False):
            jobs = [(i, self._request(prompts[i], per[i], seeds[i], j)) for i, r in enumerate(results)
                    if r.error is None and (per[i].temperature == 0) == greedy for j in range(n)]
            if not jobs:
                continue
            outs = generate(self.model, [req for _, req in jobs], temperature=self.temperature, greedy=greedy,
                            seed=self.seed * 1_000_003 + self.calls, max_num_seqs=self.max_num_seqs,
                            max_num_batched_tokens=self.max_num_batched_tokens)
            for (i, _), out in zip(jobs, outs):
                results[i].completions.append(Completion(out.token_ids, out.logprobs, out.finish_reason))
        return results

    def _check(self, prompt, n, p: RequestParams, seed) -> str | None:
        # engine.Sampler's own request checks (they read temperature, vocab_size, max_model_len)
        err = Sampler._check(self, prompt, n, p)
        if err is None and seed is not None and (not isinstance(seed, int) or isinstance(seed, bool) or seed < 0):
            err = f"seed must be None or an int >= 0, got {seed!r}"
        if err is None and p.temperature != 0 and (p.top_k not in (0, -1) or p.top_p != 1.0):
            err = "OracleSampler samples the full distribution only (top_k 0, top_p 1)"
        return err

    def _request(self, prompt, p: RequestParams, seed: int | None, j: int) -> GenerationRequest:
        # vLLM's length rule: a sequence ends at max_model_len ("length")
        return GenerationRequest(list(prompt), max_new_tokens=min(p.max_tokens, self.max_model_len - len(prompt)),
                                 seed=None if seed is None else seed + j,
                                 stop_token_ids=(*p.stop_token_ids, *(() if p.ignore_eos else self.eos)))

    # ------------------------------------------------------------------ weights

    @torch.no_grad()
    def update_weights(self, named_tensors: Mapping[str, torch.Tensor] | Iterable[tuple[str, torch.Tensor]],
                       bucket_bytes: int = 64 << 20) -> float:
        """Copy HF-named tensors into the model after checking all of them (names, shapes,
        dtypes, duplicates): ValueError and nothing changed, or every tensor copied."""
        t0 = time.perf_counter()
        items = list(named_tensors.items() if isinstance(named_tensors, Mapping) else named_tensors)
        names = [name for name, _ in items]
        params = dict(self.model.named_parameters())
        errors = [f"duplicate name {n!r}" for n in sorted({n for n in names if names.count(n) > 1})]
        errors += check_manifest(params, {n: [list(t.shape), dtype_name(t.dtype)] for n, t in items})
        if errors:
            raise ValueError("update_weights: rejected, weights unchanged: " + "; ".join(errors[:10]))
        for name, t in items:
            params[name].copy_(t)
        return time.perf_counter() - t0

    def get_weights(self, names: Sequence[str]) -> dict[str, torch.Tensor]:
        params = dict(self.model.named_parameters())
        return {n: params[n].detach().cpu().clone() for n in names}

    def shutdown(self) -> None:
        self.model = None


def _eos_ids(model_dir, config) -> tuple[int, ...]:
    """The ids vLLM stops at: config.json's eos_token_id and generation_config.json's."""
    ids = {config.eos_token_id} if isinstance(config.eos_token_id, int) else set(config.eos_token_id or ())
    gen = pathlib.Path(model_dir) / GENERATION_CONFIG
    if gen.is_file():
        eos = json.loads(gen.read_text()).get("eos_token_id")
        ids |= {eos} if isinstance(eos, int) else set(eos or ())
    return tuple(sorted(ids))
