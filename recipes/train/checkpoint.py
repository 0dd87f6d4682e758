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

A checkpoint damaged afterwards (a truncated copy, a full disk, bit rot, a hand-edited
``state.json``) is caught by :func:`verify_checkpoint` before anything is loaded: the error names
the file and the reason. :func:`resumable_checkpoint` walks back to the newest intact checkpoint
and reports the ones it skipped; nothing is ever deleted.
"""

from __future__ import annotations

import hashlib
import json
import os
import random
import re
import shutil
from pathlib import Path
from typing import Any, Mapping

import numpy as np
import torch
import torch.distributed as dist
from safetensors import SafetensorError, safe_open
from safetensors.torch import load_file, save_file
from torch.distributed.checkpoint.state_dict import (
    StateDictOptions,
    get_model_state_dict,
    get_optimizer_state_dict,
    set_model_state_dict,
    set_optimizer_state_dict,
)

MODEL_FILE, OPTIM_FILE, STATE_FILE = "model.safetensors", "optimizer.safetensors", "state.json"
_STEP_DIR = re.compile(r"^step_(\d+)$")


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


def _metadata(path: Path) -> dict[str, Any]:
    try:
        with safe_open(str(path), framework="pt") as f:
            return {k: json.loads(v) for k, v in (f.metadata() or {}).items()}
    except (SafetensorError, OSError, json.JSONDecodeError) as err:
        raise ValueError(f"{path}: not a readable safetensors file ({err})") from err


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(1 << 22):
            digest.update(chunk)
    return digest.hexdigest()


def _file_records(directory: Path) -> dict[str, dict[str, Any]]:
    """Size and SHA-256 of every file of a checkpoint but ``state.json`` (which records them)."""
    return {p.name: {"bytes": p.stat().st_size, "sha256": _sha256(p)}
            for p in sorted(directory.iterdir()) if p.name != STATE_FILE}


def verify_checkpoint(path: str | os.PathLike) -> dict[str, Any]:
    """``state.json`` of an intact checkpoint; a ValueError naming the damaged file and why otherwise.

    Every file recorded in ``state.json`` must exist with its recorded size and SHA-256.
    Checkpoints written before checksums were recorded pass if their safetensors headers parse.
    """
    path = Path(path)
    state_path = path / STATE_FILE
    if not state_path.is_file():
        raise ValueError(f"{state_path}: missing (an incomplete checkpoint)")
    try:
        state = json.loads(state_path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise ValueError(f"{state_path}: not valid JSON ({err})") from err
    if not isinstance(state, dict) or not isinstance(state.get("step"), int):
        raise ValueError(f"{state_path}: no integer 'step' entry")
    files = state.get("files")
    if files is None:
        for name in (MODEL_FILE, OPTIM_FILE):
            _metadata(path / name)
        return state
    if not isinstance(files, dict) or MODEL_FILE not in files:
        raise ValueError(f"{state_path}: 'files' does not record {MODEL_FILE}")
    for name, record in files.items():
        file = path / name
        if not file.is_file():
            raise ValueError(f"{file}: missing")
        if file.stat().st_size != record["bytes"]:
            raise ValueError(f"{file}: {file.stat().st_size} bytes, {record['bytes']} recorded (truncated or overwritten)")
        if _sha256(file) != record["sha256"]:
            raise ValueError(f"{file}: SHA-256 differs from the recorded one (corrupted)")
    return state


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
    for alias, name in _metadata(Path(path)).get("aliases", {}).items():
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
    root = Path(ckpt_dir)
    if not root.is_dir():
        return []
    found = [(int(m.group(1)), p) for p in root.iterdir()
             if (m := _STEP_DIR.match(p.name)) and (p / STATE_FILE).is_file()]
    return [p for _, p in sorted(found)]


def latest_checkpoint(ckpt_dir: str | os.PathLike) -> Path | None:
    dirs = checkpoint_dirs(ckpt_dir)
    return dirs[-1] if dirs else None


def resumable_checkpoint(ckpt_dir: str | os.PathLike) -> tuple[Path | None, list[tuple[Path, str]]]:
    """The newest intact checkpoint under ``ckpt_dir`` and the newer ones skipped, with why.

    ``(None, [])`` when there is no checkpoint at all. When every ``step_*`` directory is damaged
    this raises a ValueError listing them: resuming must not silently start from scratch.
    """
    root = Path(ckpt_dir)
    steps = sorted(((int(m.group(1)), p) for p in root.iterdir() if (m := _STEP_DIR.match(p.name)) and p.is_dir()),
                   reverse=True) if root.is_dir() else []
    skipped: list[tuple[Path, str]] = []
    for _, path in steps:
        try:
            verify_checkpoint(path)
            return path, skipped
        except ValueError as err:
            skipped.append((path, str(err)))
    if skipped:
        reasons = "; ".join(reason for _, reason in skipped)
        raise ValueError(f"no valid checkpoint in {root} to resume from (nothing was deleted): {reasons}")
    return None, []


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
        record = {**state, "step": step, "world_size": world, "files": _file_records(tmp)}
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
        osd = _optimizer_from_tensors(load_file(str(path / OPTIM_FILE)), _metadata(path / OPTIM_FILE))
        set_optimizer_state_dict(model, optimizer, osd, options=opts)
        for group in optimizer.param_groups:  # the full-state-dict path turns tuples into lists
            if isinstance(group.get("betas"), list):
                group["betas"] = tuple(group["betas"])
    if restore_rng:
        rank, _ = _rank_world()
        rng_path = path / f"rng_rank{rank}.safetensors"
        if not rng_path.is_file():  # resumed on more ranks than saved
            rng_path = path / "rng_rank0.safetensors"
        set_rng_state(load_file(str(rng_path)), _metadata(rng_path)["rng"])
    return state


def load_model(path: str | os.PathLike, device: torch.device | str = "cpu") -> torch.nn.Module:
    """Rebuild a :class:`recipes.model.CausalLM` from a checkpoint directory or ``model.safetensors``."""
    from recipes.config import ModelConfig
    from recipes.model import CausalLM

    path = Path(path)
    if path.is_dir() and (path / STATE_FILE).exists():
        verify_checkpoint(path)
    file = path / MODEL_FILE if path.is_dir() else path
    cfg = _metadata(file).get("model_config")
    if not cfg:
        raise ValueError(f"{file} has no model_config metadata; build the model yourself and call load_weights")
    model = CausalLM(ModelConfig(**cfg)).to(device)
    model.load_state_dict(load_weights(file))
    return model
