"""Prompt data: local prompt files (load_prompts), GSM8K prompt phrasing, the
synthetic token task of the tiny CPU recipe, a resumable shuffled batch stream, and
`load_prompt_rows`, which turns the data config into tokenized rows with the loop's
tokenizer (passed in; nothing here loads a model)."""
from .gsm8k import GSM8K_ANSWER_KEY, GSM8K_PROMPT_KEY, format_gsm8k_prompt
from .loader import load_prompt_rows, load_tokenizer, read_chat_template, render_chat_prompt
from .prompts import load_prompts
from .stream import PromptStream
from .synthetic import SyntheticTask

__all__ = ["GSM8K_ANSWER_KEY", "GSM8K_PROMPT_KEY", "PromptStream", "SyntheticTask", "format_gsm8k_prompt",
           "load_prompt_rows", "load_prompts", "load_tokenizer", "read_chat_template", "render_chat_prompt"]
