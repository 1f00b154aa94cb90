"""Models on the batch-invariant kernel library.

    qwen3.py       Qwen3 dense: config, modules, varlen (training) and paged (generation)
                   attention contexts, packed batches, trainer-side logprobs
    ops.py         the op table the model computes with (exact kernels or stock torch) and
                   `select_kernels(kind)`, the process's one kernel switch
    hf_io.py       Hugging Face model directory load/save (safetensors only)
    reward.py      Qwen3 reward model (scalar head), HF Qwen3ForSequenceClassification format
    tiny.py        tiny Qwen3 model + locally trained tokenizer, for CPU runs and tests

Submodules are imported on use; `from rlhf_exact.models import Qwen3ForCausalLM` works.
"""
from rlhf_exact.imports import lazy_exports

__all__, __getattr__ = lazy_exports(__name__, {
    "qwen3": ("Qwen3Config", "Qwen3ForCausalLM", "VarlenContext", "PagedContext", "PackedBatch", "pack_sequences",
              "packed_logprobs"),
    "ops": ("Ops", "select_kernels"),
    "hf_io": ("load_model", "save_model", "read_config", "read_state_dict"),
    "reward": ("Qwen3RewardModel", "load_reward_model", "score_sequences"),
    "tiny": ("make_tiny_model_dir", "make_tiny_reward_model_dir"),
})
