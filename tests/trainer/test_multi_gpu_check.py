"""tests/trainer/multi_gpu_check.py end to end: the script runs in a subprocess and
its table is checked row by row.

Every subprocess runs with Ray, vLLM, Hydra, OmegaConf, W&B, datasets, math-verify,
transformers and PyYAML blocked (a meta-path finder installed through
sitecustomize.py, so the spawned ranks and the sampler inherit it): the multi-GPU
machine has torch + triton only, and everything the script imports must work there.

    python -m pytest tests/trainer/test_multi_gpu_check.py -q            # CPU (gloo)
    python -m pytest tests/trainer/test_multi_gpu_check.py -q -m gpu     # >= 2 GPUs (NCCL)
"""
import os
import pathlib
import subprocess
import sys

import pytest
import torch

ROOT = pathlib.Path(__file__).resolve().parents[2]
SCRIPT = ROOT / "tests" / "trainer" / "multi_gpu_check.py"
BLOCKED = ("ray", "vllm", "hydra", "omegaconf", "wandb", "datasets", "math_verify", "transformers", "yaml")
BLOCKER = f'''import importlib.abc, sys
BLOCKED = {BLOCKED!r}
class _Blocked(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in BLOCKED:
            raise ImportError(f"{{name}} is blocked: the multi-GPU machine has torch + triton only")
        return None
sys.meta_path.insert(0, _Blocked())
'''


def _env(tmp_path: pathlib.Path) -> dict:
    site = tmp_path / "blocker"
    site.mkdir(exist_ok=True)
    (site / "sitecustomize.py").write_text(BLOCKER)
    env = {k: v for k, v in os.environ.items() if k != "OUT"}
    env["PYTHONPATH"] = os.pathsep.join([str(site), str(ROOT)] + ([env["PYTHONPATH"]] if env.get("PYTHONPATH") else []))
    env["PYTHONFAULTHANDLER"] = "1"  # a crashing rank or sampler prints its Python stacks
    return env


def _passed(p: subprocess.CompletedProcess) -> None:
    """Fails with the whole output: an assertion message would be cut, and a crashed
    process's stacks (faulthandler) come last."""
    if p.returncode != 0:
        pytest.fail(f"exit {p.returncode}\n--- stdout\n{p.stdout}\n--- stderr\n{p.stderr}", pytrace=False)


def _rows(text: str) -> dict[tuple[str, str], tuple[str, str]]:
    """{(part, config): (result, numbers)} of the table."""
    rows = {}
    for line in text.splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if len(cells) == 4 and cells[0][:1].isdigit():
            rows[(cells[0], cells[1])] = (cells[2], cells[3])
    return rows


def _find(rows, part: str, config_start: str) -> tuple[str, str]:
    hits = [v for (p, c), v in rows.items() if p.startswith(part) and c.startswith(config_start)]
    assert len(hits) == 1, (part, config_start, rows)
    return hits[0]


def test_imports_need_only_the_torch_stack(tmp_path):
    """Everything the script uses imports with the blocked packages unavailable."""
    code = ("import runpy, sys\n"
            "import rlhf_exact.trainer.worker, rlhf_exact.trainer.plan, rlhf_exact.algo.grpo\n"
            "import rlhf_exact.models.qwen3, rlhf_exact.models.hf_io, rlhf_exact.models.tiny\n"
            "import tests.models.generate, rlhf_exact.models.ops, rlhf_exact.sampler.worker_ext\n"
            "import exact_kernels, exact_kernels.mode\n"
            "import torch.distributed.fsdp, torch.distributed.checkpoint.state_dict\n"
            f"runpy.run_path({str(SCRIPT)!r}, run_name='not_main')\n"
            f"print(sorted(m for m in sys.modules if m.split('.')[0] in {BLOCKED!r}))\n")
    p = subprocess.run([sys.executable, "-c", code], env=_env(tmp_path), capture_output=True, text=True, timeout=120)
    assert p.returncode == 0, p.stderr[-3000:]
    assert p.stdout.strip().splitlines()[-1] == "[]"


@pytest.mark.slow
def test_multi_gpu_check_cpu_gloo(tmp_path):
    """W = 1, 2 on CPU (gloo), tiny model: every part passes."""
    out = tmp_path / "multi_gpu.md"
    p = subprocess.run([sys.executable, str(SCRIPT), "--device", "cpu", "--world-sizes", "1,2", "--shape", "tiny",
                        "--out", str(out)], env=_env(tmp_path), capture_output=True, text=True, timeout=600)
    _passed(p)
    text = out.read_text()
    assert text in p.stdout  # the same table, printed last
    assert "NCCL_ALGO=Tree" in text and "NCCL_PROTO=Simple" in text
    rows = _rows(text)
    assert len(rows) == 6, rows
    assert all(result == "PASS" for result, _ in rows.values()), rows
    assert "max abs diff 0" in _find(rows, "1 ", "W=2 vs W=1")[1]
    for w in (1, 2):
        numbers = _find(rows, "2 ", f"sampler cpu vs trainer W={w} ")[1]
        assert "max abs diff 0" in numbers
        numbers = _find(rows, "3 ", f"W={w} rank0 -> sampler, gloo")[1]
        assert "3 syncs" in numbers and "bf16 tensors equal 72/72" in numbers
    numbers = _find(rows, "4 ", "W=2 run a vs run b")[1]
    assert "losses equal 3/3" in numbers and "grad norms equal 3/3" in numbers


@pytest.mark.gpu
@pytest.mark.slow
def test_multi_gpu_check_cuda_nccl(tmp_path):
    """The real thing: N >= 2 GPUs, NCCL, the Qwen3-0.6B-shaped model (script defaults)."""
    n = torch.cuda.device_count()
    if n < 2:
        pytest.skip(f"needs >= 2 CUDA devices for trainer ranks + a sampler over NCCL (found {n})")
    out = tmp_path / "multi_gpu.md"
    p = subprocess.run([sys.executable, str(SCRIPT), "--device", "cuda", "--out", str(out)], env=_env(tmp_path),
                       capture_output=True, text=True, timeout=3600)
    _passed(p)
    text = out.read_text()
    assert "NCCL_ALGO=Tree" in text and "NCCL_NVLS_ENABLE=0" in text
    rows = _rows(text)
    assert all(result == "PASS" for result, _ in rows.values()), rows
    worlds = [1, 2] + ([4] if n >= 4 else [])
    assert len(rows) == 2 * len(worlds) + (len(worlds) - 1) + 1, rows
    for w in worlds:
        _find(rows, "2 ", f"sampler cuda:{n - 1} vs trainer W={w} ")
        _find(rows, "3 ", f"W={w} rank0 -> sampler, nccl")
