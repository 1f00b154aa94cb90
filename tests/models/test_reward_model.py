"""The reward model (rlhf_exact/models/reward.py) and its Hugging Face format.

  Closeness to transformers (a tolerance, never a bitwise claim): our export loads in
  transformers' Qwen3ForSequenceClassification and its scores on right-padded batches
  are within 1e-3 (fp32) / 5e-2 (bf16) of ours; a checkpoint that transformers itself
  saved loads in ours, tensor for tensor, with the same closeness.
  Invariance (torch.equal, never retried): a sequence's score alone equals its score in
  shuffled batches of 1..64 sequences of mixed lengths, right-padded with pad tokens.
  Negative control: the stock op table is not batch-invariant. On CPU the stock bf16
  linear happens to give the same bits for these shapes (oneDNN's bf16 GEMM does not
  split K by batch size here), so the control runs in fp32, where the stock GEMM's
  blocking does change with the batch and scores differ.
  Bad input: wrong num_labels, a missing score.weight, a policy directory: one line
  naming the file and the key.
"""
import json
import random

import pytest
import torch

from rlhf_exact.models.hf_io import load_model, save_model
from rlhf_exact.models.ops import EXACT, STOCK
from rlhf_exact.models.reward import REWARD_ARCHITECTURE, load_reward_model, score_sequences
from rlhf_exact.models.tiny import make_tiny_reward_model_dir

from .conftest import random_sequences

transformers = pytest.importorskip("transformers")
TOL = {torch.float32: 1e-3, torch.bfloat16: 5e-2}


@pytest.fixture(scope="module")
def rm_dir(tmp_path_factory):
    return make_tiny_reward_model_dir(tmp_path_factory.mktemp("rm") / "tiny-rm", seed=7, std=0.05, norm_noise=0.1,
                                      num_hidden_layers=2)


def _mixed(n=64, seed=0):
    rng = random.Random(seed)
    return random_sequences(n, [rng.randint(1, 96) for _ in range(n)], seed=seed)


def _hf_scores(hf, seqs, pad_id):
    """transformers' scores of right-padded rows."""
    width = max(map(len, seqs))
    ids = torch.tensor([s + [pad_id] * (width - len(s)) for s in seqs])
    mask = torch.tensor([[1] * len(s) + [0] * (width - len(s)) for s in seqs])
    with torch.no_grad():
        return hf(input_ids=ids, attention_mask=mask).logits[:, 0].float()


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=["fp32", "bf16"])
def test_transformers_loads_our_export(rm_dir, dtype):
    ours, config = load_reward_model(rm_dir, dtype=dtype)
    hf = transformers.AutoModelForSequenceClassification.from_pretrained(rm_dir, dtype=dtype)
    assert type(hf).__name__ == REWARD_ARCHITECTURE and hf.config.num_labels == 1
    assert hf.config.pad_token_id == config.pad_token_id is not None
    seqs = _mixed(16)
    seqs[3] = seqs[3] + [config.pad_token_id] * 2  # ends in pad: both score an earlier token
    torch.testing.assert_close(score_sequences(ours, seqs), _hf_scores(hf, seqs, config.pad_token_id),
                               rtol=0, atol=TOL[dtype])


def test_loads_a_transformers_checkpoint(tmp_path, rm_dir):
    hf_cfg = transformers.Qwen3Config(vocab_size=512, hidden_size=64, intermediate_size=96, num_hidden_layers=2,
                                      num_attention_heads=4, num_key_value_heads=2, head_dim=32, num_labels=1,
                                      pad_token_id=0, max_position_embeddings=256, tie_word_embeddings=False)
    torch.manual_seed(0)
    hf = transformers.Qwen3ForSequenceClassification(hf_cfg).float().eval()
    with torch.no_grad():
        for name, p in hf.named_parameters():
            if name.endswith("norm.weight"):
                p.add_(0.1 * torch.randn_like(p))
    hf.save_pretrained(tmp_path / "hf_rm")
    ours, config = load_reward_model(tmp_path / "hf_rm", dtype=torch.float32)
    theirs = hf.state_dict()
    for name, t in ours.state_dict().items():
        assert torch.equal(t, theirs[name]), name
    seqs = _mixed(8, seed=1)
    torch.testing.assert_close(score_sequences(ours, seqs), _hf_scores(hf, seqs, 0), rtol=0, atol=1e-3)


def _alone_and_batched(model, seqs, pad_id, seed=0):
    """(each sequence scored alone, each scored inside shuffled, right-padded batches of
    1, 2, 3, 5, 8, 13, 32 and 64 sequences)."""
    alone = torch.stack([score_sequences(model, [s])[0] for s in seqs])
    rng = random.Random(seed)
    batched = torch.full_like(alone, float("nan"))
    for size in (1, 2, 3, 5, 8, 13, 32, 64):
        order = list(range(len(seqs)))
        rng.shuffle(order)
        for k in range(0, len(order), size):
            ids = order[k:k + size]
            padded = [seqs[i] + [pad_id] * rng.randint(0, 4) for i in ids]
            batched[ids] = score_sequences(model, padded)
    return alone, batched


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=["fp32", "bf16"])
def test_score_is_batch_invariant(rm_dir, dtype):
    model, config = load_reward_model(rm_dir, dtype=dtype)
    seqs = _mixed(64)
    alone, batched = _alone_and_batched(model, seqs, config.pad_token_id)
    assert torch.equal(alone, batched)


def test_stock_ops_are_not_batch_invariant(rm_dir):
    """Negative control (module docstring: fp32 on CPU)."""
    model, config = load_model(rm_dir, dtype=torch.float32, ops=STOCK, architecture=REWARD_ARCHITECTURE)
    assert all(m.ops is STOCK for m in model.modules() if hasattr(m, "ops"))
    seqs = _mixed(64)
    alone = torch.stack([score_sequences(model, [s])[0] for s in seqs])
    together = score_sequences(model, seqs)
    assert not torch.equal(alone, together)
    exact, _ = load_model(rm_dir, dtype=torch.float32, ops=EXACT, architecture=REWARD_ARCHITECTURE)
    assert torch.equal(torch.stack([score_sequences(exact, [s])[0] for s in seqs]), score_sequences(exact, seqs))


def _copy(src, dst):
    import shutil

    shutil.copytree(src, dst)
    return dst


def _one_line_error(path, *words):
    with pytest.raises(ValueError) as e:
        load_reward_model(path)
    msg = str(e.value)
    assert "\n" not in msg, msg
    for w in words:
        assert w in msg, msg
    return msg


def test_wrong_num_labels(tmp_path, rm_dir):
    d = _copy(rm_dir, tmp_path / "two")
    cfg = json.loads((d / "config.json").read_text())
    cfg["id2label"], cfg["label2id"] = {"0": "bad", "1": "good"}, {"bad": 0, "good": 1}
    (d / "config.json").write_text(json.dumps(cfg))
    _one_line_error(d, str(d / "config.json"), "'id2label'", "num_labels=2")
    del cfg["id2label"], cfg["label2id"]  # transformers' default: 2 labels
    (d / "config.json").write_text(json.dumps(cfg))
    _one_line_error(d, str(d / "config.json"), "num_labels=2")


def test_missing_score_weight(tmp_path, rm_dir):
    from safetensors.torch import load_file, save_file

    d = _copy(rm_dir, tmp_path / "headless")
    tensors = load_file(d / "model.safetensors")
    del tensors["score.weight"]
    save_file(tensors, d / "model.safetensors", metadata={"format": "pt"})
    _one_line_error(d, str(d / "model.safetensors"), "'score.weight'")


def test_policy_directory_is_not_a_reward_model(tiny_dir):
    _one_line_error(tiny_dir, str(tiny_dir / "config.json"), "Qwen3ForCausalLM", REWARD_ARCHITECTURE)


def test_save_round_trip(tmp_path, rm_dir):
    model, config = load_reward_model(rm_dir, dtype=torch.float32)
    out = save_model(model, tmp_path / "again", dtype=torch.float32, tokenizer_from=rm_dir)
    again, _ = load_reward_model(out, dtype=torch.float32)
    for (name, a), b in zip(model.state_dict().items(), again.state_dict().values()):
        assert torch.equal(a, b), name
