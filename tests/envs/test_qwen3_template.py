"""gsm8k_calculator's Qwen3 tool-call format against Qwen3's own chat template, rendered
by transformers' `apply_chat_template(..., tools=[CALCULATOR])`: the first prompt, and
for a model turn with tool calls the ids of the whole conversation (prompt + the turn +
the tool-response observation the environment appends) equal the ids of the template's
rendering of the same conversation (the assistant message with `tool_calls`, one `tool`
message per call, the generation prompt), exactly.

The template (tests/envs/qwen3_chat_template.jinja) is the Jinja `chat_template` of the
Qwen/Qwen3-* checkpoints (Qwen3-0.6B ... 32B, the hybrid-thinking release) verbatim, as
vendored at github.com/tosone/aipi, path qwen3.jinja, commit
673b33e201082a917d8901ffd0cbf5a37b73f639. Its tools block and `tool` role rendering are
the same text as in the `chat_template` of a Qwen3-4B tokenizer_config.json copied whole
at github.com/akougkas/warpio-cli, warpio-docs/ai-docs/model_cards/qwen3:4b.md, commit
8dde6d21c14ca1c2167e7f8c86370e54fdbbc537 (a later release whose generation prompt adds
"<think>\\n"; the hybrid one's, used here, does not).

The tokenizer is the tiny one with the tool tags as single added tokens, as Qwen3's
tokenizer has them; the ids compared are transformers' tokenization of the rendered
text against the environment's own ids.
"""
import copy
import pathlib

import pytest

pytest.importorskip("transformers")

from rlhf_exact.envs import Turn, make_env
from rlhf_exact.envs.gsm8k import CALCULATOR
from rlhf_exact.models.tiny import train_tokenizer

TEMPLATE = (pathlib.Path(__file__).parent / "qwen3_chat_template.jinja").read_text()
QWEN3_TOOL_TAGS = ("<tool_call>", "</tool_call>", "<tool_response>", "</tool_response>")
ROW = {"prompt": "Ann has 3 apples and buys 4 more. How many apples does Ann have?", "answer": "3 + 4 = 7\n#### 7"}


@pytest.fixture(scope="module")
def tok():
    from tokenizers import AddedToken

    t = copy.deepcopy(train_tokenizer(512, 0))
    t.add_tokens([AddedToken(s, special=False, normalized=False) for s in QWEN3_TOOL_TAGS])
    return t


@pytest.fixture(scope="module")
def hf(tok):
    from transformers import PreTrainedTokenizerFast

    return PreTrainedTokenizerFast(tokenizer_object=tok)


def render(hf, messages, **kw) -> list[int]:
    """The template's ids of `messages` with the calculator tool, with the generation prompt."""
    out = hf.apply_chat_template(messages, tools=[CALCULATOR], chat_template=TEMPLATE, add_generation_prompt=True,
                                 tokenize=True, **kw)
    return list(out["input_ids"])


def user_message(env, tok, start) -> dict:
    """The user message the prompt holds: the text between the template's user header and its end."""
    text = tok.decode(start.prompt_ids, skip_special_tokens=False)
    return {"role": "user", "content": text.split("<|im_start|>user\n")[1].removesuffix(
        "<|im_end|>\n<|im_start|>assistant\n")}


@pytest.mark.parametrize("system", [None, "Be brief."])
def test_prompt_is_the_template_with_tools(tok, hf, system):
    env = make_env("gsm8k_calculator", {"system": system}, tok)
    start = env.start(ROW)
    messages = ([{"role": "system", "content": system}] if system else []) + [user_message(env, tok, start)]
    assert ROW["prompt"] in messages[-1]["content"]
    assert list(start.prompt_ids) == render(hf, messages)
    # the negative control: the template's generation prompt without thinking differs
    assert list(start.prompt_ids) != render(hf, messages, enable_thinking=False)


CALL = '<tool_call>\n{{"name": "calculator", "arguments": {{"expression": "{}"}}}}\n</tool_call>'


@pytest.mark.parametrize("content, expressions, closed, answers", [
    ("", ["3 + 4"], True, ["7"]),                      # a turn that is only the call, ended by <|im_end|>
    ("Let me add.", ["3 + 4"], True, ["7"]),           # text before the call
    ("Two steps.", ["3 + 4", "7 * 2"], True, ["7", "14"]),  # two calls: two tool messages, one user block
    ("", ["3 +"], True, ["error: "]),                  # a failing call: the error text is the tool's content
    ("", ["3 + 4"], False, ["7"]),                     # the turn hit its token limit: the observation closes it
])
def test_tool_response_turn_is_the_template(tok, hf, content, expressions, closed, answers):
    env = make_env("gsm8k_calculator", {}, tok)
    start = env.start(ROW)
    im_end = tok.token_to_id("<|im_end|>")
    text = content + ("\n" if content else "") + "\n".join(CALL.format(e) for e in expressions)
    turn_ids = tok.encode(text, add_special_tokens=False).ids + ([im_end] if closed else [])
    turn = Turn(token_ids=tuple(turn_ids), text=tok.decode(turn_ids), finish_reason="stop" if closed else "length",
                index=0)
    obs = env.step(ROW, turn, start.state)
    assert not obs.done and obs.tool_error == (answers == ["error: "])

    results = [tok.decode(list(obs.token_ids), skip_special_tokens=False).split("<tool_response>\n")[k + 1]
               .split("\n</tool_response>")[0] for k in range(len(expressions))]
    assert len(results) == len(answers) and all(r.startswith(a) for r, a in zip(results, answers)), results
    messages = [user_message(env, tok, start),
                {"role": "assistant", "content": content,
                 "tool_calls": [{"type": "function", "function": {"name": "calculator", "arguments": {"expression": e}}}
                                for e in expressions]},
                *({"role": "tool", "content": r} for r in results)]
    assert list(start.prompt_ids) + turn_ids + list(obs.token_ids) == render(hf, messages)
