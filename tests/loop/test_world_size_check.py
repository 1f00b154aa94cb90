"""scripts/world_size_check.py: the real loop (`python -m rlhf_exact.train`, tiny recipe,
CPU) at trainer world sizes 1 and 2, its table checked row by row; and its parity and
metric comparisons on hand-made metric lines.

    python -m pytest tests/loop/test_world_size_check.py -q
"""
import importlib.util
import subprocess
import sys

import pytest

from rlhf_exact.config.compose import repo_root

SCRIPT = repo_root() / "scripts" / "world_size_check.py"
spec = importlib.util.spec_from_file_location("world_size_check", SCRIPT)
wsc = importlib.util.module_from_spec(spec)
spec.loader.exec_module(wsc)

EXACT = {"step": 1, "parity/kl": 0.0, "parity/tokens_bitwise_equal_frac": 1.0, "parity/ratio_min": 1.0,
         "parity/ratio_max": 1.0, "reward/mean": 0.25, "time/step": 3.0}


def test_parity_exact_names_a_step_off_by_one_token():
    off = EXACT | {"step": 2, "parity/tokens_bitwise_equal_frac": 63 / 64}
    assert wsc.parity_exact([EXACT, EXACT | {"step": 2}]) == (True, "2/2 steps KL 0, every logprob equal, ratio 1")
    assert wsc.parity_exact([EXACT, off]) == (False, "1/2 steps KL 0, every logprob equal, ratio 1")
    assert not wsc.parity_exact([EXACT | {"parity/ratio_max": 1.0000001}])[0]


def test_same_values_ignores_wall_clock():
    later = EXACT | {"time/step": 9.0}
    assert wsc.same_values(EXACT, later, wsc.DETERMINISTIC) == []
    assert wsc.same_values(EXACT, later | {"reward/mean": 0.5}, wsc.DETERMINISTIC) == ["reward/mean"]
    assert wsc.same_values(EXACT, {k: v for k, v in EXACT.items() if k != "parity/kl"}, ("parity/",)) == ["parity/kl"]


@pytest.mark.slow
def test_world_sizes_1_2_on_cpu(tmp_path):
    pytest.importorskip("vllm")
    pytest.importorskip("ray")
    p = subprocess.run([sys.executable, str(SCRIPT), str(tmp_path), "--world-sizes", "1,2"],
                       capture_output=True, text=True, timeout=900)
    assert p.returncode == 0, (p.stdout[-4000:], p.stderr[-4000:])
    text = (tmp_path / "world_size_check.md").read_text()
    assert text.strip() in p.stdout
    rows = [[c.strip() for c in line.strip("|").split("|")] for line in text.splitlines()[2:]]
    assert [r[:3] for r in rows] == [["1 parity every step", "w1", "PASS"], ["1 parity every step", "w2", "PASS"],
                                     ["2 first rollout across W", "w2 vs w1", "PASS"],
                                     ["- final weights across W", "w2 vs w1", "report"]]
    assert rows[0][3] == rows[1][3] == "2/2 steps KL 0, every logprob equal, ratio 1"
