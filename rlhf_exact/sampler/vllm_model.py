"""The project's Qwen3 inside vLLM: `ExactQwen3ForCausalLM`, registered by the plugin
for `Qwen3ForCausalLM` checkpoints.

It IS `rlhf_exact.models.qwen3.Qwen3ForCausalLM` (a subclass: the same modules, the
same parameters under the same Hugging Face names, the same kernels and rounding
points) with vLLM's model interface on top:

- `__init__(*, vllm_config, prefix)`: builds our modules in the engine's dtype, plus
  one vLLM `Attention` layer per decoder layer, created with
  `attn_backend=ExactAttentionBackend`. Those layers only make vLLM allocate, bind and
  schedule the paged KV cache (and build our metadata); they hold no parameters.
- `forward(input_ids [T], positions [T])` -> final-normed hidden states [T, H]: our
  `Qwen3Model.forward` with a `PagedContext` whose per-layer caches are strided views
  of vLLM's KV tensors (`vllm_attention.kv_cache_views`) and whose block table,
  boundaries, lengths and slots come from `ExactMetadataBuilder`. Each layer writes its
  K/V into the cache, then runs `paged_attention`: the generation path of the model.
- `compute_logits(hidden [R, H])` -> [R, V] fp32 = `exact_kernels.log_softmax(
  lm_head(hidden), T)`, NOT logits. With the engine argument
  `logprobs_mode="raw_logits"` vLLM reports these values unchanged (a gather) as the
  sampled token's logprob, and samples from softmax(row) = softmax(logits / T)
  (requests must use vLLM temperature 1.0; see engine.py).
- q/k/v and gate/up run as one linear each (`fuse_projections`): the HF-named
  parameters are views of the stacked weights, so loads and updates by name reach them.
- `load_weights(weights)`: the HF-named tensors of the checkpoint, validated whole
  (names, shapes) against `hf_io.expected_tensors`, cast to the engine dtype as
  `hf_io.load_model` casts them for the trainer. (Not `load_state_dict_into`: the
  vLLM Attention layers carry scale buffers that are in state_dict.)

The temperature T is fixed per engine: `LLM(..., additional_config={"rlhf_exact":
{"temperature": T}})` (default 1.0).

Parity chain (tests/sampler/test_parity.py): our log_softmax row gathered at token t
== token_logprobs(logits, t) (tests/sampler/test_logprob_function.py); the sampler's
hidden rows == the trainer's (paged == varlen attention, batch-invariant linears and
norms: tests/kernels, tests/models); so the sampler's logprob == the trainer's.
"""
from __future__ import annotations

from collections.abc import Iterable

import torch
import torch.nn.functional as F
from torch import nn

from exact_kernels.logprobs import log_softmax
from rlhf_exact.models.hf_io import expected_tensors
from rlhf_exact.models.qwen3 import PagedContext, Qwen3Config, Qwen3ForCausalLM, VarlenContext
from rlhf_exact.sampler.vllm_attention import ExactAttentionBackend, ExactAttentionMetadata, kv_cache_views

from vllm.config import VllmConfig
from vllm.forward_context import get_forward_context, is_forward_context_available
from vllm.model_executor.layers.attention import Attention

CONFIG_KEY = "rlhf_exact"  # key of our settings in vLLM's additional_config


def engine_temperature(vllm_config: VllmConfig) -> float:
    """The per-engine temperature from additional_config["rlhf_exact"]["temperature"]."""
    extra = (vllm_config.additional_config or {}).get(CONFIG_KEY, {}) or {}
    t = float(extra.get("temperature", 1.0))
    if not t > 0 or t != t or t == float("inf"):
        raise ValueError(f"additional_config[{CONFIG_KEY!r}]['temperature'] must be finite and > 0, got {t!r}")
    return t


class ExactQwen3ForCausalLM(Qwen3ForCausalLM):
    """Our Qwen3ForCausalLM behind vLLM's model interface (module docstring)."""

    def __init__(self, *, vllm_config: VllmConfig, prefix: str = ""):
        hf = vllm_config.model_config.hf_config
        config = Qwen3Config.from_hf_dict(hf.to_dict(), source=f"{vllm_config.model_config.model}/config.json")
        dtype = vllm_config.model_config.dtype
        super().__init__(config, device=vllm_config.device_config.device, dtype=dtype)
        self.fuse_projections()  # 4 matmuls per layer instead of 7, the same bits (Qwen3ForCausalLM)
        self.temperature = engine_temperature(vllm_config)
        # KV holders: named like vLLM's Qwen3 layers (bind_kv_cache reads the layer index
        # from the name); kept outside the HF-named tree and parameter-free.
        self.attn_layers = nn.ModuleList(
            Attention(config.num_attention_heads, config.head_dim, config.head_dim ** -0.5,
                      num_kv_heads=config.num_key_value_heads, cache_config=vllm_config.cache_config,
                      prefix=f"{prefix}model.layers.{i}.self_attn.attn", attn_backend=ExactAttentionBackend)
            for i in range(config.num_hidden_layers))
        assert not any(True for _ in self.attn_layers.parameters()), "vLLM Attention layers must hold no parameters"

    # ------------------------------------------------------------------ vLLM interface

    def embed_input_ids(self, input_ids: torch.Tensor) -> torch.Tensor:
        return F.embedding(input_ids, self.model.embed_tokens.weight)

    def _context(self, num_tokens: int) -> tuple[PagedContext | VarlenContext, int]:
        md = get_forward_context().attn_metadata if is_forward_context_available() else None
        if isinstance(md, dict):
            md = md.get(self.attn_layers[0].layer_name)
        if md is None:
            # vLLM's dummy/profiling run: no cache, no requests. Every token is its own
            # sequence so the run costs O(T) (its outputs are discarded).
            cu = torch.arange(num_tokens + 1, dtype=torch.int32, device=self.lm_head.weight.device)
            return VarlenContext(cu, 1), num_tokens
        assert isinstance(md, ExactAttentionMetadata), f"unexpected attention metadata {type(md).__name__}"
        head_dim = self.config.head_dim
        caches = [kv_cache_views(layer.kv_cache, head_dim) for layer in self.attn_layers]
        return (PagedContext(caches, md.block_table, md.cu_seqlens_q, md.seq_lens, md.slot_mapping, md.max_q_len,
                             md.tiles), md.num_tokens)

    def forward(self, input_ids: torch.Tensor | None, positions: torch.Tensor, intermediate_tensors=None,
                inputs_embeds: torch.Tensor | None = None, **kwargs) -> torch.Tensor:
        """input_ids [T], positions [T] (packed new tokens of the step) -> hidden [T, H].

        The trainer-side forward is the parent's `Qwen3ForCausalLM.forward`; this one is
        what vLLM calls. Rows past the step's real tokens (padding) come back as zeros."""
        if intermediate_tensors is not None or inputs_embeds is not None:
            raise NotImplementedError("ExactQwen3ForCausalLM: pipeline parallelism and inputs_embeds are not supported")
        total = input_ids.shape[0]
        ctx, n = self._context(total)
        hidden = self.model(input_ids[:n], positions[:n], ctx)
        if n == total:
            return hidden
        out = hidden.new_zeros(total, hidden.shape[1])
        out[:n] = hidden
        return out

    def compute_logits(self, hidden_states: torch.Tensor) -> torch.Tensor:
        """hidden [R, H] -> fp32 [R, V]: log_softmax(lm_head(hidden) / T), our kernels.
        (The trainer computes token_logprobs(lm_head(hidden), ids, T): the same bits.)"""
        return log_softmax(self.lm_head(hidden_states), self.temperature)

    @torch.no_grad()
    def load_weights(self, weights: Iterable[tuple[str, torch.Tensor]]) -> set[str]:
        """HF-named checkpoint tensors -> parameters, cast to the engine dtype as
        `hf_io.load_model` casts them for the trainer. The complete set of names and
        every shape are checked against `hf_io.expected_tensors` before anything is
        copied. Returns the parameter names loaded (vLLM checks none is left out)."""
        state = dict(weights)
        if self.config.tie_word_embeddings and "lm_head.weight" in state:
            # as read_state_dict: a tied checkpoint may carry lm_head.weight equal to the embedding
            head = state.pop("lm_head.weight")
            emb = state.get("model.embed_tokens.weight")
            if emb is None or not torch.equal(head, emb):
                raise ValueError("checkpoint: tied embeddings but lm_head.weight differs from "
                                 "model.embed_tokens.weight")
        expected = expected_tensors(self.config)
        missing, extra = sorted(set(expected) - set(state)), sorted(set(state) - set(expected))
        if missing or extra:
            raise ValueError(f"checkpoint: missing {missing[:3]}, unexpected {extra[:3]}")
        for name, t in state.items():
            if tuple(t.shape) != expected[name]:
                raise ValueError(f"checkpoint: tensor {name!r} has shape {tuple(t.shape)}, expected {expected[name]}")
        params = dict(self.named_parameters())
        for name, t in state.items():
            params[name].copy_(t.to(params[name].dtype))
        if not self.projections_fused():
            raise RuntimeError("ExactQwen3ForCausalLM: a q/k/v or gate/up parameter no longer views its fused "
                               "tensor (a parameter was replaced, not copied into): the forward would use old weights")
        return set(params)
