"""Landmark backends for preprocessing: MediaPipe face mesh (default), dlib, face-alignment.

* ``mediapipe``: :func:`gaussiantalker.preprocess.landmarks.detect_landmarks` (478 points, mapped to
  the 68-point iBUG layout; follows the main face). No files needed.
* ``dlib``: dlib's HOG face detector and 68-point shape predictor (``pip install dlib-bin``). The
  predictor ``shape_predictor_68_face_landmarks.dat`` is looked up in the asset folder first, then in
  the ``face-recognition-models`` package (found with importlib; ``pip install face-recognition-models``).
* ``face-alignment``: the S3FD detector + 2D-FAN-4 network of ``face-alignment`` (the original's
  landmarks; ``pip install face-alignment``), only when its two weight files are present under their
  original names (``s3fd-619a316812.pth``, ``2DFAN4-11f355bf06.pth.tar``) in torch's hub checkpoint folder
  (``$TORCH_HOME/hub/checkpoints``) or in a ``checkpoints/`` folder of the asset folder; it never downloads.
* ``auto``: ``mediapipe``.

dlib and face-alignment give 68 points only (no ``landmarks478.npy``) and follow the occluding jaw
contour, which the tracker is told about (jaw weight 0.1). The main face is followed across frames
as MediaPipe's (largest face first, then the best overlap with the last box).
"""

from __future__ import annotations

import importlib
import importlib.util
import logging
import os
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, List, Optional, Union

import numpy as np

from ..assets import asset_dir, find_asset

logger = logging.getLogger(__name__)

PathLike = Union[str, os.PathLike]

BACKENDS = ("auto", "mediapipe", "dlib", "face-alignment")
DLIB_PREDICTOR = "shape_predictor_68_face_landmarks.dat"
FAN_FILES = ("s3fd-619a316812.pth", "2DFAN4-11f355bf06.pth.tar")


class BackendUnavailableError(ImportError):
    """A selected landmark backend is not installed or its files are missing; the message says what to do."""


@dataclass
class DetectedLandmarks:
    """Landmarks of a clip from any backend. Frames without the main face hold NaN and ``found=False``."""

    points68: np.ndarray  # [F, 68, 2] float32 pixels (x = column, y = row)
    found: np.ndarray  # [F] bool
    backend: str
    points478: Optional[np.ndarray] = None  # [F, 478, 3] float32 (MediaPipe only)
    warnings: List[str] = field(default_factory=list)

    @property
    def num_frames(self) -> int:
        return int(self.found.shape[0])


def resolve_backend(name: str) -> str:
    """``auto`` -> ``mediapipe``; other names checked."""
    if name not in BACKENDS:
        raise ValueError(f"unknown landmark backend {name!r}; use one of {BACKENDS}")
    return "mediapipe" if name == "auto" else name


def dlib_predictor_path(assets: Optional[PathLike] = None) -> Optional[Path]:
    """The 68-point predictor: the asset folder's, else the one in ``face-recognition-models``, else None."""
    found = find_asset(DLIB_PREDICTOR, assets)
    if found is not None:
        return found
    spec = importlib.util.find_spec("face_recognition_models")
    if spec is not None and spec.submodule_search_locations:
        for root in spec.submodule_search_locations:
            cand = Path(root) / "models" / DLIB_PREDICTOR
            if cand.is_file():
                return cand
    return None


def fan_weights_dir(assets: Optional[PathLike] = None) -> Optional[Path]:
    """The torch hub folder (the parent of ``checkpoints/``) that holds both face-alignment files, or None."""
    import torch.hub

    hub = Path(torch.hub.get_dir())
    if all((hub / "checkpoints" / f).is_file() for f in FAN_FILES):
        return hub
    ckpt = asset_dir(assets) / "checkpoints"
    if all((ckpt / f).is_file() for f in FAN_FILES):
        return ckpt.parent
    return None


def backend_fingerprint(name: str, assets: Optional[PathLike] = None) -> dict:
    """What identifies a backend's result (its name and model file), for step fingerprints."""
    name = resolve_backend(name)
    if name == "dlib":
        p = dlib_predictor_path(assets)
        return {"backend": name, "model": str(p) if p else None, "size": p.stat().st_size if p else None}
    if name == "face-alignment":
        d = fan_weights_dir(assets)
        return {"backend": name, "weights": str(d) if d else None}
    return {"backend": name}


def check_available(name: str, assets: Optional[PathLike] = None) -> str:
    """Raise :class:`BackendUnavailableError` (what to install / which file to place where) when backend
    ``name`` cannot run here, without loading any model; returns the resolved name."""
    name = resolve_backend(name)
    if name == "mediapipe":
        if importlib.util.find_spec("mediapipe") is None:
            raise BackendUnavailableError("the mediapipe landmark backend needs: pip install mediapipe==0.10.21")
    elif name == "dlib":
        if importlib.util.find_spec("dlib") is None:
            raise BackendUnavailableError("the dlib landmark backend needs dlib: pip install dlib-bin")
        if dlib_predictor_path(assets) is None:
            raise BackendUnavailableError(
                f"the dlib landmark backend needs {DLIB_PREDICTOR}: place it in {asset_dir(assets)} "
                "or pip install face-recognition-models (it ships the file)")
    else:
        if importlib.util.find_spec("face_alignment") is None:
            raise BackendUnavailableError(
                "the face-alignment landmark backend needs its package: pip install face-alignment")
        if fan_weights_dir(assets) is None:
            import torch.hub

            raise BackendUnavailableError(
                f"the face-alignment landmark backend needs {' and '.join(FAN_FILES)} (it never downloads): "
                f"place them in {Path(torch.hub.get_dir()) / 'checkpoints'} or {asset_dir(assets) / 'checkpoints'}")
    return name


def detect(frames: Iterable[np.ndarray], backend: str = "auto", assets: Optional[PathLike] = None,
           device: str = "cpu") -> DetectedLandmarks:
    """Landmarks of every frame (``[H, W, 3]`` uint8 RGB, in clip order) with ``backend``.

    Raises:
        BackendUnavailableError: the backend's package or model file is missing (says what to install
            or which file to place where).
    """
    name = check_available(backend, assets)
    if name == "mediapipe":
        from .landmarks import detect_landmarks

        res = detect_landmarks(frames)
        return DetectedLandmarks(points68=res.points68, found=res.found, backend="mediapipe",
                                 points478=res.points478, warnings=list(res.warnings))
    if name == "dlib":
        return _detect_with(frames, _dlib_detector(assets), "dlib")
    return _detect_with(frames, _fan_detector(assets, device), "face-alignment")


# ----------------------------------------------------------------------------------------------
# per-frame detectors: frame -> list of [68, 2] faces
# ----------------------------------------------------------------------------------------------

Detector = Callable[[np.ndarray], List[np.ndarray]]


def _detect_with(frames: Iterable[np.ndarray], detector: Detector, name: str) -> DetectedLandmarks:
    from .landmarks import _MainFaceFollower

    follower = _MainFaceFollower(min_iou=0.3, reacquire_after=25)
    pts: List[np.ndarray] = []
    for i, frame in enumerate(frames):
        frame = np.ascontiguousarray(frame)
        if frame.ndim != 3 or frame.shape[2] != 3 or frame.dtype != np.uint8:
            raise ValueError(f"frame {i} must be [H, W, 3] uint8 RGB, got {frame.shape} {frame.dtype}")
        faces = detector(frame)
        pick = follower.choose(i, faces)
        pts.append(faces[pick].astype(np.float32) if pick is not None else np.full((68, 2), np.nan, np.float32))
    if not pts:
        raise ValueError("no frames given")
    points = np.stack(pts)
    return DetectedLandmarks(points68=points, found=np.isfinite(points[:, 0, 0]), backend=name,
                             warnings=list(follower.warnings))


def _dlib_detector(assets: Optional[PathLike]) -> Detector:
    dlib = importlib.import_module("dlib")
    predictor_file = dlib_predictor_path(assets)
    logger.info("landmarks with dlib (%s)", predictor_file)
    face_detector = dlib.get_frontal_face_detector()
    predictor = dlib.shape_predictor(str(predictor_file))

    def run(frame: np.ndarray) -> List[np.ndarray]:
        faces = []
        for rect in face_detector(frame, 1):
            shape = predictor(frame, rect)
            faces.append(np.array([(p.x, p.y) for p in shape.parts()], dtype=np.float64))
        return faces

    return run


def _fan_detector(assets: Optional[PathLike], device: str) -> Detector:
    import torch.hub

    face_alignment = importlib.import_module("face_alignment")
    hub = fan_weights_dir(assets)

    kind = getattr(face_alignment.LandmarksType, "TWO_D", None) or face_alignment.LandmarksType._2D
    old = torch.hub.get_dir()
    torch.hub.set_dir(str(hub))
    try:
        try:
            fa = face_alignment.FaceAlignment(kind, flip_input=False, device=str(device), face_detector="sfd",
                                              compile=False)
        except TypeError:  # releases before the compile argument
            fa = face_alignment.FaceAlignment(kind, flip_input=False, device=str(device), face_detector="sfd")
    finally:
        torch.hub.set_dir(old)
    logger.info("landmarks with face-alignment (weights in %s)", hub / "checkpoints")

    def run(frame: np.ndarray) -> List[np.ndarray]:
        boxes = fa.face_detector.detect_from_image(frame.copy())
        if boxes is None or len(boxes) == 0:
            return []
        boxes = [np.asarray(b, dtype=np.float64) for b in boxes]
        preds = fa.get_landmarks(frame, detected_faces=boxes)
        return [np.asarray(p, dtype=np.float64)[:, :2] for p in (preds or [])]

    return run


__all__ = [
    "BACKENDS",
    "DLIB_PREDICTOR",
    "FAN_FILES",
    "BackendUnavailableError",
    "DetectedLandmarks",
    "backend_fingerprint",
    "check_available",
    "detect",
    "dlib_predictor_path",
    "fan_weights_dir",
    "resolve_backend",
]
