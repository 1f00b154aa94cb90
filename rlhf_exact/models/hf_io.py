"""Hugging Face checkpoint I/O for `Qwen3ForCausalLM` (the policy) and
`Qwen3ForSequenceClassification` (a reward model, models/reward.py): a local model
directory in, the same format out, so transformers and vLLM load what the product
trains. Every function takes `architecture` (default Qwen3ForCausalLM); the checks are
the same for both, a reward model's config.json must also say num_labels=1.

A directory holds config.json, optional generation_config.json and tokenizer files,
and the weights as `model.safetensors` or shards listed in
`model.safetensors.index.json`. safetensors only: pickle files (`*.bin`, `*.pt`) are
never read.

Loading validates everything before it touches the module: the architecture, every
tensor's presence, shape and dtype (from the safetensors headers, before any data is
read), and that the tokenizer's vocabulary fits the embedding. Bad input raises
ValueError naming the file and the tensor; a failed load leaves the module as it was.
The loaded parameters are checked finite on their device; `check_finite` reads a
directory's tensors for the same check without building a model (a file damaged in
place keeps its size and header: only its numbers tell).

Saving writes into a temporary sibling directory and renames it into place, so a
reader sees the old directory or the new one, never a half-written one.

    model, config = load_model("path/to/Qwen3-0.6B", dtype=torch.bfloat16)
    save_model(model, "out/step_100", tokenizer_from="path/to/Qwen3-0.6B")
"""
from __future__ import annotations

import contextlib
import json
import os
import pathlib
import shutil
import tempfile
from collections.abc import Mapping

import torch
from safetensors import safe_open
from safetensors.torch import save_file

from torch import nn

from .ops import EXACT, Ops
from .qwen3 import ARCHITECTURE, Qwen3Config, Qwen3ForCausalLM
from .reward import REWARD_ARCHITECTURE, Qwen3RewardModel, check_num_labels, label_config

CONFIG = "config.json"
GENERATION_CONFIG = "generation_config.json"
SINGLE = "model.safetensors"
INDEX = "model.safetensors.index.json"
TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "vocab.json", "merges.txt",
                   "special_tokens_map.json", "added_tokens.json", "chat_template.jinja")
_ST_DTYPES = {"BF16": torch.bfloat16, "F16": torch.float16, "F32": torch.float32}
MODEL_CLASSES: dict[str, type[nn.Module]] = {ARCHITECTURE: Qwen3ForCausalLM, REWARD_ARCHITECTURE: Qwen3RewardModel}


def model_class(architecture: str) -> type[nn.Module]:
    if architecture not in MODEL_CLASSES:
        raise ValueError(f"architecture must be one of {', '.join(MODEL_CLASSES)}, got {architecture!r}")
    return MODEL_CLASSES[architecture]


def read_config(path: str | os.PathLike, architecture: str = ARCHITECTURE) -> Qwen3Config:
    """config.json of a model directory -> Qwen3Config (ValueError for another
    architecture, or a reward model without num_labels=1)."""
    f = pathlib.Path(path) / CONFIG
    if not f.is_file():
        raise ValueError(f"{f}: not found (is {path} a Hugging Face model directory?)")
    try:
        d = json.loads(f.read_text())
    except json.JSONDecodeError as e:
        raise ValueError(f"{f}: not valid JSON ({e})") from None
    model_class(architecture)  # a known one
    config = Qwen3Config.from_hf_dict(d, source=str(f), architecture=architecture)
    if architecture == REWARD_ARCHITECTURE:
        check_num_labels(d, str(f))
    return config


def expected_tensors(config: Qwen3Config, architecture: str = ARCHITECTURE) -> dict[str, tuple[int, ...]]:
    """HF state-dict names and shapes of a checkpoint of `architecture` (without
    lm_head.weight when the embeddings are tied)."""
    model = model_class(architecture)(config, device="meta")
    shapes = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    if config.tie_word_embeddings:
        shapes.pop("lm_head.weight", None)
    return shapes


def tokenizer_vocab_size(path: str | os.PathLike) -> tuple[int, pathlib.Path] | None:
    """(largest token id + 1, the file it came from) of a directory's tokenizer, or None
    if it has no tokenizer file."""
    root = pathlib.Path(path)
    ids: list[int] = []
    tok_json = root / "tokenizer.json"
    if tok_json.is_file():
        d = json.loads(tok_json.read_text())
        ids += list((d.get("model") or {}).get("vocab", {}).values())
        ids += [t["id"] for t in d.get("added_tokens", [])]
        src = tok_json
    elif (root / "vocab.json").is_file():
        src = root / "vocab.json"
        ids += list(json.loads(src.read_text()).values())
        cfg = root / "tokenizer_config.json"
        if cfg.is_file():
            ids += [int(i) for i in json.loads(cfg.read_text()).get("added_tokens_decoder", {})]
    else:
        return None
    return (max(ids) + 1 if ids else 0), src


def _weight_files(root: pathlib.Path) -> tuple[dict[str, pathlib.Path], pathlib.Path]:
    """tensor name -> safetensors file, from the index or the single file; and the file
    to name in errors about the set of tensors."""
    index = root / INDEX
    if index.is_file():
        try:
            weight_map = json.loads(index.read_text())["weight_map"]
        except (json.JSONDecodeError, KeyError) as e:
            raise ValueError(f"{index}: not a safetensors index ({e!r})") from None
        files = {}
        for name, shard in weight_map.items():
            f = root / shard
            if not f.is_file():
                raise ValueError(f"{index}: tensor {name!r} is mapped to {shard}, which does not exist")
            files[name] = f
        return files, index
    single = root / SINGLE
    if single.is_file():
        with _open_safetensors(single) as st:
            return {name: single for name in st.keys()}, single
    pickles = sorted(p.name for p in root.glob("*.bin")) + sorted(p.name for p in root.glob("*.pt"))
    hint = ""
    if pickles:
        hint = f" (found {', '.join(pickles)}: pickle checkpoints are not loaded, convert to safetensors)"
    raise ValueError(f"{root}: no {SINGLE} or {INDEX}{hint}")


@contextlib.contextmanager
def _open_safetensors(f: pathlib.Path):
    """safe_open, with a damaged file (bad header, truncated data) as a ValueError naming it."""
    from safetensors import SafetensorError

    try:
        st = safe_open(f, framework="pt")
    except SafetensorError as e:
        raise ValueError(f"{f}: not a readable safetensors file ({e}); truncated or damaged?") from None
    with st:
        yield st


def _check_headers(root: pathlib.Path, config: Qwen3Config | None, architecture: str = ARCHITECTURE):
    """(config, tensor name -> file, file -> names, tied checkpoint carries lm_head) after
    checking every header against the config (read_state_dict's checks, no data read)."""
    config = config or read_config(root, architecture)
    expected = expected_tensors(config, architecture)
    files, listing = _weight_files(root)

    tied_extra = architecture == ARCHITECTURE and config.tie_word_embeddings and "lm_head.weight" in files
    missing = sorted(set(expected) - set(files))
    extra = sorted(set(files) - set(expected) - ({"lm_head.weight"} if tied_extra else set()))
    if missing:
        raise ValueError(f"{listing}: missing tensor {missing[0]!r}"
                         + (f" and {len(missing) - 1} more" if len(missing) > 1 else "")
                         + f" expected by {root / CONFIG}")
    if extra:
        raise ValueError(f"{listing}: unexpected tensor {extra[0]!r}"
                         + (f" and {len(extra) - 1} more" if len(extra) > 1 else "")
                         + f" (not part of the {architecture} described by {root / CONFIG})")

    by_file: dict[pathlib.Path, list[str]] = {}
    for name, f in files.items():
        by_file.setdefault(f, []).append(name)
    for f, names in by_file.items():  # headers only: shapes and dtypes
        with _open_safetensors(f) as st:
            present = set(st.keys())
            for name in names:
                if name not in present:
                    raise ValueError(f"{f}: tensor {name!r} is listed in {listing.name} but not in the file")
                sl = st.get_slice(name)
                shape = tuple(sl.get_shape())
                want = expected.get(name, expected["model.embed_tokens.weight"])
                if shape != want:
                    raise ValueError(f"{f}: tensor {name!r} has shape {shape}, expected {want} "
                                     f"from {root / CONFIG}")
                if sl.get_dtype() not in _ST_DTYPES:
                    raise ValueError(f"{f}: tensor {name!r} has dtype {sl.get_dtype()}, "
                                     f"expected one of {', '.join(_ST_DTYPES)}")
    return config, files, by_file, tied_extra


def check_model_dir(path: str | os.PathLike, architecture: str = ARCHITECTURE) -> Qwen3Config:
    """Everything a run needs of a model directory, without reading tensor data:
    config.json (a Qwen3 config with model_type), tokenizer.json (a Hugging Face fast
    tokenizer that loads, its ids within the embedding), and every safetensors file's
    header (readable, covering the whole file, so a truncated file is caught; tensors
    present with the config's shapes). ValueError naming the file otherwise."""
    from tokenizers import Tokenizer

    root = pathlib.Path(path)
    config = read_config(root, architecture)
    tok = root / "tokenizer.json"
    if not tok.is_file():
        raise ValueError(f"{tok}: not found (the run needs a Hugging Face fast tokenizer file)")
    try:
        Tokenizer.from_file(str(tok))
    except Exception as e:  # noqa: BLE001 - the tokenizers library raises its own Exception type
        raise ValueError(f"{tok}: not a readable tokenizer ({str(e).splitlines()[0] if str(e) else e!r})") from None
    check_tokenizer(root, config)
    _check_headers(root, config, architecture)
    return config


def read_state_dict(path: str | os.PathLike, config: Qwen3Config | None = None,
                    dtype: torch.dtype | None = None, architecture: str = ARCHITECTURE) -> dict[str, torch.Tensor]:
    """Validated tensors of a model directory (CPU), cast to `dtype` if given.

    Checks, before reading any data: every expected tensor present, none extra, shapes
    and dtypes right; a tied checkpoint may carry lm_head.weight only if it equals the
    embedding. ValueError names the file and the tensor."""
    root = pathlib.Path(path)
    config, files, by_file, tied_extra = _check_headers(root, config, architecture)

    out: dict[str, torch.Tensor] = {}
    for f, names in by_file.items():
        with safe_open(f, framework="pt") as st:
            for name in names:
                t = st.get_tensor(name)
                out[name] = t.to(dtype) if dtype is not None else t
    if tied_extra:
        lm = out.pop("lm_head.weight")
        if not torch.equal(lm.to(out["model.embed_tokens.weight"].dtype), out["model.embed_tokens.weight"]):
            raise ValueError(f"{files['lm_head.weight']}: tensor 'lm_head.weight' differs from "
                             f"'model.embed_tokens.weight' but {root / CONFIG} has tie_word_embeddings=true")
    return out


def check_finite(path: str | os.PathLike, architecture: str = ARCHITECTURE) -> None:
    """Every tensor of a model directory holds finite numbers: a file damaged in place (its
    size unchanged, so its header still reads) can hold NaN or inf, which would surface
    much later as a parity or loss failure that blames the kernels. Reads every tensor,
    one at a time; ValueError naming the file and the tensor."""
    root = pathlib.Path(path)
    _, _, by_file, _ = _check_headers(root, None, architecture)
    for f, names in by_file.items():
        with _open_safetensors(f) as st:
            for name in names:
                _check_finite_tensor(f, name, st.get_tensor(name))


def _check_finite_tensor(f: pathlib.Path, name: str, t: torch.Tensor) -> None:
    finite = torch.isfinite(t)
    if not bool(finite.all()):
        bad = (~finite).nonzero()
        where = tuple(int(i) for i in bad[0].tolist())
        raise ValueError(f"{f}: tensor {name!r} holds {bad.shape[0]} non-finite value(s) (NaN or inf, the first "
                         f"at index {where}): the file is damaged; download or export the model again")


def check_tokenizer(path: str | os.PathLike, config: Qwen3Config) -> None:
    """ValueError if the directory's tokenizer has token ids beyond the embedding."""
    found = tokenizer_vocab_size(path)
    if found is not None and found[0] > config.vocab_size:
        raise ValueError(f"{found[1]}: the tokenizer has token ids up to {found[0] - 1}, but tensor "
                         f"'model.embed_tokens.weight' has only {config.vocab_size} rows "
                         f"(vocab_size in {pathlib.Path(path) / CONFIG})")


def load_model(path: str | os.PathLike, dtype: torch.dtype = torch.bfloat16, device: str | torch.device = "cpu",
               activation_checkpointing: bool = False, ops: Ops = EXACT,
               architecture: str = ARCHITECTURE) -> tuple[nn.Module, Qwen3Config]:
    """Build the `architecture` module (Qwen3ForCausalLM, or Qwen3RewardModel for
    Qwen3ForSequenceClassification) with parameters in `dtype` on `device` from a local HF
    model directory, computing with the op table `ops` (models/ops.py). Everything is
    validated before the module is created."""
    config = read_config(path, architecture)
    check_tokenizer(path, config)
    state = read_state_dict(path, config, dtype=dtype, architecture=architecture)
    model = model_class(architecture)(config, device="meta", dtype=dtype,
                                      activation_checkpointing=activation_checkpointing, ops=ops)
    model.to_empty(device=device)  # rebuilds the fp32 rotary table on `device`
    model.tie_weights()
    load_state_dict_into(model, state)
    _check_finite_params(model, path)
    return model, config


def _check_finite_params(model: nn.Module, path: str | os.PathLike) -> None:
    """The loaded parameters are finite, checked on their device (on a GPU at memory speed;
    preflight's check_finite reads the files before a run starts)."""
    for name, p in model.state_dict().items():
        if not bool(torch.isfinite(p).all()):
            files, _ = _weight_files(pathlib.Path(path))
            _check_finite_tensor(files.get(name, pathlib.Path(path)), name, p.cpu())


@torch.no_grad()
def load_state_dict_into(model: nn.Module, state: Mapping[str, torch.Tensor]) -> None:
    """Copy HF-named tensors into the module after checking the complete set of names
    and shapes (nothing is copied if any check fails)."""
    params = dict(model.state_dict())
    if model.config.tie_word_embeddings:
        params.pop("lm_head.weight", None)
    missing, extra = sorted(set(params) - set(state)), sorted(set(state) - set(params))
    if missing or extra:
        raise ValueError(f"state dict: missing {missing[:3]}, unexpected {extra[:3]}")
    for name, t in state.items():
        if tuple(t.shape) != tuple(params[name].shape):
            raise ValueError(f"state dict: tensor {name!r} has shape {tuple(t.shape)}, "
                             f"expected {tuple(params[name].shape)}")
    for name, t in state.items():
        params[name].copy_(t)


def hf_state_dict(model: nn.Module, dtype: torch.dtype | None = torch.bfloat16) -> dict[str, torch.Tensor]:
    """The module's tensors under HF names, contiguous on CPU (lm_head.weight left out
    when tied, as HF saves it)."""
    out = {}
    for name, t in model.state_dict().items():
        if name == "lm_head.weight" and model.config.tie_word_embeddings:
            continue
        t = t.detach()
        out[name] = (t.to(dtype) if dtype is not None else t).to("cpu").contiguous()
    return out


def save_model(model: nn.Module | Mapping[str, torch.Tensor], path: str | os.PathLike, *,
               config: Qwen3Config | None = None, dtype: torch.dtype = torch.bfloat16,
               tokenizer_from: str | os.PathLike | None = None, max_shard_bytes: int | None = None,
               generation_config: Mapping | None = None, architecture: str | None = None) -> pathlib.Path:
    """Write a HF model directory atomically (temp dir + rename, replacing `path`).

    model: the module, or an HF-named state dict (then `config` is required; e.g. a
      full state dict gathered from FSDP2).
    tokenizer_from: a directory whose tokenizer files and generation_config.json are copied.
    max_shard_bytes: split into model-0000i-of-0000n.safetensors + index when exceeded.
    architecture: the module's own (Qwen3RewardModel: Qwen3ForSequenceClassification), else
      Qwen3ForCausalLM; give it for a reward model's state dict.
    """
    if architecture is None:
        classes = {cls: name for name, cls in MODEL_CLASSES.items()}
        architecture = classes.get(type(model), ARCHITECTURE)
    if isinstance(model, nn.Module):
        config = config or model.config
        tensors = hf_state_dict(model, dtype)
    else:
        if config is None:
            raise ValueError("save_model: a state dict needs config=")
        tensors = {k: v.detach().to(dtype).to("cpu").contiguous() for k, v in model.items()
                   if not (k == "lm_head.weight" and config.tie_word_embeddings)}
    expected = expected_tensors(config, architecture)
    bad = sorted(set(expected) ^ set(tensors)) + sorted(k for k in expected if k in tensors
                                                         and tuple(tensors[k].shape) != expected[k])
    if bad:
        raise ValueError(f"save_model: tensors do not match the config: {bad[:3]}")

    dest = pathlib.Path(path)
    dest.parent.mkdir(parents=True, exist_ok=True)
    tmp = pathlib.Path(tempfile.mkdtemp(prefix=f".{dest.name}.tmp-", dir=dest.parent))
    try:
        extra = label_config() if architecture == REWARD_ARCHITECTURE else None
        (tmp / CONFIG).write_text(config.to_json(dtype, architecture, extra))
        _write_weights(tensors, tmp, max_shard_bytes)
        if tokenizer_from is not None:
            src = pathlib.Path(tokenizer_from)
            for name in (*TOKENIZER_FILES, GENERATION_CONFIG):
                if (src / name).is_file():
                    shutil.copy2(src / name, tmp / name)
        if generation_config is not None:
            (tmp / GENERATION_CONFIG).write_text(json.dumps(dict(generation_config), indent=2) + "\n")
        if dest.exists():
            old = dest.with_name(f".{dest.name}.old-{os.getpid()}")
            os.rename(dest, old)
            os.rename(tmp, dest)
            shutil.rmtree(old)
        else:
            os.rename(tmp, dest)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return dest


def _write_weights(tensors: dict[str, torch.Tensor], root: pathlib.Path, max_shard_bytes: int | None) -> None:
    meta = {"format": "pt"}
    total = sum(t.numel() * t.element_size() for t in tensors.values())
    if max_shard_bytes is None or total <= max_shard_bytes:
        save_file(tensors, str(root / SINGLE), metadata=meta)
        return
    shards: list[dict[str, torch.Tensor]] = [{}]
    size = 0
    for name, t in tensors.items():
        nbytes = t.numel() * t.element_size()
        if shards[-1] and size + nbytes > max_shard_bytes:
            shards.append({})
            size = 0
        shards[-1][name] = t
        size += nbytes
    weight_map = {}
    for i, shard in enumerate(shards):
        fname = f"model-{i + 1:05d}-of-{len(shards):05d}.safetensors"
        save_file(shard, str(root / fname), metadata=meta)
        weight_map.update({name: fname for name in shard})
    (root / INDEX).write_text(json.dumps({"metadata": {"total_size": total}, "weight_map": weight_map},
                                         indent=2) + "\n")
