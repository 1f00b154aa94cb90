"""GSM8K (MIT license): where it lives and how its prompts are phrased.

The files are {train,test}.jsonl with keys "question" and "answer" (a worked
solution ending in "#### <number>"); load them with
`load_prompts([...], prompt_key=GSM8K_PROMPT_KEY, answer_key=GSM8K_ANSWER_KEY)` from
`../shared/data/gsm8k/` or a user-given path (never copied into the repo). The
reward is `rewards.gsm8k`. Tokenisation (and the chat template) is the loop's job.
"""
from __future__ import annotations

GSM8K_PROMPT_KEY = "question"
GSM8K_ANSWER_KEY = "answer"
INSTRUCTION = ("Solve the problem step by step. Then write the final answer as a number on the last line, "
               "in the form '#### <number>'.")


def format_gsm8k_prompt(question: str) -> str:
    """The question followed by an instruction to end with '#### <number>' (the marker
    the gsm8k and format rewards look for)."""
    if not isinstance(question, str) or not question.strip():
        raise ValueError(f"format_gsm8k_prompt: question must be a non-empty string, got {question!r}")
    return f"{question.strip()}\n{INSTRUCTION}"
