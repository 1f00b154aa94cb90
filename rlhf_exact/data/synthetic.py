"""A verifiable token-level task that a tiny random-init Qwen3 learns with GRPO in a
few dozen steps: the embedded CPU recipe's task and the learning smoke test.

Task: emit tokens from a hidden target set. A row is

    {"prompt_ids": [key, f_1, ..., f_{L-1}], "answer": [sorted target ids]}

and the reward (rlhf_exact.rewards.synthetic) is the fraction of generated tokens in
`answer`. With `num_target_sets = K > 1` there are K disjoint target sets and the
prompt's first token (one of K key ids) says which one applies, so the policy has to
read the prompt; with K = 1 (default) it is a pure bandit over the vocabulary, the
easiest signal to learn. Filler tokens are drawn from ids that are neither keys nor
targets, so copying the prompt earns nothing. A random-init model starts near
num_targets / vocab (16 / 512 = 3% with the defaults).

Ids, not text: the task draws from [0, vocab_size) minus `reserved_ids` (the tiny
tokenizer's special tokens <|endoftext|>, <|im_start|>, <|im_end|> are ids 0, 1, 2;
see rlhf_exact/models/tiny.py), so it does not depend on what the BPE merges learned.

    task = SyntheticTask(seed=0)
    rows = task.rows(64)          # deterministic for (task fields, n)
"""
from __future__ import annotations

import dataclasses
import random


@dataclasses.dataclass(frozen=True)
class SyntheticTask:
    seed: int = 0  # fixes the target sets, the keys and the prompts
    vocab_size: int = 512  # ids are drawn from [0, vocab_size)
    num_targets: int = 16  # size of each target set
    prompt_len: int = 8  # tokens per prompt, key included (>= 1)
    num_target_sets: int = 1  # K: disjoint target sets, chosen per prompt by its first token
    reserved_ids: tuple[int, ...] = (0, 1, 2)  # never used (special tokens)
    # Derived in __post_init__ from the fields above:
    target_sets: tuple[tuple[int, ...], ...] = dataclasses.field(init=False, repr=False)  # K sorted id tuples
    keys: tuple[int, ...] = dataclasses.field(init=False, repr=False)  # K key ids (prompt's first token)
    filler_ids: tuple[int, ...] = dataclasses.field(init=False, repr=False)  # ids for the rest of a prompt

    def __post_init__(self) -> None:
        free = self.vocab_size - len(set(self.reserved_ids))
        need = self.num_target_sets * (self.num_targets + 1) + 1  # targets, keys, >= 1 filler id
        if self.num_targets < 1 or self.num_target_sets < 1 or self.prompt_len < 1:
            raise ValueError(f"SyntheticTask: num_targets={self.num_targets}, num_target_sets="
                             f"{self.num_target_sets}, prompt_len={self.prompt_len} must all be >= 1")
        if free < need:
            raise ValueError(f"SyntheticTask: vocab_size={self.vocab_size} leaves {free} usable ids, "
                             f"need {need} for {self.num_target_sets} target set(s) of {self.num_targets}")
        ids = [i for i in range(self.vocab_size) if i not in set(self.reserved_ids)]
        random.Random(self.seed).shuffle(ids)
        n, k = self.num_targets, self.num_target_sets
        object.__setattr__(self, "target_sets", tuple(tuple(sorted(ids[i * n:(i + 1) * n])) for i in range(k)))
        object.__setattr__(self, "keys", tuple(ids[k * n:k * n + k]))
        object.__setattr__(self, "filler_ids", tuple(sorted(ids[k * n + k:])))

    def rows(self, n: int, offset: int = 0) -> list[dict]:
        """Rows offset .. offset+n-1 (row i depends only on the task and i, so the train
        and eval splits can be disjoint ranges)."""
        if n < 0 or offset < 0:
            raise ValueError(f"SyntheticTask.rows: n={n} and offset={offset} must be >= 0")
        out = []
        for i in range(offset, offset + n):
            rng = random.Random(f"{self.seed}/{i}")
            s = rng.randrange(self.num_target_sets)
            filler = [rng.choice(self.filler_ids) for _ in range(self.prompt_len - 1)]
            out.append({"prompt_ids": [self.keys[s]] + filler, "answer": list(self.target_sets[s])})
        return out
