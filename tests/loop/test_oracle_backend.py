"""The real loop with a second sampler implementation: `python -m rlhf_exact.train
recipe=grpo_qwen3_tiny sampler.backend=tests.models.oracle_sampler:OracleSampler` (the
real CLI, its own Ray, the real SamplerGroup and SamplerActor, an FSDP2 trainer of two
gloo ranks, bucketed weight sync) with the paged test oracle (tests/models/generate.py:
the project's Qwen3 on the exact kernels, no vLLM) behind the sampler interface
(rlhf_exact/sampler/backend.py). Every step: KL exactly 0, every token's logprob bitwise
equal, ratio exactly 1: the trainer agrees bit for bit with an independent sampler,
through the same interface the vLLM engine implements, before and after weight syncs.
Evaluation after step 3 sends it greedy requests too.

    python -m pytest tests/loop/test_oracle_backend.py -q
"""
import json
import subprocess
import sys

import pytest

pytest.importorskip("ray")

from rlhf_exact.config.compose import repo_root

from .runs import assert_exact

pytestmark = pytest.mark.slow

ORACLE = "tests.models.oracle_sampler:OracleSampler"


def test_tiny_recipe_with_the_oracle_sampler_is_exact(tmp_path):
    p = subprocess.run([sys.executable, "-m", "rlhf_exact.train", "recipe=grpo_qwen3_tiny",
                        f"sampler.backend={ORACLE}", "run.steps=3", "run.save_every=0", "eval.every_steps=3",
                        "eval.num_prompts=4", "eval.k=2",
                        f"run.output_dir={tmp_path}", "run.name=oracle", "logging.wandb_mode=disabled",
                        "logging.progress_bars=false"],
                       cwd=repo_root(), capture_output=True, text=True, timeout=900)
    assert p.returncode == 0, p.stderr[-3000:]
    assert f"starting 1 sampler engine(s) ({ORACLE}, kernels=exact)" in p.stderr, p.stderr[-3000:]
    rows = [json.loads(line) for line in (tmp_path / "oracle" / "metrics.jsonl").read_text().splitlines()]
    assert [m["step"] for m in rows] == [1, 2, 3]
    assert_exact(rows)  # steps 2 and 3 sample with the weights the trainer synced
    assert all(m["response_length/mean"] > 0 for m in rows)
    assert 0.0 <= rows[-1]["eval/greedy_pass@1"] <= 1.0  # greedy and sampled eval requests went through it
