"""Resumable training checkpoints: ``checkpoints/chkpnt_<g>.pth`` with ``g`` the global iteration
(coarse iterations first, then fine), written atomically.

A checkpoint holds only tensors, dicts, lists, tuples, numbers and strings, so it loads with
``torch.load(weights_only=True)``: the model state (with the current number of Gaussians), the optimizer
and learning-rate state, the densification strategy's statistics, the stage and its iteration, the
samples consumed, and the RNG states (python, numpy, torch CPU and CUDA).
"""

from __future__ import annotations

import io
import random
import re
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ..fileio import atomic_write

CHECKPOINT_FORMAT = "gaussiantalker-checkpoint"
CHECKPOINT_VERSION = 1
_NAME = re.compile(r"^chkpnt_(\d+)\.pth$")


def checkpoint_path(model_dir: Path, global_iteration: int) -> Path:
    return Path(model_dir) / "checkpoints" / f"chkpnt_{int(global_iteration)}.pth"


def list_checkpoints(model_dir: Path) -> list[int]:
    """Global iterations of the checkpoints in ``model_dir`` (sorted)."""
    folder = Path(model_dir) / "checkpoints"
    if not folder.is_dir():
        return []
    return sorted(int(m.group(1)) for p in folder.iterdir() if (m := _NAME.match(p.name)))


def rng_state(device: torch.device) -> dict[str, Any]:
    """Every RNG state that training draws from, in weights_only-loadable types."""
    version, keys, gauss = random.getstate()
    np_state = np.random.get_state()
    state: dict[str, Any] = {
        "python": [version, list(keys), gauss],
        "numpy": [np_state[0], torch.from_numpy(np.asarray(np_state[1], dtype=np.int64)), int(np_state[2]),
                  int(np_state[3]), float(np_state[4])],
        "torch": torch.get_rng_state(),
    }
    if device.type == "cuda":
        state["cuda"] = torch.cuda.get_rng_state(device)
    return state


def set_rng_state(state: dict[str, Any], device: torch.device) -> None:
    """Inverse of :func:`rng_state`."""
    version, keys, gauss = state["python"]
    random.setstate((int(version), tuple(int(k) for k in keys), gauss))
    name, keys_t, pos, has_gauss, cached = state["numpy"]
    np.random.set_state((str(name), keys_t.numpy().astype(np.uint32), int(pos), int(has_gauss), float(cached)))
    torch.set_rng_state(state["torch"])
    if device.type == "cuda" and "cuda" in state:
        torch.cuda.set_rng_state(state["cuda"], device)


def save_checkpoint(model_dir: Path, global_iteration: int, payload: dict[str, Any]) -> Path:
    """Write ``payload`` (plus format/version) as ``checkpoints/chkpnt_<global_iteration>.pth`` atomically."""
    buf = io.BytesIO()
    torch.save({"format": CHECKPOINT_FORMAT, "version": CHECKPOINT_VERSION, **payload}, buf)
    data = buf.getvalue()
    return atomic_write(checkpoint_path(model_dir, global_iteration), lambda tmp: tmp.write_bytes(data))


def load_checkpoint(path: Path, map_location: torch.device | None = None) -> dict[str, Any]:
    """Read a checkpoint with ``weights_only=True``; ValueError naming the file when it is not one of ours."""
    try:
        data = torch.load(path, map_location=map_location or "cpu", weights_only=True)
    except Exception as exc:
        raise ValueError(f"{path}: cannot be loaded as a checkpoint ({exc})") from exc
    if not isinstance(data, dict) or data.get("format") != CHECKPOINT_FORMAT:
        raise ValueError(f"{path}: not a gaussiantalker training checkpoint")
    if data.get("version") != CHECKPOINT_VERSION:
        raise ValueError(f"{path}: checkpoint version {data.get('version')} is not supported")
    return data


__all__ = ["checkpoint_path", "list_checkpoints", "load_checkpoint", "rng_state", "save_checkpoint", "set_rng_state"]
