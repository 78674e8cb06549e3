"""One square crop per clip that holds the head and shoulders (stable over the whole clip).

The method wants face crops like the AD-NeRF / ER-NeRF datasets: a square frame where the face
(MediaPipe's face box) is about half the side and the shoulders show. A full-frame input (a 1080 x 1920
phone video, a wide shot) is cropped once for the whole clip, so the camera of the crop is static, as
the tracker assumes. The crop is found from a quick MediaPipe face-detection pass on frames sampled
evenly over the clip:

* the face box of every sample (full-range detector, largest face), and their union;
* side = ``max(FACE_SCALE x median face size, union size x 1.25)``, at most the frame's short side;
* horizontally centred on the union of the face boxes, vertically with the face centre at
  ``FACE_CENTER_Y`` of the side from the top (room below for neck and shoulders), shifted to stay
  inside the frame.

A square input whose face already fills it like a face crop (the side would be >= ``KEEP_FULL`` of the
frame) is kept whole and only resized; its crop is still recorded (the full frame).
"""

from __future__ import annotations

import importlib
import importlib.util
import logging
import os
import sys
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import List, Optional, Union

import numpy as np

logger = logging.getLogger(__name__)

PathLike = Union[str, os.PathLike]

FACE_SCALE = 2.2
"""Crop side over the median face-box size: MediaPipe's full-range box (about forehead to chin) is then
~45 % of the side; it is ~50 % in the AD-NeRF / MimicTalk 512 x 512 face crops."""
FACE_CENTER_Y = 0.55
"""Vertical position of the face centre in the crop, from the top."""
KEEP_FULL = 0.6
"""A square frame is kept whole when the crop would cover at least this fraction of its side."""
SAMPLES = 12
"""Frames sampled over the clip for the face pass."""
DETECT_SIZE = 640
"""Long side of the sampled frames given to the detector (pixels)."""


@dataclass(frozen=True)
class CropBox:
    """A square crop of the source frames, in source pixels: columns ``[x, x+size)``, rows ``[y, y+size)``."""

    x: int
    y: int
    size: int
    source_width: int
    source_height: int

    def __post_init__(self) -> None:
        if self.size <= 0 or self.x < 0 or self.y < 0:
            raise ValueError(f"invalid crop {self}")
        if self.x + self.size > self.source_width or self.y + self.size > self.source_height:
            raise ValueError(f"crop {self} does not fit in the {self.source_width}x{self.source_height} frame")

    @property
    def is_full_frame(self) -> bool:
        return self.size == self.source_width == self.source_height

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> CropBox:
        return cls(int(d["x"]), int(d["y"]), int(d["size"]), int(d["source_width"]), int(d["source_height"]))

    def ffmpeg_filter(self) -> str:
        """The ffmpeg ``crop`` filter for this box."""
        return f"crop={self.size}:{self.size}:{self.x}:{self.y}"


def _import_face_detection():
    """MediaPipe face detection, imported after torchvision (see :mod:`.landmarks` on the segfault)."""
    if ("torchvision" not in sys.modules and "tensorflow" not in sys.modules
            and importlib.util.find_spec("torchvision") is not None):
        importlib.import_module("torchvision")
    try:
        from mediapipe.python.solutions import face_detection
    except ImportError as exc:
        raise ImportError("MediaPipe is needed to find the face for cropping: pip install mediapipe==0.10.21") from exc
    return face_detection


def sample_frames(video: PathLike, width: int, height: int, duration: float, count: int = SAMPLES) -> np.ndarray:
    """``[N, h, w, 3]`` uint8 RGB frames sampled evenly over the clip, scaled to a long side of
    :data:`DETECT_SIZE` (never up)."""
    from ..media import run_ffmpeg

    scale = min(1.0, DETECT_SIZE / max(width, height))
    w, h = max(2, round(width * scale / 2) * 2), max(2, round(height * scale / 2) * 2)
    rate = max(count / max(duration, 1e-3), 0.01)
    proc = run_ffmpeg(["-i", str(video), "-map", "0:v:0", "-vf", f"fps={rate:.6f},scale={w}:{h}:flags=area",
                       "-frames:v", str(count), "-f", "rawvideo", "-pix_fmt", "rgb24", "-"],
                      path=video, capture_stdout=True)
    raw = np.frombuffer(proc.stdout, dtype=np.uint8)
    n = raw.size // (w * h * 3)
    return raw[: n * w * h * 3].reshape(n, h, w, 3)


def detect_face_boxes(frames: np.ndarray) -> List[Optional[np.ndarray]]:
    """Per frame the largest face box ``[x0, y0, x1, y1]`` in normalised coordinates, or None."""
    face_detection = _import_face_detection()
    boxes: List[Optional[np.ndarray]] = []
    with face_detection.FaceDetection(model_selection=1, min_detection_confidence=0.5) as det:
        for frame in frames:
            res = det.process(np.ascontiguousarray(frame))
            best, best_area = None, 0.0
            for d in res.detections or []:
                b = d.location_data.relative_bounding_box
                area = b.width * b.height
                if area > best_area:
                    best = np.array([b.xmin, b.ymin, b.xmin + b.width, b.ymin + b.height], dtype=np.float64)
                    best_area = area
            boxes.append(best)
    return boxes


def crop_from_boxes(boxes: np.ndarray, width: int, height: int) -> CropBox:
    """The clip's crop from face boxes ``[N, 4]`` (``x0, y0, x1, y1`` in source pixels); see the module doc."""
    boxes = np.asarray(boxes, dtype=np.float64)
    if boxes.ndim != 2 or boxes.shape[1] != 4 or len(boxes) == 0:
        raise ValueError(f"boxes must have shape [N>0, 4], got {boxes.shape}")
    sizes = np.maximum(boxes[:, 2] - boxes[:, 0], boxes[:, 3] - boxes[:, 1])
    union = np.array([boxes[:, 0].min(), boxes[:, 1].min(), boxes[:, 2].max(), boxes[:, 3].max()])
    short = min(width, height)
    side = max(FACE_SCALE * float(np.median(sizes)), 1.25 * float(max(union[2] - union[0], union[3] - union[1])))
    side = int(min(short, round(side)))
    if width == height and side >= KEEP_FULL * short:
        return CropBox(0, 0, width, width, height)
    cx = 0.5 * (union[0] + union[2])
    cy = 0.5 * (np.median(boxes[:, 1]) + np.median(boxes[:, 3]))
    x = round(float(cx - side / 2))
    y = round(float(cy - FACE_CENTER_Y * side))
    x = min(max(x, 0), width - side)
    y = min(max(y, 0), height - side)
    return CropBox(x, y, side, width, height)


def find_crop(video: PathLike, width: int, height: int, duration: float, count: int = SAMPLES):
    """Sample the clip, detect the face, and return ``(CropBox, faces_found, samples)``.

    Raises:
        ValueError: no face in any sampled frame (the message names the video).
    """
    frames = sample_frames(video, width, height, duration, count)
    if len(frames) == 0:
        raise ValueError(f"{video}: no video frames could be decoded")
    h, w = frames.shape[1:3]
    found = [b for b in detect_face_boxes(frames) if b is not None]
    if not found:
        raise ValueError(
            f"{video}: no face found in any of the {len(frames)} frames sampled over the clip; the method needs "
            "a video of one person facing the camera")
    boxes = np.stack(found) * np.array([width, height, width, height], dtype=np.float64)
    crop = crop_from_boxes(boxes, width, height)
    logger.info("crop of %s: %s (face in %d of %d sampled frames, detected at %dx%d)",
                Path(video).name, crop, len(found), len(frames), w, h)
    return crop, len(found), len(frames)


__all__ = ["CropBox", "crop_from_boxes", "detect_face_boxes", "find_crop", "sample_frames"]
