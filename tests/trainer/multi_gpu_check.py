"""Multi-GPU exact run: FSDP2 trainer ranks, a sampler on its own device and
a bucketed weight sync between them, checked bit for bit, in one command.

For each trainer world size W (spawned processes, plain torch.distributed; no Ray, no
vLLM, so it runs on the bare GPU image: torch + triton), one run starts W
`TrainerWorker` ranks (cuda:0..W-1, or CPU/gloo) and one sampler process (the LAST GPU,
cuda:N-1, or CPU) that runs the parity chain's paged generation oracle
(`tests/models/generate.py`, on the exact kernels) on a bf16 model loaded with
`load_model`. A run:

  1. trainer logprobs of fixed sequences (planned over W ranks) -> compared across W:
     W=1 is the reference, torch.equal per sequence;
  2. per step: the sampler generates a rollout at the trainer spec's temperature; the
     trainer recomputes its logprobs (FSDP2, W ranks); sampler == trainer per token,
     torch.equal. Step 0 uses the checkpoint's weights, every later rollout the weights
     synced after the previous training step (the last rollout follows the last sync);
  3. per step: one `train_minibatch` (old logprobs = the sampler's, fixed synthetic
     advantages) + `end_step`, then `full_weights("bfloat16")` on every rank and a
     broadcast from trainer rank 0 to the sampler in --bucket-mb buckets (each bucket
     one flat uint8 buffer) over a separate 2-process group (NCCL on GPU, gloo on CPU).
     The sampler validates the manifest, copies into its parameters in place, then
     sends its parameters back and rank 0 checks them with torch.equal;
  4. the run of the largest W is repeated in fresh processes: per-step losses and grad
     norms, every rollout (tokens, logprobs) and the final fp32 master weights must be
     identical. (Old logprobs equal the trainer's, so the ratio is exactly 1 and the
     loss is fixed by the lengths and advantages; the grad norms carry the bits.)

The NCCL variables that `exact_kernels.enable_exact_mode()` pins (Tree, Simple, one
channel, NVLS off) apply to the weight-sync communicator too: a broadcast's bits do
not depend on them, its speed does (one channel). With a single GPU (a smoke test,
W=1 only) the sampler shares cuda:0 and the sync runs over gloo: NCCL refuses two
ranks of one communicator on the same device. The table is printed last and written
to --out when given; exit code 1 if any check fails.

On a machine with Ray, the same oracle drives the real groups instead
of this harness: `python scripts/world_size_check.py OUT --device cuda --world-sizes 1,2
sampler.backend=tests.models.oracle_sampler:OracleSampler` (the real loop, SamplerGroup,
TrainerGroup and weight sync, from the repository root; no vLLM engine is started).

    python tests/trainer/multi_gpu_check.py                                  # N >= 2 GPUs, Qwen3-0.6B shape
    python tests/trainer/multi_gpu_check.py --device cpu --world-sizes 1,2   # gloo, tiny model (CI)

It lives in tests/ because its sampler is the test oracle (tests/models/generate.py):
nothing under scripts/ imports tests/.
"""
from __future__ import annotations

import argparse
import importlib.util
import json
import math
import os
import pathlib
import pickle
import statistics
import socket
import sys
import tempfile
import time
import traceback

ROOT = pathlib.Path(__file__).resolve().parents[2]

# Model shapes (make_tiny_model_dir overrides). "0.6b" is Qwen3-0.6B's layer stack with
# random weights; its locally trained BPE tokenizer stops at a few hundred tokens (the
# corpus has no more merges), which fits the 151936-row embedding, so load_model
# accepts the directory. Token ids are drawn from the whole vocabulary.
SHAPES = {
    "tiny": dict(num_hidden_layers=2),  # hidden 128, 4 q / 2 kv heads of 32, vocab 512
    "0.6b": dict(vocab_size=151936, hidden_size=1024, intermediate_size=3072, num_hidden_layers=28,
                 num_attention_heads=16, num_key_value_heads=8, head_dim=128, tie_word_embeddings=True,
                 max_position_embeddings=4096),
}
# Per shape: part-1 (prompt, completion) lengths, micro-batch token budget, rollout
# prompt lengths, new tokens per request, generation token budget per step.
WORKLOADS = {
    "tiny": dict(p1_prompts=[1, 5, 17, 33, 2, 40, 9, 16], p1_completions=[8, 1, 20, 5, 12, 3, 30, 7],
                 max_tokens=64, prompts=[1, 5, 16, 17, 40, 3], new_tokens=[9, 4, 20], gen_budget=64),
    "0.6b": dict(p1_prompts=[1, 300, 1025, 7, 129, 64, 500, 33], p1_completions=[64, 1, 200, 17, 300, 5, 100, 250],
                 max_tokens=1024, prompts=[1, 40, 200, 17, 513, 64, 7, 128], new_tokens=[64, 16, 128],
                 gen_budget=256),
}
ADVANTAGES = (1.0, -1.0, 0.5, -0.5, 0.25, -0.75)  # synthetic, per sequence (cyclic)
PART = {1: "1 trainer FSDP2 W vs W=1", 2: "2 sampler vs trainer", 3: "3 weight sync", 4: "4 repeat run"}


def gathered(w, dtype):
    """The worker's full_weights as tensors on rank 0 (types.HostTensors), None elsewhere."""
    packed = w.full_weights(dtype)
    return None if packed is None else packed.tensors()

def free_port() -> int:
    """A port free now (the process that binds it later may lose a race for it)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--device", choices=("cuda", "cpu"), default=None, help="default: cuda if available")
    p.add_argument("--world-sizes", default=None,
                   help="trainer world sizes, e.g. 1,2 (default 1,2, plus 4 with >= 4 GPUs); the smallest is "
                        "the part-1 reference")
    p.add_argument("--shape", choices=tuple(SHAPES), default=None,
                   help="random model and workload size (default: 0.6b on cuda, tiny on cpu)")
    p.add_argument("--model-dir", default=None, help="use this HF Qwen3 directory instead of a random model")
    p.add_argument("--bucket-mb", type=float, default=64.0, help="weight-sync bucket size in MiB")
    p.add_argument("--steps", type=int, default=3, help="training steps per run (>= 1)")
    p.add_argument("--temperature", type=float, default=0.8, help="sampler AND trainer temperature")
    p.add_argument("--lr", type=float, default=1e-4, help="large enough that a step changes bf16 weights")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--repeat-world-size", type=int, default=None, help="W of part 4 (default: the largest)")
    p.add_argument("--timeout-s", type=float, default=1500.0, help="per run; the run's processes are stopped")
    p.add_argument("--workdir", default=None, help="model and per-run files (default: a temp dir, removed)")
    p.add_argument("--out", default=None, help="also write the table to this file")
    a = p.parse_args(argv)
    if a.steps < 1 or a.bucket_mb <= 0 or a.temperature <= 0:
        p.error("--steps must be >= 1, --bucket-mb and --temperature positive")
    return a


def _bootstrap() -> None:
    """Make `rlhf_exact` and `exact_kernels` (folder kernels/) importable from a bare
    checkout, as scripts/gpu_env.sh does. Runs in the parent and in every spawned child."""
    if str(ROOT) not in sys.path:
        sys.path.insert(0, str(ROOT))
    if "exact_kernels" not in sys.modules and importlib.util.find_spec("exact_kernels") is None:
        spec = importlib.util.spec_from_file_location("exact_kernels", ROOT / "kernels" / "__init__.py",
                                                      submodule_search_locations=[str(ROOT / "kernels")])
        mod = importlib.util.module_from_spec(spec)
        sys.modules["exact_kernels"] = mod
        spec.loader.exec_module(mod)


def _log(who: str, msg: str) -> None:
    print(f"[{who}] {msg}", flush=True)


# ------------------------------------------------------------------------------ workload

def part1_sequences(cfg: dict, vocab: int, seed: int) -> list[dict]:
    """Fixed (prompt, completion) slots for part 1; token ids in [3, vocab)."""
    import torch

    g = torch.Generator().manual_seed(seed)
    return [{"prompt": torch.randint(3, vocab, (p,), generator=g).tolist(),
             "completion": torch.randint(3, vocab, (c,), generator=g).tolist()}
            for p, c in zip(cfg["p1_prompts"], cfg["p1_completions"])]


def rollout_requests(cfg: dict, vocab: int, seed: int, step: int):
    """The sampler's requests at `step` (new prompts every step, all seeded)."""
    import torch

    from tests.models.generate import GenerationRequest

    g = torch.Generator().manual_seed(seed * 7919 + step)
    return [GenerationRequest(prompt=torch.randint(3, vocab, (n,), generator=g).tolist(),
                              max_new_tokens=cfg["new_tokens"][i % len(cfg["new_tokens"])], arrival=i,
                              seed=seed * 1000 + step * 100 + i)
            for i, n in enumerate(cfg["prompts"])]


# ------------------------------------------------------------------------------ sync group

class SyncGroup:
    """The 2-process weight-sync group {trainer rank 0: 0, sampler: 1}, outside the
    trainer's default group (TrainerWorker owns that one), on its own TCPStore. NCCL
    with buffers on the member's GPU, or gloo with buffers on the CPU (on CPU runs, and
    with one GPU: NCCL refuses two ranks on the same device)."""

    def __init__(self, me: int, port: int, device, backend: str, timeout_s: float):
        import datetime

        import torch
        import torch.distributed as dist

        self.me = me
        self.device = device if backend == "nccl" else torch.device("cpu")  # where the buffers live
        timeout = datetime.timedelta(seconds=timeout_s)
        store = dist.PrefixStore("weight_sync", dist.TCPStore("127.0.0.1", port, 2, me == 0, timeout=timeout))
        if backend == "nccl":
            opts = dist.ProcessGroupNCCL.Options()
            opts._timeout = timeout
            self.pg = dist.ProcessGroupNCCL(store, me, 2, opts)
        else:
            self.pg = dist.ProcessGroupGloo(store, me, 2, timeout)

    def bcast(self, t, root: int) -> None:
        import torch.distributed as dist

        opts = dist.BroadcastOptions()
        opts.rootRank, opts.rootTensor = root, 0
        self.pg.broadcast([t], opts).wait()

    def bcast_object(self, obj, root: int):
        """A pickled object from `root` to the other member."""
        import torch

        if self.me == root:
            # cloned: the buffer gloo holds is torch's own memory, never a Python object's
            data = torch.frombuffer(bytearray(pickle.dumps(obj)), dtype=torch.uint8).clone().to(self.device)
            n = torch.tensor([data.numel()], dtype=torch.int64, device=self.device)
        else:
            n = torch.zeros(1, dtype=torch.int64, device=self.device)
        self.bcast(n, root)
        if self.me != root:
            data = torch.empty(int(n.item()), dtype=torch.uint8, device=self.device)
        self.bcast(data, root)
        return obj if self.me == root else pickle.loads(data.cpu().numpy().tobytes())

    def close(self) -> None:
        """Both members, at their end: one last broadcast, so neither leaves while the
        other is mid-collective, then shut the backend down while the interpreter is
        whole. A gloo group left to interpreter exit can still hold work (tensors) in its
        threads while Python tears down, which can crash the process."""
        import torch

        self.bcast(torch.zeros(1, dtype=torch.int64, device=self.device), 0)
        self.pg.shutdown()
        self.pg = None

    def send_weights(self, tensors: dict, bucket_bytes: int) -> dict:
        """Broadcast HF-named tensors to the other member: a manifest {name: [shape,
        dtype]}, then the buckets, each one flat uint8 buffer. Returns sizes and
        seconds (total: manifest + packing + copies + transfer; comm: the broadcasts)."""
        import torch

        from rlhf_exact.sampler.worker_ext import dtype_name

        t0 = time.perf_counter()
        manifest = {n: [list(t.shape), dtype_name(t.dtype)] for n, t in tensors.items()}
        self.bcast_object(manifest, self.me)
        plan, comm_s, total = buckets(manifest, bucket_bytes), 0.0, 0
        for bucket in plan:
            buf = torch.cat([tensors[n].reshape(-1).view(torch.uint8) for n, _ in bucket]).to(self.device)
            _sync(self.device)
            t1 = time.perf_counter()
            self.bcast(buf, self.me)
            _sync(self.device)
            comm_s += time.perf_counter() - t1
            total += buf.numel()
        return {"bytes": total, "buckets": len(plan), "total_s": time.perf_counter() - t0, "comm_s": comm_s}

    def recv_weights(self, root: int, bucket_bytes: int, params: dict | None) -> dict:
        """Receive send_weights. params: copy in place into these, after the whole
        manifest is checked against them (worker_ext.check_manifest, as the vLLM
        sampler does); None: return the tensors, on CPU."""
        import torch

        from rlhf_exact.sampler.worker_ext import check_manifest

        manifest = self.bcast_object(None, root)
        if params is not None:
            errors = check_manifest(params, manifest)
            if errors:
                raise RuntimeError(f"weight sync manifest rejected: {errors[:3]}")
        out = {}
        for bucket in buckets(manifest, bucket_bytes):
            buf = torch.empty(sum(nb for _, nb in bucket), dtype=torch.uint8, device=self.device)
            self.bcast(buf, root)
            off = 0
            for name, nb in bucket:
                shape, dtype = manifest[name]
                t = buf[off:off + nb].view(getattr(torch, dtype)).view(shape)
                if params is not None:
                    with torch.no_grad():
                        params[name].copy_(t)
                else:
                    out[name] = t.cpu().clone()
                off += nb
        if params is not None:
            _sync(next(iter(params.values())).device)
        return out


def buckets(manifest: dict[str, list], bucket_bytes: int) -> list[list[tuple[str, int]]]:
    """Consecutive (name, nbytes) runs of at most bucket_bytes (a larger tensor alone).
    Sender and receiver both derive it from the manifest, so they agree."""
    import torch

    out, size = [[]], 0
    for name, (shape, dtype) in manifest.items():
        nbytes = math.prod(shape) * getattr(torch, dtype).itemsize
        if out[-1] and size + nbytes > bucket_bytes:
            out.append([])
            size = 0
        out[-1].append((name, nbytes))
        size += nbytes
    return out


def _sync(device) -> None:
    import torch

    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _env_in_force() -> dict:
    import torch

    keys = sorted(k for k in os.environ if k.startswith(("NCCL_", "CUBLAS_WORKSPACE")))
    env = {k: os.environ[k] for k in keys}
    env["tf32"] = str(torch.backends.cuda.matmul.allow_tf32)
    if torch.cuda.is_available() and torch.distributed.is_nccl_available():
        env["nccl_version"] = ".".join(map(str, torch.cuda.nccl.version()))
    return env


# ------------------------------------------------------------------------------ processes

def _proc(index: int, world: int, ports: tuple[int, int], spec: dict, job: dict) -> None:
    """One spawned process. After its work (results written, groups shut down) it leaves
    with os._exit(0) and skips interpreter teardown: a spawned child otherwise ends in
    sys.exit, and CI saw torch's C++ side crash there twice (a sampler SIGSEGV, a trainer
    rank 1 "terminate called without an active exception", SIGABRT), each time after
    every check had passed and with no Python frame left on the stack. Nothing of the
    run remains to be done at that point: every result travels through files, none
    through a multiprocessing queue. A failure still raises into spawn's handler, which
    records the traceback and exits 1."""
    _bootstrap()
    if index < world:
        _trainer(index, world, ports, spec, job)
    else:
        _sampler(world, ports, spec, job)
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(0)


def _trainer(rank: int, world: int, ports: tuple[int, int], spec: dict, job: dict) -> None:
    import torch
    import torch.distributed as dist
    from safetensors.torch import save_file

    from rlhf_exact.trainer.plan import plan
    from rlhf_exact.trainer.worker import TrainerSpec, TrainerWorker
    from rlhf_exact.types import LossNorm, TrainSeq

    who = f"W{world} r{rank}"
    if spec["device"] == "cuda":
        os.environ["LOCAL_RANK"] = str(rank)  # TrainerWorker picks cuda:LOCAL_RANK
    w = TrainerWorker(rank, world, TrainerSpec(**spec), master_port=ports[0])
    w.start(ports[0])
    dev, cfg = w.device, job["workload"]
    res = {"env": _env_in_force(), "device": str(dev), "steps": [], "syncs": []}
    sync = SyncGroup(0, ports[1], dev, job["sync_backend"], job["timeout_s"]) if rank == 0 else None

    def seq(s: dict) -> TrainSeq:
        return TrainSeq(torch.tensor(s["prompt"], dtype=torch.int64), torch.tensor(s["completion"], dtype=torch.int64))

    def run_logprobs(slots: list[TrainSeq]) -> list | None:
        """Logprobs of every sequence, planned over the W ranks, gathered on rank 0."""
        p = plan([s.num_tokens for s in slots], world, cfg["max_tokens"])[rank]
        got = w.logprobs([[slots[i] for i in micro] for micro in p])
        mine = {i: t for micro, lps in zip(p, got) for i, t in zip(micro, lps)}
        return _gather_indexed(mine, len(slots), rank)

    # part 1: fixed sequences
    t0 = time.perf_counter()
    lp1 = run_logprobs([seq(s) for s in job["part1"]])
    if rank == 0:
        save_file({f"seq{i}": t.contiguous() for i, t in enumerate(lp1)}, job["part1_file"])
        res["part1_s"] = time.perf_counter() - t0
        _log(who, f"part 1: {len(lp1)} sequences in {res['part1_s']:.2f} s")

    prev = gathered(w, "bfloat16")  # rank 0: the bf16 weights the sampler loaded (changed-fraction baseline)
    trace = {}
    for step in range(job["steps"] + 1):
        rollout = sync.bcast_object(None, 1) if rank == 0 else None
        box = [rollout]
        dist.broadcast_object_list(box, src=0)
        rollout = box[0]
        slots = [seq(r) for r in rollout]
        lp = run_logprobs(slots)
        if rank == 0:
            s_lp = [r["logprobs"] for r in rollout]
            row = {"step": step, **_compare(s_lp, lp)}
            for i, r in enumerate(rollout):
                trace[f"rollout{step}/tokens{i}"] = torch.tensor(r["completion"], dtype=torch.int64)
                trace[f"rollout{step}/logprobs{i}"] = r["logprobs"].contiguous()
        if step == job["steps"]:
            if rank == 0:
                res["steps"].append(row)
                _log(who, f"final rollout: {row['equal']}/{row['tokens']} tokens equal")
            break

        # the training step (parts 3, 4): old logprobs = the sampler's; fixed synthetic advantages
        train = [TrainSeq(s.prompt, s.completion, old_logprobs=r["logprobs"],
                          advantage=ADVANTAGES[i % len(ADVANTAGES)]) for i, (s, r) in enumerate(zip(slots, rollout))]
        norm = LossNorm(len(train), "token_mean", sum(s.completion.numel() for s in train))
        p = plan([s.num_tokens for s in train], world, cfg["max_tokens"])[rank]
        out = w.train_minibatch([[train[i] for i in micro] for micro in p], norm)
        fwd = {i: t for micro, lps in zip(p, out.forward_logprobs) for i, t in zip(micro, lps)}
        fwd = _gather_indexed(fwd, len(train), rank)
        sums = [None] * world if rank == 0 else None
        dist.gather_object(out.loss, sums, dst=0)
        lr = w.end_step()

        t0 = time.perf_counter()
        full = gathered(w, "bfloat16")
        gather_s = time.perf_counter() - t0
        if rank == 0:
            fwd_cmp = _compare([r["logprobs"] for r in rollout], fwd)
            loss = sum(sums)  # rank order: the same float additions in every run
            row.update(loss=loss, grad_norm=out.grad_norm, lr=lr, nonfinite=out.nonfinite,
                       train_fwd_tokens=fwd_cmp["tokens"], train_fwd_equal=fwd_cmp["equal"])
            res["steps"].append(row)
            trace[f"loss{step}"] = torch.tensor([loss], dtype=torch.float64)
            trace[f"grad_norm{step}"] = torch.tensor([out.grad_norm], dtype=torch.float64)
            sent = sync.send_weights(full, job["bucket_bytes"])
            back = sync.recv_weights(1, job["bucket_bytes"], None)
            equal = sum(torch.equal(back[n], full[n]) for n in full) if set(back) == set(full) else 0
            changed = sum(int((full[n].view(torch.int16) != prev[n].view(torch.int16)).sum()) for n in full)
            numel = sum(t.numel() for t in full.values())
            res["syncs"].append({**sent, "gather_s": gather_s, "tensors": len(full), "equal_tensors": equal,
                                 "changed_frac": changed / numel})
            prev = full
            _log(who, f"step {step}: loss {loss:.6g}, rollout {row['equal']}/{row['tokens']} equal, "
                      f"sync {sent['bytes'] / 1e9:.3f} GB in {sent['total_s']:.3f} s "
                      f"(comm {sent['comm_s']:.3f} s, gather {gather_s:.3f} s), weights equal {equal}/{len(full)}")

    final = gathered(w, None)  # fp32 masters
    if rank == 0:
        save_file({**{f"weights/{k}": v for k, v in final.items()}, **trace}, job["final_file"])
        pathlib.Path(job["result_file"]).write_text(json.dumps(res, indent=1))
        sync.close()
    w.shutdown()


def _gather_indexed(mine: dict, n: int, rank: int) -> list | None:
    """Rank 0: the n per-index tensors from every rank's {index: tensor}; else None."""
    import torch.distributed as dist

    parts = [None] * dist.get_world_size() if rank == 0 else None
    dist.gather_object(mine, parts, dst=0)
    if rank != 0:
        return None
    merged = {i: t for part in parts for i, t in part.items()}
    return [merged[i] for i in range(n)]


def _compare(sampler: list, trainer: list) -> dict:
    """Bitwise comparison of per-sequence fp32 logprobs."""
    import torch

    tokens = sum(t.numel() for t in sampler)
    equal = sum(int((a.view(torch.int32) == b.view(torch.int32)).sum()) for a, b in zip(sampler, trainer)
                if a.shape == b.shape and a.dtype == b.dtype == torch.float32)
    diff = max(((a - b).abs().max().item() if a.numel() and a.shape == b.shape else 0.0)
               for a, b in zip(sampler, trainer))
    return {"tokens": tokens, "equal": equal, "max_abs_diff": diff,
            "seqs_equal": sum(torch.equal(a, b) for a, b in zip(sampler, trainer)), "seqs": len(sampler)}


def _sampler(world: int, ports: tuple[int, int], spec: dict, job: dict) -> None:
    import torch

    from exact_kernels import enable_exact_mode
    from rlhf_exact.models.hf_io import load_model
    from tests.models.generate import generate

    who = f"W{world} sampler"
    torch.set_num_threads(1)
    enable_exact_mode()  # the same switch as the trainer, before any process group
    if spec["device"] == "cuda":
        dev = torch.device("cuda", job["sampler_gpu"])
        torch.cuda.set_device(dev)
    else:
        dev = torch.device("cpu")
    model, config = load_model(spec["model_path"], dtype=torch.bfloat16, device=dev)
    params = dict(model.named_parameters())  # HF names; a tied lm_head is listed once, as embed_tokens
    sync = SyncGroup(1, ports[1], dev, job["sync_backend"], job["timeout_s"])
    cfg, res = job["workload"], {"env": _env_in_force(), "device": str(dev), "gen_s": []}
    temperature = spec["temperature"]  # the trainer's temperature, by construction
    for step in range(job["steps"] + 1):
        t0 = time.perf_counter()
        reqs = rollout_requests(cfg, config.vocab_size, job["seed"], step)
        outs = generate(model, reqs, temperature=temperature, greedy=False, seed=job["seed"], max_num_seqs=4,
                        max_num_batched_tokens=cfg["gen_budget"])
        _sync(dev)
        res["gen_s"].append(time.perf_counter() - t0)
        sync.bcast_object([{"prompt": list(r.prompt), "completion": o.token_ids, "logprobs": o.logprobs}
                           for r, o in zip(reqs, outs)], 1)
        if step == job["steps"]:
            break
        sync.recv_weights(0, job["bucket_bytes"], params)
        sync.send_weights({n: p.detach() for n, p in params.items()}, job["bucket_bytes"])
        _log(who, f"step {step}: generated {sum(len(o.token_ids) for o in outs)} tokens in {res['gen_s'][-1]:.2f} s, "
                  "weights synced")
    pathlib.Path(job["sampler_file"]).write_text(json.dumps(res, indent=1))
    sync.close()


def run_once(world: int, tag: str, spec: dict, job: dict, timeout_s: float) -> None:
    """W trainer ranks + 1 sampler, spawned; raises if any process fails or times out."""
    import torch.multiprocessing as mp

    ports = (free_port(), free_port())
    ctx = mp.start_processes(_proc, args=(world, ports, spec, job), nprocs=world + 1, join=False,
                             start_method="spawn")
    deadline = time.monotonic() + timeout_s
    try:
        while not ctx.join(timeout=5):
            if time.monotonic() > deadline:
                raise TimeoutError(f"run {tag} did not finish in {timeout_s:.0f} s")
    finally:
        for p in ctx.processes:  # only after a failure or timeout are any left
            if p.is_alive():
                p.terminate()
                p.join(10)


# ------------------------------------------------------------------------------ report

def _fmt(x: float) -> str:
    return f"{x:.3g}"


def build_rows(runs: dict, ref_world: int, repeat_world: int, args, spec: dict, job: dict):
    """(part, config, result, numbers) rows from the finished runs' files."""
    import torch
    from safetensors.torch import load_file

    rows = []

    def row(part, config, ok, numbers):
        rows.append((part, config, "PASS" if ok else "FAIL", numbers))

    for tag, r in runs.items():
        if r.get("error"):
            row(f"run {tag}", f"W={r['world']}", False, r["error"])
    done = {tag: r for tag, r in runs.items() if not r.get("error")}

    first = {r["world"]: r for tag, r in done.items() if tag.endswith("a")}
    if ref_world in first:
        ref = load_file(first[ref_world]["job"]["part1_file"])
        for W, r in sorted(first.items()):
            if W == ref_world:
                continue
            got = load_file(r["job"]["part1_file"])
            keys = sorted(ref, key=lambda k: int(k[3:]))
            cmp = _compare([got[k] for k in keys], [ref[k] for k in keys]) if set(got) == set(ref) else None
            ok = cmp is not None and cmp["seqs_equal"] == cmp["seqs"]
            row(PART[1], f"W={W} vs W={ref_world}, {len(keys)} seqs, max_tokens {job['workload']['max_tokens']}",
                ok, f"tokens equal {cmp['equal']}/{cmp['tokens']}, max abs diff {_fmt(cmp['max_abs_diff'])}"
                if cmp else "sequence sets differ")

    for W, r in sorted(first.items()):
        res = r["result"]
        steps = res["steps"]
        tok = sum(s["tokens"] for s in steps)
        eq = sum(s["equal"] for s in steps)
        ftok = sum(s.get("train_fwd_tokens", 0) for s in steps)
        feq = sum(s.get("train_fwd_equal", 0) for s in steps)
        diff = max(s["max_abs_diff"] for s in steps)
        post = [s for s in steps if s["step"] > 0]  # rollouts from synced weights
        post_ok = sum(s["equal"] == s["tokens"] for s in post)
        ok = eq == tok and feq == ftok and tok > 0 and post_ok == len(post) > 0
        trainers = f"cuda:0-{W - 1}" if spec["device"] == "cuda" and W > 1 else res["device"]
        row(PART[2], f"sampler {r['sampler']['device']} vs trainer W={W} ({trainers}), "
                     f"T={spec['temperature']}, {len(steps)} rollouts",
            ok, f"decode tokens equal {eq}/{tok} (train forward {feq}/{ftok}), max abs diff {_fmt(diff)}; "
                f"rollouts after a step + sync all equal: {post_ok}/{len(post)}")
        syncs = res["syncs"]
        total = statistics.median(s["total_s"] for s in syncs)
        comm = statistics.median(s["comm_s"] for s in syncs)
        gather = statistics.median(s["gather_s"] for s in syncs)
        gb = syncs[0]["bytes"] / 1e9
        weq = sum(s["equal_tensors"] for s in syncs)
        wn = sum(s["tensors"] for s in syncs)
        changed = min(s["changed_frac"] for s in syncs)
        backend = job["sync_backend"]
        row(PART[3], f"W={W} rank0 -> sampler, {backend}, {args.bucket_mb:g} MiB buckets x{syncs[0]['buckets']}",
            weq == wn and changed > 0,
            f"{len(syncs)} syncs of {gb:.3f} GB: median {_fmt(total)} s ({_fmt(total / gb)} s/GB, "
            f"{_fmt(gb / total)} GB/s; {backend} only {_fmt(gb / comm)} GB/s), gather {_fmt(gather)} s; "
            f"bf16 tensors equal {weq}/{wn}; min changed/step {changed:.1%}")

    a, b = done.get(f"W{repeat_world}a"), done.get(f"W{repeat_world}b")
    if a and b:
        fa, fb = load_file(a["job"]["final_file"]), load_file(b["job"]["final_file"])
        same = set(fa) == set(fb)
        weights = [k for k in fa if k.startswith("weights/")]
        rollouts = [k for k in fa if k.startswith("rollout")]
        losses = sorted((k for k in fa if k.startswith("loss")), key=lambda k: int(k[4:]))
        norms = sorted((k for k in fa if k.startswith("grad_norm")), key=lambda k: int(k[9:]))
        eq = {name: sum(same and torch.equal(fa[k], fb[k]) for k in keys)
              for name, keys in (("w", weights), ("r", rollouts), ("l", losses), ("g", norms))}
        show = lambda keys: ", ".join(f"{fa[k].item():.6g}" for k in keys)  # noqa: E731
        row(PART[4], f"W={repeat_world} run a vs run b (fresh processes), {args.steps} steps",
            same and eq["w"] == len(weights) and eq["r"] == len(rollouts) and eq["l"] == len(losses)
            and eq["g"] == len(norms),
            f"losses equal {eq['l']}/{len(losses)} [{show(losses)}]; grad norms equal {eq['g']}/{len(norms)} "
            f"[{show(norms)}]; fp32 master tensors equal {eq['w']}/{len(weights)}; "
            f"rollout tensors equal {eq['r']}/{len(rollouts)}")
    elif not any(r.get("error") for r in runs.values()):
        row(PART[4], f"W={repeat_world}", False, "run missing")
    return sorted(rows, key=lambda r: r[0])  # by part (stable: W order kept)


def table(rows) -> str:
    head = ("part", "config", "result", "numbers")
    lines = ["| " + " | ".join(head) + " |", "|" + "|".join("---" for _ in head) + "|"]
    lines += ["| " + " | ".join(str(c).replace("|", "/") for c in r) + " |" for r in rows]
    return "\n".join(lines)


def main(argv=None) -> int:
    args = parse_args(argv)
    _bootstrap()
    import torch

    device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
    ngpu = torch.cuda.device_count() if device == "cuda" else 0
    if device == "cuda" and ngpu < 1:
        sys.exit("multi_gpu_check: --device cuda needs a GPU; use --device cpu")
    if args.world_sizes:
        worlds = sorted({int(x) for x in args.world_sizes.split(",")})
    else:
        worlds = [w for w in (1, 2, 4) if device == "cpu" and w < 4 or w <= ngpu]
    if worlds[0] < 1 or (device == "cuda" and worlds[-1] > ngpu):
        sys.exit(f"multi_gpu_check: world sizes {worlds} must be in 1..{ngpu if device == 'cuda' else 'any'}")
    repeat_world = args.repeat_world_size or worlds[-1]
    if repeat_world not in worlds:
        sys.exit(f"multi_gpu_check: --repeat-world-size {repeat_world} is not one of {worlds}")
    shape = args.shape or ("0.6b" if device == "cuda" else "tiny")
    out_path = args.out

    tmp = None if args.workdir else tempfile.TemporaryDirectory(prefix="multi_gpu_check-")
    work = pathlib.Path(args.workdir or tmp.name)
    work.mkdir(parents=True, exist_ok=True)
    try:
        return _main(args, device, ngpu, worlds, repeat_world, shape, work, out_path)
    finally:
        if tmp is not None:
            tmp.cleanup()


def _main(args, device, ngpu, worlds, repeat_world, shape, work, out_path) -> int:
    import torch

    from rlhf_exact.models.hf_io import read_config

    t0 = time.perf_counter()
    if args.model_dir:
        model_dir = pathlib.Path(args.model_dir)
    else:
        from rlhf_exact.models.tiny import make_tiny_model_dir

        model_dir = make_tiny_model_dir(work / f"qwen3-{shape}", seed=args.seed, std=0.05, norm_noise=0.1,
                                        **SHAPES[shape])
    config = read_config(model_dir)
    _log("main", f"model {model_dir} ({shape}, {config.num_hidden_layers} layers, hidden {config.hidden_size}, "
                 f"vocab {config.vocab_size}) ready in {time.perf_counter() - t0:.1f} s")
    workload = WORKLOADS[shape]
    spec = {"model_path": str(model_dir), "device": device, "temperature": args.temperature, "lr": args.lr,
            "num_threads": 1}
    sampler_gpu = ngpu - 1 if device == "cuda" else None
    # NCCL needs the two members on different GPUs; one GPU (a smoke test) syncs over gloo
    sync_backend = "nccl" if ngpu >= 2 else "gloo"
    sampler_dev = f"cuda:{sampler_gpu}" if device == "cuda" else "cpu"
    base_job = {"workload": workload, "steps": args.steps, "seed": args.seed, "timeout_s": args.timeout_s,
                "bucket_bytes": int(args.bucket_mb * 2 ** 20), "sampler_gpu": sampler_gpu,
                "sync_backend": sync_backend,
                "part1": part1_sequences(workload, config.vocab_size, args.seed + 1)}
    plan = [(W, "a") for W in worlds] + [(repeat_world, "b")]
    runs = {}
    for W, letter in plan:
        tag = f"W{W}{letter}"
        job = {**base_job, **{k: str(work / f"{tag}_{k[:-5]}.{ext}") for k, ext in
                              (("part1_file", "safetensors"), ("final_file", "safetensors"),
                               ("result_file", "json"), ("sampler_file", "json"))}}
        _log("main", f"run {tag}: {W} trainer rank(s) on {device}, sampler on {sampler_dev}")
        t1 = time.perf_counter()
        entry = {"world": W, "job": job}
        try:
            run_once(W, tag, spec, job, args.timeout_s)
            entry["result"] = json.loads(pathlib.Path(job["result_file"]).read_text())
            entry["sampler"] = json.loads(pathlib.Path(job["sampler_file"]).read_text())
        except Exception as e:  # noqa: BLE001 - a failed run is a FAIL row, the others still run
            traceback.print_exc()
            entry["error"] = f"{type(e).__name__}: {str(e).strip().splitlines()[-1] if str(e).strip() else ''}"
        entry["wall_s"] = time.perf_counter() - t1
        runs[tag] = entry
        _log("main", f"run {tag} {'failed' if 'error' in entry else 'done'} in {entry['wall_s']:.1f} s")

    rows = build_rows(runs, worlds[0], repeat_world, args, spec, base_job)
    ok = bool(rows) and all(r[2] == "PASS" for r in rows)
    env = next((r["result"]["env"] for r in runs.values() if "result" in r), {})
    senv = next((r["sampler"]["env"] for r in runs.values() if "sampler" in r), {})
    gpus = ", ".join(torch.cuda.get_device_name(i) for i in range(ngpu)) if ngpu else "none"
    lines = [
        f"# multi_gpu_check: {'PASS' if ok else 'FAIL'}",
        "",
        f"device {device} ({ngpu} GPU(s): {gpus}); torch {torch.__version__}; model {shape} "
        f"({config.num_hidden_layers} layers, hidden {config.hidden_size}, vocab {config.vocab_size}); "
        f"world sizes {worlds}; sampler {sampler_dev}; steps {args.steps}; T {args.temperature}; lr {args.lr}; "
        f"wall {time.perf_counter() - t0:.0f} s",
        "",
        "env in force (trainer rank 0): " + ", ".join(f"{k}={v}" for k, v in env.items()),
        "env in force (sampler): " + ", ".join(f"{k}={v}" for k, v in senv.items()),
        "",
        table(rows),
    ]
    text = "\n".join(lines) + "\n"
    print("\n" + text, flush=True)
    if out_path:
        pathlib.Path(out_path).parent.mkdir(parents=True, exist_ok=True)
        pathlib.Path(out_path).write_text(text)
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
