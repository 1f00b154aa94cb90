"""Worker-side weight updates for the exact sampler: mixed into vLLM's worker with
`LLM(..., worker_extension_cls="rlhf_exact.sampler.worker_ext.ExactWorkerExtension")`
and called through `LLM.collective_rpc`.

Protocol (driven by `engine.Sampler.update_weights`):
1. `exact_begin_update(manifest)`: manifest = {name: [shape, dtype]} for EVERY tensor
   of the update. It is checked whole against the model (known parameter name, equal
   shape, equal dtype, no duplicates) BEFORE any data is sent or copied; any mismatch
   rejects the whole update and the weights stay as they were.
2. `exact_load_bucket(blob)`: one bucket = `safetensors.torch.save({name: tensor})`
   bytes (vLLM's msgpack RPC carries bytes inline and bit-exact; tensors above 256 B do
   not survive it, see the notes). Each tensor must be one announced in the manifest,
   with its announced shape and dtype, and is staged (not yet copied).
3. `exact_commit_update()`: every announced tensor must have arrived; then all are
   copied in place into the existing parameters (storage kept) in one pass.
   `exact_abort_update()` drops the staged tensors.
Colocated on one GPU (cluster.weight_sync=cuda_ipc), step 2 is instead one
`exact_load_shared(handle, layout)`: the trainer's flat bf16 buffer is opened through its
CUDA IPC handle and every announced tensor staged as a view of it (no copy, nothing
through the host); the commit copies them in and synchronizes before it returns, so the
trainer may refill the buffer as soon as the call is back.
The driver then calls `LLM.reset_prefix_cache()`: cached KV blocks were computed with
the old weights, and reusing them mixes policies (VERIFIED in the notes).

Staging costs one extra copy of the updated tensors in the worker's memory; it is what
makes a bucket that fails mid-way (after the manifest passed) leave no partial update.
"""
from __future__ import annotations

import torch

_DTYPES = {"bfloat16": torch.bfloat16, "float16": torch.float16, "float32": torch.float32}


def dtype_name(dtype: torch.dtype) -> str:
    return str(dtype).removeprefix("torch.")


def check_manifest(params: dict[str, torch.Tensor | tuple], manifest: dict[str, list]) -> list[str]:
    """Every problem of the manifest against the model's parameters (empty = valid).
    params: {HF name: tensor, or (shape, dtype name)}."""
    errors = []
    if not manifest:
        errors.append("empty update")
    for name, (shape, dtype) in manifest.items():
        p = params.get(name)
        if p is None:
            errors.append(f"unknown parameter {name!r}")
            continue
        want_shape, want_dtype = (tuple(p.shape), dtype_name(p.dtype)) if isinstance(p, torch.Tensor) else p
        if tuple(shape) != tuple(want_shape):
            errors.append(f"{name}: shape {tuple(shape)}, expected {tuple(want_shape)}")
        if dtype != want_dtype:
            errors.append(f"{name}: dtype {dtype}, expected {want_dtype}")
    return errors


class ExactWorkerExtension:
    """Methods callable with `llm.collective_rpc("exact_...")` (see module docstring)."""

    def _exact_params(self) -> dict[str, torch.Tensor]:
        return dict(self.model_runner.get_model().named_parameters())

    def exact_model_class(self) -> str:
        return type(self.model_runner.get_model()).__name__

    def exact_cudagraph_mode(self) -> str:
        """The CUDA-graph mode this worker settled on (vLLM lowers the one asked for to
        what the attention backend supports, with a warning only): "FULL" with mixed
        graphs, "FULL_DECODE_ONLY" with decode graphs, "NONE" eager."""
        return self.vllm_config.compilation_config.cudagraph_mode.name

    def exact_param_info(self) -> dict[str, list]:
        """{name: [shape, dtype]} of every parameter (HF names)."""
        return {n: [list(p.shape), dtype_name(p.dtype)] for n, p in self._exact_params().items()}

    def _exact_is_ours(self) -> bool:
        return self.exact_model_class() == "ExactQwen3ForCausalLM"

    def _exact_targets(self) -> dict:
        """What an update may contain: our model's parameters (HF names); for vLLM's own
        Qwen3 (kernels=default: fused qkv/gate_up parameters) the HF checkpoint names
        and shapes of its config, in the engine's dtype."""
        if self._exact_is_ours():
            return self._exact_params()
        if getattr(self, "_exact_hf_targets", None) is None:  # fixed by the checkpoint: read once
            from rlhf_exact.models.hf_io import expected_tensors, read_config

            mc = self.model_runner.model_config
            self._exact_hf_targets = {n: (s, dtype_name(mc.dtype))
                                      for n, s in expected_tensors(read_config(mc.model)).items()}
        return self._exact_hf_targets

    def exact_begin_update(self, manifest: dict[str, list]) -> list[str]:
        """Validate the whole update; returns the errors (empty: accepted, staging opened)."""
        self._exact_staged = None
        errors = check_manifest(self._exact_targets(), manifest)
        if not errors:
            self._exact_manifest = {n: (tuple(s), d) for n, (s, d) in manifest.items()}
            self._exact_staged = {}
        return errors

    def exact_load_bucket(self, blob: bytes) -> list[str]:
        from safetensors.torch import load

        if getattr(self, "_exact_staged", None) is None:
            return ["no update in progress (exact_begin_update first)"]
        return self._exact_stage(load(blob))

    def exact_load_shared(self, handle: bytes, layout: list) -> list[str]:
        """Stage every tensor of `layout` [(name, shape, element offset)] as a view of the
        buffer that `handle` (a pickled `reduce_tensor`) opens on this node's GPU."""
        import math
        import pickle

        if getattr(self, "_exact_staged", None) is None:
            return ["no update in progress (exact_begin_update first)"]
        rebuild, args = pickle.loads(handle)  # the trainer's own record (types.SharedWeights)
        buf = rebuild(*args)
        tensors, errors = {}, []
        for name, shape, offset in layout:
            n = math.prod(shape)
            if offset < 0 or offset + n > buf.numel():
                errors.append(f"{name}: elements {offset}..{offset + n} outside the shared buffer of {buf.numel()}")
            else:
                tensors[name] = buf[offset:offset + n].view(tuple(shape))
        if errors:
            self._exact_staged = None
            return errors
        return self._exact_stage(tensors)

    def _exact_stage(self, tensors: dict[str, torch.Tensor]) -> list[str]:
        errors = []
        for name, t in tensors.items():
            want = self._exact_manifest.get(name)
            if want is None or name in self._exact_staged:
                errors.append(f"{name}: not announced in the manifest" if want is None else f"{name}: sent twice")
            elif (tuple(t.shape), dtype_name(t.dtype)) != want:
                errors.append(f"{name}: got {tuple(t.shape)} {dtype_name(t.dtype)}, announced {want}")
        if errors:
            self._exact_staged = None  # the update is dead: nothing was copied
            return errors
        self._exact_staged.update(tensors)
        return []

    def exact_commit_update(self) -> list[str]:
        staged = getattr(self, "_exact_staged", None)
        if staged is None:
            return ["no update in progress"]
        missing = sorted(set(self._exact_manifest) - set(staged))
        if missing:
            self._exact_staged = None
            return [f"missing tensors {missing[:5]}"]
        with torch.no_grad():
            if self._exact_is_ours():
                params = self._exact_params()
                for name, t in staged.items():
                    params[name].copy_(t)
                if not self.model_runner.get_model().projections_fused():
                    self._exact_staged = None
                    return ["a q/k/v or gate/up parameter no longer views its fused tensor: the engine would sample "
                            "with stale weights"]
            else:
                # vLLM's own model: its linear layers may have repacked their weights for a
                # CPU GEMM kernel chosen by CPU features (oneDNN/AMX drop `.weight`), so a plain
                # `load_weights` works on some machines only. The engine's in-place reload
                # restores the checkpoint-format parameters, maps the HF names onto its fused
                # ones and repeats the post-load processing (the repacking included).
                self.model_runner.reload_weights(weights_iterator=list(staged.items()),
                                                 is_checkpoint_format=True)
                # The reload processes the layers that received weights. A tied lm_head
                # receives none (it shares the embedding's parameter), so its packed GEMM
                # operand would still hold the old embedding: repack it from the new one.
                model = self.model_runner.get_model()
                lm_head = getattr(model, "lm_head", None)
                if getattr(model.config, "tie_word_embeddings", False) and hasattr(lm_head, "quant_method"):
                    lm_head.quant_method.process_weights_after_loading(lm_head)
            if any(t.is_cuda for t in staged.values()):
                torch.cuda.synchronize()  # the copies have read the staged (maybe shared) memory
        self._exact_staged = None
        return []

    def exact_abort_update(self) -> None:
        self._exact_staged = None

    def exact_profile_start(self, what: str) -> None:
        """Start timing steps ("steps"), profiling ops ("ops") or Python functions
        ("python"); step_profile.py."""
        from rlhf_exact.sampler import step_profile

        if getattr(self, "_exact_profiler", None) is not None:
            raise RuntimeError("exact_profile_start: a profile is already running")
        kinds = {"steps": lambda: step_profile.StepTimer(self.model_runner), "ops": step_profile.OpProfiler,
                 "python": lambda: step_profile.PyProfiler(self.model_runner)}
        if what not in kinds:
            raise ValueError(f"exact_profile_start: one of {sorted(kinds)}, got {what!r}")
        self._exact_profiler = kinds[what]()

    def exact_profile_stop(self) -> list[dict] | dict:
        """The step records, the heaviest ops or the heaviest Python functions since
        exact_profile_start."""
        prof, self._exact_profiler = getattr(self, "_exact_profiler", None), None
        if prof is None:
            raise RuntimeError("exact_profile_stop: no profile running")
        return prof.close()

    def exact_get_weights(self, names: list[str]) -> bytes:
        """safetensors bytes of the named parameters (tests check updates bitwise)."""
        from safetensors.torch import save

        params = self._exact_params()
        return save({n: params[n].detach().contiguous().clone() for n in names})
