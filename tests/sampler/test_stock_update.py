"""Weight updates of the stock engine (kernels=default): vLLM's own Qwen3, whose CPU linear
layers pick a GEMM kernel by CPU features (oneDNN or AMX repack the weight and drop
`.weight`; plain AVX2 keeps it). The update must land on every x86 CPU: an engine
updated to weights B samples exactly what an engine started on B samples (same greedy
tokens, same logprob bits, one prompt alone on both), and not what it sampled before.

Runs in a child process: stock vLLM needs VLLM_PLUGINS=none, which is process-wide.

    python -m pytest tests/sampler/test_stock_update.py -q
"""
import json
import os
import subprocess
import sys
import textwrap

import pytest

pytest.importorskip("vllm")

pytestmark = pytest.mark.slow

CHILD = textwrap.dedent("""
    import json, sys
    from safetensors.torch import load_file
    from rlhf_exact.models.tiny import make_tiny_model_dir
    from rlhf_exact.sampler.engine import Sampler, RequestParams

    def run(tmp):
        a = make_tiny_model_dir(tmp + "/a", seed=1, std=0.05, norm_noise=0.1, num_hidden_layers=2)
        b = make_tiny_model_dir(tmp + "/b", seed=2, std=0.05, norm_noise=0.1, num_hidden_layers=2)
        prompt, params = [[5, 6, 7, 8, 9]], RequestParams(max_tokens=12, temperature=0.0, ignore_eos=True)

        def greedy(s):
            c = s.sample(prompt, n=1, params=params)[0].completions[0]
            return c.token_ids, c.logprobs.tolist()

        s = Sampler(a, exact=False, max_model_len=64, max_num_seqs=2)
        before = greedy(s)
        s.update_weights(load_file(str(b / "model.safetensors")), bucket_bytes=1 << 16)
        updated = greedy(s)
        s.shutdown()
        s = Sampler(b, exact=False, max_model_len=64, max_num_seqs=2)
        fresh = greedy(s)
        s.shutdown()
        print("RESULT " + json.dumps(dict(before=before, updated=updated, fresh=fresh)))

    if __name__ == "__main__":
        run(sys.argv[1])
""")


def test_stock_engine_weight_update_lands(tmp_path, cpu_flags):
    script = tmp_path / "child.py"
    script.write_text(CHILD)
    env = dict(os.environ, VLLM_PLUGINS="none")
    proc = subprocess.run([sys.executable, str(script), str(tmp_path)], env=env, capture_output=True, text=True,
                          timeout=900)
    where = f"(CPU features: {cpu_flags})"
    assert proc.returncode == 0, f"stock engine update failed {where}:\n{proc.stderr[-4000:]}"
    line = [ln for ln in proc.stdout.splitlines() if ln.startswith("RESULT ")][-1]
    r = json.loads(line.removeprefix("RESULT "))
    assert r["updated"] == r["fresh"], f"updated engine != engine started on the new weights {where}"
    assert r["updated"] != r["before"], f"the update changed nothing {where}"
