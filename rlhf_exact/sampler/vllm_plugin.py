"""vLLM general plugin of rlhf_exact: makes vLLM run the project's Qwen3 and attention.

Installed with the package as the entry point

    [project.entry-points."vllm.general_plugins"]
    rlhf_exact = "rlhf_exact.sampler.vllm_plugin:register"

vLLM calls `register()` in every process it starts (the driver, the engine core, each
worker, the model-inspection subprocess) before it builds a model. An entry point is
the only mechanism that reaches the spawned workers: a `register_model` call in a
script's main guard does not (docs/vllm_plugin_notes.md, section 1). `VLLM_PLUGINS=none`
turns it off, which is how the stock path is run for comparison (scripts/seed_experiments.py).

What it registers (lazily, by "module:Class" strings, so the driver process never
imports the model, the kernels or torch-heavy code for it):
- `Qwen3ForCausalLM` -> `rlhf_exact.sampler.vllm_model:ExactQwen3ForCausalLM`
  (overrides vLLM's built-in Qwen3 for every Qwen3 checkpoint while the plugin is on);
- `ExactQwen3ForCausalLM` -> the same, for `hf_overrides={"architectures": [...]}`;
- the attention backend -> `ExactAttentionBackend`, which the model passes to its
  `Attention` layers explicitly (vllm_attention.py), under the enum member `EXACT_ATTN`
  (vLLM 0.32) or `CUSTOM` (0.26): vllm_compat.py.
"""
from __future__ import annotations

MODEL_CLASS = "rlhf_exact.sampler.vllm_model:ExactQwen3ForCausalLM"
BACKEND_CLASS = "rlhf_exact.sampler.vllm_attention.ExactAttentionBackend"
ARCHITECTURES = ("Qwen3ForCausalLM", "ExactQwen3ForCausalLM")


def register() -> None:
    """Idempotent: safe to call any number of times in one process."""
    from vllm import ModelRegistry

    from .vllm_compat import register_attention_backend

    for arch in ARCHITECTURES:  # re-registering the same string is harmless
        ModelRegistry.register_model(arch, MODEL_CLASS)
    register_attention_backend(BACKEND_CLASS)
