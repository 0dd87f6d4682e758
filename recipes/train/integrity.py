"""Integrity of training checkpoints: every file's size and SHA-256 recorded in ``state.json`` and
verified before loading.

A checkpoint damaged after it was written (a truncated copy, a full disk, bit rot, a hand-edited
``state.json``) is caught by :func:`verify_checkpoint`, whose ValueError names the file and the
reason. :func:`resumable_checkpoint` walks back from the newest checkpoint to the newest intact one
and reports those it skipped; nothing is ever deleted.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
from pathlib import Path
from typing import Any

from safetensors import SafetensorError, safe_open

MODEL_FILE, OPTIM_FILE, STATE_FILE = "model.safetensors", "optimizer.safetensors", "state.json"
STEP_DIR = re.compile(r"^step_(\d+)$")


def step_dirs(ckpt_dir: str | os.PathLike) -> list[Path]:
    """The ``step_*`` directories under ``ckpt_dir``, oldest first, complete or not (the
    ``.tmp-step_*`` directories of a save in progress never match)."""
    root = Path(ckpt_dir)
    if not root.is_dir():
        return []
    found = [(int(m.group(1)), p) for p in root.iterdir() if (m := STEP_DIR.match(p.name)) and p.is_dir()]
    return [p for _, p in sorted(found)]


def read_metadata(path: Path) -> dict[str, Any]:
    """The JSON metadata of a safetensors file; a ValueError naming the file if it cannot be read."""
    try:
        with safe_open(str(path), framework="pt") as f:
            return {k: json.loads(v) for k, v in (f.metadata() or {}).items()}
    except (SafetensorError, OSError, json.JSONDecodeError) as err:
        raise ValueError(f"{path}: not a readable safetensors file ({err})") from err


def sha256(path: Path) -> str:
    """Hex SHA-256 of a file, read in 4 MB blocks."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(1 << 22):
            digest.update(chunk)
    return digest.hexdigest()


def file_records(directory: Path) -> dict[str, dict[str, Any]]:
    """Size and SHA-256 of every file of a checkpoint but ``state.json`` (which records them)."""
    return {p.name: {"bytes": p.stat().st_size, "sha256": sha256(p)}
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
            read_metadata(path / name)
        return state
    if not isinstance(files, dict) or MODEL_FILE not in files:
        raise ValueError(f"{state_path}: 'files' does not record {MODEL_FILE}")
    for name, record in files.items():
        file = path / name
        if not file.is_file():
            raise ValueError(f"{file}: missing")
        if file.stat().st_size != record["bytes"]:
            raise ValueError(f"{file}: {file.stat().st_size} bytes, {record['bytes']} recorded (truncated or overwritten)")
        if sha256(file) != record["sha256"]:
            raise ValueError(f"{file}: SHA-256 differs from the recorded one (corrupted)")
    return state


def resumable_checkpoint(ckpt_dir: str | os.PathLike) -> tuple[Path | None, list[tuple[Path, str]]]:
    """The newest intact checkpoint under ``ckpt_dir`` and the newer ones skipped, with why.

    ``(None, [])`` when there is no checkpoint at all. When every ``step_*`` directory is damaged
    this raises a ValueError listing them: resuming must not silently start from scratch.
    """
    skipped: list[tuple[Path, str]] = []
    for path in reversed(step_dirs(ckpt_dir)):
        try:
            verify_checkpoint(path)
            return path, skipped
        except ValueError as err:
            skipped.append((path, str(err)))
    if skipped:
        reasons = "; ".join(reason for _, reason in skipped)
        raise ValueError(f"no valid checkpoint in {Path(ckpt_dir)} to resume from (nothing was deleted): {reasons}")
    return None, []
