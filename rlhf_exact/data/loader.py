"""The loop's prompt rows from the config: load, phrase, apply the chat template,
tokenize, enforce the prompt length limit.

    rows = load_prompt_rows(cfg, tokenizer, chat_template=read_chat_template(model_dir))

Every row gets "prompt_ids" (the token ids the sampler receives) besides its
dataset fields (see prompts.py for "prompt", "answer", "row_id"):

  data.name=gsm8k:     load_prompts(train_files, prompt_key, answer_key, on_malformed),
                       text = format_gsm8k_prompt(prompt), then the chat template
                       (one user message, generation prompt added) when one is given,
                       then `tokenizer.encode`. "prompt_text" holds the final text.
  data.name=synthetic: SyntheticTask(seed=0, vocab = data.synthetic.vocab_size or the
                       tokenizer's size, reserved = its tokenizer's
                       special tokens) rows 0 .. synthetic.num_prompts-1. The task is
                       fixed (seed 0, like a dataset); run.seed only orders it.
                       Its shape comes from data.synthetic.{num_targets, prompt_len,
                       num_target_sets}.

A prompt longer than data.max_prompt_tokens is a malformed row (on_malformed).
`tokenizer` is a `tokenizers.Tokenizer` (the loop's; tokenizer.json of the model).

Chat templates are rendered as transformers does (sandboxed Jinja, trim_blocks,
lstrip_blocks, loop controls, `raise_exception`), without importing transformers.
"""
from __future__ import annotations

import json
import logging
import os
import pathlib

from .gsm8k import format_gsm8k_prompt
from .prompts import load_prompts
from .synthetic import SyntheticTask

logger = logging.getLogger(__name__)


def load_tokenizer(model_dir: str | os.PathLike):
    """The model directory's tokenizer.json as a `tokenizers.Tokenizer`."""
    from tokenizers import Tokenizer

    f = pathlib.Path(model_dir) / "tokenizer.json"
    if not f.exists():
        raise FileNotFoundError(f"{model_dir}: no tokenizer.json (a Hugging Face fast tokenizer is needed)")
    return Tokenizer.from_file(str(f))


def read_chat_template(model_dir: str | os.PathLike) -> str | None:
    """The model's chat template: chat_template.jinja, else tokenizer_config.json's
    "chat_template" (the "default" entry when it is a list of named templates), else None."""
    model_dir = pathlib.Path(model_dir)
    if (model_dir / "chat_template.jinja").is_file():
        return (model_dir / "chat_template.jinja").read_text()
    cfg_file = model_dir / "tokenizer_config.json"
    if not cfg_file.is_file():
        return None
    template = json.loads(cfg_file.read_text()).get("chat_template")
    if isinstance(template, list):
        named = {t["name"]: t["template"] for t in template}
        if "default" not in named:
            raise ValueError(f"{cfg_file}: chat_template is a list without a 'default' entry ({', '.join(named)})")
        template = named["default"]
    return template


def render_chat_prompt(chat_template: str, user_text: str) -> str:
    """`user_text` as one user message, with the assistant generation prompt."""
    from jinja2.ext import loopcontrols
    from jinja2.sandbox import ImmutableSandboxedEnvironment

    def raise_exception(message):
        raise ValueError(f"chat template: {message}")

    env = ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True, extensions=[loopcontrols])
    env.globals["raise_exception"] = raise_exception
    return env.from_string(chat_template).render(messages=[{"role": "user", "content": user_text}],
                                                 add_generation_prompt=True)


class PromptRows(list):
    """The rows (a list), with `skipped`: the malformed or too-long rows dropped
    (data.on_malformed=skip)."""

    skipped: int = 0


def load_prompt_rows(cfg, tokenizer, chat_template: str | None = None, offset: int = 0,
                     count: int | None = None) -> PromptRows:
    """Rows with "prompt_ids" for `PromptStream` (see the module docstring). For the
    synthetic task, `offset` and `count` pick task rows offset .. offset+count-1 (default:
    the data.synthetic.num_prompts training rows; eval.py takes the rows after them)."""
    d = cfg.data
    if d.name == "synthetic":
        vocab = d.synthetic.vocab_size or tokenizer.get_vocab_size()
        task = SyntheticTask(seed=0, vocab_size=vocab, num_targets=d.synthetic.num_targets,
                             prompt_len=d.synthetic.prompt_len, num_target_sets=d.synthetic.num_target_sets,
                             reserved_ids=tuple(sorted(tokenizer.get_added_tokens_decoder())))
        rows = task.rows(d.synthetic.num_prompts if count is None else count, offset=offset)
        for i, row in enumerate(rows, start=offset):
            row.update(prompt=tokenizer.decode(row["prompt_ids"]), row_id=f"synthetic:{i}")
        return PromptRows(rows)
    if d.name != "gsm8k":
        raise ValueError(f"data.name={d.name!r}: load_prompt_rows knows 'gsm8k' and 'synthetic'")

    rows, skipped = load_prompts(d.train_files, d.prompt_key, d.answer_key, d.on_malformed)
    texts = [format_gsm8k_prompt(r["prompt"]) for r in rows]
    if chat_template is not None:
        texts = [render_chat_prompt(chat_template, t) for t in texts]
    # The template already holds the special tokens as text; plain prompts get the
    # tokenizer's own (e.g. a BOS), as transformers does.
    encoded = tokenizer.encode_batch(texts, add_special_tokens=chat_template is None)
    out, too_long = PromptRows(), 0
    for row, text, enc in zip(rows, texts, encoded):
        if len(enc.ids) > d.max_prompt_tokens:
            problem = (f"{row['row_id']}: prompt has {len(enc.ids)} tokens > "
                       f"data.max_prompt_tokens={d.max_prompt_tokens}")
            if d.on_malformed == "error":
                raise ValueError(problem)
            too_long += 1
            continue
        out.append({**row, "prompt_text": text, "prompt_ids": list(enc.ids)})
    if too_long:
        logger.warning("skipped %d prompts over data.max_prompt_tokens=%d", too_long, d.max_prompt_tokens)
    if not out:
        raise ValueError(f"no prompt of {d.train_files} fits data.max_prompt_tokens={d.max_prompt_tokens} "
                         f"({skipped} malformed rows skipped before)")
    out.skipped = skipped + too_long
    return out
