"""Config composition: both recipes, overrides, presets, unknown keys with a suggestion
(command line and YAML), range errors naming the key, model.path checks, save/reload."""
import dataclasses
import json
import sys
from pathlib import Path

import pytest

from rlhf_exact.config import ConfigError, TrainConfig, load_config, save_config
from rlhf_exact.config import schema
from rlhf_exact.config.compose import available_recipes, config_groups, repo_root

GSM8K = repo_root().parent / "shared" / "data" / "gsm8k" / "train.jsonl"


@pytest.fixture
def model_dir(tmp_path):
    d = tmp_path / "Qwen3-0.6B"
    d.mkdir()
    (d / "config.json").write_text(json.dumps({"model_type": "qwen3"}))
    (d / "model.safetensors").write_bytes(b"")
    return d


def test_tiny_recipe_composes():
    cfg = load_config(["recipe=grpo_qwen3_tiny"])
    assert isinstance(cfg, TrainConfig) and cfg.recipe == "grpo_qwen3_tiny"
    assert cfg.model.tiny.enabled and cfg.model.path is None and cfg.data.name == "synthetic"
    assert cfg.cluster.device == "cpu" and cfg.trainer.world_size == 2 and cfg.sampler.num_samplers == 1
    assert (cfg.algorithm.prompts_per_step, cfg.algorithm.group_size) == (8, 8)
    assert [f.name for f in cfg.reward.functions] == ["synthetic"]
    assert cfg.kernels == "exact" and cfg.algorithm.name == "grpo"
    assert Path(cfg.run.output_dir).is_absolute()


def test_default_recipe_is_tiny():
    assert load_config([]).recipe == "grpo_qwen3_tiny"


def test_qwen3_recipe_composes(model_dir):
    cfg = load_config(["recipe=grpo_qwen3", f"model.path={model_dir}"])
    assert cfg.model.path == str(model_dir) and not cfg.model.tiny.enabled
    assert cfg.data.name == "gsm8k" and cfg.cluster.device == "cuda"
    assert cfg.data.train_files == [str(GSM8K.resolve())]  # ${repo_root:}/../shared/data, normalized
    assert [(f.name, f.weight) for f in cfg.reward.functions] == [("gsm8k", 1.0), ("format", 0.1)]


def test_data_dir_from_environment(model_dir, tmp_path, monkeypatch):
    (tmp_path / "gsm8k").mkdir()
    (tmp_path / "gsm8k" / "train.jsonl").write_text("{}\n")
    (tmp_path / "gsm8k" / "test.jsonl").write_text("{}\n")
    monkeypatch.setenv("RLHF_EXACT_DATA_DIR", str(tmp_path))
    cfg = load_config(["recipe=grpo_qwen3", f"model.path={model_dir}"])
    assert cfg.data.train_files == [str(tmp_path / "gsm8k" / "train.jsonl")]
    assert cfg.eval.files == [str(tmp_path / "gsm8k" / "test.jsonl")]  # the held-out split, for eval/*
    (tmp_path / "gsm8k" / "test.jsonl").unlink()
    with pytest.raises(ConfigError, match=r"eval.files\[0\]='.*test.jsonl' does not exist"):
        load_config(["recipe=grpo_qwen3", f"model.path={model_dir}"])


def test_overrides_typed():
    cfg = load_config(["algorithm.lr=1e-6", "sampler.max_num_seqs=8", "sampling.stop_token_ids=[5,6]",
                       "logging.wandb_entity=me", "run.name=x", "+algorithm.epochs=2"])
    assert cfg.algorithm.lr == 1e-6 and isinstance(cfg.algorithm.lr, float)
    assert cfg.sampler.max_num_seqs == 8 and cfg.sampling.stop_token_ids == [5, 6]
    assert cfg.logging.wandb_entity == "me" and cfg.run.name == "x" and cfg.algorithm.epochs == 2


def test_list_of_records_override():
    cfg = load_config(["reward.functions=[{name:a,weight:2.0},{name:b,weight:-1}]"])
    assert [(f.name, f.weight) for f in cfg.reward.functions] == [("a", 2.0), ("b", -1.0)]
    cfg = load_config(["reward.functions.0.weight=3"])
    assert cfg.reward.functions[0].weight == 3.0


@pytest.mark.parametrize("args", [["algorithm=dapo"], ["algorithm.name=dapo"]])
def test_algorithm_preset(args):
    cfg = load_config(args)
    a = cfg.algorithm
    assert (a.name, a.clip_eps_high, a.loss_aggregation, a.filter_equal_reward_groups) == \
        ("dapo", 0.28, "token_mean", True)
    assert a.prompts_per_step == 8  # the recipe's values still apply on top of the preset


def test_preset_keys_stay_overridable():
    cfg = load_config(["algorithm=dr_grpo", "algorithm.normalize_std=true", "algorithm.clip_eps_high=0.3"])
    assert cfg.algorithm.name == "dr_grpo" and cfg.algorithm.normalize_std and cfg.algorithm.clip_eps_high == 0.3
    assert cfg.algorithm.loss_aggregation == "seq_mean_token_sum"


def test_name_disagreeing_with_preset(tmp_path):
    recipe = tmp_path / "r.yaml"
    recipe.write_text("defaults:\n  - model: tiny\n  - data: synthetic\n  - reward: synthetic\n"
                      "  - algorithm: grpo\n  - cluster: cpu\n  - _self_\nalgorithm:\n  name: dapo\n")
    with pytest.raises(ConfigError, match=r"algorithm=dapo"):
        load_config([f"recipe={recipe}"])


@pytest.mark.parametrize("override, message", [
    ("algorithm.lrr=1e-6", "unknown config key 'algorithm.lrr' (did you mean 'algorithm.lr'?)"),
    ("algorithmm.lr=1e-6", "unknown config key 'algorithmm.lr' (did you mean 'algorithm.lr'?)"),
    ("sampler.max_num_seq=8", "unknown config key 'sampler.max_num_seq' (did you mean 'sampler.max_num_seqs'?)"),
    ("lr=1", "unknown config key 'lr' (did you mean 'algorithm.lr'?)"),
    ("reward.functions.0.wieght=1", "did you mean 'reward.functions.0.weight'?"),
    ("reward.functions=[{name:a,wieght:1}]", "unknown config key 'reward.functions.wieght'"),
])
def test_unknown_key_on_command_line(override, message):
    with pytest.raises(ConfigError) as e:
        load_config([override])
    assert message in str(e.value)


def _recipe(tmp_path, body: str, block: str | None = None) -> Path:
    recipe = tmp_path / "myrecipe.yaml"
    recipe.write_text("defaults:\n  - model: tiny\n  - data: synthetic\n  - reward: synthetic\n"
                      "  - algorithm: grpo\n  - cluster: cpu\n  - _self_\n" + body)
    return recipe


def test_unknown_key_in_recipe_yaml(tmp_path):
    recipe = _recipe(tmp_path, "algorithm:\n  lrr: 1.0e-6\n")
    with pytest.raises(ConfigError) as e:
        load_config([f"recipe={recipe}"])
    assert "unknown config key 'algorithm.lrr'" in str(e.value)
    assert "(did you mean 'algorithm.lr'?)" in str(e.value)


def test_unknown_section_in_recipe_yaml(tmp_path):
    recipe = _recipe(tmp_path, "samplr:\n  max_num_seqs: 4\n")
    with pytest.raises(ConfigError, match=r"unknown config key 'samplr'.*did you mean 'sampler"):
        load_config([f"recipe={recipe}"])


def test_unknown_key_in_config_block(tmp_path, monkeypatch):
    """A typo in configs/<group>/<option>.yaml names the key and the file."""
    import rlhf_exact.config.compose as compose

    configs = tmp_path / "configs"
    for group in ("model", "data", "reward", "algorithm", "cluster"):
        (configs / group).mkdir(parents=True)
        for f in (repo_root() / "configs" / group).glob("*.yaml"):
            (configs / group / f.name).write_text(f.read_text())
    (configs / "algorithm" / "grpo.yaml").write_text("name: grpo\nclip_eps_hi: 0.3\n")
    monkeypatch.setattr(compose, "configs_dir", lambda: configs)
    with pytest.raises(ConfigError) as e:
        load_config([])
    assert "unknown config key 'algorithm.clip_eps_hi'" in str(e.value)
    assert "did you mean 'algorithm.clip_eps_high'?" in str(e.value)


def test_unknown_group_option_and_recipe():
    with pytest.raises(ConfigError, match=r"unknown option 'dapoo' for config group 'algorithm' \(did you mean 'dapo'"):
        load_config(["algorithm=dapoo"])
    with pytest.raises(ConfigError, match=r"unknown recipe 'grpo_qwen3_tiyn' \(did you mean 'grpo_qwen3_tiny'"):
        load_config(["recipe=grpo_qwen3_tiyn"])
    with pytest.raises(ConfigError, match="not KEY=VALUE"):
        load_config(["algorithm.lr"])


def test_type_error_names_key():
    with pytest.raises(ConfigError, match=r"invalid value for 'algorithm.lr'.*'abc'"):
        load_config(["algorithm.lr=abc"])


@pytest.mark.parametrize("override, key", [
    ("algorithm.group_size=1", "algorithm.group_size"),
    ("sampling.temperature=0", "sampling.temperature"),
    ("sampling.top_p=1.5", "sampling.top_p"),
    ("algorithm.kl_coef=-0.1", "algorithm.kl_coef"),
    ("algorithm.kl_estimator=k4", "algorithm.kl_estimator"),
    ("run.steps=0", "run.steps"),
    ("run.keep_last=0", "run.keep_last"),
    ("kernels=fast", "kernels"),
    ("logging.wandb_mode=cloud", "logging.wandb_mode"),
    ("algorithm.adam_beta2=1.0", "algorithm.adam_beta2"),
    ("model.tiny.head_dim=16", "model.tiny.head_dim"),
    ("model.tiny.num_key_value_heads=3", "model.tiny.num_attention_heads"),
    ("data.synthetic.prompt_len=65", "data.synthetic.prompt_len"),
    ("sampling.max_tokens=100", "sampler.max_model_len"),
    ("algorithm.tis=true", "algorithm.tis"),
    ("trainer.compute_dtype=float32", "model.dtype"),
    ("reward.functions=[]", "reward.functions"),
    ("reward.model.batch_tokens=0", "reward.model.batch_tokens"),
    ("reward.model.weight=nan", "reward.model.weight"),
    ("reward.model.num_scorers=-1", "reward.model.num_scorers"),
    ("reward.model.device=tpu", "reward.model.device"),
    ("reward.model.device=cuda", "reward.model.device"),  # num_scorers=0: the driver scores on its CPU
    ("reward.model.deadline_s=0", "reward.model.deadline_s"),
    ("reward.model.deadline_tokens_per_s=0", "reward.model.deadline_tokens_per_s"),
    ("reward.model.max_restarts=-1", "reward.model.max_restarts"),
    ("reward.functions=[{name: model}]", "reward.functions[0].name"),
    ("cluster.device=tpu", "cluster.device"),
    ("sampler.deadline_mb_per_s=0", "sampler.deadline_mb_per_s"),
    ("trainer.deadline_s=0", "trainer.deadline_s"),
    ("trainer.deadline_tokens_per_s=-1", "trainer.deadline_tokens_per_s"),
    ("trainer.deadline_mb_per_s=0", "trainer.deadline_mb_per_s"),
])
def test_range_errors_name_the_key(override, key):
    with pytest.raises(ConfigError) as e:
        load_config([override])
    assert str(e.value).startswith(key + " "), str(e.value)


def test_reward_model_scorers_fit_the_cluster():
    """reward.model.device follows cluster.device for a scorer group (auto), a GPU scorer needs
    a CUDA cluster, colocated scorers sit beside the trainer ranks, others count as GPUs."""
    rm = ["reward.model.path=/rm", "reward.model.num_scorers=2"]
    cfg = load_config(["recipe=grpo_qwen3_tiny_rm", *rm], check_files=False)
    assert cfg.reward.model.resolved_device("cpu") == "cpu" and cfg.reward.model.resolved_device("cuda") == "cuda"
    assert dataclasses.replace(cfg.reward.model, num_scorers=0).resolved_device("cuda") == "cpu"  # the driver's
    cuda = ["recipe=grpo_qwen3_tiny_rm", "cluster=cuda", "trainer.world_size=1", *rm]
    cases = [
        (["recipe=grpo_qwen3_tiny_rm", "reward.model.device=cuda", *rm],
         "reward.model.device must be 'cpu' or 'auto' with cluster.device=cpu"),
        (cuda, "reward.model.num_scorers must be <= trainer.world_size = 1 with cluster.colocate=true"),
        ([*cuda, "cluster.colocate=false", "cluster.num_gpus=3"],
         "cluster.num_gpus must be >= 4 (trainer.world_size + sampler.num_samplers + reward.model.num_scorers, "
         "cluster.colocate=false)"),
    ]
    for overrides, message in cases:
        with pytest.raises(ConfigError) as e:
            load_config(overrides, check_files=False)
        assert str(e.value).startswith(message), str(e.value)
    load_config([*cuda, "cluster.colocate=false", "cluster.num_gpus=3", "reward.model.device=cpu"],
                check_files=False)  # CPU scorers need no GPU


@pytest.mark.parametrize("override, new", [
    ("model.tiny_head_dim=64", "model.tiny.head_dim"),
    ("model.tiny=true", "model.tiny.enabled"),
    ("data.synthetic_num_target_sets=3", "data.synthetic.num_target_sets"),
])
def test_flat_keys_of_earlier_versions_name_the_nested_key(override, new):
    with pytest.raises(ConfigError) as e:
        load_config([override])
    assert f"is now '{new}'" in str(e.value), str(e.value)


@pytest.mark.parametrize("body, old, new", [
    ("tiny_hidden_size: 64", "model.tiny_hidden_size", "model.tiny.hidden_size"),
    ("tiny: true", "model.tiny", "model.tiny.enabled"),
])
def test_flat_key_in_a_recipe_names_the_nested_key(tmp_path, body, old, new):
    recipe = tmp_path / "old.yaml"
    recipe.write_text("defaults:\n  - model: tiny\n  - data: synthetic\n  - reward: synthetic\n  - cluster: cpu\n"
                      f"  - _self_\nmodel:\n  {body}\n")
    with pytest.raises(ConfigError) as e:
        load_config([f"recipe={recipe}"])
    assert f"'{old}'" in str(e.value) and f"is now '{new}'" in str(e.value), str(e.value)


def test_nested_sections_reach_the_run():
    cfg = load_config(["model.tiny.hidden_size=64", "data.synthetic.num_target_sets=3"])
    assert cfg.model.tiny.shape()["hidden_size"] == 64 and cfg.data.synthetic.num_target_sets == 3


def test_tis_allowed_with_default_kernels():
    cfg = load_config(["kernels=default", "algorithm.tis=true"])
    assert cfg.algorithm.tis and cfg.kernels == "default"


def test_missing_model_path_message():
    with pytest.raises(ConfigError) as e:
        load_config(["recipe=grpo_qwen3"])
    msg = str(e.value)
    assert "model.path" in msg and "model.path=/path/to/Qwen3-0.6B" in msg and "recipe=grpo_qwen3_tiny" in msg
    assert "config.json" in msg and "\n" not in msg


def test_bad_model_path(tmp_path):
    with pytest.raises(ConfigError, match="is not a directory"):
        load_config(["recipe=grpo_qwen3", f"model.path={tmp_path / 'nope'}"])
    with pytest.raises(ConfigError, match="has no config.json"):
        load_config(["recipe=grpo_qwen3", f"model.path={tmp_path}"])
    (tmp_path / "config.json").write_text("{}")
    with pytest.raises(ConfigError, match="safetensors"):
        load_config(["recipe=grpo_qwen3", f"model.path={tmp_path}"])


def test_print_config_path_skips_file_checks():
    cfg = load_config(["recipe=grpo_qwen3"], check_files=False)
    assert cfg.model.path is None


def test_saved_config_is_a_recipe(tmp_path):
    cfg = load_config(["algorithm=dapo", "algorithm.lr=3e-4", "run.name=r1"])
    path = save_config(cfg, tmp_path / "config.yaml")
    again = load_config([f"recipe={path}"])
    assert again == cfg  # dataclass equality: every field
    assert again.recipe == "grpo_qwen3_tiny"


def test_every_field_has_a_comment():
    docs = schema.field_docs()
    for cls in [schema.TrainConfig, schema.RewardFunctionConfig, *schema.section_types().values()]:
        for f in dataclasses.fields(cls):
            assert docs[cls.__name__].get(f.name), f"{cls.__name__}.{f.name} has no comment"


def test_recipes_and_groups_found():
    assert {"grpo_qwen3", "grpo_qwen3_tiny"} <= set(available_recipes())
    groups = config_groups()
    assert set(groups["algorithm"]) == {"grpo", "dr_grpo", "dapo"}
    assert {"model", "data", "reward", "cluster"} <= set(groups)


def test_no_heavy_imports():
    import subprocess

    code = "import sys; from rlhf_exact.config import load_config; load_config([]); " \
           "print(sorted(m for m in ('torch', 'ray', 'vllm', 'wandb') if m in sys.modules))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"


def test_tiny_parameter_count_in_the_recipe_is_true():
    """The tiny recipe and its model block state the model's size; it must be the size of
    the model their values build."""
    import re

    from rlhf_exact.config.compose import configs_dir, recipes_dir
    from rlhf_exact.models.qwen3 import Qwen3ForCausalLM
    from rlhf_exact.models.tiny import tiny_config

    m = load_config(["recipe=grpo_qwen3_tiny"]).model
    model = Qwen3ForCausalLM(tiny_config(**m.tiny.shape()), device="meta")
    count = sum(p.numel() for p in model.parameters())
    for f in (recipes_dir() / "grpo_qwen3_tiny.yaml", configs_dir() / "model" / "tiny.yaml"):
        stated = re.findall(r"(\d+)k parameters", f.read_text())
        assert stated and all(int(s) == round(count / 1000) for s in stated), (f, stated, count)


def test_sampler_cuda_graphs_modes():
    """sampler.cuda_graphs takes true, false or "mixed" from the command line (kept as the
    bool or the string the sampler's constructor takes); anything else is one clear error."""
    assert load_config(["sampler.cuda_graphs=mixed"]).sampler.cuda_graphs == "mixed"
    assert load_config(["sampler.cuda_graphs=false"]).sampler.cuda_graphs is False
    assert load_config([]).sampler.cuda_graphs is True
    with pytest.raises(ConfigError, match=r"sampler.cuda_graphs must be true, false or 'mixed', got 'on'"):
        load_config(["sampler.cuda_graphs=on"])


def test_sampler_engine_process():
    """sampler.engine_process: auto is inline on CPU and separate on CUDA; inline on CUDA is
    an error (it has run on CPU only); another word is one clear error."""
    cpu = load_config([]).sampler
    assert cpu.engine_process == "auto" and cpu.resolved_engine_process("cpu") == "inline"
    assert cpu.resolved_engine_process("cuda") == "separate"
    assert load_config(["sampler.engine_process=separate"]).sampler.resolved_engine_process("cpu") == "separate"
    with pytest.raises(ConfigError, match=r"sampler.engine_process must be one of 'auto', 'inline', 'separate', "
                                          r"got 'thread'"):
        load_config(["sampler.engine_process=thread"])
    with pytest.raises(ConfigError, match=r"sampler.engine_process must be 'separate' or 'auto' with "
                                          r"cluster.device=cuda"):
        load_config(["cluster=cuda", "sampler.engine_process=inline"])
