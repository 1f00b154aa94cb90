"""Entry point for reward models: `python -m rlhf_exact.train_rm recipe=NAME key=value ...`.

    python -m rlhf_exact.train_rm recipe=rm_qwen3_tiny          # CPU, tiny model, synthetic pairs
    python -m rlhf_exact.train_rm recipe=rm_qwen3_tiny preference.name=jsonl \\
        preference.train_files=[pairs.jsonl]                     # your own pairs
    python -m rlhf_exact.train_rm --help preference              # the section's fields

The same command line, config, exit statuses and run directory as `python -m
rlhf_exact.train` (train.py); the default recipe is rm_qwen3_tiny, the checks are
`preflight_reward_model` and the run is rlhf_exact/rm_loop.py (Bradley-Terry on
preference pairs). docs/training.md, "Reward models".
"""
from __future__ import annotations

import sys

from rlhf_exact.train import main as _main


def main(argv: list[str] | None = None) -> int:
    return _main(argv, reward_model=True)


if __name__ == "__main__":
    sys.exit(main())
