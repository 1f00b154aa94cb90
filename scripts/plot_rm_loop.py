"""The closed loop of recipe=grpo_qwen3_tiny_rm in one figure: the reward model's score
that GRPO optimizes, the held-out synthetic rule reward its preferences came from (never
optimized: weight 0), and the sampler/trainer KL at every step.

    python scripts/plot_rm_loop.py RUN_DIR docs/grpo_qwen3_tiny_rm.png
"""
import json
import pathlib
import sys

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt


def main(run_dir: str, out: str) -> None:
    rows = [json.loads(line) for line in (pathlib.Path(run_dir) / "metrics.jsonl").read_text().splitlines()]
    steps = [m["step"] for m in rows]
    ev = [m for m in rows if "eval/first_reward_mean" in m]
    fig, ax = plt.subplots(1, 3, figsize=(13, 3.6))
    ax[0].plot(steps, [m["reward/model_mean"] for m in rows], marker=".")
    ax[0].set(title="reward model score (optimized)", xlabel="step", ylabel="reward/model_mean")
    ax[1].plot([m["step"] for m in ev], [m["eval/first_reward_mean"] for m in ev], marker="o",
               label="eval/first_reward_mean")
    ax[1].plot([m["step"] for m in ev], [m["eval/pass@1"] for m in ev], marker="s", label="eval/pass@1")
    ax[1].set(title="held-out synthetic rule (weight 0)", xlabel="step", ylim=(0, 1))
    ax[1].legend()
    ax[2].plot(steps, [m["parity/kl"] for m in rows], marker=".")
    ax[2].set(title="sampler/trainer KL", xlabel="step", ylabel="parity/kl", ylim=(-1e-3, 1e-3))
    for a in ax:
        a.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(out, dpi=100)


if __name__ == "__main__":
    main(*sys.argv[1:3])
