"""Qwen3 reward model: the decoder of qwen3.py with a scalar head, on the same op table,
in the Hugging Face `Qwen3ForSequenceClassification` format (num_labels=1).

Why a model of our own rather than transformers': a reward model on stock kernels gives
a sequence a different score depending on the other sequences of its batch (the GEMM
and attention reductions change with the batch shape), so a rerun or a resume changes
the advantages computed from it. Here every op is the exact kernels' (models/ops.py),
so a score is a function of the sequence alone, bit for bit
(tests/models/test_reward_model.py).

The score of a sequence, as transformers defines it: `score.weight` [1, H] (no bias)
applied to the final-normed hidden state of the RIGHTMOST token that is not
`pad_token_id` (for a sequence that is all padding, its first token); with no
pad_token_id in config.json, the last token. Our inputs are packed (no padding between
sequences), so this is the last token unless the sequence itself ends in pad tokens,
and then the same token HF picks. The head is applied to those rows only; the exact
linear is batch-invariant in its rows, so this equals HF's "score every token, then
gather" row for row. Scores come out in the parameter dtype, like HF's logits.

Departures from HF are the decoder's (qwen3.py rounding points 4 and 7), so in bf16
scores agree with transformers to about 5e-2, in fp32 to about 1e-3.

    from rlhf_exact.models.reward import load_reward_model, score_sequences
    model, config = load_reward_model("path/to/rm", dtype=torch.bfloat16)
    scores = score_sequences(model, [[1, 2, 3], [4, 5]])   # [2] fp32
    save_model(model, "out/rm", architecture=REWARD_ARCHITECTURE)   # hf_io
"""
from __future__ import annotations

import os
from collections.abc import Sequence
from typing import Any

import torch
from torch import nn

from .ops import EXACT, Ops
from .qwen3 import Linear, Qwen3Config, Qwen3ForCausalLM, Qwen3Model, VarlenContext, pack_sequences

REWARD_ARCHITECTURE = "Qwen3ForSequenceClassification"


def label_config() -> dict[str, Any]:
    """The config.json keys that make transformers build one label (num_labels=1)."""
    return {"id2label": {"0": "LABEL_0"}, "label2id": {"LABEL_0": 0}}


def check_num_labels(d: dict[str, Any], source: str) -> None:
    """ValueError naming `source` and the key unless config.json describes one label.
    transformers takes num_labels from id2label when present, else from num_labels,
    else 2."""
    if d.get("id2label"):
        n, key = len(d["id2label"]), "id2label"
    elif "num_labels" in d:
        n, key = d["num_labels"], "num_labels"
    else:
        n, key = 2, "id2label"
    if n != 1:
        raise ValueError(f"{source}: key {key!r} gives num_labels={n} (missing: transformers' default 2); "
                         f"a reward model needs num_labels=1")


def score_indices(input_ids: torch.Tensor, cu_seqlens: torch.Tensor, pad_token_id: int | None) -> torch.Tensor:
    """The row each packed sequence is scored at, as transformers picks it.

    input_ids [T], cu_seqlens [B+1] -> [B] int64: per sequence, the rightmost token not
    equal to pad_token_id (a sequence of pad tokens only: its first token); with
    pad_token_id None, its last token."""
    starts, ends = cu_seqlens[:-1].long(), cu_seqlens[1:].long()
    if pad_token_id is None:
        return ends - 1
    seg = torch.repeat_interleave(torch.arange(starts.numel(), device=input_ids.device), ends - starts)
    rows = torch.arange(input_ids.numel(), device=input_ids.device)
    cand = torch.where(input_ids != pad_token_id, rows, starts[seg])
    return torch.full_like(starts, -1).scatter_reduce(0, seg, cand, "amax", include_self=False)


class Qwen3RewardModel(nn.Module):
    """Qwen3 decoder + scalar head over packed token streams; state-dict names are HF
    Qwen3ForSequenceClassification's (model.*, score.weight).

    `forward(input_ids [T], positions [T], ctx: VarlenContext)` returns the scores [B]
    (parameter dtype) of the B packed sequences. `ops`: the op table (models/ops.py)."""

    def __init__(self, config: Qwen3Config, device=None, dtype=None, activation_checkpointing: bool = False,
                 ops: Ops = EXACT):
        super().__init__()
        self.config, self.ops = config, ops
        self.model = Qwen3Model(config, device=device, dtype=dtype, ops=ops)
        self.score = Linear(config.hidden_size, 1, device=device, dtype=dtype, ops=ops)
        self.set_activation_checkpointing(activation_checkpointing)

    set_activation_checkpointing = Qwen3ForCausalLM.set_activation_checkpointing
    init_weights = Qwen3ForCausalLM.init_weights

    def tie_weights(self) -> None:
        """Nothing to tie: a reward model has no lm_head."""

    def forward(self, input_ids: torch.Tensor, positions: torch.Tensor, ctx: VarlenContext) -> torch.Tensor:
        hidden = self.model(input_ids, positions, ctx)
        rows = score_indices(input_ids, ctx.cu_seqlens, self.config.pad_token_id)
        return self.score(hidden[rows]).squeeze(-1).clone()  # not a view of the head output: FSDP2 hooks it


@torch.no_grad()
def score_sequences(model: nn.Module, sequences: Sequence[Sequence[int]]) -> torch.Tensor:
    """Scores [B] fp32 (of the parameter-dtype values) of token-id sequences, packed into
    one forward on the model's device."""
    device = next(model.parameters()).device
    batch = pack_sequences(sequences).to(device)
    return model(batch.input_ids, batch.positions, batch.context).float().cpu()


def load_reward_model(path: str | os.PathLike, dtype: torch.dtype = torch.bfloat16,
                      device: str | torch.device = "cpu", ops: Ops = EXACT) -> tuple[Qwen3RewardModel, Qwen3Config]:
    """A Qwen3ForSequenceClassification directory (num_labels=1) -> (model, config);
    ValueError naming the file and key for anything else (hf_io.load_model)."""
    from .hf_io import load_model

    return load_model(path, dtype=dtype, device=device, ops=ops, architecture=REWARD_ARCHITECTURE)
