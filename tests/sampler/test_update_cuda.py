"""Weight updates on CUDA, through the host and through CUDA IPC (cluster.weight_sync):
an engine updated to weights B samples exactly what an engine started on B samples, with
CUDA graphs on, for the exact engine and for stock vLLM (kernels=default: its compiled
model, graphs and fused qkv/gate_up parameters are updated in place). The IPC update is
the trainer's path when colocated: one flat bf16 buffer of this process (types.SharedWeights),
opened by the engine's worker process. A layout that does not match the model is rejected
whole and the weights stay as they were.

Each engine kind runs in a child process: stock vLLM needs VLLM_PLUGINS=none, which is
process-wide.

    python -m pytest tests/sampler/test_update_cuda.py -q      # on a GPU machine
"""
import json
import os
import subprocess
import sys
import textwrap

import pytest
import torch

pytestmark = pytest.mark.gpu

CHILD = textwrap.dedent("""
    import dataclasses, json, sys
    import torch
    from safetensors.torch import load_file
    from rlhf_exact.models.tiny import make_tiny_model_dir
    from rlhf_exact.sampler.engine import Sampler, RequestParams
    from rlhf_exact.types import SharedWeights

    SHAPE = dict(vocab_size=1024, hidden_size=256, intermediate_size=512, num_hidden_layers=2,
                 num_attention_heads=4, num_key_value_heads=2, head_dim=128)

    def run(tmp, exact):
        a = make_tiny_model_dir(tmp + "/a", seed=1, std=0.05, norm_noise=0.1, **SHAPE)
        b = make_tiny_model_dir(tmp + "/b", seed=2, std=0.05, norm_noise=0.1, **SHAPE)
        prompts = [[5, 6, 7, 8, 9], [11, 12, 13]]
        params = RequestParams(max_tokens=12, temperature=0.0, ignore_eos=True)
        kw = dict(exact=exact, max_model_len=64, max_num_seqs=4, cuda_graphs=True, gpu_memory_utilization=0.3)

        def greedy(s):
            return [(c.token_ids, c.logprobs.tolist()) for r in s.sample(prompts, n=1, params=params)
                    for c in r.completions]

        wa, wb = load_file(str(a / "model.safetensors")), load_file(str(b / "model.safetensors"))
        s = Sampler(a, **kw)
        before = greedy(s)
        s.update_weights(wb, bucket_bytes=1 << 16)
        host = greedy(s)
        s.update_weights(wa)
        restored = greedy(s)
        shared, buf = SharedWeights.pack(wb)
        bad = dataclasses.replace(shared, layout=tuple((n, (1,) + tuple(sh), o) for n, sh, o in shared.layout))
        try:
            s.update_weights_shared(bad)
            rejected = False
        except ValueError as e:
            rejected = "rejected" in str(e)
        after_bad = greedy(s)
        s.update_weights_shared(shared)
        ipc = greedy(s)
        names = [n for n in s.param_info()] if exact else []
        got = s.get_weights(names) if exact else {}
        ipc_bitwise = all(torch.equal(got[n], wb[n]) for n in names)
        s.shutdown()
        del buf
        s = Sampler(b, **kw)
        fresh = greedy(s)
        s.shutdown()
        print("RESULT " + json.dumps(dict(before=before, host=host, restored=restored, rejected=rejected,
                                          after_bad=after_bad, ipc=ipc, fresh=fresh, ipc_bitwise=ipc_bitwise,
                                          params=len(names))))

    if __name__ == "__main__":
        run(sys.argv[1], sys.argv[2] == "exact")
""")


@pytest.mark.parametrize("kernels", ["exact", "default"])
def test_cuda_update_host_and_ipc_equal_fresh_engine(tmp_path, kernels):
    if not torch.cuda.is_available():
        pytest.skip("needs CUDA")
    script = tmp_path / "child.py"
    script.write_text(CHILD)
    env = dict(os.environ)
    if kernels == "default":
        env["VLLM_PLUGINS"] = "none"
    proc = subprocess.run([sys.executable, str(script), str(tmp_path), kernels], env=env, capture_output=True,
                          text=True, timeout=900)
    assert proc.returncode == 0, f"{kernels} engine update failed:\n{proc.stderr[-4000:]}"
    r = json.loads([ln for ln in proc.stdout.splitlines() if ln.startswith("RESULT ")][-1].removeprefix("RESULT "))
    assert r["host"] == r["fresh"], "host update != engine started on the new weights"
    assert r["ipc"] == r["fresh"], "CUDA IPC update != engine started on the new weights"
    assert r["host"] != r["before"], "the update changed nothing"
    assert r["restored"] == r["before"], "updating back to the first weights did not restore its samples"
    assert r["rejected"] and r["after_bad"] == r["before"], "a bad layout was not rejected whole"
    if kernels == "exact":
        assert r["params"] > 0 and r["ipc_bitwise"], "the IPC update's parameters differ from the sent tensors"
