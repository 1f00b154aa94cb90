"""Tiny Qwen3 models for the embedded CPU default and the tests: a Hugging Face model
directory (config.json, generation_config.json, model.safetensors, tokenizer) written
from scratch, with no download.

The tokenizer is a byte-level BPE trained locally with the `tokenizers` library on a
few KB of generated arithmetic and word-problem text (digits, + - * /, =, "Question:
... Answer: ..."), saved as tokenizer.json + tokenizer_config.json so transformers'
AutoTokenizer and vLLM load it. The weights are a seeded random init.

    from rlhf_exact.models.tiny import make_tiny_model_dir
    make_tiny_model_dir("/tmp/tiny-qwen3")            # 4 layers, hidden 128, vocab 512
    make_tiny_reward_model_dir("/tmp/tiny-rm")        # the same decoder with a scalar head
    python -m rlhf_exact.models.tiny /tmp/tiny-qwen3  # the same from the shell

head_dim defaults to 32, the smallest vLLM's CPU attention supports.
"""
from __future__ import annotations

import functools
import json
import os
import pathlib
import random
import sys

import torch

from .hf_io import save_model
from .qwen3 import Qwen3Config, Qwen3ForCausalLM
from .reward import Qwen3RewardModel

SPECIAL_TOKENS = ("<|endoftext|>", "<|im_start|>", "<|im_end|>")
EOS, BOS_CHAT, EOS_CHAT = SPECIAL_TOKENS
# A Qwen-style chat template, minimal: role headers and <|im_end|> after each turn.
CHAT_TEMPLATE = (
    "{% for message in messages %}<|im_start|>{{ message['role'] }}\n{{ message['content'] }}<|im_end|>\n"
    "{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)


def tokenizer_corpus(seed: int = 0, n_lines: int = 600) -> list[str]:
    """Deterministic training text for the tiny tokenizer: arithmetic facts and short
    word problems, enough to learn merges for digits, operators and common words."""
    rng = random.Random(seed)
    names = ["Ann", "Ben", "Cara", "Dev", "Eli", "Fay", "Gus", "Hana"]
    things = ["apples", "books", "coins", "eggs", "pens", "stamps", "cookies", "marbles"]
    lines = []
    for i in range(n_lines):
        a, b = rng.randint(0, 99), rng.randint(1, 99)
        kind = i % 6
        if kind == 0:
            lines.append(f"{a}+{b}={a + b}")
        elif kind == 1:
            lines.append(f"{a + b}-{b}={a}")
        elif kind == 2:
            lines.append(f"{a % 13}*{b % 13}={(a % 13) * (b % 13)}")
        elif kind == 3:
            lines.append(f"{a * b}/{b}={a}")
        elif kind == 4:
            n, t = rng.choice(names), rng.choice(things)
            lines.append(f"Question: {n} has {a} {t} and buys {b} more. How many {t} does {n} have now? "
                         f"Answer: {a} + {b} = {a + b}. The answer is {a + b}.")
        else:
            n, t = rng.choice(names), rng.choice(things)
            lines.append(f"Question: {n} had {a + b} {t} and gave away {b}. How many are left? "
                         f"Answer: {a + b} - {b} = {a}. #### {a}")
    return lines


@functools.lru_cache(maxsize=4)
def train_tokenizer(vocab_size: int = 512, seed: int = 0):
    """A byte-level BPE `tokenizers.Tokenizer` with at most `vocab_size` tokens (the
    special tokens first: ids 0, 1, 2). Cached: callers only read and save it."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=list(SPECIAL_TOKENS),
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False)
    tok.train_from_iterator(tokenizer_corpus(seed), trainer=trainer)
    return tok


def write_tokenizer(tok, path: pathlib.Path) -> None:
    """tokenizer.json + tokenizer_config.json in the layout AutoTokenizer loads."""
    tok.save(str(path / "tokenizer.json"))
    added = {str(tok.token_to_id(t)): {"content": t, "special": True, "lstrip": False, "rstrip": False,
                                       "normalized": False, "single_word": False} for t in SPECIAL_TOKENS}
    cfg = {
        "tokenizer_class": "PreTrainedTokenizerFast",
        "added_tokens_decoder": added,
        "bos_token": None,
        "eos_token": EOS_CHAT,
        "pad_token": EOS,
        "unk_token": None,
        "model_max_length": 4096,
        "clean_up_tokenization_spaces": False,
        "chat_template": CHAT_TEMPLATE,
    }
    (path / "tokenizer_config.json").write_text(json.dumps(cfg, indent=2) + "\n")


def tiny_config(vocab_size: int = 512, hidden_size: int = 128, intermediate_size: int = 384,
                num_hidden_layers: int = 4, num_attention_heads: int = 4, num_key_value_heads: int = 2,
                head_dim: int = 32, tie_word_embeddings: bool = True, max_position_embeddings: int = 2048,
                rope_theta: float = 10_000.0, eos_token_id: int = 2, pad_token_id: int = 0) -> Qwen3Config:
    """Config of the tiny model (defaults: about 1.3M parameters)."""
    return Qwen3Config(vocab_size=vocab_size, hidden_size=hidden_size, intermediate_size=intermediate_size,
                       num_hidden_layers=num_hidden_layers, num_attention_heads=num_attention_heads,
                       num_key_value_heads=num_key_value_heads, head_dim=head_dim, rms_norm_eps=1e-6,
                       rope_theta=rope_theta, max_position_embeddings=max_position_embeddings,
                       tie_word_embeddings=tie_word_embeddings, bos_token_id=None,
                       eos_token_id=eos_token_id, pad_token_id=pad_token_id)


def make_tiny_model_dir(path: str | os.PathLike, *, seed: int = 0, dtype: torch.dtype = torch.bfloat16,
                        std: float = 0.02, norm_noise: float = 0.0, **config_kwargs) -> pathlib.Path:
    """Write a tiny Qwen3 HF model directory at `path` (replaced if it exists).

    config_kwargs override `tiny_config` (e.g. num_hidden_layers=2,
    tie_word_embeddings=False). std / norm_noise: see Qwen3ForCausalLM.init_weights."""
    vocab_size = config_kwargs.get("vocab_size", 512)
    tok = train_tokenizer(vocab_size, seed=0)
    eos, pad = tok.token_to_id(EOS_CHAT), tok.token_to_id(EOS)
    config = tiny_config(eos_token_id=eos, pad_token_id=pad, **config_kwargs)
    model = Qwen3ForCausalLM(config, dtype=torch.float32)
    model.init_weights(seed=seed, std=std, norm_noise=norm_noise)

    gen = {"eos_token_id": [eos, tok.token_to_id(EOS)], "pad_token_id": pad}
    return _save_with_tokenizer(model, path, tok, dtype=dtype, generation_config=gen)


def make_tiny_reward_model_dir(path: str | os.PathLike, *, seed: int = 0, dtype: torch.dtype = torch.bfloat16,
                               std: float = 0.02, norm_noise: float = 0.0, **config_kwargs) -> pathlib.Path:
    """Write a tiny Qwen3ForSequenceClassification directory (num_labels=1, pad_token_id
    <|endoftext|>) at `path`: the tiny decoder and tokenizer of make_tiny_model_dir with a
    scalar head (models/reward.py), seeded random init. config_kwargs override
    `tiny_config` (tie_word_embeddings is false: there is no lm_head to tie)."""
    vocab_size = config_kwargs.get("vocab_size", 512)
    tok = train_tokenizer(vocab_size, seed=0)
    config_kwargs.setdefault("tie_word_embeddings", False)
    config = tiny_config(eos_token_id=tok.token_to_id(EOS_CHAT), pad_token_id=tok.token_to_id(EOS), **config_kwargs)
    model = Qwen3RewardModel(config, dtype=torch.float32)
    model.init_weights(seed=seed, std=std, norm_noise=norm_noise)

    return _save_with_tokenizer(model, path, tok, dtype=dtype)


def _save_with_tokenizer(model, path: str | os.PathLike, tok, **save_kwargs) -> pathlib.Path:
    """save_model(model, path) with the trained tokenizer's files, written to a staging
    folder beside `path` first (save_model copies a tokenizer from a directory)."""
    staging = pathlib.Path(path).with_name(pathlib.Path(path).name + ".tokenizer-staging")
    staging.mkdir(parents=True, exist_ok=True)
    try:
        write_tokenizer(tok, staging)
        return save_model(model, path, tokenizer_from=staging, **save_kwargs)
    finally:
        for f in staging.iterdir():
            f.unlink()
        staging.rmdir()


if __name__ == "__main__":
    if len(sys.argv) != 2:
        sys.exit("usage: python -m rlhf_exact.models.tiny OUTPUT_DIR")
    print(make_tiny_model_dir(sys.argv[1]))
