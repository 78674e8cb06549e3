"""Saving and loading trained models (the model folder of DESIGN.md).

```
<model_dir>/
├── config.json                                 the resolved TrainConfig
├── model.json                                  audio kind/dim, image size, focal, dataset path[, what the
│                                               audio predictor's fit chose: ModelInfo.lip_predictor]
├── dataset.json                                the dataset's path and fingerprint (gaussiantalker.train.fingerprint)
├── point_cloud/iteration_<k>/point_cloud.ply   3DGS vertex layout (x y z nx ny nz f_dc_* f_rest_* opacity
│                                               scale_* rot_*), float32, binary little-endian
├── point_cloud/iteration_<k>/deformation.pth   state dict of everything else (networks, tri-plane, buffers)
└── checkpoints/chkpnt_<g>.pth                  resumable training state (see gaussiantalker.train)
```

``k`` counts fine-stage iterations (``--iteration 10000`` after ``--iterations 10000``, as in the original);
checkpoints count global iterations over both stages. Rendering needs the folder and the dataset it names
(poses, blinks, torso/background frames); :mod:`gaussiantalker.export` packs both into one file. The optimizer
is not needed. ``.pth`` files load with ``torch.load(weights_only=True)``.
"""

from __future__ import annotations

import io
import json
import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Union

import numpy as np
import torch

from ..config import TrainConfig
from ..fileio import atomic_write
from .talker import GAUSSIAN_PARAMS, GaussianTalkerModel

PathLike = Union[str, os.PathLike]

MODEL_FORMAT = "gaussiantalker-model"
MODEL_VERSION = 1
_ITER_DIR = re.compile(r"^iteration_(\d+)$")


class ModelNotFoundError(FileNotFoundError):
    """The model folder does not exist or holds no trained iteration."""


class IterationNotFoundError(FileNotFoundError):
    """The requested iteration was not saved (the message lists those that were)."""


@dataclass
class ModelInfo:
    """What ``model.json`` records about the data a model was trained on."""

    audio_kind: str
    audio_dim: int
    dataset_path: str
    width: int
    height: int
    focal: float
    lip_predictor: dict | None = None
    """Kernel lip-code models: what the audio predictor's fit found for the clip (``audio_shift_frames``: the
    sound-against-picture offset it reads the audio with; ``phone_weight``: the weight of a ``phonetic`` row's
    articulation values, 0 when the phones did not help; ``cv_r_with_phones`` / ``cv_r_without_phones``: the
    cross-validated r that chose it; ``cv_r_per_component`` and ``gain`` per code component;
    ``cv_r_open_in_silence`` / ``cv_r_closed_in_silence`` and ``closes_in_silence``: whether renders close the mouth
    in silences by default, and the cross-validated r that chose it). None otherwise."""

    def to_json(self) -> str:
        data = {"format": MODEL_FORMAT, "version": MODEL_VERSION, **self.__dict__}
        if data["lip_predictor"] is None:
            del data["lip_predictor"]
        return json.dumps(data, indent=2) + "\n"

    @classmethod
    def read(cls, path: Path) -> ModelInfo:
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
            return cls(audio_kind=str(data["audio_kind"]), audio_dim=int(data["audio_dim"]),
                       dataset_path=str(data["dataset_path"]), width=int(data["width"]),
                       height=int(data["height"]), focal=float(data["focal"]),
                       lip_predictor=data.get("lip_predictor"))
        except (json.JSONDecodeError, KeyError, TypeError, ValueError) as exc:
            raise ValueError(f"{path}: not a valid model.json ({exc})") from exc


@dataclass
class LoadedModel:
    """A trained model ready to render (eval mode) and what it was trained on."""

    model: GaussianTalkerModel
    config: TrainConfig
    iteration: int
    audio_kind: str
    audio_dim: int
    dataset_path: Path
    width: int
    height: int
    focal: float = 0.0


def list_iterations(model_dir: PathLike) -> list[int]:
    """Saved fine-stage iterations of a model folder (sorted); [] when there are none.

    Raises ModelNotFoundError when the folder does not exist.
    """
    root = Path(model_dir)
    if not root.is_dir():
        raise ModelNotFoundError(f"model folder {root} does not exist")
    folder = root / "point_cloud"
    if not folder.is_dir():
        return []
    found = []
    for p in folder.iterdir():
        m = _ITER_DIR.match(p.name)
        if m and (p / "point_cloud.ply").is_file() and (p / "deformation.pth").is_file():
            found.append(int(m.group(1)))
    return sorted(found)


# ------------------------------------------------------------------------------------------ PLY


def _ply_fields(k_rest: int) -> list[str]:
    return (["x", "y", "z", "nx", "ny", "nz", "f_dc_0", "f_dc_1", "f_dc_2"]
            + [f"f_rest_{i}" for i in range(3 * k_rest)] + ["opacity"]
            + [f"scale_{i}" for i in range(3)] + [f"rot_{i}" for i in range(4)])


def write_gaussian_ply(path: PathLike, model: GaussianTalkerModel) -> Path:
    """Write the per-Gaussian parameters as a 3DGS PLY (atomically)."""
    with torch.no_grad():
        n = model.num_points
        xyz = model.xyz.detach().cpu().float()
        dc = model.features_dc.detach().cpu().float().transpose(1, 2).reshape(n, -1)  # [N, 3]
        rest = model.features_rest.detach().cpu().float().transpose(1, 2).reshape(n, -1)  # [N, 3*(K-1)] channel-major
        cols = torch.cat([xyz, torch.zeros_like(xyz), dc, rest, model.opacity.detach().cpu().float(),
                          model.scaling.detach().cpu().float(), model.rotation.detach().cpu().float()], dim=1)
    names = _ply_fields(model.features_rest.shape[1])
    data = np.ascontiguousarray(cols.numpy().astype("<f4"))
    header = ["ply", "format binary_little_endian 1.0", f"element vertex {n}"]
    header += [f"property float {name}" for name in names] + ["end_header"]
    blob = ("\n".join(header) + "\n").encode("ascii") + data.tobytes()
    return atomic_write(path, lambda tmp: tmp.write_bytes(blob))


def read_gaussian_ply(path: PathLike, sh_degree: int = 3) -> dict[str, torch.Tensor]:
    """Per-Gaussian tensors (``xyz``, ``features_dc``, ...) of a 3DGS PLY file."""
    from ..plyio import read_ply_vertices

    props = read_ply_vertices(path)
    k_rest = (sh_degree + 1) ** 2 - 1
    missing = [name for name in _ply_fields(k_rest) if name not in props and not name.startswith("n")]
    if missing:
        raise ValueError(f"{path}: not a Gaussian PLY of SH degree {sh_degree} (missing {missing[0]!r})")

    def cols(names: list[str]) -> torch.Tensor:
        return torch.from_numpy(np.stack([props[k] for k in names], -1).astype(np.float32))

    n = len(props["x"])
    return {
        "xyz": cols(["x", "y", "z"]),
        "features_dc": cols(["f_dc_0", "f_dc_1", "f_dc_2"]).view(n, 3, 1).transpose(1, 2).contiguous(),
        "features_rest": cols([f"f_rest_{i}" for i in range(3 * k_rest)]).view(n, 3, k_rest).transpose(1, 2)
        .contiguous(),
        "opacity": cols(["opacity"]),
        "scaling": cols([f"scale_{i}" for i in range(3)]),
        "rotation": cols([f"rot_{i}" for i in range(4)]),
    }


# ------------------------------------------------------------------------------------------ save / load


def _save_torch(path: Path, obj) -> Path:
    buf = io.BytesIO()
    torch.save(obj, buf)
    data = buf.getvalue()
    return atomic_write(path, lambda tmp: tmp.write_bytes(data))


def network_state(model: GaussianTalkerModel) -> dict[str, torch.Tensor]:
    """The model's state dict without the per-Gaussian parameters (CPU tensors)."""
    return {k: v.detach().cpu() for k, v in model.state_dict().items() if k not in GAUSSIAN_PARAMS}


def save_iteration(model_dir: PathLike, iteration: int, model: GaussianTalkerModel) -> Path:
    """Write ``point_cloud/iteration_<iteration>/`` (PLY + deformation.pth). Returns the folder."""
    folder = Path(model_dir) / "point_cloud" / f"iteration_{int(iteration)}"
    folder.mkdir(parents=True, exist_ok=True)
    # The network state first: list_iterations only counts a folder once both files exist.
    _save_torch(folder / "deformation.pth", network_state(model))
    write_gaussian_ply(folder / "point_cloud.ply", model)
    return folder


def save_model_info(model_dir: PathLike, config: TrainConfig, info: ModelInfo) -> None:
    """Write ``config.json`` and ``model.json``."""
    root = Path(model_dir)
    config.save(root / "config.json")
    text = info.to_json()
    atomic_write(root / "model.json", lambda tmp: tmp.write_text(text, encoding="utf-8"))


def load_model(model_dir: PathLike, iteration: int | None = None, device="cpu") -> LoadedModel:
    """Load a trained model for rendering (eval mode, on ``device``).

    Args:
        model_dir: the model folder (``<workspace>/output/<name>``).
        iteration: a saved fine-stage iteration; None = the newest.
        device: anything :func:`gaussiantalker.devices.resolve_device` accepts.
    Raises:
        ModelNotFoundError: the folder does not exist or holds no saved iteration.
        IterationNotFoundError: ``iteration`` was not saved (the message lists the saved ones).
        ValueError: a damaged file (named).
    """
    from ..devices import resolve_device

    root = Path(model_dir)
    available = list_iterations(root)
    if not available:
        raise ModelNotFoundError(f"model folder {root} holds no trained iteration (point_cloud/iteration_<k>/)")
    if iteration is None:
        iteration = available[-1]
    elif int(iteration) not in available:
        raise IterationNotFoundError(
            f"iteration {iteration} is not saved in {root}; available: {', '.join(map(str, available))}")
    for name in ("config.json", "model.json"):
        if not (root / name).is_file():
            raise ModelNotFoundError(f"model folder {root} has no {name}")
    config = TrainConfig.from_json(root / "config.json")
    info = ModelInfo.read(root / "model.json")
    folder = root / "point_cloud" / f"iteration_{int(iteration)}"
    gaussians = read_gaussian_ply(folder / "point_cloud.ply", config.model.sh_degree)
    try:
        net = torch.load(folder / "deformation.pth", map_location="cpu", weights_only=True)
    except Exception as exc:
        raise ValueError(f"{folder / 'deformation.pth'}: cannot be loaded ({exc})") from exc
    GaussianTalkerModel.adapt_config(config, net)
    model = GaussianTalkerModel(config, info.audio_dim, int(gaussians["xyz"].shape[0]))
    try:
        model.load_state_dict({**net, **gaussians}, strict=True)
    except RuntimeError as exc:
        raise ValueError(f"{folder}: does not match the model described by config.json ({exc})") from exc
    model.to(resolve_device(device)).eval()
    return LoadedModel(model=model, config=config, iteration=int(iteration), audio_kind=info.audio_kind,
                       audio_dim=info.audio_dim, dataset_path=Path(info.dataset_path), width=info.width,
                       height=info.height, focal=info.focal)


__all__ = [
    "IterationNotFoundError",
    "LoadedModel",
    "ModelInfo",
    "ModelNotFoundError",
    "list_iterations",
    "load_model",
    "network_state",
    "read_gaussian_ply",
    "save_iteration",
    "save_model_info",
    "write_gaussian_ply",
]
