"""The handle of a preprocessed dataset folder: ours (read from ``meta.json``) or a legacy one made by
GaussianTalker / ER-NeRF / TalkingGaussian (no ``meta.json``: read from its files).

Legacy rules (``docs/dataset-format.md``): frames = the ``ori_imgs/<i>.jpg`` files, size from frame 0,
25 fps, audio kind = that of the first present of ``aud_ds.npy`` (deepspeech), ``aud_hubert.npy`` (hubert),
``aud_phonetic.npy`` (phonetic), ``aud_mfcc.npy`` (mfcc), ``aud.npy`` (AD-NeRF: deepspeech), ``aud_hu.npy`` (ER-NeRF: hubert), ``aud_eo.npy``
(ER-NeRF: wav2vec-eo) (:func:`gaussiantalker.data.legacy_audio_file`), no crop, backends unknown (empty).
"""

from __future__ import annotations

import json
import logging
import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Dict, List, Optional, Tuple, Union

from .crop import CropBox

logger = logging.getLogger(__name__)

PathLike = Union[str, os.PathLike]


@dataclass
class PreprocessSummary:
    """How a :func:`~gaussiantalker.preprocess.preprocess` call went."""

    frames: int
    frames_with_face: int
    missing_faces: List[Tuple[int, int]]
    """Inclusive frame ranges without a detected face (interpolated)."""
    backends: Dict[str, str]
    seconds: Dict[str, float]
    """Seconds per step that ran in this call (0 for steps that were already done)."""
    ran: List[str]
    skipped: List[str]
    total_seconds: float

    @property
    def face_coverage(self) -> float:
        """Fraction of frames with a detected face."""
        return self.frames_with_face / self.frames if self.frames else 0.0

    def format(self) -> str:
        """A few lines for the log / the command line."""
        lines = [f"{self.frames} frames, face found in {self.frames_with_face} ({100 * self.face_coverage:.1f} %)"]
        if self.missing_faces:
            lines.append("interpolated frames without a face: "
                         + ", ".join(f"{a}-{b}" if a != b else f"{a}" for a, b in self.missing_faces))
        lines.append("backends: " + ", ".join(f"{k}={v}" for k, v in self.backends.items()))
        steps = ", ".join(f"{k} {v:.1f}s" for k, v in self.seconds.items() if k in self.ran)
        lines.append(f"ran: {steps or 'nothing (all steps were done)'}; total {self.total_seconds:.1f} s")
        return "\n".join(lines)


@dataclass
class Dataset:
    """A preprocessed dataset folder (``<workspace>/data/<name>/``)."""

    path: Path
    name: str
    num_frames: int
    fps: float
    width: int
    height: int
    audio_kind: str
    backends: Dict[str, str]
    crop: Optional[CropBox]
    audio_dim: Optional[int] = None
    split: Optional[Dict[str, List[int]]] = None
    """``{"train": [start, stop], "val": [start, stop]}`` frame ranges."""
    missing_faces: List[Tuple[int, int]] = field(default_factory=list)
    legacy: bool = False
    """True for a folder without ``meta.json`` (made by the original tools)."""
    meta: Dict = field(default_factory=dict)
    summary: Optional[PreprocessSummary] = None
    """Set by :func:`~gaussiantalker.preprocess.preprocess`."""

    @classmethod
    def open(cls, path: PathLike) -> Dataset:
        """Read a dataset folder (ours via ``meta.json``, a legacy one by inspecting its files).

        Raises:
            FileNotFoundError: the folder, or its frames, do not exist.
            ValueError: ``meta.json`` is not valid JSON of our format.
        """
        path = Path(path)
        if not path.is_dir():
            raise FileNotFoundError(f"dataset folder {path} does not exist")
        meta_file = path / "meta.json"
        if meta_file.is_file():
            return cls._from_meta(path, meta_file)
        return cls._from_files(path)

    @classmethod
    def _from_meta(cls, path: Path, meta_file: Path) -> Dataset:
        try:
            meta = json.loads(meta_file.read_text())
        except (json.JSONDecodeError, UnicodeDecodeError) as exc:
            raise ValueError(f"{meta_file} is not valid JSON: {exc}") from exc
        if not isinstance(meta, dict) or meta.get("format", "gaussiantalker-dataset") != "gaussiantalker-dataset":
            raise ValueError(f"{meta_file} is not a gaussiantalker dataset description")
        legacy = cls._from_files(path) if not {"num_frames", "width", "height"} <= set(meta) else None
        audio = meta.get("audio") or {}
        crop = meta.get("crop")
        return cls(
            path=path, name=str(meta.get("name", path.name)),
            num_frames=int(meta["num_frames"]) if legacy is None else legacy.num_frames,
            fps=float(meta.get("fps", 25.0)),
            width=int(meta["width"]) if legacy is None else legacy.width,
            height=int(meta["height"]) if legacy is None else legacy.height,
            audio_kind=str(audio.get("kind") or _legacy_audio_kind(path)),
            backends=dict(meta.get("backends") or {}),
            crop=CropBox.from_dict(crop) if crop else None,
            audio_dim=audio.get("dim"), split=meta.get("split"),
            missing_faces=[tuple(r) for r in meta.get("missing_faces") or []], legacy=False, meta=meta,
        )

    @classmethod
    def _from_files(cls, path: Path) -> Dataset:
        frames = path / "ori_imgs"
        ids = sorted(int(m.group(1)) for n in (os.listdir(frames) if frames.is_dir() else [])
                     if (m := re.fullmatch(r"(\d+)\.jpg", n)))
        if not ids:
            raise FileNotFoundError(f"{path} is not a dataset folder: no ori_imgs/<i>.jpg frames")
        height, width = _image_size(frames / f"{ids[0]}.jpg")
        n = len(ids)
        cut = int(n * 10 / 11)
        split = _legacy_split(path) or {"train": [0, cut], "val": [cut, n]}
        return cls(path=path, name=path.name, num_frames=n, fps=25.0, width=width, height=height,
                   audio_kind=_legacy_audio_kind(path), backends={}, crop=None, split=split, legacy=True)

    @property
    def meta_path(self) -> Path:
        return self.path / "meta.json"

    def frame(self, index: int) -> Path:
        """Path of frame ``index`` (``ori_imgs/<index>.jpg``)."""
        return self.path / "ori_imgs" / f"{index}.jpg"


def _image_size(path: Path) -> Tuple[int, int]:
    import cv2

    img = cv2.imread(str(path), cv2.IMREAD_UNCHANGED)
    if img is None:
        raise ValueError(f"cannot read image {path}")
    return int(img.shape[0]), int(img.shape[1])


def _legacy_audio_kind(path: Path) -> str:
    from ..data import legacy_audio_file

    found = legacy_audio_file(path)
    return found[1] if found is not None else "none"


def _legacy_split(path: Path) -> Optional[Dict[str, List[int]]]:
    """Train/val ranges from the transforms JSONs, when they are contiguous ranges."""
    out = {}
    for name in ("train", "val"):
        f = path / f"transforms_{name}.json"
        if not f.is_file():
            return None
        try:
            ids = [int(fr["img_id"]) for fr in json.loads(f.read_text())["frames"]]
        except (json.JSONDecodeError, KeyError, TypeError, ValueError):
            return None
        if not ids:
            return None
        out[name] = [min(ids), max(ids) + 1]
    return out


__all__ = ["CropBox", "Dataset", "PreprocessSummary"]
