"""The static background plate ``bc.jpg`` (reference §2.5), with distance transforms.

For every sampled frame, the distance of each pixel to the nearest foreground pixel (any label other
than background) is an exact Euclidean distance transform. Per pixel, the frame where it was farthest
from the person gives its colour when that distance exceeds 5 px ("reliable background"); every other
pixel takes the colour of the nearest reliable pixel. The original does both steps with KD-tree
queries over all pixels; the distance transforms give the same nearest-pixel distances in O(H·W).

Sampling: the original uses every 20th frame (of an unsorted glob, so its choice is arbitrary). The caller
either passes the sampled frames (the pipeline does: every 20th in frame order, :data:`SAMPLE_STEP`) or
passes all frames with ``step=20``; only the frames used are ever read, so with paths or a lazy sequence a
long clip is never held in memory.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Callable, Union

import numpy as np

logger = logging.getLogger(__name__)

PathLike = Union[str, os.PathLike]
FrameSource = Union[np.ndarray, PathLike]

SAMPLE_STEP = 20
RELIABLE_DISTANCE = 5.0


def _load_frame(item: FrameSource) -> np.ndarray:
    if isinstance(item, np.ndarray):
        return item
    import cv2

    path = Path(item)
    if not path.is_file():
        raise FileNotFoundError(f"frame not found: {path}")
    img = cv2.imread(str(path), cv2.IMREAD_COLOR)
    if img is None:
        raise ValueError(f"{path}: not a readable image")
    return np.ascontiguousarray(img[:, :, ::-1])


def _load_labels(item: FrameSource) -> np.ndarray:
    if isinstance(item, np.ndarray):
        return item
    from .parsing import read_parsing

    return read_parsing(item)


def background_plate(
    frames: Sequence[FrameSource],
    labels: Sequence[FrameSource],
    step: int = 1,
    reliable: float = RELIABLE_DISTANCE,
) -> np.ndarray:
    """Estimate the static background of a clip.

    Args:
        frames: sequence of ``[H, W, 3]`` uint8 RGB frames, or of image paths (read only when sampled).
        labels: the matching ``[H, W]`` uint8 label maps (0 = background), or parsing PNG paths.
        step: every ``step``-th of the given frames is used (0, step, 2·step, ...); the default 1 uses
            all of them (pass the sampled frames), ``SAMPLE_STEP`` (20) samples like the original.
        reliable: distance in pixels to the foreground above which a pixel is reliable background.
    Returns:
        ``[H, W, 3]`` uint8 RGB plate.
    Raises:
        ValueError: empty input, length or size mismatch, or no pixel was ever reliable background.
    """
    import cv2
    from scipy.ndimage import distance_transform_edt

    if len(frames) != len(labels):
        raise ValueError(f"got {len(frames)} frames but {len(labels)} label maps")
    if len(frames) == 0:
        raise ValueError("background_plate needs at least one frame")
    if step < 1:
        raise ValueError(f"step must be >= 1, got {step}")
    picks = range(0, len(frames), step)
    best_dist = None  # [H, W] float64, the largest distance to the foreground so far
    plate = None  # [H, W, 3] uint8, the colour of the frame that gave it
    for k in picks:
        rgb, lab = _load_frame(frames[k]), _load_labels(labels[k])
        what = _describe(frames[k], k)
        if rgb.ndim != 3 or rgb.shape[2] != 3 or rgb.dtype != np.uint8:
            raise ValueError(f"{what} must be [H, W, 3] uint8 RGB, got {rgb.shape} {rgb.dtype}")
        if lab.shape != rgb.shape[:2]:
            raise ValueError(f"{_describe(labels[k], k)}: label map of shape {lab.shape}, the frame is {rgb.shape[:2]}")
        if best_dist is not None and rgb.shape != plate.shape:
            raise ValueError(f"{what} has size {rgb.shape[:2]}, the first frame has {plate.shape[:2]}")
        fg = lab != 0
        if fg.any():
            dist = distance_transform_edt(~fg)  # [H, W] float64, to the nearest foreground pixel
        else:  # nobody in the frame: every pixel is background, as far from the person as it gets
            dist = np.full(fg.shape, np.inf)
        if best_dist is None:
            best_dist, plate = dist, rgb.copy()
        else:
            # strictly farther: ties keep the earliest frame, like an argmax over the sampled frames
            better = dist > best_dist
            best_dist = np.where(better, dist, best_dist)
            cv2.copyTo(np.ascontiguousarray(rgb), better.view(np.uint8), plate)
    if not (best_dist > reliable).any():
        raise ValueError(
            f"background plate: no pixel was ever more than {reliable:g} px from the person in the {len(picks)} "
            "frames used; the parsing marks (nearly) the whole frame as foreground"
        )
    return fill_unreliable(plate, best_dist > reliable)


def _describe(item: FrameSource, index: int) -> str:
    return f"frame {index}" if isinstance(item, np.ndarray) else f"{item} (frame {index})"


def fill_unreliable(image: np.ndarray, reliable: np.ndarray) -> np.ndarray:
    """Give every pixel outside ``reliable`` the colour of the nearest reliable pixel.

    Args:
        image: ``[H, W, C]`` array; reliable: ``[H, W]`` bool.
    Returns:
        A new ``[H, W, C]`` array.
    Raises:
        ValueError: no pixel is reliable.
    """
    from scipy.ndimage import distance_transform_edt

    if not reliable.any():
        raise ValueError("fill_unreliable: no reliable pixel to copy colours from")
    if reliable.all():
        return image.copy()
    _, (iy, ix) = distance_transform_edt(~reliable, return_indices=True)
    return image[iy, ix]


def plate_from_paths(
    frame_paths: Sequence[PathLike], parsing_paths: Sequence[PathLike], step: int = SAMPLE_STEP
) -> np.ndarray:
    """:func:`background_plate` over all the image files of a clip (``ori_imgs/<i>.jpg``, ``parsing/<i>.png``),
    every ``step``-th pair used (only those are read)."""
    return background_plate(list(frame_paths), list(parsing_paths), step=step)


class LazySequence(Sequence):
    """A sequence of ``length`` items computed on access by ``get(index)`` (e.g. decode a frame)."""

    def __init__(self, length: int, get: Callable[[int], np.ndarray]) -> None:
        self._length = int(length)
        self._get = get

    def __len__(self) -> int:
        return self._length

    def __getitem__(self, index):  # type: ignore[override]
        if isinstance(index, slice):
            return [self._get(i) for i in range(*index.indices(self._length))]
        if index < 0:
            index += self._length
        if not 0 <= index < self._length:
            raise IndexError(index)
        return self._get(index)


__all__ = [
    "RELIABLE_DISTANCE",
    "SAMPLE_STEP",
    "LazySequence",
    "background_plate",
    "fill_unreliable",
    "plate_from_paths",
]
