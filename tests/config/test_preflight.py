"""Errors found before anything starts (rlhf_exact/preflight.py), as the user sees them:
`python -m rlhf_exact.train ...` prints one line naming the key and the file (and line),
exits with status 2 and leaves no run directory behind. Covers reward names and user
reward functions (import paths, run.imports), sampler.backend, the model directory (config.json,
tokenizer, safetensors headers), data files and keys, and checkpoints to resume
(checksums, fallback to the newest intact one, a finished run).

    .venv/bin/python -m pytest -q tests/config/test_preflight.py
"""
import dataclasses
import json
import os
import shutil
import subprocess
import sys
import textwrap
import time

import pytest
import torch

from rlhf_exact import train
from rlhf_exact.config import load_config
from rlhf_exact.config.compose import repo_root
from rlhf_exact.runtime.checkpoint import latest_checkpoint, save_run_checkpoint


def cli(*args, env=None):
    """`python -m rlhf_exact.train ARGS` -> (exit status, stderr lines, seconds)."""
    t = time.perf_counter()
    p = subprocess.run([sys.executable, "-m", "rlhf_exact.train", *args], capture_output=True, text=True,
                       cwd=repo_root(), env={**os.environ, **(env or {})}, timeout=300)
    return p.returncode, p.stderr.strip().splitlines(), time.perf_counter() - t


def one_line_exit_2(tmp_path, *args, env=None) -> str:
    out = tmp_path / "runs"
    rc, err, _ = cli(f"run.output_dir={out}", "run.name=x", *args, env=env)
    assert rc == 2, err
    assert len(err) == 1 and err[0].startswith("error: "), err
    assert not out.exists(), "a failed start left a run directory behind"
    return err[0]


@pytest.fixture(scope="module")
def tiny_dir(tmp_path_factory):
    from rlhf_exact.models.tiny import make_tiny_model_dir

    return make_tiny_model_dir(tmp_path_factory.mktemp("model") / "tiny", seed=0, std=0.05, num_hidden_layers=2)


def gsm8k_args(model, data):
    return ["recipe=grpo_qwen3", f"model.path={model}", "cluster=cpu", f"data.train_files=[{data}]",
            "data.max_prompt_tokens=512", "sampler.max_model_len=2048", "trainer.micro_batch_tokens=2048"]


# ---------------------------------------------------------------------------- rewards


def test_reward_typo(tmp_path):
    line = one_line_exit_2(tmp_path, "reward.functions=[{name:synthetc,weight:1.0}]")
    assert line == ("error: reward.functions[0].name: unknown reward 'synthetc' (valid: format, gsm8k, synthetic); "
                    "did you mean 'synthetic'?")


@pytest.fixture
def user_pkg(tmp_path, monkeypatch):
    (tmp_path / "my_rewards.py").write_text(textwrap.dedent("""
        import asyncio
        from rlhf_exact.rewards import register_reward

        def score(text, ids, sample):
            return float(len(ids))

        @register_reward("length_bonus")
        def length_bonus(text, ids, sample):
            return 0.5

        async def judge(text, ids, sample):
            await asyncio.sleep(float(sample.get("delay", 0)))
            return 1.0

        def wrong_args(text):
            return 0.0
    """))
    monkeypatch.syspath_prepend(str(tmp_path))
    yield tmp_path
    from rlhf_exact.rewards import REWARDS

    REWARDS.pop("length_bonus", None)
    sys.modules.pop("my_rewards", None)


def test_user_rewards_by_import_path_and_run_imports(tmp_path, user_pkg):
    env = {"PYTHONPATH": f"{user_pkg}{os.pathsep}{os.environ.get('PYTHONPATH', '')}"}
    line = one_line_exit_2(tmp_path, "reward.functions=[{name:'my_rewards:scroe'}]", env=env)
    assert "reward.functions[0].name: reward 'my_rewards:scroe': module 'my_rewards'" in line
    assert "has no attribute 'scroe'; did you mean 'my_rewards:score'?" in line
    line = one_line_exit_2(tmp_path, "reward.functions=[{name:'my_rewrds:score'}]", env=env)
    assert "module 'my_rewrds' cannot be imported: ModuleNotFoundError" in line
    line = one_line_exit_2(tmp_path, "reward.functions=[{name:'my_rewards:wrong_args'}]", env=env)
    assert "has the signature (text), but rewards are called as fn(completion_text, completion_ids, sample)" in line
    line = one_line_exit_2(tmp_path, "reward.functions=[{name:length_bonus}]", env=env)  # not imported
    assert "unknown reward 'length_bonus'" in line
    line = one_line_exit_2(tmp_path, "run.imports=[my_rewardz]", env=env)
    assert line.startswith("error: run.imports[0]='my_rewardz' cannot be imported: ModuleNotFoundError")

    # resolvable: the entry point gets past the checks (the loop is not started here)
    from rlhf_exact.preflight import check_rewards

    cfg = load_config(["run.imports=[my_rewards]",
                       "reward.functions=[{name:length_bonus},{name:'my_rewards:score'},{name:'my_rewards:judge'}]"])
    check_rewards(cfg)


def test_environment_name_and_kwargs_checked_at_config_time(tmp_path):
    line = one_line_exit_2(tmp_path, "recipe=grpo_qwen3_tiny_tools", "env.name=synthetic_calculater")
    assert line.startswith("error: env.name: unknown environment 'synthetic_calculater'") and \
        line.endswith("did you mean 'synthetic_calculator'?")
    line = one_line_exit_2(tmp_path, "recipe=grpo_qwen3_tiny_tools", "env.kwargs.turnz=2")
    assert line.startswith("error: env.kwargs: environment 'synthetic_calculator' takes") and "turnz" in line
    # values: the environment is built once, with the run's tokenizer, before anything starts
    line = one_line_exit_2(tmp_path, "recipe=grpo_qwen3_tiny_tools", "env.kwargs.turns=0")
    assert line == ("error: env.kwargs.turns=0: environment 'synthetic_calculator' refused it: ValueError: "
                    "synthetic_calculator: turns must be an integer >= 1, got 0")
    line = one_line_exit_2(tmp_path, "recipe=grpo_qwen3_tiny_tools", "env.kwargs.call_bonus=abc")
    assert line == ("error: env.kwargs.turns=3, env.kwargs.call_bonus='abc': environment 'synthetic_calculator' "
                    "refused it: ValueError: could not convert string to float: 'abc'")  # no key named: all
    line = one_line_exit_2(tmp_path, "reward.functions=[]")
    assert line.startswith("error: reward.functions must be a non-empty list") and "env.name" in line


def test_async_reward_timeout_is_an_error(user_pkg):
    from rlhf_exact.rewards import compute_rewards

    samples = [{"delay": 0}, {"delay": 5}, {"delay": 0}]
    t = time.perf_counter()
    r, err = compute_rewards([("my_rewards:judge", 1.0), ("my_rewards:score", 0.5)], ["a"] * 3,
                             [[1, 2]] * 3, samples, on_error="skip", timeout_s=0.5)
    assert time.perf_counter() - t < 3  # awaited together, cut at the timeout
    assert r[0] == r[2] == 2.0 and err[0] is None and err[2] is None
    assert err[1] == ("reward 'my_rewards:judge' failed on sample 1: TimeoutError: no result within "
                      "reward.timeout_s=0.5 s")
    with pytest.raises(RuntimeError, match="TimeoutError: no result within reward.timeout_s=0.5 s"):
        compute_rewards([("my_rewards:judge", 1.0)], ["a"] * 3, [[1]] * 3, samples, timeout_s=0.5)


# ---------------------------------------------------------------------------- sampler backend


def test_sampler_backend_checked_at_config_time(tmp_path):
    line = one_line_exit_2(tmp_path, "sampler.backend=vlm")
    assert line == "error: sampler.backend must be 'vllm' or an import path 'package.module:Class', got 'vlm'"
    line = one_line_exit_2(tmp_path, "sampler.backend=tests.models.oracle_sampler:Oracle")
    assert line.startswith("error: sampler.backend: sampler backend 'tests.models.oracle_sampler:Oracle': module "
                           "'tests.models.oracle_sampler'"), line
    assert line.endswith("has no attribute 'Oracle'; did you mean 'tests.models.oracle_sampler:OracleSampler'?")
    line = one_line_exit_2(tmp_path, "sampler.backend=rlhf_exact.sampler.engine:RequestParams")
    assert line.startswith("error: sampler.backend: sampler backend 'rlhf_exact.sampler.engine:RequestParams' does "
                           "not implement rlhf_exact.sampler.backend.SamplerBackend: no method sample()"), line

    from rlhf_exact.preflight import check_sampler_backend

    check_sampler_backend(load_config(["sampler.backend=tests.models.oracle_sampler:OracleSampler"]))


# ---------------------------------------------------------------------------- model directory


@pytest.mark.parametrize("damage, expect", [
    ("no_tokenizer", "tokenizer.json: not found"),
    ("no_model_type", "config.json: model_type=None"),
    ("truncated", "model.safetensors: not a readable safetensors file"),
    ("wrong_shape", "model.safetensors: tensor 'model.embed_tokens.weight' has shape"),
])
def test_unusable_model_dir(tmp_path, tiny_dir, damage, expect):
    model = tmp_path / "model"
    shutil.copytree(tiny_dir, model)
    if damage == "no_tokenizer":
        (model / "tokenizer.json").unlink()
    elif damage == "no_model_type":
        cfg = json.loads((model / "config.json").read_text())
        del cfg["model_type"]
        (model / "config.json").write_text(json.dumps(cfg))
    elif damage == "truncated":
        f = model / "model.safetensors"
        f.write_bytes(f.read_bytes()[:-1000])
    else:
        cfg = json.loads((model / "config.json").read_text())
        cfg["vocab_size"] *= 2
        (model / "config.json").write_text(json.dumps(cfg))
    data = tmp_path / "d.jsonl"
    data.write_text('{"question": "1+1?", "answer": "#### 2"}\n')
    line = one_line_exit_2(tmp_path, *gsm8k_args(model, data))
    assert line.startswith(f"error: model.path: {model}/") and expect in line, line


# ---------------------------------------------------------------------------- data files


@pytest.mark.parametrize("content, expect", [
    ('{"question": "a", "answer": "1"}\n' * 4 + '{"question": "b", answer: 2}\n',
     "d.jsonl:5: malformed row: not valid JSON"),
    ('{"q": "a", "a": "1"}\n',
     "d.jsonl:1: malformed row: no key 'question' (keys: q, a) (set data.prompt_key=FIELD, the record field "
     "holding the prompt text)"),
    ('{"question": "a", "solution": "1"}\n',
     "d.jsonl:1: malformed row: no key 'answer' (keys: question, solution) (set data.answer_key=FIELD, the record "
     "field holding the reference answer)"),
    ("", "no usable prompt rows in"),
])
def test_bad_data_file(tmp_path, tiny_dir, content, expect):
    data = tmp_path / "d.jsonl"
    data.write_text(content)
    line = one_line_exit_2(tmp_path, *gsm8k_args(tiny_dir, data))
    assert line.startswith("error: data.train_files: ") and str(data) in line and expect in line, line


def test_prompt_too_long_is_found_with_the_models_tokenizer(tmp_path, tiny_dir):
    data = tmp_path / "d.jsonl"
    data.write_text('{"question": "short", "answer": "1"}\n' + json.dumps({"question": "x " * 600, "answer": "2"}))
    line = one_line_exit_2(tmp_path, *gsm8k_args(tiny_dir, data))
    assert f"{data}:2: prompt has" in line and "> data.max_prompt_tokens=512" in line
    # eval.files: tokenized as the evaluator loads them (they were only read, and failed at the start)
    good = tmp_path / "good.jsonl"
    good.write_text('{"question": "short", "answer": "1"}\n')
    line = one_line_exit_2(tmp_path, *gsm8k_args(tiny_dir, good), "eval.every_steps=1", f"eval.files=[{data}]")
    assert line.startswith(f"error: eval.files: {data}:2: prompt has ") and \
        line.endswith(" tokens > data.max_prompt_tokens=512"), line


def test_sequences_beyond_the_models_positions(tmp_path):
    """vLLM refused sampler.max_model_len=2048 for a model of 128 positions as its engines
    started, a traceback 40 s in; the config's key and the model's config.json instead."""
    from rlhf_exact.models.tiny import make_tiny_model_dir

    model = make_tiny_model_dir(tmp_path / "m128", seed=0, num_hidden_layers=1, max_position_embeddings=128)
    data = tmp_path / "d.jsonl"
    data.write_text('{"question": "1+1?", "answer": "#### 2"}\n')
    line = one_line_exit_2(tmp_path, *gsm8k_args(model, data))
    assert line == (f"error: sampler.max_model_len=2048: the model has max_position_embeddings=128 "
                    f"({model}/config.json), the longest sequence it takes; set sampler.max_model_len <= 128")


def test_a_damaged_weight_file_names_file_and_tensor(tmp_path, tiny_dir):
    """Bytes overwritten in place (same size, the header intact) once ran until the first
    parity check: "EXACT MODE VIOLATED ... KL nan", blaming the kernels."""
    from tests.models.test_hf_io import overwrite_in_place

    model = tmp_path / "model"
    shutil.copytree(tiny_dir, model)
    overwrite_in_place(model / "model.safetensors", "model.norm.weight", 5, float("nan"))
    data = tmp_path / "d.jsonl"
    data.write_text('{"question": "1+1?", "answer": "#### 2"}\n')
    line = one_line_exit_2(tmp_path, *gsm8k_args(model, data))
    assert line == (f"error: model.path: {model}/model.safetensors: tensor 'model.norm.weight' holds 1 non-finite "
                    f"value(s) (NaN or inf, the first at index (5,)): the file is damaged; download or export the "
                    f"model again")


# ---------------------------------------------------------------------------- resume


def fake_run(tmp_path, steps_done, ckpt_steps, final=False):
    """A run directory as the loop leaves it (config, metrics, checkpoints, final model)."""
    run_dir = tmp_path / "runs" / "r"
    cfg = load_config([f"run.output_dir={tmp_path / 'runs'}", "run.name=r", "run.steps=4"])
    from rlhf_exact.config import save_config
    from rlhf_exact.runtime.metrics import METRICS_FILE

    run_dir.mkdir(parents=True)
    save_config(cfg, run_dir / "config.yaml")
    (run_dir / METRICS_FILE).write_text("".join(json.dumps({"step": s, "reward/mean": 0.1 * s}) + "\n"
                                                for s in range(1, steps_done + 1)))
    for s in ckpt_steps:
        save_run_checkpoint(run_dir, s, {"model": {"w": torch.full((256,), float(s))}}, {"data": {}})
    if final:
        (run_dir / "final_model").mkdir()
        (run_dir / "final_model" / "config.json").write_text("{}")
    return run_dir


@pytest.mark.parametrize("how", ["size", "content"])
def test_corrupt_newest_checkpoint_falls_back(tmp_path, how, capsys):
    from rlhf_exact.preflight import preflight
    from rlhf_exact.runtime.rundir import locate_run_dir, resume_checkpoint

    run_dir = fake_run(tmp_path, 4, [2, 4])
    f = run_dir / "checkpoints" / "step_000004" / "model.safetensors"
    data = bytearray(f.read_bytes())
    if how == "size":
        del data[-100:]
    else:
        data[-8] ^= 0x01  # a flipped bit in the tensor data: same size, still a valid file
    f.write_bytes(bytes(data))
    cfg = load_config([f"run.output_dir={tmp_path / 'runs'}", "run.name=r", "run.steps=4", "run.resume=auto"])
    report = preflight(cfg, locate_run_dir(cfg))
    assert report.finished is None
    why = "bytes expected" if how == "size" else "SHA-256 differs"
    assert len(report.notes) == 2 and why in report.notes[0], report.notes
    assert report.notes[0].startswith("checkpoint step_000004 does not verify (corrupt checkpoint file ")
    assert f"moved it to {run_dir / 'checkpoints' / 'corrupt-step_000004'}" in report.notes[0]
    assert report.notes[1] == "resuming from step_000002, the newest intact checkpoint"
    assert resume_checkpoint(cfg, run_dir) == run_dir / "checkpoints" / "step_000002"
    assert (run_dir / "checkpoints" / "corrupt-step_000004" / "model.safetensors").read_bytes() == bytes(data)


def test_explicit_corrupt_checkpoint_is_an_error(tmp_path):
    run_dir = fake_run(tmp_path, 4, [2])
    f = run_dir / "checkpoints" / "step_000002" / "model.safetensors"
    data = bytearray(f.read_bytes())
    data[-8] ^= 0x01
    f.write_bytes(bytes(data))
    rc, err, _ = cli(f"run.resume={run_dir / 'checkpoints' / 'step_000002'}")
    assert rc == 2 and len(err) == 1, err
    assert err[0] == (f"error: run.resume: corrupt checkpoint file {f}: its SHA-256 differs from the one recorded in "
                      f"{f.parent / 'COMPLETE'} (same size, changed content)")


def test_resume_hashes_each_file_once(tmp_path, monkeypatch):
    """preflight hashes every file of the checkpoint to resume from, once, and names it
    report.verified; loading it the way the loop does (checksums=False) hashes nothing
    again, reads the tensors bitwise, and still catches a file cut short since."""
    from rlhf_exact.preflight import preflight
    from rlhf_exact.runtime import checkpoint
    from rlhf_exact.runtime.rundir import locate_run_dir, resume_checkpoint

    run_dir = fake_run(tmp_path, 4, [2, 4])
    hashed, sha256 = [], checkpoint._sha256
    monkeypatch.setattr(checkpoint, "_sha256", lambda f: hashed.append(f) or sha256(f))  # counts, real digest
    cfg = load_config([f"run.output_dir={tmp_path / 'runs'}", "run.name=r", "run.steps=6", "run.resume=auto"])
    report = preflight(cfg, locate_run_dir(cfg))
    path = resume_checkpoint(cfg, run_dir)
    assert report.verified == path == run_dir / "checkpoints" / "step_000004"
    files = sorted(path / name for name in json.loads((path / "COMPLETE").read_text()))
    assert sorted(hashed) == files and len(files) == 2  # model.safetensors, meta.json: each once
    tensors, meta = checkpoint.load_run_checkpoint(path, checksums=False)
    assert sorted(hashed) == files and meta["step"] == 4
    assert torch.equal(tensors["model"]["w"], torch.full((256,), 4.0))
    f = path / "model.safetensors"
    f.write_bytes(f.read_bytes()[:-100])
    with pytest.raises(checkpoint.CheckpointError, match=f"corrupt checkpoint file {f}: .* bytes expected"):
        checkpoint.load_run_checkpoint(path, checksums=False)


def test_resume_auto_on_a_finished_run(tmp_path):
    run_dir = fake_run(tmp_path, 4, [2, 4], final=True)
    rc, err, seconds = cli(f"run.output_dir={tmp_path / 'runs'}", "run.name=r", "run.steps=4", "run.resume=auto")
    assert rc == 0, err
    assert err == [f"run r is finished: 4 of run.steps=4 steps, final model in {run_dir / 'final_model'} "
                   f"(train longer with a larger run.steps)"]
    print(f"finished run answered in {seconds:.2f} s (interpreter start included)")
    assert seconds < 10
    assert latest_checkpoint(run_dir).name == "step_000004"  # nothing touched
    # a larger run.steps continues it (the loop is not started here: only the checks)
    from rlhf_exact.preflight import preflight

    cfg = load_config([f"run.output_dir={tmp_path / 'runs'}", "run.name=r", "run.steps=6", "run.resume=auto"])
    assert preflight(cfg, run_dir).finished is None


def test_help_pipe_and_section_title():
    p = subprocess.run(f"{sys.executable} -m rlhf_exact.train --help algorithm | true", shell=True,
                       capture_output=True, text=True, cwd=repo_root())
    assert p.returncode == 0 and p.stderr == "", p.stderr  # no BrokenPipeError traceback
    title = train.help_text("algorithm").splitlines()[4]
    assert title == ("algorithm: The policy-gradient objective and the optimizer. configs/algorithm/{grpo,dr_grpo,"
                     "dapo}.yaml are presets of these fields (`algorithm=dapo`); each field stays overridable.")


def test_synthetic_vocab_beyond_the_model_is_one_line(tmp_path):
    line = one_line_exit_2(tmp_path, "recipe=grpo_qwen3_tiny", "data.synthetic.vocab_size=600")
    assert line == ("error: data.synthetic.vocab_size=600: the model has 512 token ids (model.tiny.vocab_size); "
                    "set it <= 512 or null (the tokenizer's size)")


def test_cuda_ipc_weight_sync_needs_colocated_cuda(tmp_path):
    line = one_line_exit_2(tmp_path, "recipe=grpo_qwen3_tiny", "cluster.weight_sync=cuda_ipc")
    assert line.startswith("error: cluster.weight_sync") and "cluster.colocate=true" in line, line


# ---------------------------------------------------------------------------- cluster resources


def test_actors_beyond_the_cpus_are_one_line(tmp_path):
    """trainer.world_size=4 on 2 CPUs once waited forever at "starting 4 trainer rank(s)"."""
    line = one_line_exit_2(tmp_path, "recipe=grpo_qwen3_tiny", "trainer.world_size=4", "cluster.num_cpus=2")
    assert line == ("error: trainer.world_size=4, sampler.num_samplers=1: the actors need 2.5 CPU (4 trainer rank(s) "
                    "x 0.5 + 1 sampler(s) x 0.5), Ray gets 2 (cluster.num_cpus); ask for fewer, or cluster.num_cpus "
                    "to let Ray share the cores")


def test_actors_beyond_the_visible_gpus_are_one_line(tmp_path):
    """cluster.num_gpus null on CUDA: the GPUs torch sees are what Ray gets."""
    gpus = torch.cuda.device_count()
    line = one_line_exit_2(tmp_path, "recipe=grpo_qwen3_tiny", "cluster=cuda", "cluster.num_cpus=64",
                           f"trainer.world_size={gpus + 1}")
    assert line == (f"error: trainer.world_size={gpus + 1}, sampler.num_samplers=1: the actors need {gpus + 1} GPU "
                    f"({gpus + 1} trainer rank(s) x 0.55 + 1 sampler(s) x 0.4, colocated), Ray gets {gpus} "
                    f"(torch.cuda.device_count()); ask for fewer")  # cluster=cuda colocates


def test_gpus_to_place_fractional_shares():
    from rlhf_exact.config.schema import COLOCATED_GPU_SHARE
    from rlhf_exact.preflight import gpus_to_place, resource_demand

    t, s = COLOCATED_GPU_SHARE["trainer"], COLOCATED_GPU_SHARE["sampler"]
    assert gpus_to_place([1.0] * 3) == 3
    assert gpus_to_place([t] * 2 + [s] * 2) == 2  # a rank and a sampler per GPU
    assert gpus_to_place([t] * 1 + [s] * 3) == 2  # 0.55 + 0.4, then 0.4 + 0.4
    assert gpus_to_place([t] * 3) == 3  # two ranks never share one
    assert gpus_to_place([]) == 0
    cfg = load_config(["recipe=grpo_qwen3_tiny", "cluster=cuda", "cluster.colocate=true", "trainer.world_size=2",
                       "sampler.num_samplers=3"], check_files=False)
    assert resource_demand(cfg) == {"CPU": (5.0, "2 trainer rank(s) x 1 + 3 sampler(s) x 1"),
                                    "GPU": (3.0, "2 trainer rank(s) x 0.55 + 3 sampler(s) x 0.4, colocated")}
    assert resource_demand(cfg, samplers=False)["GPU"] == (2.0, "2 trainer rank(s) x 0.55, colocated")
    # a scorer beside each rank fills its GPU: 0.55 + 0.4 + 0.05
    r = COLOCATED_GPU_SHARE["scorer"]
    assert gpus_to_place([t] * 2 + [s] * 2 + [r] * 2) == 2
    cfg = load_config(["recipe=grpo_qwen3_tiny_rm", "cluster=cuda", "trainer.world_size=2", "sampler.num_samplers=2",
                       "reward.model.num_scorers=2"], check_files=False)
    assert resource_demand(cfg) == {
        "CPU": (6.0, "2 trainer rank(s) x 1 + 2 sampler(s) x 1 + 2 scorer(s) x 1"),
        "GPU": (2.0, "2 trainer rank(s) x 0.55 + 2 sampler(s) x 0.4 + 2 scorer(s) x 0.05, colocated")}
    cpu_scorers = dataclasses.replace(cfg, reward=dataclasses.replace(
        cfg.reward, model=dataclasses.replace(cfg.reward.model, device="cpu")))
    assert resource_demand(cpu_scorers)["GPU"] == (2.0, "2 trainer rank(s) x 0.55 + 2 sampler(s) x 0.4, colocated")
    assert resource_demand(cfg, samplers=False)["CPU"] == (2.0, "2 trainer rank(s) x 1")  # train_rm: no scorers


@pytest.fixture(scope="module")
def other_tokenizer_rm(tmp_path_factory):
    """A reward model whose tokenizer is not the tiny policy's (700 tokens, not 512)."""
    from rlhf_exact.models.tiny import make_tiny_reward_model_dir

    return make_tiny_reward_model_dir(tmp_path_factory.mktemp("rm") / "rm-700", vocab_size=700, num_hidden_layers=1)


@pytest.mark.parametrize("which,expect", [
    ("missing", "is not a directory"),
    ("policy", "config.json"),
    ("other_tokenizer", "is not the policy's tokenizer"),
])
def test_unusable_reward_model(tmp_path, tiny_dir, other_tokenizer_rm, which, expect):
    path = {"missing": tmp_path / "nope", "policy": tiny_dir, "other_tokenizer": other_tokenizer_rm}[which]
    line = one_line_exit_2(tmp_path, "recipe=grpo_qwen3_tiny_rm", f"reward.model.path={path}")
    assert line.startswith("error: reward.model.path: ") and expect in line, line
