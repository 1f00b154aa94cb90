"""Run checkpoints: atomic directories of safetensors files and JSON, never pickle.

    from rlhf_exact.runtime.checkpoint import save_run_checkpoint, load_run_checkpoint, latest_checkpoint
    opt_t, opt_meta = flatten_optimizer_state(optimizer_state_dict)
    rng_t, rng_meta = capture_rng_state()
    save_run_checkpoint(run_dir, step, {"model": hf_named_tensors, "optimizer": opt_t, "rng": rng_t},
                        {"optimizer": opt_meta, "rng": rng_meta, "scheduler": sched.state_dict(),
                         "dataloader": {"epoch": 1, "index": 40}}, keep_last=cfg.run.keep_last)
    path = latest_checkpoint(run_dir)                       # None: nothing to resume
    tensors, meta = load_run_checkpoint(path)               # meta["step"] == step
    optimizer.load_state_dict(unflatten_optimizer_state(tensors["optimizer"], meta["optimizer"]))
    restore_rng_state(tensors["rng"], meta["rng"])

Layout of run_dir/checkpoints/step_000123/:
    <group>.safetensors   one per key of `tensors` (model: HF parameter names)
    meta.json             the caller's meta + {"step", "groups", "format"}
    COMPLETE              written last: JSON {file name: {"bytes": size, "sha256": hex digest}}

Atomicity: everything is written (and fsynced) into checkpoints/.tmp-step_000123/, then
COMPLETE, then the directory is renamed to step_000123 with os.replace and the parent is
fsynced. A crash leaves a .tmp-* directory (deleted by the next save) and never a
step_* directory without COMPLETE; latest_checkpoint() ignores both anyway.

Integrity: loading (and `verify_checkpoint`) checks every file's size and SHA-256
against COMPLETE, so a truncated file and a same-size corruption (a flipped byte) are
both named as such before any tensor is used (a resume hashes once: preflight verifies,
the loop loads that checkpoint with checksums=False and checks sizes only).
`newest_intact_checkpoint` walks back from
the newest checkpoint to the first that verifies (resume=auto's fallback). Checkpoints
written before checksums existed (COMPLETE holding sizes only) are checked by size.

Tensors are stored as given (dtype, shape; moved to CPU): a DTensor must be gathered or
saved per rank by the caller (e.g. groups "optimizer_rank0", "optimizer_rank1").
Tensors that share memory (tied weights) are stored as separate copies. torch is
imported on use: finding checkpoints (latest_checkpoint) does not need it.
"""
from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:  # annotations only: torch is imported on use
    import torch

FORMAT = "rlhf_exact.run_checkpoint.v1"
COMPLETE = "COMPLETE"
META = "meta.json"
_STEP_RE = re.compile(r"step_(\d+)")


class CheckpointError(RuntimeError):
    """A checkpoint that cannot be read; the message names the file."""


def step_dir_name(step: int) -> str:
    return f"step_{step:06d}"


def checkpoints_dir(run_dir: str | os.PathLike) -> Path:
    return Path(run_dir) / "checkpoints"


def _fsync_file(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _fsync_dir(path: Path) -> None:
    _fsync_file(path)  # a directory opened read-only can be fsynced on Linux


def _write_bytes(path: Path, data: bytes) -> None:
    with open(path, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())


def _write_safetensors(path: Path, tensors: dict[str, torch.Tensor]) -> None:
    import torch
    from safetensors.torch import save_file

    out, seen = {}, set()
    for name, t in tensors.items():
        if not isinstance(t, torch.Tensor):
            raise TypeError(f"{path.name}: {name!r} is a {type(t).__name__}, not a tensor (put it in meta)")
        t = t.detach().to("cpu")
        # safetensors refuses views and shared storage (tied weights): store a copy
        if not t.is_contiguous() or (t.numel() and t.untyped_storage().data_ptr() in seen):
            t = t.contiguous().clone()
        if t.numel():
            seen.add(t.untyped_storage().data_ptr())
        out[name] = t
    save_file(out, str(path))
    _fsync_file(path)


def complete_checkpoints(run_dir: str | os.PathLike) -> list[tuple[int, Path]]:
    """(step, path) of every complete checkpoint, oldest first."""
    root = checkpoints_dir(run_dir)
    if not root.is_dir():
        return []
    found = []
    for p in root.iterdir():
        m = _STEP_RE.fullmatch(p.name)
        if m and p.is_dir() and (p / COMPLETE).is_file():
            found.append((int(m.group(1)), p))
    return sorted(found)


def latest_checkpoint(run_dir: str | os.PathLike) -> Path | None:
    """The complete checkpoint with the highest step, or None. Ignores .tmp-* dirs and
    step dirs without COMPLETE."""
    found = complete_checkpoints(run_dir)
    return found[-1][1] if found else None


def save_run_checkpoint(run_dir: str | os.PathLike, step: int, tensors: dict[str, dict[str, torch.Tensor]],
                        meta: dict, keep_last: int | None = None) -> Path:
    """Write checkpoints/step_NNNNNN atomically (module docstring) and return its path.

    tensors: group name -> {tensor name -> tensor}; each group is <group>.safetensors.
    meta: JSON-serializable dict (scheduler, dataloader position, RNG states of random and
    numpy, the optimizer's non-tensor fields, ...); "step" (= step), "groups" and "format"
    are added.
    keep_last: afterwards, delete all but the newest keep_last complete checkpoints."""
    if not isinstance(step, int) or step < 0:
        raise ValueError(f"step must be an int >= 0, got {step!r}")
    for group in tensors:
        if not re.fullmatch(r"[A-Za-z0-9_.-]+", group) or group == "meta":
            raise ValueError(f"tensor group name {group!r} must be [A-Za-z0-9_.-]+ and not 'meta'")
    reserved = {"groups", "format"} & set(meta)
    if reserved:
        raise ValueError(f"meta keys {sorted(reserved)} are reserved (written by save_run_checkpoint)")
    if meta.get("step", step) != step:
        raise ValueError(f"meta['step']={meta['step']!r} disagrees with step={step}")
    try:
        meta_text = json.dumps({**meta, "step": step, "groups": sorted(tensors), "format": FORMAT},
                               indent=1, sort_keys=True, allow_nan=True)
    except TypeError as e:
        raise TypeError(f"checkpoint meta is not JSON-serializable: {e}") from None

    root = checkpoints_dir(run_dir)
    root.mkdir(parents=True, exist_ok=True)
    for stale in root.glob(".tmp-step_*"):  # left by a crash
        shutil.rmtree(stale)
    name = step_dir_name(step)
    tmp, final = root / f".tmp-{name}", root / name
    tmp.mkdir()
    for group, named in tensors.items():
        _write_safetensors(tmp / f"{group}.safetensors", named)
    _write_bytes(tmp / META, meta_text.encode())
    sums = {p.name: {"bytes": p.stat().st_size, "sha256": _sha256(p)} for p in sorted(tmp.iterdir())}
    _write_bytes(tmp / COMPLETE, json.dumps(sums, indent=1).encode())
    _fsync_dir(tmp)
    if final.exists():  # the same step saved again (a resumed run re-reaching it): swap it out
        old = root / f".old-{name}"
        os.replace(final, old)
        os.replace(tmp, final)
        shutil.rmtree(old)
    else:
        os.replace(tmp, final)
    _fsync_dir(root)
    if keep_last is not None:
        prune_checkpoints(run_dir, keep_last)
    return final


def prune_checkpoints(run_dir: str | os.PathLike, keep_last: int) -> list[Path]:
    """Delete all but the newest keep_last complete checkpoints; returns the deleted."""
    if keep_last < 1:
        raise ValueError(f"keep_last must be >= 1, got {keep_last}")
    doomed = [p for _, p in complete_checkpoints(run_dir)[:-keep_last]]
    for p in doomed:
        shutil.rmtree(p)
    return doomed


def discard_checkpoints_after(run_dir: str | os.PathLike, step: int) -> list[Path]:
    """Delete complete checkpoints with a step above `step` (a run resumed from an earlier
    checkpoint replaces that future; otherwise resume=auto would jump back to it)."""
    doomed = [p for s, p in complete_checkpoints(run_dir) if s > step]
    for p in doomed:
        shutil.rmtree(p)
    return doomed


def _read_json(path: Path):
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError) as e:
        raise CheckpointError(f"corrupt checkpoint file {path}: {e}") from None


def _sha256(path: Path) -> str:
    with open(path, "rb") as f:
        return hashlib.file_digest(f, "sha256").hexdigest()


def verify_checkpoint(path: str | os.PathLike, checksums: bool = True) -> dict:
    """Check a checkpoint directory against its COMPLETE record (every listed file
    present, its size and SHA-256 as recorded) and its meta's format; returns the meta.
    checksums=False leaves out the SHA-256s, for a checkpoint whose checksums were just
    verified (preflight, before any actor started: reading it twice costs a pass over
    every byte). Raises CheckpointError naming the bad file."""
    path = Path(path)
    if not path.is_dir():
        raise CheckpointError(f"checkpoint {path} does not exist or is not a directory")
    complete = path / COMPLETE
    if not complete.is_file():
        raise CheckpointError(f"checkpoint {path} is incomplete: no {COMPLETE} marker (the save was interrupted)")
    record = _read_json(complete)
    for fname, want in record.items():
        want = want if isinstance(want, dict) else {"bytes": want}  # sizes only: written before checksums
        f = path / fname
        if not f.is_file() or f.stat().st_size != want["bytes"]:
            got = f"{f.stat().st_size} bytes" if f.is_file() else "missing"
            raise CheckpointError(f"corrupt checkpoint file {f}: {got}, {want['bytes']} bytes expected (per "
                                  f"{complete})")
        if checksums and "sha256" in want and _sha256(f) != want["sha256"]:
            raise CheckpointError(f"corrupt checkpoint file {f}: its SHA-256 differs from the one recorded in "
                                  f"{complete} (same size, changed content)")
    meta = _read_json(path / META)
    if meta.get("format") != FORMAT:
        raise CheckpointError(f"{path / META}: format {meta.get('format')!r} is not {FORMAT!r}")
    return meta


def newest_intact_checkpoint(run_dir: str | os.PathLike) -> tuple[Path | None, list[tuple[Path, str]]]:
    """(the newest complete checkpoint that verifies, or None; [(newer checkpoint that
    does not verify, why)], newest first)."""
    bad = []
    for _, p in reversed(complete_checkpoints(run_dir)):
        try:
            verify_checkpoint(p)
        except CheckpointError as e:
            bad.append((p, str(e)))
            continue
        return p, bad
    return None, bad


def load_run_checkpoint(path: str | os.PathLike, groups: list[str] | None = None, device: str = "cpu",
                        checksums: bool = True) -> tuple[dict[str, dict[str, torch.Tensor]], dict]:
    """(tensors by group, meta) of a checkpoint directory, verified first (sizes and
    checksums, verify_checkpoint; checksums=False: sizes only, for one verified just
    before); `groups` restricts which safetensors files are read. Raises CheckpointError
    naming the bad file."""
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    path = Path(path)
    meta = verify_checkpoint(path, checksums=checksums)
    wanted = meta["groups"] if groups is None else groups
    unknown = set(wanted) - set(meta["groups"])
    if unknown:
        raise CheckpointError(f"checkpoint {path} has no groups {sorted(unknown)} (it has {meta['groups']})")
    tensors = {}
    for group in wanted:
        f = path / f"{group}.safetensors"
        try:
            tensors[group] = load_file(str(f), device=device)
        except (SafetensorError, OSError) as e:
            raise CheckpointError(f"corrupt checkpoint file {f}: {e}") from None
    return tensors, meta


# ---------------------------------------------------------------------------------------
# optimizer and RNG state <-> (tensors, JSON)


def flatten_optimizer_state(state_dict: dict) -> tuple[dict[str, torch.Tensor], dict]:
    """A torch optimizer state_dict as (tensors, JSON-able meta).

    state_dict: {"state": {param key: {field: tensor or number}}, "param_groups": [...]},
    param keys being ints (Optimizer.state_dict) or names (torch.distributed.checkpoint's
    get_optimizer_state_dict). Tensors are named "<param key>/<field>" (AdamW: exp_avg,
    exp_avg_sq, step); numbers and param_groups go to meta."""
    import torch

    tensors, scalars = {}, {}
    keys = list(state_dict["state"])
    int_keys = all(isinstance(k, int) for k in keys)
    for key, fields in state_dict["state"].items():
        for field, value in fields.items():
            if isinstance(value, torch.Tensor):
                tensors[f"{key}/{field}"] = value
            else:
                scalars.setdefault(str(key), {})[field] = value
    # JSON has no tuples; remember which param-group fields were (AdamW betas) to restore them
    tuples = [sorted(k for k, v in g.items() if isinstance(v, tuple)) for g in state_dict["param_groups"]]
    meta = {"param_groups": state_dict["param_groups"], "tuple_fields": tuples, "scalars": scalars,
            "int_keys": int_keys, "keys": [str(k) for k in keys]}
    return tensors, meta


def unflatten_optimizer_state(tensors: dict[str, torch.Tensor], meta: dict) -> dict:
    """Inverse of flatten_optimizer_state."""
    conv = int if meta["int_keys"] else str
    state: dict = {conv(k): {} for k in meta["keys"]}
    for name, t in tensors.items():
        key, _, field = name.rpartition("/")
        state[conv(key)][field] = t
    for key, fields in meta["scalars"].items():
        state[conv(key)].update(fields)
    groups = [{k: tuple(v) if k in fields else v for k, v in g.items()}
              for g, fields in zip(meta["param_groups"], meta["tuple_fields"])]
    return {"state": state, "param_groups": groups}


def capture_rng_state() -> tuple[dict[str, torch.Tensor], dict]:
    """This process's RNG states: torch CPU (and every CUDA device, if CUDA is initialized)
    as uint8 tensors; Python `random` and numpy's global state as JSON."""
    import random

    import torch

    tensors = {"torch_cpu": torch.get_rng_state()}
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        for i, s in enumerate(torch.cuda.get_rng_state_all()):
            tensors[f"torch_cuda_{i}"] = s
    version, internal, gauss = random.getstate()
    meta = {"python": [version, list(internal), gauss]}
    try:
        import numpy as np
    except ImportError:
        np = None
    if np is not None:
        kind, keys, pos, has_gauss, cached = np.random.get_state()
        meta["numpy"] = [kind, keys.tolist(), int(pos), int(has_gauss), float(cached)]
    return tensors, meta


def restore_rng_state(tensors: dict[str, torch.Tensor], meta: dict) -> None:
    """Inverse of capture_rng_state."""
    import random

    import torch

    torch.set_rng_state(tensors["torch_cpu"])
    cuda = sorted((int(k.rsplit("_", 1)[1]), t) for k, t in tensors.items() if k.startswith("torch_cuda_"))
    if cuda:
        torch.cuda.set_rng_state_all([t for _, t in cuda])
    version, internal, gauss = meta["python"]
    random.setstate((version, tuple(internal), gauss))
    if "numpy" in meta:
        import numpy as np

        kind, keys, pos, has_gauss, cached = meta["numpy"]
        np.random.set_state((kind, np.asarray(keys, dtype=np.uint32), pos, has_gauss, cached))


def save_step_checkpoint(run_dir: str | os.PathLike, step: int, trainer, stream, keep_last: int) -> Path:
    """The run checkpoint after `step` steps of a loop: the trainer group's state (model,
    optimizer), the driver's RNG and the data stream's position (atomic; rank 0 writes)."""
    tensors, trainer_meta = trainer.state()  # {"model", "optimizer"}
    rng_tensors, rng_meta = capture_rng_state()
    meta = {"step": step, "trainer": trainer_meta, "data": stream.state_dict(), "rng": rng_meta}
    return save_run_checkpoint(run_dir, step, tensors | {"rng": rng_tensors}, meta, keep_last=keep_last)
