"""Atomic, pickle-free training checkpoints: safetensors tensors + JSON.

A checkpoint is a directory ``step_00000042/`` holding

``model.safetensors``
    full (unsharded) weights; tensors that share storage (tied weights) are stored once and
    their other names recorded in the metadata. The model config is in the metadata too.
``optimizer.safetensors``
    optimizer state keyed by parameter name (``state.<param>.<key>``); param groups as JSON.
``rng_rank<r>.safetensors``
    each rank's torch / CUDA / numpy / python RNG states.
``state.json``
    step, data position, run config, and the size and SHA-256 of every other file; written last.

Every rank calls :func:`save_checkpoint` (gathering FSDP2 shards is collective). Files are
written into ``.tmp-step_…`` and renamed with :func:`os.replace`, so a kill at any moment
leaves either the previous checkpoint or the new one, never half of one. Loading uses
``safetensors`` and ``json`` only: nothing is unpickled.

A checkpoint damaged afterwards is caught before anything is loaded
(:mod:`recipes.train.integrity`: checksums, :func:`verify_checkpoint`, :func:`resumable_checkpoint`).
"""

from __future__ import annotations

import json
import os
import random
import shutil
from pathlib import Path
from typing import Any, Mapping

import numpy as np
import torch
import torch.distributed as dist
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file
from torch.distributed.checkpoint.state_dict import (
    StateDictOptions,
    get_model_state_dict,
    get_optimizer_state_dict,
    set_model_state_dict,
    set_optimizer_state_dict,
)

from recipes.train.integrity import (
    MODEL_FILE,
    OPTIM_FILE,
    STATE_FILE,
    file_records,
    read_metadata,
    resumable_checkpoint,
    step_dirs,
    verify_checkpoint,
)

__all__ = [
    "MODEL_FILE", "OPTIM_FILE", "STATE_FILE", "checkpoint_dirs", "latest_checkpoint", "load_checkpoint", "load_model",
    "load_weights", "resumable_checkpoint", "rng_state", "save_checkpoint", "save_weights", "set_rng_state",
    "verify_checkpoint",
]


def _rank_world() -> tuple[int, int]:
    return (dist.get_rank(), dist.get_world_size()) if dist.is_initialized() else (0, 1)


def _barrier() -> None:
    if dist.is_initialized():
        dist.barrier()


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _save(tensors: Mapping[str, torch.Tensor], path: Path, metadata: Mapping[str, Any]) -> None:
    save_file({k: v.detach().cpu().contiguous() for k, v in tensors.items()}, str(path),
              metadata={k: json.dumps(v) for k, v in metadata.items()})
    with open(path, "rb+") as f:
        os.fsync(f.fileno())


# ----------------------------------------------------------------------------- weights
def save_weights(state: Mapping[str, torch.Tensor], path: str | os.PathLike, **metadata: Any) -> None:
    """Save a state dict as safetensors, storing tensors that share memory once."""
    unique: dict[str, torch.Tensor] = {}
    aliases: dict[str, str] = {}
    seen: dict[tuple, str] = {}
    for name, t in state.items():
        key = (t.device, t.untyped_storage().data_ptr(), t.storage_offset(), tuple(t.shape), tuple(t.stride()), t.dtype)
        if t.numel() and key in seen:
            aliases[name] = seen[key]
        else:
            seen[key] = name
            unique[name] = t
    _save(unique, Path(path), {**metadata, "aliases": aliases})


def load_weights(path: str | os.PathLike) -> dict[str, torch.Tensor]:
    """Load a safetensors state dict; tied names map to the same tensor again."""
    try:
        state = load_file(str(path))
    except (SafetensorError, OSError) as err:
        raise ValueError(f"{path}: not a readable safetensors file ({err})") from err
    for alias, name in read_metadata(Path(path)).get("aliases", {}).items():
        state[alias] = state[name]
    return state


# --------------------------------------------------------------------------- optimizer
def _optimizer_to_tensors(osd: Mapping[str, Any]) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    tensors, scalars = {}, {}
    for param, entries in osd["state"].items():
        for key, value in entries.items():
            if isinstance(value, torch.Tensor):
                tensors[f"state.{param}.{key}"] = value
            else:
                scalars[f"{param}.{key}"] = [param, key, value]
    groups = [{k: list(v) if isinstance(v, tuple) else v for k, v in g.items()} for g in osd["param_groups"]]
    json.dumps(groups)  # fail here, not mid-write, if a hyperparameter is not JSON-able
    return tensors, {"param_groups": groups, "scalars": scalars}


def _optimizer_from_tensors(tensors: Mapping[str, torch.Tensor], meta: Mapping[str, Any]) -> dict[str, Any]:
    state: dict[str, dict[str, Any]] = {}
    for name, value in tensors.items():
        param, key = name[len("state."):].rsplit(".", 1)
        state.setdefault(param, {})[key] = value
    for param, key, value in meta["scalars"].values():
        state.setdefault(param, {})[key] = value
    groups = [{k: tuple(v) if k == "betas" else v for k, v in g.items()} for g in meta["param_groups"]]
    return {"state": state, "param_groups": groups}


# --------------------------------------------------------------------------------- RNG
def rng_state() -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """This process's RNG states (torch CPU, current CUDA device, numpy, python)."""
    version, py_state, gauss = random.getstate()
    np_kind, np_keys, np_pos, np_has_gauss, np_gauss = np.random.get_state()
    tensors = {
        "torch": torch.get_rng_state(),
        "numpy": torch.from_numpy(np_keys.astype(np.int64)),
        "python": torch.tensor(py_state, dtype=torch.int64),
    }
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        tensors["cuda"] = torch.cuda.get_rng_state()
    meta = {"python": [version, gauss], "numpy": [np_kind, int(np_pos), int(np_has_gauss), float(np_gauss)]}
    return tensors, meta


def set_rng_state(tensors: Mapping[str, torch.Tensor], meta: Mapping[str, Any]) -> None:
    torch.set_rng_state(tensors["torch"])
    if "cuda" in tensors and torch.cuda.is_available():
        torch.cuda.set_rng_state(tensors["cuda"])
    kind, pos, has_gauss, gauss = meta["numpy"]
    np.random.set_state((kind, tensors["numpy"].numpy().astype(np.uint32), pos, has_gauss, gauss))
    version, py_gauss = meta["python"]
    random.setstate((version, tuple(tensors["python"].tolist()), py_gauss))


# -------------------------------------------------------------------------- checkpoint
def checkpoint_dirs(ckpt_dir: str | os.PathLike) -> list[Path]:
    """Complete checkpoints under ``ckpt_dir``, oldest first (temporary directories are ignored)."""
    return [p for p in step_dirs(ckpt_dir) if (p / STATE_FILE).is_file()]


def latest_checkpoint(ckpt_dir: str | os.PathLike) -> Path | None:
    dirs = checkpoint_dirs(ckpt_dir)
    return dirs[-1] if dirs else None


def save_checkpoint(
    ckpt_dir: str | os.PathLike,
    step: int,
    model: torch.nn.Module,
    optimizer: torch.optim.Optimizer,
    state: Mapping[str, Any],
    keep: int = 3,
    model_config: Mapping[str, Any] | None = None,
) -> Path:
    """Write checkpoint ``step`` atomically and keep the newest ``keep``. Call on every rank."""
    if keep < 1:
        raise ValueError(f"keep must be >= 1, got {keep}")
    rank, world = _rank_world()
    opts = StateDictOptions(full_state_dict=True, cpu_offload=True)
    weights = get_model_state_dict(model, options=opts)
    osd = get_optimizer_state_dict(model, optimizer, options=opts)
    root = Path(ckpt_dir)
    final, tmp = root / f"step_{step:08d}", root / f".tmp-step_{step:08d}"
    if rank == 0:
        root.mkdir(parents=True, exist_ok=True)
        shutil.rmtree(tmp, ignore_errors=True)  # left by a run killed mid-save
        tmp.mkdir()
    _barrier()
    rng_tensors, rng_meta = rng_state()
    _save(rng_tensors, tmp / f"rng_rank{rank}.safetensors", {"rng": rng_meta})
    if rank == 0:
        save_weights(weights, tmp / MODEL_FILE, model_config=dict(model_config or {}))
        tensors, meta = _optimizer_to_tensors(osd)
        _save(tensors, tmp / OPTIM_FILE, meta)
    _barrier()
    if rank == 0:
        state_path = tmp / STATE_FILE
        record = {**state, "step": step, "world_size": world, "files": file_records(tmp)}
        state_path.write_text(json.dumps(record, indent=1))
        with open(state_path, "rb+") as f:
            os.fsync(f.fileno())
        _fsync_dir(tmp)
        if final.exists():  # re-saving a step (e.g. the last one after a resume)
            shutil.rmtree(final)
        os.replace(tmp, final)
        _fsync_dir(root)
        for old in checkpoint_dirs(root)[:-keep]:
            shutil.rmtree(old, ignore_errors=True)
    _barrier()
    return final


def load_checkpoint(path: str | os.PathLike, model: torch.nn.Module, optimizer: torch.optim.Optimizer | None = None,
                    restore_rng: bool = True, verify: bool = True) -> dict[str, Any]:
    """Load weights, optimizer state and this rank's RNG into a (possibly sharded) model; return ``state.json``.

    Every rank reads the full tensors and keeps its own shard. Call before the first backward
    (the optimizer state is materialised from parameters without gradients). ``verify`` checks
    the files against their recorded checksums first (:func:`verify_checkpoint`).
    """
    path = Path(path)
    state = verify_checkpoint(path) if verify else json.loads((path / STATE_FILE).read_text())
    opts = StateDictOptions(full_state_dict=True, strict=True)
    set_model_state_dict(model, load_weights(path / MODEL_FILE), options=opts)
    if optimizer is not None:
        osd = _optimizer_from_tensors(load_file(str(path / OPTIM_FILE)), read_metadata(path / OPTIM_FILE))
        set_optimizer_state_dict(model, optimizer, osd, options=opts)
        for group in optimizer.param_groups:  # the full-state-dict path turns tuples into lists
            if isinstance(group.get("betas"), list):
                group["betas"] = tuple(group["betas"])
    if restore_rng:
        rank, _ = _rank_world()
        rng_path = path / f"rng_rank{rank}.safetensors"
        if not rng_path.is_file():  # resumed on more ranks than saved
            rng_path = path / "rng_rank0.safetensors"
        set_rng_state(load_file(str(rng_path)), read_metadata(rng_path)["rng"])
    return state


def load_model(path: str | os.PathLike, device: torch.device | str = "cpu", config: Any = None) -> torch.nn.Module:
    """Rebuild a :class:`recipes.lm.model.CausalLM` from a checkpoint directory or a ``.safetensors`` file.

    The model config saved with the weights (as :mod:`recipes.train.pretrain` saves it) rebuilds
    the model; ``config`` (a :class:`~recipes.lm.config.ModelConfig`) is used for bare weights
    that carry none, and must match them. A checkpoint directory is verified against its checksums.
    """
    from recipes.lm.config import ModelConfig
    from recipes.lm.model import CausalLM

    path = Path(path)
    file = path / MODEL_FILE if path.is_dir() else path
    if not file.is_file():
        raise ValueError(f"checkpoint must be a checkpoint directory or a .safetensors file, got {str(path)!r}")
    if path.is_dir() and (path / STATE_FILE).exists():
        verify_checkpoint(path)
    saved = read_metadata(file).get("model_config")
    if not saved and config is None:
        raise ValueError(f"{file} has no model_config metadata; pass config= (a ModelConfig) to load bare weights")
    model = CausalLM(ModelConfig(**saved) if saved else config).to(device)
    model.load_state_dict(load_weights(file))
    return model
