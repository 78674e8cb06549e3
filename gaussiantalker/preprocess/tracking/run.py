"""One call from landmarks to the tracking files of a dataset, with the backend chosen as DESIGN.md
says: the BFM 2009 when its files are in the asset folder, else the offline landmark model (logged)."""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Iterable, Optional, Sequence, Tuple, Union

import numpy as np
import torch

from .bfm import bfm_available, load_bfm2009
from .fit import TrackerConfig, TrackingResult, fit_landmarks
from .model import MorphableModel
from .outputs import TrackingOutputs, write_tracking_outputs
from .template import landmark_model

logger = logging.getLogger(__name__)

PathLike = Union[str, os.PathLike]
BACKENDS = ("auto", "offline", "bfm")


def select_model(backend: str = "auto", assets: Optional[PathLike] = None, jaw: str = "fixed") -> MorphableModel:
    """The tracking model for ``backend``: ``"bfm"`` (raises when its files are missing), ``"offline"``,
    or ``"auto"`` (BFM when available, else offline; the choice is logged).

    Args:
        jaw: jaw-landmark convention of the offline model (``"fixed"`` for MediaPipe).
    """
    if backend not in BACKENDS:
        raise ValueError(f"backend must be one of {BACKENDS}, got {backend!r}")
    if backend == "bfm" or (backend == "auto" and bfm_available(assets)):
        logger.info("head tracking with the BFM 2009 model")
        return load_bfm2009(assets)
    if backend == "auto":
        logger.info("BFM 2009 files not found: head tracking with the offline landmark model")
    return landmark_model(jaw=jaw)


def track_landmarks(
    landmarks: Union[np.ndarray, torch.Tensor],
    out_dir: PathLike,
    image_size: Sequence[int],
    backend: str = "auto",
    frames: Optional[Iterable[np.ndarray]] = None,
    frame_ids: Optional[Sequence[int]] = None,
    config: Optional[TrackerConfig] = None,
    device: Union[str, torch.device, None] = "cpu",
    assets: Optional[PathLike] = None,
    num_points: int = 30000,
) -> Tuple[TrackingResult, TrackingOutputs]:
    """Track a clip's landmarks and write ``track_params.pt``, ``transforms_{train,val}.json``,
    ``points3d.ply`` (and ``track_preview.mp4`` when ``frames`` are given) into ``out_dir``.

    Args:
        landmarks: ``[F, 68, 2]`` pixels, all finite.
        image_size: ``(H, W)``.
        backend: ``"auto"``, ``"offline"`` or ``"bfm"``.
        frames: the clip's ``[H, W, 3]`` uint8 RGB frames in order, for the preview (optional).
        frame_ids: image index of each landmark frame (default ``0..F-1``).
    """
    model = select_model(backend, assets)
    result = fit_landmarks(landmarks, model, image_size, config, device)
    outputs = write_tracking_outputs(Path(out_dir), result, frames, frame_ids, num_points)
    return result, outputs


__all__ = ["select_model", "track_landmarks", "BACKENDS"]
