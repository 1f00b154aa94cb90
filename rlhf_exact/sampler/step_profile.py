"""Where a sampler's time goes, by engine step type and by op: the measurement behind the
exact sampler's speed work (docs/benchmarks.md, "Sampler profile").

An engine step is one `execute_model` + `sample_tokens` pair of vLLM's model runner. Its
type comes from the scheduler's plan alone (`step_kind`):
  decode   every scheduled request gets exactly one token;
  prefill  no request gets exactly one token (prompts or prompt chunks only);
  mixed    both in one step (vLLM's chunked prefill puts new prompts beside decodes).
A prompt chunk of one token counts as a decode token: a step kind is a statement about
the batch shape the kernels see, which is what the CUDA graph modes key on.

`StepTimer` times each step from the runner's entry to the end of its GPU work
(`step_s`, a device synchronize after `sample_tokens`) and the time until
`execute_model` returned to the CPU (`launch_s`). launch_s close to step_s means the step
is bound by Python and kernel launches, not by the GPU. The synchronize removes vLLM's
overlap of one step's CPU work with the last step's GPU work, so the sum of step_s is
above the unprofiled wall time; compare kinds with each other, and modes with each
other, not with the plain run. `OpProfiler` ranks torch.profiler's table twice: device
kernels by device time, CPU-side ops by self CPU time. `PyProfiler` runs cProfile over
each `execute_model` call, one profile per step type, and ranks the Python functions by
own time and by cumulative time: where a step bound by the host spends it (torch.profiler
sees ops, not the Python between them). cProfile slows Python-heavy code, so read its
shares, not its seconds.

Used through the worker extension (`exact_profile_start` / `exact_profile_stop`) by
`scripts/seed_experiments.py --profile`.
"""
from __future__ import annotations

import cProfile
import os
import pstats
import time
from dataclasses import asdict, dataclass

import torch

KINDS = ("prefill", "mixed", "decode")


def step_kind(tokens_per_request: list[int]) -> str:
    """The step type of a scheduler plan: tokens scheduled per request (module docstring)."""
    if not tokens_per_request:
        raise ValueError("step_kind: a step with no scheduled request")
    ones = sum(1 for n in tokens_per_request if n == 1)
    return "decode" if ones == len(tokens_per_request) else "prefill" if ones == 0 else "mixed"


@dataclass(frozen=True)
class StepRecord:
    kind: str  # KINDS
    requests: int
    tokens: int
    launch_s: float  # entry to execute_model's return (CPU side)
    step_s: float  # entry to the end of the step's device work


def summarize(records: list[StepRecord]) -> dict[str, dict]:
    """Per step kind: steps, tokens, seconds, ms per step, tokens per step and the launch
    share (sum launch_s / sum step_s); "all" sums every kind."""
    out = {}
    for kind in (*KINDS, "all"):
        rs = [r for r in records if kind in ("all", r.kind)]
        if not rs:
            continue
        secs = sum(r.step_s for r in rs)
        out[kind] = {"steps": len(rs), "tokens": sum(r.tokens for r in rs), "seconds": secs,
                     "ms_per_step": 1e3 * secs / len(rs), "tokens_per_step": sum(r.tokens for r in rs) / len(rs),
                     "launch_share": sum(r.launch_s for r in rs) / secs if secs > 0 else 0.0}
    return out


def top_ops(rows: list[tuple[str, int, float]], k: int = 15) -> list[dict]:
    """rows: (name, calls, self time in us). The k heaviest, each with its share of the
    summed time of all rows."""
    total = sum(r[2] for r in rows) or 1.0
    return [{"op": n, "calls": c, "ms": us / 1e3, "share": us / total}
            for n, c, us in sorted(rows, key=lambda r: -r[2])[:k]]


def top_functions(stats: pstats.Stats, k: int = 20) -> dict[str, list[dict]]:
    """The k heaviest functions of a cProfile run twice: by own time ("self") and by
    cumulative time ("cumulative"); each {"func": "dir/file.py:line(name)", "calls",
    "self_ms", "cum_ms", "share"}, share = its time over the run's total own time."""
    rows = []
    for (path, line, name), (_, calls, self_s, cum_s, _) in stats.stats.items():
        where = "/".join(path.split(os.sep)[-2:]) if path != "~" else ""
        rows.append({"func": f"{where}:{line}({name})" if where else name, "calls": calls,
                     "self_ms": 1e3 * self_s, "cum_ms": 1e3 * cum_s})
    total = sum(r["self_ms"] for r in rows) or 1.0

    def ranked(key):
        return [dict(r, share=r[key] / total) for r in sorted(rows, key=lambda r: -r[key])[:k]]
    return {"self": ranked("self_ms"), "cumulative": ranked("cum_ms")}


class StepTimer:
    """Wraps one model runner's `execute_model` and `sample_tokens` (instance attributes,
    removed by `close`) and records a StepRecord per step."""

    def __init__(self, runner):
        self.runner, self.records = runner, []
        self._open: tuple | None = None
        self._sync = torch.cuda.synchronize if torch.cuda.is_available() else (lambda: None)
        execute, sample = runner.execute_model, runner.sample_tokens

        def timed_execute(scheduler_output, *a, **kw):
            t0 = time.perf_counter()
            out = execute(scheduler_output, *a, **kw)
            counts = list(scheduler_output.num_scheduled_tokens.values())
            if counts:
                self._open = (step_kind(counts), len(counts), sum(counts), t0, time.perf_counter() - t0)
            return out

        def timed_sample(*a, **kw):
            out = sample(*a, **kw)
            if self._open is not None:
                self._sync()
                kind, reqs, toks, t0, launch = self._open
                self.records.append(StepRecord(kind, reqs, toks, launch, time.perf_counter() - t0))
                self._open = None
            return out

        runner.execute_model, runner.sample_tokens = timed_execute, timed_sample

    def close(self) -> list[dict]:
        del self.runner.execute_model, self.runner.sample_tokens  # the class's methods again
        return [asdict(r) for r in self.records]


class PyProfiler:
    """cProfile over one model runner's `execute_model`, one profile per step type (an
    instance attribute, removed by `close`)."""

    def __init__(self, runner):
        self.runner, self.profiles, self.steps = runner, {}, {}
        execute = runner.execute_model

        def profiled_execute(scheduler_output, *a, **kw):
            counts = list(scheduler_output.num_scheduled_tokens.values())
            if not counts:
                return execute(scheduler_output, *a, **kw)
            kind = step_kind(counts)
            prof = self.profiles.setdefault(kind, cProfile.Profile())
            self.steps[kind] = self.steps.get(kind, 0) + 1
            prof.enable()
            try:
                return execute(scheduler_output, *a, **kw)
            finally:
                prof.disable()

        runner.execute_model = profiled_execute

    def close(self, k: int = 20) -> dict[str, dict]:
        """Per step type: {"steps", "seconds" (profiled, summed), "self", "cumulative"}
        (top_functions)."""
        del self.runner.execute_model
        out = {}
        for kind, prof in self.profiles.items():
            stats = pstats.Stats(prof)
            out[kind] = {"steps": self.steps[kind], "seconds": stats.total_tt, **top_functions(stats, k)}
        return out


class OpProfiler:
    """torch.profiler over CPU and CUDA (CPU only without CUDA) until `close`."""

    def __init__(self):
        acts = [torch.profiler.ProfilerActivity.CPU]
        if torch.cuda.is_available():
            acts.append(torch.profiler.ProfilerActivity.CUDA)
        self.prof = torch.profiler.profile(activities=acts)
        self.prof.__enter__()

    def close(self, k: int = 15) -> dict[str, list[dict]]:
        """{"kernels": the heaviest device kernels by device time, "cpu_ops": the heaviest
        CPU-side ops by self CPU time}. Kept apart: a CPU op's self device time repeats
        the kernels it launched (a Triton kernel under an autograd Function shows in both)."""
        if torch.cuda.is_available():
            torch.cuda.synchronize()
        self.prof.__exit__(None, None, None)
        cpu = torch.autograd.DeviceType.CPU
        events = self.prof.key_averages()
        kernels = [(e.key, e.count, e.self_device_time_total) for e in events if e.device_type != cpu]
        cpu_ops = [(e.key, e.count, e.self_cpu_time_total) for e in events if e.device_type == cpu]
        return {"kernels": top_ops(kernels, k), "cpu_ops": top_ops(cpu_ops, k)}
