"""`SamplerBackend`: what the sampler actor and group need from an engine, so that a
second implementation (the paged test oracle, tests/models/oracle_sampler.py) can stand
in for vLLM behind the real `SamplerGroup` and the real loop. `engine.Sampler` (vLLM with
the exact plugin) is the product's backend and satisfies it unchanged; config
`sampler.backend` picks one ("vllm", or an import path 'package.module:Class').

What a backend must guarantee, beyond the signatures (the loop's parity check relies on
each):

  * logprobs: `Completion.logprobs[i]` is fp32 `log_softmax(logits / T)[token_i]` over the
    full vocabulary at the ENGINE temperature T, computed by the exact kernels
    (`exact_kernels.token_logprobs`, the trainer's function), whatever the batch;
    top-k/top-p restrict the draw, never the reported value (engine.py has the definition);
  * weights: `update_weights` validates every name, shape and dtype before it copies
    anything: it updates all tensors or raises ValueError and changes none (whole or
    nothing); a later `sample` uses the new weights only;
  * errors: a bad request (empty or too long prompt, ids outside the vocabulary, bad
    parameters) is a per-request `SampleResult.error`, and the other requests are served;
  * seeds: sample j of prompt i is drawn with seed `seeds[i] + j`, independent of the
    batch.

A backend class is built as `cls(model_path, **spec.engine.kwargs())`, the fields of
spec.py's `EngineSpec` (BACKEND_KEYWORDS; a backend may ignore those it has no use
for). `mismatches(cls)` compares a class with the protocol signature by signature;
preflight runs it on `sampler.backend` at config time.
"""
from __future__ import annotations

import inspect
from collections.abc import Iterable, Mapping, Sequence
from typing import Protocol

import torch

from .engine import RequestParams, SampleResult
from .spec import BACKEND_KEYWORDS

FACTS = {"temperature": float, "vocab_size": int, "max_model_len": int}  # what SamplerActor.ready reports


class SamplerBackend(Protocol):
    """One sampling engine in one process (module docstring for the guarantees)."""

    temperature: float  # the engine's T (logprobs are of logits / T)
    vocab_size: int  # token ids are in [0, vocab_size)
    max_model_len: int  # prompt + completion tokens per sequence, exclusive bound for prompts

    def sample(self, prompts: Sequence[Sequence[int]], n: int = 1,
               params: RequestParams | Sequence[RequestParams] | None = None,
               seeds: Sequence[int | None] | None = None) -> list[SampleResult]:
        """n completions of every prompt; one SampleResult per prompt, in order."""
        ...

    def update_weights(self, named_tensors: Mapping[str, torch.Tensor] | Iterable[tuple[str, torch.Tensor]],
                       bucket_bytes: int = 64 << 20) -> float:
        """HF-named tensors copied in place, whole or nothing; the seconds it took."""
        ...

    def get_weights(self, names: Sequence[str]) -> dict[str, torch.Tensor]:
        """The current parameters by HF name (for checks)."""
        ...

    def shutdown(self) -> None:
        ...


METHODS = ("sample", "update_weights", "get_weights", "shutdown")


def _shape(fn) -> list[tuple]:
    """A method's parameters as (name, kind, default): what a caller relies on."""
    return [(p.name, p.kind, p.default) for p in inspect.signature(fn).parameters.values()]


def _plain(fn) -> str:
    """The signature without annotations, for messages."""
    return str(inspect.signature(fn).replace(
        parameters=[p.replace(annotation=p.empty) for p in inspect.signature(fn).parameters.values()],
        return_annotation=inspect.Signature.empty))


def mismatches(cls: type) -> list[str]:
    """Every way `cls` differs from SamplerBackend's methods (names, order, kinds and
    defaults of their parameters) and constructor contract; [] when it conforms. The
    facts (FACTS) are instance attributes: check_facts checks an instance."""
    problems = []
    for name in METHODS:
        impl = getattr(cls, name, None)
        if not callable(impl):
            problems.append(f"no method {name}()")
        elif _shape(impl) != _shape(getattr(SamplerBackend, name)):
            problems.append(f"{name}{_plain(impl)} is not {name}{_plain(getattr(SamplerBackend, name))}")
    try:
        inspect.signature(cls).bind("model", **dict.fromkeys(BACKEND_KEYWORDS))
    except TypeError as e:
        problems.append(f"its constructor does not take (model, {', '.join(f'{k}=' for k in BACKEND_KEYWORDS)}):"
                        f" {e}")
    return problems


def check_facts(backend) -> None:
    """TypeError unless the instance has the facts with their types."""
    for name, kind in FACTS.items():
        if not isinstance(getattr(backend, name, None), kind):
            raise TypeError(f"{type(backend).__name__}.{name} must be a {kind.__name__}, "
                            f"got {getattr(backend, name, None)!r}")


def load_backend(name: str) -> type:
    """The backend class config `sampler.backend` names: "vllm" (engine.Sampler) or an
    import path 'package.module:Class' (ValueError: what failed, one line)."""
    if name == "vllm":
        from .engine import Sampler

        return Sampler
    from rlhf_exact.imports import import_object

    cls = import_object(name, "sampler backend", "Class")
    if not isinstance(cls, type):
        raise ValueError(f"sampler backend {name!r} is a {type(cls).__name__}, not a class")
    problems = mismatches(cls)
    if problems:
        raise ValueError(f"sampler backend {name!r} does not implement rlhf_exact.sampler.backend.SamplerBackend: "
                         + "; ".join(problems))
    return cls
