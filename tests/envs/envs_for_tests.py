"""Environments the runner and episode tests use: a scripted well-behaved one and the
bad ones (raising, hanging, crashing the process, malformed, an unpicklable state, never
done, an observation too long for any budget).
A module of its own so that spawned worker processes import them by path."""
import os
import time

from rlhf_exact.envs import Environment, Observation, Start, register_env

OBS = [70, 71]  # every observation's ids


class Echo(Environment):
    """Observation OBS after each turn, reward = 0.5 * (turn index + 1), done after
    `turns` turns; the state counts the steps."""

    def __init__(self, tokenizer=None, turns: int = 2, trained: bool = False):
        super().__init__(tokenizer)
        self.turns, self.trained = turns, trained

    def start(self, row):
        return Start(prompt_ids=list(row["prompt_ids"]), state=0)

    def step(self, row, turn, state):
        assert state == turn.index, (state, turn.index)
        return Observation(token_ids=OBS, trained=self.trained, reward=0.5 * (turn.index + 1),
                           done=turn.index + 1 >= self.turns, state=state + 1, tool_error=turn.index == 0)


class Bad(Echo):
    """Behaves like Echo except on rows whose "bad" field names a failure."""

    def step(self, row, turn, state):
        how = row.get("bad")
        if how == "raise":
            raise RuntimeError("tool exploded")
        if how == "hang":
            time.sleep(3600)
        if how == "exit":
            os._exit(3)
        if how == "vocab":
            return Observation(token_ids=[1, 10_000])
        if how == "nan":
            return Observation(token_ids=[1], reward=float("nan"))
        if how == "type":
            return {"token_ids": [1]}
        if how == "text":
            return Observation(token_ids="=5\n")
        if how == "unpicklable":
            return Observation(token_ids=[1], state=lambda: None)
        if how == "never_done":
            return Observation(token_ids=OBS, reward=0.5, done=False, state=state + 1)
        if how == "huge":
            return Observation(token_ids=[1] * 10_000, reward=0.5, state=state + 1)
        return super().step(row, turn, state)


@register_env("echo_for_tests")
class RegisteredEcho(Echo):
    """Echo under a registered name: resolved after importing this module (run.imports)."""
