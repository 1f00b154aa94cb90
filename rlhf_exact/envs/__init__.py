"""Multi-turn, tool-using environments whose episodes stay token-exact across turns.

    base.py        the interface: Environment (start, step), Start, Turn, Observation
    registry.py    environments by name or import path (register_env, get_env, make_env)
    runner.py      EnvRunner: calls with a per-call timeout, in the driver or worker processes;
                   failures are per-call EnvFailure records, never exceptions
    episode.py     run_episodes: token-in, token-out multi-turn rollouts with limits
                   (Limits), the Trajectory record (one episode) the trainer gets, episode_metrics
    calculator.py  the safe arithmetic evaluator of the calculator tools (ast, never eval)
    arithmetic.py  synthetic_calculator: the tiny CPU task with a calculator
    gsm8k.py       gsm8k_calculator: GSM8K with a calculator, Qwen3 tool-call format

docs/training.md ("Environments") shows how to write one.
"""
from .base import Environment, MalformedError, Observation, Start, Turn
from .episode import Limits, Trajectory, episode_metrics, run_episodes, turn_seed
from .registry import ENVS, get_env, make_env, register_env
from .runner import EnvFailure, EnvRunner

__all__ = ["ENVS", "EnvFailure", "EnvRunner", "Environment", "Limits", "MalformedError", "Observation", "Start",
           "Trajectory", "Turn", "episode_metrics", "get_env", "make_env", "register_env", "run_episodes", "turn_seed"]
