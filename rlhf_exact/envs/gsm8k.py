"""`gsm8k_calculator`: GSM8K with a calculator tool, in Qwen3's tool-call format
(`grpo_qwen3_tools`).

The first prompt is rendered as Qwen3's chat template renders a conversation with
`tools=[CALCULATOR]` and no system message, followed by the generation prompt:

    <|im_start|>system
    # Tools

    You may call one or more functions to assist with the user query.
    ... <tools>{"type": "function", "function": {"name": "calculator", ...}}</tools> ...<|im_end|>
    <|im_start|>user
    {question}
    {instruction}<|im_end|>
    <|im_start|>assistant

A model turn that contains tool calls,

    <tool_call>
    {"name": "calculator", "arguments": {"expression": "48 / 2"}}
    </tool_call>

gets the template's tool message appended as ids (closing the assistant message with
<|im_end|> first if the turn did not end with it):

    \\n<|im_start|>user\\n<tool_response>\\n24\\n</tool_response><|im_end|>\\n<|im_start|>assistant\\n

(one <tool_response> per call). A turn without a tool call is the final answer: the
episode is done and its reward is rewards.gsm8k on that turn's text (plus
`format_weight` x rewards.format). A call that is not valid JSON, names another tool,
lacks "expression", fails to evaluate, or exceeds `max_calls` per episode is answered
with an error message in the tool response and counted as a tool error.

With Qwen3's tokenizer <tool_call>, </tool_call>, <tool_response>, </tool_response>,
<|im_start|> and <|im_end|> are single special tokens; with another tokenizer (the tiny
one) the same text is encoded with its own pieces. Rows: GSM8K rows ("prompt": the
question, "answer": the worked solution). tests/envs/test_qwen3_template.py checks the
prompt and the observations against Qwen3's real chat template, token for token.
"""
from __future__ import annotations

import json
import re
from collections.abc import Mapping
from typing import Any

from rlhf_exact.data.gsm8k import format_gsm8k_prompt
from rlhf_exact.rewards.gsm8k import format_reward, gsm8k_reward

from .base import Environment, Observation, Start, Turn
from .calculator import CalculatorError, evaluate, format_number

IM_START, IM_END = "<|im_start|>", "<|im_end|>"
CALCULATOR = {"type": "function", "function": {
    "name": "calculator",
    "description": "Evaluate an arithmetic expression: numbers, + - * / // % ** and parentheses.",
    "parameters": {"type": "object", "properties": {
        "expression": {"type": "string", "description": "The expression, e.g. \"(48 + 12) / 4\"."}},
        "required": ["expression"]}}}
INSTRUCTION = "Use the calculator tool for arithmetic."
_TOOL_CALL = re.compile(r"<tool_call>\s*(.*?)\s*</tool_call>", re.DOTALL)


def qwen3_tools_prompt(user: str, tools: list[dict], system: str | None = None) -> str:
    """A user message with tools, as Qwen3's chat template renders it (transformers'
    `tojson`: json.dumps, keys in order, non-ASCII kept), with the generation prompt."""
    head = f"{IM_START}system\n" + (f"{system}\n\n" if system else "")
    head += ("# Tools\n\nYou may call one or more functions to assist with the user query.\n\n"
             "You are provided with function signatures within <tools></tools> XML tags:\n<tools>")
    head += "".join("\n" + json.dumps(t, ensure_ascii=False) for t in tools)
    head += ("\n</tools>\n\nFor each function call, return a json object with function name and arguments within "
             "<tool_call></tool_call> XML tags:\n<tool_call>\n{\"name\": <function-name>, \"arguments\": "
             f"<args-json-object>}}\n</tool_call>{IM_END}\n")
    return head + f"{IM_START}user\n{user}{IM_END}\n{IM_START}assistant\n"


def tool_responses(results: list[str], closed: bool) -> str:
    """The text appended after an assistant turn with tool calls: the tool message with one
    <tool_response> per result, then the next generation prompt. closed: the turn already
    ended with <|im_end|>."""
    body = "".join(f"\n<tool_response>\n{r}\n</tool_response>" for r in results)
    return ("" if closed else IM_END) + f"\n{IM_START}user{body}{IM_END}\n{IM_START}assistant\n"


def call_calculator(call: str) -> tuple[str, bool]:
    """(what the tool answers, whether the call succeeded) for the text inside one
    <tool_call>...</tool_call>."""
    try:
        obj = json.loads(call)
    except json.JSONDecodeError as e:
        return f"error: the tool call is not valid JSON ({e.msg})", False
    if not isinstance(obj, dict) or obj.get("name") != "calculator":
        return "error: the only tool is \"calculator\"", False
    args = obj.get("arguments")
    if not isinstance(args, dict) or not isinstance(args.get("expression"), str):
        return "error: arguments must be {\"expression\": \"<arithmetic>\"}", False
    try:
        return format_number(evaluate(args["expression"])), True
    except CalculatorError as e:
        return f"error: {e}", False


class GSM8KCalculatorEnv(Environment):
    def __init__(self, tokenizer=None, max_calls: int = 8, format_weight: float = 0.1, system: str | None = None):
        """max_calls: tool calls per episode (>= 0; later ones are answered with an error);
        format_weight: weight of the format reward in the final reward; system: an optional
        system message placed before the tools block."""
        super().__init__(tokenizer)
        if tokenizer is None:
            raise ValueError("gsm8k_calculator needs the run's tokenizer")
        if not (isinstance(max_calls, int) and max_calls >= 0):
            raise ValueError(f"gsm8k_calculator: max_calls must be an integer >= 0, got {max_calls!r}")
        self.max_calls, self.format_weight, self.system = max_calls, float(format_weight), system
        self.im_end = tokenizer.token_to_id(IM_END)

    def start(self, row: Mapping[str, Any]) -> Start:
        user = f"{format_gsm8k_prompt(row['prompt'])}\n{INSTRUCTION}"
        return Start(prompt_ids=self.encode(qwen3_tools_prompt(user, [CALCULATOR], self.system)), state=0)

    def step(self, row: Mapping[str, Any], turn: Turn, state: Any) -> Observation:
        calls = _TOOL_CALL.findall(turn.text)
        if not calls:
            reward = gsm8k_reward(turn.text, turn.token_ids, row)
            reward += self.format_weight * format_reward(turn.text, turn.token_ids, row)
            return Observation(reward=reward, done=True, state=state)
        used, results, failed = int(state or 0), [], False
        for call in calls:
            if used >= self.max_calls:
                out, ok = f"error: no tool calls left (at most {self.max_calls} per problem); give the answer", False
            else:
                out, ok = call_calculator(call)
            used += 1
            results.append(out)
            failed |= not ok
        closed = self.im_end is not None and len(turn.token_ids) > 0 and turn.token_ids[-1] == self.im_end
        return Observation(token_ids=self.encode(tool_responses(results, closed)), state=used, tool_error=failed)
