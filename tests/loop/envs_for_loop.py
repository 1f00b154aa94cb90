"""An environment for the loop's fault test, importable by path in worker processes: the
synthetic calculator, except that rows misbehave by their index (raise,
hang, malformed observation, kill the worker process) or run into the limits (never done,
or an observation too long for the episode's token budget), and some return observations
to train on (trained=True: in the loss, not in the parity check)."""
import os
import time

from rlhf_exact.envs import Observation
from rlhf_exact.envs.arithmetic import SyntheticCalculatorEnv

FAULTS = ("raise", "hang", "malformed", "exit", "never_done", "huge", "trained")


def fault(row) -> str | None:
    """Which fault a row has: synthetic row i has FAULTS[i] (rows 7, 8, ... behave)."""
    k = int(row["row_id"].removeprefix("synthetic:"))
    return FAULTS[k] if k < len(FAULTS) else None


class FaultyCalculatorEnv(SyntheticCalculatorEnv):
    def step(self, row, turn, state):
        how = fault(row)
        if how == "raise":
            raise RuntimeError("the tool crashed")
        if how == "hang":
            time.sleep(3600)
        if how == "malformed":
            return Observation(token_ids=[-1])
        if how == "exit":
            os._exit(7)
        obs = super().step(row, turn, state)
        if how == "never_done":
            return Observation(token_ids=obs.token_ids, reward=obs.reward, done=False)
        if how == "huge":
            return Observation(token_ids=list(obs.token_ids) * 40, reward=obs.reward, done=obs.done)
        if how == "trained":
            return Observation(token_ids=obs.token_ids, trained=True, reward=obs.reward, done=obs.done)
        return obs
