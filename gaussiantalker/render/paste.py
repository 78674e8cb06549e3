"""Paste a rendered face crop back into the full source frames (``render(..., paste_back=True)``).

Preprocessing may crop a square out of a larger video (``meta.json`` ``crop``: ``x``, ``y``, ``size`` in
source pixels) and resize it to the dataset size. Pasting back resizes each rendered frame to the crop
size and blends it into the matching source frame with a feathered edge, so the seam is invisible.

The source frames are decoded once (resampled to 25 fps, as preprocessing does) into a temporary folder
of JPEG files (quality 95), because the pose schedule reads them out of order (ping-pong); only frames
the render uses are kept. The folder is removed when :class:`SourceFrames` is closed.
"""

from __future__ import annotations

import logging
import os
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Dict, Optional, Union

import numpy as np

from .video import iter_frames

log = logging.getLogger(__name__)

PathLike = Union[str, os.PathLike]

__all__ = ["Crop", "SourceFrames", "feather_mask", "paste"]


@dataclass(frozen=True)
class Crop:
    """Square crop of the source frames in source pixels: columns ``[x, x+size)``, rows ``[y, y+size)``."""

    x: int
    y: int
    size: int
    source_width: int
    source_height: int

    @classmethod
    def from_meta(cls, d: dict) -> Crop:
        try:
            crop = cls(int(d["x"]), int(d["y"]), int(d["size"]), int(d["source_width"]), int(d["source_height"]))
        except (KeyError, TypeError, ValueError) as exc:
            raise ValueError(f"meta.json crop {d!r} is not a crop box ({exc})") from None
        if crop.size <= 0 or crop.x < 0 or crop.y < 0 or crop.x + crop.size > crop.source_width \
                or crop.y + crop.size > crop.source_height:
            raise ValueError(f"meta.json crop {d!r} does not fit in its source frame")
        return crop

    @property
    def is_full_frame(self) -> bool:
        return self.size == self.source_width == self.source_height


def feather_mask(size: int, border: Optional[int] = None) -> np.ndarray:
    """``[size, size, 1]`` float32 weights: 1 inside, a smooth ramp to 0 over ``border`` pixels at the edges
    (default ``size // 24``)."""
    b = max(1, size // 24 if border is None else int(border))
    d = np.minimum(np.arange(size), np.arange(size)[::-1]).astype(np.float32)  # distance to the nearest edge
    ramp = np.clip((d + 0.5) / b, 0.0, 1.0)
    ramp = ramp * ramp * (3.0 - 2.0 * ramp)  # smoothstep
    return (ramp[:, None] * ramp[None, :])[..., None].astype(np.float32)


def paste(source: np.ndarray, rendered: np.ndarray, crop: Crop, mask: Optional[np.ndarray] = None) -> np.ndarray:
    """Blend ``rendered`` ``[h, w, 3]`` uint8 into ``source`` ``[H, W, 3]`` uint8 at ``crop``; returns a new frame."""
    import cv2

    if source.shape[:2] != (crop.source_height, crop.source_width):
        raise ValueError(f"source frame is {source.shape[1]}x{source.shape[0]}, the crop expects "
                         f"{crop.source_width}x{crop.source_height}")
    interp = cv2.INTER_CUBIC if crop.size > rendered.shape[0] else cv2.INTER_AREA
    big = cv2.resize(rendered, (crop.size, crop.size), interpolation=interp).astype(np.float32)
    m = feather_mask(crop.size) if mask is None else mask
    out = source.copy()
    region = out[crop.y:crop.y + crop.size, crop.x:crop.x + crop.size].astype(np.float32)
    out[crop.y:crop.y + crop.size, crop.x:crop.x + crop.size] = np.clip(
        np.round(big * m + region * (1.0 - m)), 0, 255).astype(np.uint8)
    return out


class SourceFrames:
    """Random access to the first ``count`` frames of the source video at ``fps`` (decoded once).

    Raises:
        FileNotFoundError: the source video recorded in ``meta.json`` is gone.
        ValueError: it has fewer frames than needed, or another size than the crop's source.
    """

    def __init__(self, video: PathLike, count: int, crop: Crop, fps: float = 25.0) -> None:
        import cv2

        self.path = Path(video)
        if not self.path.is_file():
            raise FileNotFoundError(
                f"paste_back needs the source video {self.path} (recorded in the dataset's meta.json), "
                "which does not exist any more"
            )
        self._dir = Path(tempfile.mkdtemp(prefix="gt_paste_"))
        self._files: Dict[int, Path] = {}
        try:
            for i, frame in enumerate(iter_frames(self.path, fps=fps, max_frames=count)):
                if frame.shape[:2] != (crop.source_height, crop.source_width):
                    raise ValueError(f"{self.path} frames are {frame.shape[1]}x{frame.shape[0]}, but the dataset "
                                     f"was cropped from {crop.source_width}x{crop.source_height}")
                f = self._dir / f"{i:06d}.jpg"
                ok = cv2.imwrite(str(f), cv2.cvtColor(frame, cv2.COLOR_RGB2BGR), [cv2.IMWRITE_JPEG_QUALITY, 95])
                if not ok:
                    raise OSError(f"could not write the temporary frame {f}")
                self._files[i] = f
            if len(self._files) < count:
                raise ValueError(f"{self.path} has {len(self._files)} frames at {fps:g} fps, the dataset {count}")
        except BaseException:
            self.close()
            raise
        log.info("decoded %d source frames of %s for paste-back", len(self._files), self.path)

    def __getitem__(self, index: int) -> np.ndarray:
        import cv2

        bgr = cv2.imread(str(self._files[int(index)]), cv2.IMREAD_COLOR)
        return cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB)

    def blend(self, i0: int, i1: int, w: float) -> np.ndarray:
        """Source frame at a fractional position (linear cross-fade of the two neighbours)."""
        a = self[i0]
        if w <= 0 or i1 == i0:
            return a
        b = self[i1]
        return np.clip(np.round(a.astype(np.float32) * (1 - w) + b.astype(np.float32) * w), 0, 255).astype(np.uint8)

    def close(self) -> None:
        shutil.rmtree(self._dir, ignore_errors=True)

    def __enter__(self) -> SourceFrames:
        return self

    def __exit__(self, *exc) -> None:
        self.close()
