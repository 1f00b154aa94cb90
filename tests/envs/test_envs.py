"""The shipped environments with hand values: synthetic_calculator on the tiny
tokenizer, gsm8k_calculator's Qwen3 tool-call format (prompt text, tool responses,
final reward), also with the Qwen3 special tokens as single ids."""
import copy
import json

import pytest

from rlhf_exact.envs import Environment, Turn, get_env, make_env, register_env
from rlhf_exact.envs.registry import BUILTIN
from rlhf_exact.envs.gsm8k import CALCULATOR, call_calculator, qwen3_tools_prompt, tool_responses
from rlhf_exact.models.tiny import train_tokenizer

QWEN3_SPECIAL = ("<tool_call>", "</tool_call>", "<tool_response>", "</tool_response>")


@pytest.fixture(scope="module")
def tok():
    return train_tokenizer(512, 0)


def turn(tok, text, index=0, ids=None):
    ids = tok.encode(text, add_special_tokens=False).ids if ids is None else ids
    return Turn(token_ids=tuple(ids), text=tok.decode(ids), finish_reason="stop", index=index)


def test_synthetic_calculator(tok):
    env = make_env("synthetic_calculator", {"turns": 2, "call_bonus": 0.5}, tok)
    row = {"prompt_ids": [7, 8], "answer": sorted(tok.encode("12+", add_special_tokens=False).ids)}
    assert env.start(row).prompt_ids == [7, 8]
    t = turn(tok, "12+30")  # tokens "12", "+", "30": two of three are targets, 42 is its value
    assert len(t.token_ids) == 3
    obs = env.step(row, t, None)
    assert tok.decode(list(obs.token_ids)) == "=42\n"
    assert obs.reward == (2 / 3 + 0.5) / 2 and not obs.done and not obs.tool_error and not obs.trained
    obs = env.step(row, turn(tok, "apples", index=1), None)
    assert tok.decode(list(obs.token_ids)) == "=?\n" and obs.tool_error and obs.done and obs.reward == 0.0
    with pytest.raises(ValueError, match="turns"):
        make_env("synthetic_calculator", {"turns": 0}, tok)


QUESTION = "Ann has 3 apples and buys 4 more. How many apples does Ann have?"


def test_qwen3_tools_prompt_text():
    tools = json.dumps(CALCULATOR)
    assert qwen3_tools_prompt("Q?", [CALCULATOR]) == (
        "<|im_start|>system\n# Tools\n\nYou may call one or more functions to assist with the user query.\n\n"
        "You are provided with function signatures within <tools></tools> XML tags:\n<tools>\n" + tools +
        "\n</tools>\n\nFor each function call, return a json object with function name and arguments within "
        "<tool_call></tool_call> XML tags:\n<tool_call>\n{\"name\": <function-name>, \"arguments\": "
        "<args-json-object>}\n</tool_call><|im_end|>\n<|im_start|>user\nQ?<|im_end|>\n<|im_start|>assistant\n")
    assert qwen3_tools_prompt("Q?", [CALCULATOR], system="Be brief.").startswith(
        "<|im_start|>system\nBe brief.\n\n# Tools\n\n")
    assert tool_responses(["7", "error: x"], closed=True) == (
        "\n<|im_start|>user\n<tool_response>\n7\n</tool_response>\n<tool_response>\nerror: x\n</tool_response>"
        "<|im_end|>\n<|im_start|>assistant\n")
    assert tool_responses(["7"], closed=False).startswith("<|im_end|>\n<|im_start|>user\n")


@pytest.mark.parametrize("call, out, ok", [
    ('{"name": "calculator", "arguments": {"expression": "3 + 4"}}', "7", True),
    ('{"name": "calculator", "arguments": {"expression": "10 / 4"}}', "2.5", True),
    ('{"name": "calculator", "arguments": {"expression": "1 / 0"}}', "error: division by zero", False),
    ('{"name": "python", "arguments": {"code": "1"}}', 'error: the only tool is "calculator"', False),
    ('{"name": "calculator", "arguments": {"expr": "1"}}', 'error: arguments must be', False),
    ('{"name": "calculator", "arguments": {"expression": "open(1)"}}', "error: Call is not allowed", False),
    ("not json", "error: the tool call is not valid JSON", False),
])
def test_call_calculator(call, out, ok):
    got, got_ok = call_calculator(call)
    assert got.startswith(out) and got_ok is ok


@pytest.mark.parametrize("qwen3_tokens", [False, True])
def test_gsm8k_calculator_episode(tok, qwen3_tokens):
    if qwen3_tokens:  # Qwen3's tokenizer: the tool tags are single added tokens, not special (kept by decode)
        from tokenizers import AddedToken

        tok = copy.deepcopy(tok)
        tok.add_tokens([AddedToken(t, special=False, normalized=False) for t in QWEN3_SPECIAL])
    env = make_env("gsm8k_calculator", {"max_calls": 1}, tok)
    row = {"prompt": QUESTION, "answer": "3 + 4 = 7\n#### 7"}
    start = env.start(row)
    text = tok.decode(start.prompt_ids, skip_special_tokens=False)
    assert text.startswith("<|im_start|>system\n# Tools\n") and text.endswith(
        "Use the calculator tool for arithmetic.<|im_end|>\n<|im_start|>assistant\n") and QUESTION in text
    if qwen3_tokens:
        for t in QWEN3_SPECIAL[:2]:
            assert tok.token_to_id(t) in start.prompt_ids
        assert [tok.token_to_id(t) for t in QWEN3_SPECIAL[2:]] == [512 + 2, 512 + 3]
    im_end = tok.token_to_id("<|im_end|>")
    call = 'Let me add.\n<tool_call>\n{"name": "calculator", "arguments": {"expression": "3 + 4"}}\n</tool_call>'
    ids = tok.encode(call, add_special_tokens=False).ids + [im_end]
    obs = env.step(row, turn(tok, call, ids=ids), start.state)
    assert tok.decode(list(obs.token_ids), skip_special_tokens=False) == (
        "\n<|im_start|>user\n<tool_response>\n7\n</tool_response><|im_end|>\n<|im_start|>assistant\n")
    assert (obs.reward, obs.done, obs.tool_error, obs.state) == (0.0, False, False, 1)
    # the second call is over max_calls=1; the turn did not end with <|im_end|>, so the observation closes it
    obs = env.step(row, turn(tok, call, index=1), obs.state)
    assert tok.decode(list(obs.token_ids), skip_special_tokens=False).startswith(
        "<|im_end|>\n<|im_start|>user\n<tool_response>\nerror: no tool calls left")
    assert obs.tool_error and not obs.done
    final = env.step(row, turn(tok, "So Ann has 7 apples.\n#### 7", index=2), obs.state)
    assert final.done and final.reward == 1.0 + 0.1 and list(final.token_ids) == []
    wrong = env.step(row, turn(tok, "#### 8", index=2), obs.state)
    assert wrong.done and wrong.reward == 0.1


def test_builtin_names_resolve_and_cannot_be_taken():
    for name, path in BUILTIN.items():
        cls = get_env(name)
        assert issubclass(cls, Environment) and f"{cls.__module__}:{cls.__qualname__}" == path
    with pytest.raises(ValueError, match="already registered"):
        register_env("synthetic_calculator")(type("Other", (Environment,), {}))
    with pytest.raises(ValueError, match="did you mean 'gsm8k_calculator'"):
        get_env("gsm8k_calculater")
