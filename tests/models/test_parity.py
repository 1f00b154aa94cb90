"""The trainer-side parity chain (docs/design.md, "The numerics contract"), bit for bit:
torch.equal on fp32 logprobs, never a tolerance, never retried.

The chain:
  1. trainer(batch m) == trainer(batch n): the trainer-forward logprob of a token does
     not depend on the micro-batch size, the order of sequences, padding vs packing,
     activation checkpointing, or FSDP2 with 1 vs 2 ranks (fp32 master weights, bf16
     compute through MixedPrecisionPolicy, rotary table fp32);
  2. trainer prefill == paged prefill: the prompt logprobs that the paged generation
     loop computes from its (chunked, batched) prefill equal the trainer's;
  3. paged decode == paged prefill: each generated token's logprob, taken at the
     decode step that sampled it (any batch composition: sequences joining and
     leaving, chunked prompts alongside decodes), equals the trainer's logprob of the
     same token in a forward over prompt + completion, i.e. a prefill.
So the trainer's logprob equals the sampler's decode logprob, whatever the batches.

CPU tests run in CI; the `gpu` variants run the same checks on CUDA, plus a
Qwen3-0.6B-shaped model and a Qwen3-8B-shaped layer stack with random bf16 weights.

    python -m pytest tests/models/test_parity.py -q
"""
import os
import random
import sys

import pytest
import torch
import torch.multiprocessing as mp

from rlhf_exact.models.hf_io import load_model
from rlhf_exact.models.qwen3 import Qwen3Config, Qwen3ForCausalLM, pack_sequences, packed_logprobs

from .conftest import random_sequences
from .generate import GenerationRequest, generate

TEMPERATURE = 0.8
LENGTHS = [1, 2, 17, 70, 16, 33, 5, 48]


def trainer_logprobs(model, seqs, device, temperature=TEMPERATURE, **pack_kw) -> list[torch.Tensor]:
    """Per sequence, the trainer-forward logprobs of tokens 1..n-1 ([n - 1] fp32, CPU)."""
    batch = pack_sequences(seqs, **pack_kw).to(device)
    lp = packed_logprobs(model, batch, temperature).detach().cpu()
    starts = batch.cu_seqlens.tolist()
    return [lp[starts[i]:starts[i] + len(s) - 1] for i, s in enumerate(seqs)]


def assert_bitwise(got: list[torch.Tensor], want: list[torch.Tensor], what: str):
    assert len(got) == len(want)
    for i, (a, b) in enumerate(zip(got, want)):
        assert a.dtype == b.dtype == torch.float32 and a.shape == b.shape, (what, i)
        assert torch.equal(a, b), f"{what}: sequence {i} differs (max |diff| {(a - b).abs().max().item():.3e})"


# ---------------------------------------------------------------------------------- 1. trainer

@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float32], ids=["bf16", "fp32"])
def test_trainer_bitwise_microbatch_sizes_and_orders(tiny_dir, device, dtype):
    model, _ = load_model(tiny_dir, dtype=dtype, device=device)
    seqs = random_sequences(8, LENGTHS, seed=3)
    with torch.no_grad():
        whole = trainer_logprobs(model, seqs, device)
        for size in (1, 3, 5):
            parts = []
            for i in range(0, len(seqs), size):
                parts += trainer_logprobs(model, seqs[i:i + size], device)
            assert_bitwise(parts, whole, f"micro-batch size {size}")
        order = list(range(len(seqs)))
        random.Random(0).shuffle(order)
        shuffled = trainer_logprobs(model, [seqs[i] for i in order], device)
        assert_bitwise([shuffled[order.index(i)] for i in range(len(seqs))], whole, "shuffled order")
        reverse = trainer_logprobs(model, seqs[::-1], device)
        assert_bitwise(reverse[::-1], whole, "reversed order")


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float32], ids=["bf16", "fp32"])
def test_trainer_bitwise_padding_vs_packing(tiny_dir, device, dtype):
    model, _ = load_model(tiny_dir, dtype=dtype, device=device)
    seqs = random_sequences(6, LENGTHS, seed=4)
    with torch.no_grad():
        packed = trainer_logprobs(model, seqs, device)
        assert_bitwise(trainer_logprobs(model, seqs, device, right_pad=7), packed, "right padding")
        assert_bitwise(trainer_logprobs(model, seqs, device, pad_sequence=29), packed, "extra padding sequence")
        assert_bitwise(trainer_logprobs(model, seqs, device, right_pad=3, pad_sequence=64), packed, "both")


def test_trainer_bitwise_activation_checkpointing(tiny_dir, device):
    """Logprobs and, with them, every parameter gradient are equal with activation
    checkpointing on and off (the recomputed forward gives the same bits)."""
    seqs = random_sequences(4, LENGTHS, seed=5)
    results = []
    for ckpt in (False, True):
        model, _ = load_model(tiny_dir, dtype=torch.bfloat16, device=device, activation_checkpointing=ckpt)
        batch = pack_sequences(seqs).to(device)
        lp = packed_logprobs(model, batch, TEMPERATURE)
        (lp * batch.target_mask).sum().backward()
        results.append((lp.detach().cpu(), {n: p.grad.cpu() for n, p in model.named_parameters()}))
    (lp_off, g_off), (lp_on, g_on) = results
    assert torch.equal(lp_on, lp_off)
    for name in g_off:
        assert torch.equal(g_on[name], g_off[name]), name


# ---------------------------------------------------------------------------------- 1b. FSDP2

def _fsdp_worker(rank: int, world: int, port: int, model_dir: str, seqs: list, out_dir: str) -> None:
    import torch.distributed as dist
    from safetensors.torch import save_file
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.fsdp import MixedPrecisionPolicy, fully_shard

    torch.set_num_threads(1)
    store = dist.TCPStore("127.0.0.1", port, world, is_master=False)  # the parent's, bound before the spawn
    dist.init_process_group("gloo", store=store, rank=rank, world_size=world)
    try:
        model, _ = load_model(model_dir, dtype=torch.float32)  # fp32 master weights
        mesh = init_device_mesh("cpu", (world,))
        mp_policy = MixedPrecisionPolicy(param_dtype=torch.bfloat16, reduce_dtype=torch.float32,
                                         cast_forward_inputs=False)
        for layer in model.model.layers:
            fully_shard(layer, mesh=mesh, mp_policy=mp_policy)
        fully_shard(model, mesh=mesh, mp_policy=mp_policy)
        assert model.model.rotary_emb.cos.dtype == torch.float32
        mine = seqs[rank::world]
        batch = pack_sequences(mine)
        lp = packed_logprobs(model, batch, TEMPERATURE)
        (lp * batch.target_mask).sum().backward()  # the training path runs end to end
        starts = batch.cu_seqlens.tolist()
        out = {f"seq{rank + world * i}": lp.detach()[starts[i]:starts[i] + len(s) - 1].contiguous()
               for i, s in enumerate(mine)}
        save_file(out, os.path.join(out_dir, f"rank{rank}.safetensors"))
    finally:
        dist.destroy_process_group()
    # done, result on disk: leave without interpreter teardown, where torch's C++ side
    # can crash a spawned gloo rank (seen twice in CI, in tests/trainer/multi_gpu_check.py)
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(0)


def _run_fsdp(world: int, model_dir, seqs, out_dir) -> list[torch.Tensor]:
    from safetensors.torch import load_file

    import torch.distributed as dist

    os.makedirs(out_dir)
    store = dist.TCPStore("127.0.0.1", 0, world, is_master=True, wait_for_workers=False)  # the OS picks the port
    mp.start_processes(_fsdp_worker, args=(world, store.port, str(model_dir), seqs, str(out_dir)),
                       nprocs=world, join=True, start_method="spawn")
    merged = {}
    for r in range(world):
        merged.update(load_file(os.path.join(out_dir, f"rank{r}.safetensors")))
    return [merged[f"seq{i}"] for i in range(len(seqs))]


@pytest.mark.slow
def test_fsdp2_parity_one_vs_two_ranks(tiny_dir, tmp_path):
    """FSDP2 (gloo, CPU), fp32 master + bf16 compute: 1 rank over the whole batch, 2
    ranks over half each, and the plain bf16 model give the same logprobs."""
    seqs = random_sequences(6, [o for o in LENGTHS if o > 1], seed=6)
    one = _run_fsdp(1, tiny_dir, seqs, tmp_path / "w1")
    two = _run_fsdp(2, tiny_dir, seqs, tmp_path / "w2")
    assert_bitwise(two, one, "FSDP2 2 ranks vs 1 rank")
    plain, _ = load_model(tiny_dir, dtype=torch.bfloat16)
    with torch.no_grad():
        assert_bitwise(one, trainer_logprobs(plain, seqs, "cpu"), "FSDP2 vs unsharded bf16 model")


# ---------------------------------------------------------------------------------- 2, 3. paged

SCHEDULES = {  # name: (max_num_seqs, max_num_batched_tokens)
    "one_at_a_time": (1, 4096),
    "chunked_mixed": (3, 7),
    "wide": (8, 64),
}


def _requests(vocab: int, prompt_lens, new_tokens, seed: int) -> list[GenerationRequest]:
    prompts = random_sequences(len(prompt_lens), prompt_lens, vocab=vocab, seed=seed)
    return [GenerationRequest(prompt=p, max_new_tokens=new_tokens[i % len(new_tokens)], arrival=2 * i, seed=100 + i)
            for i, p in enumerate(prompts)]


def check_paged_chain(model, device, requests, greedy: bool) -> None:
    """Chain links 2 and 3 for `requests` under every schedule in SCHEDULES."""
    runs = {}
    for name, (max_seqs, budget) in SCHEDULES.items():
        steps = []
        runs[name] = generate(model, requests, temperature=TEMPERATURE, greedy=greedy, max_num_seqs=max_seqs,
                              max_num_batched_tokens=budget, prompt_logprobs=True,
                              on_step=lambda step, sched: steps.append(sched))
        if name == "chunked_mixed":  # the schedule really mixes prefill chunks, decodes, joins and leaves
            sizes = {len(s) for s in steps}
            assert len(sizes) > 1 and max(sizes) > 1, sizes
            assert any(n > 1 for s in steps for _, n in s) and any(n == 1 for s in steps for _, n in s)
    base = runs["one_at_a_time"]
    for name, res in runs.items():  # same tokens, same bits, whatever the schedule
        for i, (a, b) in enumerate(zip(res, base)):
            assert a.token_ids == b.token_ids, (name, i)
            assert torch.equal(a.logprobs, b.logprobs), (name, i)
            assert torch.equal(a.prompt_logprobs, b.prompt_logprobs), (name, i)

    full = [list(r.prompt) + o.token_ids for r, o in zip(requests, base)]
    with torch.no_grad():
        trainer = trainer_logprobs(model, full, device)
    prompt_part = [t[:len(r.prompt) - 1] for t, r in zip(trainer, requests)]
    decode_part = [t[len(r.prompt) - 1:] for t, r in zip(trainer, requests)]
    for name, res in runs.items():
        assert_bitwise([o.prompt_logprobs for o in res], prompt_part, f"{name}: trainer prefill vs paged prefill")
        assert_bitwise([o.logprobs for o in res], decode_part, f"{name}: trainer vs paged decode")


@pytest.mark.parametrize("greedy", [False, True], ids=["sampled", "greedy"])
def test_paged_parity_decode_prefill_trainer(tiny_dir, device, greedy):
    model, _ = load_model(tiny_dir, dtype=torch.bfloat16, device=device)
    requests = _requests(512, [1, 5, 16, 17, 40, 3], [9, 4, 20], seed=8)
    check_paged_chain(model, device, requests, greedy)


def test_paged_parity_untied_fp32(tiny_untied_dir, device):
    model, _ = load_model(tiny_untied_dir, dtype=torch.float32, device=device)
    check_paged_chain(model, device, _requests(512, [33, 2, 15], [6, 12], seed=9), greedy=False)


def test_fused_projections_same_bits(tiny_untied_dir, device):
    """The sampler's fused q/k/v and gate/up (fuse_projections) generate the same tokens
    and logprobs as the trainer's separate linears compute, under every schedule; the
    HF-named parameters stay views of the fused tensors."""
    from torch import nn

    model, _ = load_model(tiny_untied_dir, dtype=torch.bfloat16, device=device)
    fused, _ = load_model(tiny_untied_dir, dtype=torch.bfloat16, device=device)
    fused.fuse_projections()
    assert fused.projections_fused() and not model.projections_fused()
    attn = fused.model.layers[1].self_attn
    assert torch.equal(attn.qkv_weight[attn.q_proj.out_features:][:attn.k_proj.out_features],
                       model.model.layers[1].self_attn.k_proj.weight)
    requests = _requests(512, [1, 5, 16, 17, 40, 3], [9, 4, 20], seed=12)
    runs = generate(fused, requests, temperature=TEMPERATURE, greedy=False, max_num_seqs=3,
                    max_num_batched_tokens=24, prompt_logprobs=True)
    full = [list(r.prompt) + o.token_ids for r, o in zip(requests, runs)]
    with torch.no_grad():
        trainer = trainer_logprobs(model, full, device)
        assert_bitwise(trainer_logprobs(fused, full, device), trainer, "fused varlen forward vs separate")
    assert_bitwise([o.prompt_logprobs for o in runs], [t[:len(r.prompt) - 1] for t, r in zip(trainer, requests)],
                   "fused paged prefill vs trainer")
    assert_bitwise([o.logprobs for o in runs], [t[len(r.prompt) - 1:] for t, r in zip(trainer, requests)],
                   "fused paged decode vs trainer")
    with torch.no_grad():  # a copy by name reaches the fused tensor
        fused.model.layers[0].mlp.up_proj.weight.mul_(2)
    mlp = fused.model.layers[0].mlp
    assert torch.equal(mlp.gate_up_weight[mlp.gate_proj.out_features:], mlp.up_proj.weight)
    mlp.up_proj.weight = nn.Parameter(mlp.up_proj.weight.detach().clone())  # replaced, not copied into
    assert not fused.projections_fused()


# ---------------------------------------------------------------------------------- GPU: real shapes

def _random_model(cfg: Qwen3Config) -> Qwen3ForCausalLM:
    model = Qwen3ForCausalLM(cfg, device="cuda", dtype=torch.bfloat16)
    model.init_weights(seed=0, std=0.02, norm_noise=0.1)
    return model


QWEN3_0_6B = dict(vocab_size=151936, hidden_size=1024, intermediate_size=3072, num_hidden_layers=28,
                  num_attention_heads=16, num_key_value_heads=8, head_dim=128, tie_word_embeddings=True)
QWEN3_8B_STACK = dict(vocab_size=151936, hidden_size=4096, intermediate_size=12288, num_hidden_layers=2,
                      num_attention_heads=32, num_key_value_heads=8, head_dim=128, tie_word_embeddings=False)


@pytest.mark.gpu
@pytest.mark.slow
@pytest.mark.parametrize("shape", [QWEN3_0_6B, QWEN3_8B_STACK], ids=["qwen3-0.6b", "qwen3-8b-2-layers"])
def test_gpu_parity_chain_real_shapes(shape):
    model = _random_model(Qwen3Config(**shape, max_position_embeddings=4096))
    seqs = random_sequences(6, [1, 300, 1025, 7, 129, 64], vocab=shape["vocab_size"], seed=10)
    with torch.no_grad():
        whole = trainer_logprobs(model, seqs, "cuda")
        assert_bitwise([x for i in range(len(seqs)) for x in trainer_logprobs(model, seqs[i:i + 1], "cuda")],
                       whole, "micro-batch size 1")
        assert_bitwise(trainer_logprobs(model, seqs[::-1], "cuda")[::-1], whole, "reversed order")
        assert_bitwise(trainer_logprobs(model, seqs, "cuda", right_pad=5, pad_sequence=100), whole, "padding")
    requests = _requests(shape["vocab_size"], [1, 40, 200, 17], [8, 3], seed=11)
    check_paged_chain(model, "cuda", requests, greedy=False)
