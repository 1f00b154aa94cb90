"""A small paged generation loop over `Qwen3ForCausalLM`'s paged path: the test
oracle for the parity chain (tests/models/test_parity.py) and the sampler of
tests/trainer/multi_gpu_check.py, which runs where vLLM is not installed. The product's
sampler is vLLM with the exact plugin (rlhf_exact/sampler/); oracle_sampler.py puts this
loop behind the same interface (sampler.backend), so the real loop can run on it.

Per step, in the manner of vLLM's v1 scheduler:
  * requests join when their `arrival` step comes and a sequence slot is free
    (`max_num_seqs`) and the worst-case KV blocks of every running sequence still fit;
  * running sequences each take their next tokens, within a token budget
    (`max_num_batched_tokens`): one token in decode, a chunk of the prompt in prefill
    (so prompts are prefilled in chunks, mixed with other sequences' decodes);
  * KV blocks (block_size 16) are taken from a FIFO free list as a sequence grows and
    returned when it finishes (so blocks are reused, with stale contents, and block
    tables are not contiguous);
  * a sequence whose step covered its last known token gets its next token: greedy
    argmax of the logits, or Gumbel-max with its own seeded CPU generator (the
    choice does not depend on the batch); it leaves on a stop token or max_new_tokens.

Logprobs: logits = linear(hidden of the selected rows, lm_head), then ONE call of
`exact_kernels.token_logprobs(logits, targets, temperature)`: the trainer's function
on the same rows. Each generated token's logprob is taken at the step that sampled it;
with `prompt_logprobs=True` the prompt tokens' logprobs come from the prefill chunks.

    results = generate(model, [GenerationRequest(prompt=[...], max_new_tokens=8)], temperature=1.0)
"""
from __future__ import annotations

import collections
import dataclasses
import math
from collections.abc import Callable, Sequence

import torch

from exact_kernels.logprobs import token_logprobs

from rlhf_exact.models.qwen3 import PagedContext, Qwen3ForCausalLM

BLOCK_SIZE = 16


@dataclasses.dataclass
class GenerationRequest:
    prompt: Sequence[int]  # token ids, at least one
    max_new_tokens: int  # >= 1
    arrival: int = 0  # the step at which the request may join
    seed: int | None = None  # sampling seed (None: derived from generate's seed and the request index)
    stop_token_ids: Sequence[int] = ()  # finishing tokens (kept in the output)


@dataclasses.dataclass
class GenerationResult:
    token_ids: list[int]  # generated tokens
    logprobs: torch.Tensor  # [len(token_ids)] fp32: logprob of each generated token at `temperature`
    prompt_logprobs: torch.Tensor | None  # [len(prompt) - 1] fp32: logprob of prompt[i + 1], or None
    finish_reason: str  # "stop" or "length"
    batch_sizes: list[int]  # number of sequences in the step that produced each generated token


class BlockAllocator:
    """KV-cache blocks handed out from a FIFO free list."""

    def __init__(self, num_blocks: int):
        self.num_blocks = num_blocks
        self._free = collections.deque(range(num_blocks))

    @property
    def num_free(self) -> int:
        return len(self._free)

    def allocate(self) -> int:
        if not self._free:
            raise RuntimeError("BlockAllocator: out of KV blocks")
        return self._free.popleft()

    def free(self, blocks: Sequence[int]) -> None:
        self._free.extend(blocks)


@dataclasses.dataclass
class _Seq:
    index: int
    req: GenerationRequest
    gen: torch.Generator
    tokens: list[int]  # prompt + generated
    blocks: list[int] = dataclasses.field(default_factory=list)
    num_computed: int = 0  # tokens whose K/V are in the cache
    logprobs: list[torch.Tensor] = dataclasses.field(default_factory=list)
    prompt_logprobs: list[torch.Tensor] = dataclasses.field(default_factory=list)
    batch_sizes: list[int] = dataclasses.field(default_factory=list)
    finish_reason: str | None = None

    @property
    def num_prompt(self) -> int:
        return len(self.req.prompt)

    def max_blocks(self, block_size: int) -> int:
        return math.ceil((self.num_prompt + self.req.max_new_tokens) / block_size)


def _sample(logits_row: torch.Tensor, temperature: float, greedy: bool, gen: torch.Generator) -> int:
    """logits_row [V] -> token id. Greedy: argmax (first index on ties). Otherwise
    Gumbel-max over logits / temperature with the sequence's own generator."""
    if greedy:
        return int(torch.argmax(logits_row))
    u = torch.rand(logits_row.shape[0], generator=gen, dtype=torch.float64).clamp_(min=1e-300)
    gumbel = -torch.log(-torch.log(u))
    return int(torch.argmax(logits_row.double().cpu() / temperature + gumbel))


@torch.no_grad()
def generate(model: Qwen3ForCausalLM, requests: Sequence[GenerationRequest], *, temperature: float = 1.0,
             greedy: bool = True, seed: int = 0, max_num_seqs: int = 8, max_num_batched_tokens: int = 64,
             block_size: int = BLOCK_SIZE, num_blocks: int | None = None, prompt_logprobs: bool = False,
             on_step: Callable[[int, list[tuple[int, int]]], None] | None = None) -> list[GenerationResult]:
    """Generate for every request; results in request order.

    temperature: logprobs are of logits / temperature (and sampling uses it unless greedy).
    max_num_batched_tokens: token budget of one step (>= 1); prompts longer than the
      budget are prefilled over several steps.
    num_blocks: KV blocks per layer (default: every request's worst case at once).
    on_step(step, [(request index, tokens this step), ...]): observes the schedule.
    """
    if max_num_batched_tokens < 1 or max_num_seqs < 1 or temperature <= 0:
        raise ValueError("generate: max_num_batched_tokens, max_num_seqs and temperature must be positive")
    cfg = model.config
    p = next(model.parameters())
    device, dtype = p.device, p.dtype
    seqs = []
    for i, r in enumerate(requests):
        if len(r.prompt) < 1 or r.max_new_tokens < 1:
            raise ValueError(f"generate: request {i} needs a non-empty prompt and max_new_tokens >= 1")
        if len(r.prompt) + r.max_new_tokens > cfg.max_position_embeddings:
            raise ValueError(f"generate: request {i} is longer than max_position_embeddings")
        g = torch.Generator().manual_seed(r.seed if r.seed is not None else seed * 1_000_003 + i)
        seqs.append(_Seq(i, r, g, list(r.prompt)))
    if num_blocks is None:
        num_blocks = sum(s.max_blocks(block_size) for s in seqs)
    if any(s.max_blocks(block_size) > num_blocks for s in seqs):
        raise ValueError(f"generate: num_blocks={num_blocks} cannot hold the longest request")
    alloc = BlockAllocator(num_blocks)
    shape = (num_blocks, block_size, cfg.num_key_value_heads, cfg.head_dim)
    kv_caches = [(torch.zeros(shape, device=device, dtype=dtype), torch.zeros(shape, device=device, dtype=dtype))
                 for _ in range(cfg.num_hidden_layers)]

    waiting = collections.deque(sorted(seqs, key=lambda s: (s.req.arrival, s.index)))
    running: list[_Seq] = []
    reserved = 0  # worst-case blocks of the running sequences
    step = 0
    while waiting or running:
        while (waiting and waiting[0].req.arrival <= step and len(running) < max_num_seqs
               and reserved + waiting[0].max_blocks(block_size) <= num_blocks):
            s = waiting.popleft()
            reserved += s.max_blocks(block_size)
            running.append(s)

        budget, sched = max_num_batched_tokens, []
        for s in running:
            n = min(len(s.tokens) - s.num_computed, budget)
            if n > 0:
                sched.append((s, n))
                budget -= n
        if not sched:
            step += 1
            continue
        if on_step is not None:
            on_step(step, [(s.index, n) for s, n in sched])

        ids, pos, slots, cu, lens, rows = [], [], [], [0], [], []
        for s, n in sched:
            start = s.num_computed
            while len(s.blocks) * block_size < start + n:
                s.blocks.append(alloc.allocate())
            for j in range(start, start + n):
                ids.append(s.tokens[j])
                pos.append(j)
                slots.append(s.blocks[j // block_size] * block_size + j % block_size)
            cu.append(cu[-1] + n)
            lens.append(start + n)
        width = max(len(s.blocks) for s, _ in sched)
        table = torch.zeros(len(sched), width, dtype=torch.int32)
        for b, (s, _) in enumerate(sched):
            table[b, :len(s.blocks)] = torch.tensor(s.blocks, dtype=torch.int32)

        # Rows that need logits: prompt rows (if asked) and the last row of a sequence
        # whose step reaches its last known token (it samples).
        targets: list[int | None] = []
        owners: list[tuple[_Seq, str]] = []
        for b, (s, n) in enumerate(sched):
            for j in range(s.num_computed, s.num_computed + n):
                row = cu[b] + j - s.num_computed
                if prompt_logprobs and j + 1 < s.num_prompt:
                    rows.append(row), targets.append(s.tokens[j + 1]), owners.append((s, "prompt"))
                if j + 1 == len(s.tokens):
                    rows.append(row), targets.append(None), owners.append((s, "sample"))

        ctx = PagedContext(kv_caches=kv_caches, block_table=table.to(device),
                           cu_seqlens_q=torch.tensor(cu, dtype=torch.int32, device=device),
                           seq_lens=torch.tensor(lens, dtype=torch.int32, device=device),
                           slot_mapping=torch.tensor(slots, dtype=torch.int64, device=device))
        idx = torch.tensor(rows, dtype=torch.int64, device=device)
        logits = model(torch.tensor(ids, dtype=torch.int64, device=device),
                       torch.tensor(pos, dtype=torch.int64, device=device), ctx, logits_indices=idx)
        for s, n in sched:
            s.num_computed += n

        if not owners:
            step += 1
            continue
        for r, (s, kind) in enumerate(owners):
            if kind == "sample":
                targets[r] = _sample(logits[r], temperature, greedy, s.gen)
        lp = token_logprobs(logits, torch.tensor(targets, dtype=torch.int64, device=device),
                               temperature).cpu()
        for r, (s, kind) in enumerate(owners):
            if kind == "prompt":
                s.prompt_logprobs.append(lp[r])
                continue
            s.tokens.append(targets[r])
            s.logprobs.append(lp[r])
            s.batch_sizes.append(len(sched))
            n_gen = len(s.tokens) - s.num_prompt
            if targets[r] in s.req.stop_token_ids:
                s.finish_reason = "stop"
            elif n_gen >= s.req.max_new_tokens:
                s.finish_reason = "length"
        for s in [s for s, _ in sched if s.finish_reason]:
            running.remove(s)
            alloc.free(s.blocks)
            reserved -= s.max_blocks(block_size)
        step += 1

    return [GenerationResult(
        token_ids=s.tokens[s.num_prompt:], logprobs=torch.stack(s.logprobs),
        prompt_logprobs=(torch.stack(s.prompt_logprobs) if s.prompt_logprobs else torch.empty(0))
        if prompt_logprobs else None,
        finish_reason=s.finish_reason, batch_sizes=s.batch_sizes) for s in seqs]
