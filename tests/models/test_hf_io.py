"""Checkpoint I/O: round trips (single file and sharded), transformers loads what we
save, the tiny factory's tokenizer loads with AutoTokenizer, and bad input raises a
ValueError naming the file and the tensor with nothing half-loaded.

    python -m pytest tests/models/test_hf_io.py -q
"""
import json
import shutil

import pytest
import torch
from safetensors.torch import load_file, save_file

from rlhf_exact.models import hf_io as ckpt
from rlhf_exact.models.hf_io import load_model, load_state_dict_into, read_state_dict, save_model
from rlhf_exact.models.qwen3 import Qwen3Config, Qwen3ForCausalLM


def _copy(src, tmp_path, name="m"):
    dst = tmp_path / name
    shutil.copytree(src, dst)
    return dst


def _assert_same_tensors(a: dict, b: dict):
    assert a.keys() == b.keys()
    for k in a:
        assert torch.equal(a[k], b[k]), k


@pytest.mark.parametrize("tied", [True, False], ids=["tied", "untied"])
def test_round_trip_single_and_sharded(tiny_dir, tiny_untied_dir, tmp_path, tied):
    src = tiny_dir if tied else tiny_untied_dir
    model, config = load_model(src, dtype=torch.bfloat16)
    assert config.tie_word_embeddings == tied
    assert (model.lm_head.weight is model.model.embed_tokens.weight) == tied
    original = read_state_dict(src)
    assert ("lm_head.weight" in original) != tied

    single = save_model(model, tmp_path / "single", tokenizer_from=src)
    sharded = save_model(model, tmp_path / "sharded", tokenizer_from=src, max_shard_bytes=200_000)
    assert (single / "model.safetensors").is_file()
    index = json.loads((sharded / "model.safetensors.index.json").read_text())
    assert len(set(index["weight_map"].values())) > 1
    for d in (single, sharded):
        assert (d / "tokenizer.json").is_file() and (d / "generation_config.json").is_file()
        _assert_same_tensors(read_state_dict(d), original)
        again, _ = load_model(d, dtype=torch.bfloat16)
        _assert_same_tensors(again.state_dict(), model.state_dict())
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")], "temporary directories left behind"


@pytest.mark.parametrize("tied", [True, False], ids=["tied", "untied"])
def test_transformers_loads_what_we_save(tiny_dir, tiny_untied_dir, tmp_path, tied):
    from transformers import AutoTokenizer
    from transformers import Qwen3ForCausalLM as HFQwen3

    src = tiny_dir if tied else tiny_untied_dir
    model, _ = load_model(src, dtype=torch.float32)
    out = save_model(model, tmp_path / "out", tokenizer_from=src, dtype=torch.float32, max_shard_bytes=300_000)
    hf = HFQwen3.from_pretrained(out, dtype=torch.float32)
    hf_sd = hf.state_dict()
    for name, t in model.state_dict().items():
        assert torch.equal(hf_sd[name], t), name
    assert set(hf_sd) == set(model.state_dict())
    tok = AutoTokenizer.from_pretrained(out)
    ids = tok("Question: Ann has 12 apples. 12+7=19")["input_ids"]
    assert max(ids) < model.config.vocab_size
    assert tok.decode(ids) == "Question: Ann has 12 apples. 12+7=19"
    assert tok.eos_token == "<|im_end|>" and tok.convert_tokens_to_ids("<|im_end|>") == model.config.eos_token_id


def test_hf_checkpoint_loads(tmp_path):
    """A directory written by transformers' own save_pretrained (sharded) loads."""
    from transformers import Qwen3Config as HFConfig
    from transformers import Qwen3ForCausalLM as HFQwen3

    cfg = HFConfig(vocab_size=96, hidden_size=64, intermediate_size=96, num_hidden_layers=2,
                   num_attention_heads=2, num_key_value_heads=1, head_dim=32, tie_word_embeddings=False,
                   max_position_embeddings=128)
    torch.manual_seed(0)
    hf = HFQwen3(cfg).to(torch.bfloat16)
    hf.save_pretrained(tmp_path / "hf", max_shard_size="30KB")
    assert (tmp_path / "hf" / "model.safetensors.index.json").is_file()
    model, config = load_model(tmp_path / "hf", dtype=torch.bfloat16)
    assert config.num_key_value_heads == 1 and config.rope_theta == cfg.rope_parameters["rope_theta"]
    for name, t in hf.state_dict().items():
        assert torch.equal(model.state_dict()[name], t), name


def test_save_replaces_atomically_and_cleans_up_on_failure(tiny_dir, tmp_path, monkeypatch):
    model, _ = load_model(tiny_dir)
    dest = save_model(model, tmp_path / "ckpt")
    before = (dest / "model.safetensors").read_bytes()

    def boom(*a, **k):
        raise OSError("disk full")

    monkeypatch.setattr(ckpt, "save_file", boom)
    with torch.no_grad():
        model.model.norm.weight.add_(1)
    with pytest.raises(OSError, match="disk full"):
        save_model(model, dest)
    assert (dest / "model.safetensors").read_bytes() == before  # old checkpoint intact
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ckpt"]  # no temporary left
    monkeypatch.undo()
    save_model(model, dest)  # replaces the existing directory
    assert torch.equal(read_state_dict(dest)["model.norm.weight"], model.model.norm.weight)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ckpt"]


# ---------------------------------------------------------------------------------- bad input


def _rewrite_weights(d, fn):
    f = d / "model.safetensors"
    tensors = load_file(f)
    fn(tensors)
    save_file(tensors, f, metadata={"format": "pt"})


def _bad_input_cases():
    def other_arch(d):
        cfg = json.loads((d / "config.json").read_text())
        cfg.update(model_type="llama", architectures=["LlamaForCausalLM"])
        (d / "config.json").write_text(json.dumps(cfg))
        return r"config\.json.*model_type='llama'"

    def missing(d):
        _rewrite_weights(d, lambda t: t.pop("model.layers.1.mlp.up_proj.weight"))
        return r"model\.safetensors.*missing tensor 'model\.layers\.1\.mlp\.up_proj\.weight'"

    def extra(d):
        _rewrite_weights(d, lambda t: t.__setitem__("model.layers.2.mlp.up_proj.weight", torch.zeros(2, 2)))
        return r"model\.safetensors.*unexpected tensor 'model\.layers\.2\.mlp\.up_proj\.weight'"

    def misshaped(d):
        _rewrite_weights(d, lambda t: t.__setitem__("model.layers.0.self_attn.k_proj.weight",
                                                    torch.zeros(128, 128, dtype=torch.bfloat16)))
        return r"model\.safetensors.*'model\.layers\.0\.self_attn\.k_proj\.weight' has shape \(128, 128\), " \
               r"expected \(64, 128\)"

    def int_tensor(d):
        _rewrite_weights(d, lambda t: t.__setitem__("model.norm.weight", torch.ones(128, dtype=torch.int32)))
        return r"model\.safetensors.*'model\.norm\.weight' has dtype I32"

    def tokenizer_too_big(d):
        tok = json.loads((d / "tokenizer.json").read_text())
        tok["added_tokens"].append({"id": 600, "content": "<|extra|>", "single_word": False, "lstrip": False,
                                    "rstrip": False, "normalized": False, "special": True})
        (d / "tokenizer.json").write_text(json.dumps(tok))
        return r"tokenizer\.json.*token ids up to 600.*'model\.embed_tokens\.weight' has only 512 rows"

    def tied_lm_head_differs(d):
        _rewrite_weights(d, lambda t: t.__setitem__("lm_head.weight", t["model.embed_tokens.weight"] + 1))
        return r"'lm_head\.weight' differs from 'model\.embed_tokens\.weight'.*tie_word_embeddings"

    def pickle_only(d):
        (d / "model.safetensors").rename(d / "pytorch_model.bin")
        return r"no model\.safetensors.*pytorch_model\.bin: pickle checkpoints are not loaded"

    def unsupported_feature(d):
        cfg = json.loads((d / "config.json").read_text())
        cfg["attention_bias"] = True
        (d / "config.json").write_text(json.dumps(cfg))
        return r"config\.json: unsupported Qwen3 setting.*attention_bias"

    return [other_arch, missing, extra, misshaped, int_tensor, tokenizer_too_big, tied_lm_head_differs,
            pickle_only, unsupported_feature]


@pytest.mark.parametrize("case", _bad_input_cases(), ids=lambda f: f.__name__)
def test_bad_input_raises_naming_file_and_tensor(tiny_dir, tmp_path, case):
    d = _copy(tiny_dir, tmp_path)
    pattern = case(d)
    with pytest.raises(ValueError, match=pattern):
        load_model(d)


def test_bad_shard_index(tiny_dir, tmp_path):
    model, _ = load_model(tiny_dir)
    d = save_model(model, tmp_path / "sharded", max_shard_bytes=200_000)
    shard = sorted(d.glob("model-*.safetensors"))[-1]
    shard.unlink()
    with pytest.raises(ValueError, match=rf"model\.safetensors\.index\.json: tensor '.*' is mapped to {shard.name}"):
        load_model(d)


def test_nothing_half_loaded(tiny_dir):
    model, _ = load_model(tiny_dir)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    state = {k: torch.zeros_like(v) for k, v in read_state_dict(tiny_dir).items()}
    state["model.norm.weight"] = torch.zeros(7)  # the last tensor is bad: earlier ones must not be copied
    with pytest.raises(ValueError, match=r"'model\.norm\.weight' has shape \(7,\)"):
        load_state_dict_into(model, state)
    _assert_same_tensors(model.state_dict(), before)


def test_config_round_trip_and_real_shapes():
    """HF names and shapes of our module equal transformers' for the Qwen3 0.6B and 8B
    configurations (built on the meta device)."""
    from transformers import Qwen3Config as HFConfig
    from transformers import Qwen3ForCausalLM as HFQwen3

    shapes = {
        "0.6B": dict(vocab_size=151936, hidden_size=1024, intermediate_size=3072, num_hidden_layers=28,
                     num_attention_heads=16, num_key_value_heads=8, head_dim=128, tie_word_embeddings=True),
        "8B": dict(vocab_size=151936, hidden_size=4096, intermediate_size=12288, num_hidden_layers=36,
                   num_attention_heads=32, num_key_value_heads=8, head_dim=128, tie_word_embeddings=False),
    }
    for name, kw in shapes.items():
        hf_cfg = HFConfig(**kw, max_position_embeddings=40960, rope_parameters={"rope_type": "default",
                                                                                 "rope_theta": 1_000_000.0})
        cfg = Qwen3Config.from_hf_dict(hf_cfg.to_dict())
        assert Qwen3Config.from_hf_dict(cfg.to_hf_dict()) == cfg
        with torch.device("meta"):
            hf = HFQwen3(hf_cfg)
        ours = ckpt.expected_tensors(cfg)
        theirs = {k: tuple(v.shape) for k, v in hf.state_dict().items()}
        if cfg.tie_word_embeddings:
            theirs.pop("lm_head.weight")
        assert ours == theirs, name
        ours_model = Qwen3ForCausalLM(cfg, device="meta")
        assert sum(p.numel() for p in ours_model.parameters()) == sum(p.numel() for p in hf.parameters()), name


def test_reads_transformers_4_style_qwen3_config():
    """The config.json of the published Qwen3-0.6B (rope_theta at top level, torch_dtype)."""
    d = {"architectures": ["Qwen3ForCausalLM"], "attention_bias": False, "attention_dropout": 0.0,
         "bos_token_id": 151643, "eos_token_id": 151645, "head_dim": 128, "hidden_act": "silu",
         "hidden_size": 1024, "initializer_range": 0.02, "intermediate_size": 3072,
         "max_position_embeddings": 40960, "max_window_layers": 28, "model_type": "qwen3",
         "num_attention_heads": 16, "num_hidden_layers": 28, "num_key_value_heads": 8, "rms_norm_eps": 1e-06,
         "rope_scaling": None, "rope_theta": 1000000, "sliding_window": None, "tie_word_embeddings": True,
         "torch_dtype": "bfloat16", "transformers_version": "4.51.0", "use_cache": True,
         "use_sliding_window": False, "vocab_size": 151936}
    cfg = Qwen3Config.from_hf_dict(d)
    assert (cfg.rope_theta, cfg.head_dim, cfg.num_key_value_heads, cfg.tie_word_embeddings) == (1e6, 128, 8, True)
    assert cfg.eos_token_id == 151645


def test_model_imports_no_ray_vllm_wandb():
    import subprocess
    import sys

    code = ("import sys, rlhf_exact.models.qwen3, rlhf_exact.models.hf_io, rlhf_exact.models.tiny; "
            "print(sorted(m for m in ('ray', 'vllm', 'wandb', 'transformers') "
            "if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"


def overwrite_in_place(f, name: str, index: int, value: float) -> None:
    """Damage safetensors file f in place (its size and header unchanged): element `index`
    of tensor `name` becomes `value`, written in the tensor's dtype."""
    raw = bytearray(f.read_bytes())
    n = int.from_bytes(raw[:8], "little")
    meta = json.loads(raw[8:8 + n])[name]
    dtype = {"BF16": torch.bfloat16, "F16": torch.float16, "F32": torch.float32}[meta["dtype"]]
    item = torch.tensor([value], dtype=dtype).view(torch.uint8).numpy().tobytes()
    at = 8 + n + meta["data_offsets"][0] + index * len(item)
    raw[at:at + len(item)] = item
    f.write_bytes(bytes(raw))


@pytest.mark.parametrize("value", [float("nan"), float("inf")])
def test_a_non_finite_weight_names_its_file_and_tensor(tiny_dir, tmp_path, value):
    """Bytes overwritten in place: the header still reads, the numbers do not. Loading
    (and check_finite, preflight's check) names the file and the tensor, not the kernels."""
    src = _copy(tiny_dir, tmp_path)
    f = src / "model.safetensors"
    size = f.stat().st_size
    name = "model.layers.1.mlp.down_proj.weight"
    cols = read_state_dict(src)[name].shape[1]
    overwrite_in_place(f, name, 3 * cols + 7, value)
    assert f.stat().st_size == size
    expect = (f"{f}: tensor '{name}' holds 1 non-finite value(s) (NaN or inf, the first at index (3, 7)): the file "
              f"is damaged; download or export the model again")
    with pytest.raises(ValueError) as e:
        ckpt.check_finite(src)
    assert str(e.value) == expect
    with pytest.raises(ValueError) as e:
        load_model(src)
    assert str(e.value) == expect
    ckpt.check_finite(tiny_dir)  # the intact directory passes
