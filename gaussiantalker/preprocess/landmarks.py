"""Face landmarks with MediaPipe face mesh: 478 points per frame and the 68-point iBUG layout.

Backend: ``mediapipe==0.10.21`` (the last release whose wheel ships the face-mesh models), face mesh
with ``refine_landmarks=True`` (468 mesh points + 10 iris points). Nothing is downloaded.

Mode. Frames of one clip are processed in MediaPipe's *video* mode by default: the mesh of frame i
seeds the region of interest of frame i+1, so the face detector runs only when the tracked face is
lost. It gives smoother landmarks than static mode, where the detector's box is re-estimated every
frame and the crop jitters: on the first 100 frames of the MimicTalk clip the median frame-to-frame
acceleration of the rigid landmarks (nose bridge, eye corners) is 0.74 px in video mode against
0.84 px in static mode (200 frames: 0.80 against 0.96), at the same ~10 ms per 512 x 512 frame on one
CPU core (``tests/test_landmarks.py`` re-measures it). ``mode="static"`` treats every frame
independently: use it for unordered images.

Main face. Up to ``max_faces`` faces are detected per frame; the main face is the largest one when
nothing is being followed, and afterwards the face whose box overlaps the last main box most
(IoU >= ``min_iou``). A frame where only other faces are visible is reported as *no face* (never a
silent switch of identity); after ``reacquire_after`` such frames in a row the largest face is taken
again, with a warning.

Coordinates are pixels with the centre of pixel (i, j) at (i, j): ``x = x_norm·W - 0.5``,
``y = y_norm·H - 0.5``; ``z`` is MediaPipe's relative depth times ``W`` (same scale as x, smaller =
closer to the camera).

The 478 -> 68 mapping (:data:`MEDIAPIPE_TO_IBUG68`) picks, for every iBUG point, the mesh vertex at the
same anatomical place, chosen mirror-symmetric (the mesh is symmetric: each pair below maps onto a
mirror pair of vertices):

* jaw 0-16: face-oval vertices from the right tragus level to the chin (152) and up to the left side;
  these are fixed mesh vertices, not the occluding contour that iBUG annotators follow under yaw;
* brows 17-21 / 22-26: upper brow contour, outer to inner / inner to outer;
* nose bridge 27-30: 168, 197, 5, 4 (nose tip); nose base 31-35: alar bottoms, columella base (2);
* eyes 36-41 / 42-47: corners 33/133 and 362/263, two upper and two lower lid vertices each;
* outer lips 48-59: corners 61/291, upper contour through 0 (philtrum), lower through 17;
* inner lips 60-67: inner corners 78/308, 13 and 14 at the midline.
"""

from __future__ import annotations

import importlib
import importlib.util
import logging
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterable, Iterator, List, Optional, Sequence, Tuple, Union

import numpy as np

from .. import fileio
from ..fileio import write_lms

logger = logging.getLogger(__name__)

PathLike = Union[str, os.PathLike]

NUM_MESH_POINTS = 478

# fmt: off
#: For each of the 68 iBUG points, the index of the MediaPipe face-mesh vertex used for it.
MEDIAPIPE_TO_IBUG68: Tuple[int, ...] = (
    # jaw 0-16 (image left -> chin -> image right)
    127, 234, 93, 132, 58, 136, 150, 176, 152, 400, 379, 365, 288, 361, 323, 454, 356,
    # right brow 17-21 (image left, outer -> inner), left brow 22-26 (inner -> outer)
    70, 63, 105, 66, 107,
    336, 296, 334, 293, 300,
    # nose bridge 27-30, nose base 31-35
    168, 197, 5, 4,
    75, 97, 2, 326, 305,
    # right eye 36-41 (outer corner, upper lid x2, inner corner, lower lid x2), left eye 42-47
    33, 160, 158, 133, 153, 144,
    362, 385, 387, 263, 373, 380,
    # outer lips 48-59 (right corner, upper lip to left corner, lower lip back)
    61, 39, 37, 0, 267, 269, 291, 405, 314, 17, 84, 181,
    # inner lips 60-67
    78, 82, 13, 312, 308, 317, 14, 87,
)
# fmt: on

#: iBUG index of the mirror-image point (left <-> right), for symmetry checks and templates.
IBUG68_MIRROR: Tuple[int, ...] = tuple(
    list(range(16, -1, -1))  # jaw
    + list(range(26, 21, -1)) + list(range(21, 16, -1))  # brows
    + [27, 28, 29, 30] + [35, 34, 33, 32, 31]  # nose
    + [45, 44, 43, 42, 47, 46] + [39, 38, 37, 36, 41, 40]  # eyes
    + [54, 53, 52, 51, 50, 49, 48, 59, 58, 57, 56, 55]  # outer lips
    + [64, 63, 62, 61, 60, 67, 66, 65]  # inner lips
)


@dataclass
class LandmarkResult:
    """Landmarks of a sequence of frames. Frames with no (main) face hold NaN and ``found=False``."""

    points478: np.ndarray  # [F, 478, 3] float32 pixels (x, y, z·W); NaN where no face
    points68: np.ndarray  # [F, 68, 2] float32 pixels, iBUG layout; NaN where no face
    found: np.ndarray  # [F] bool, the main face was found
    num_faces: np.ndarray  # [F] int, faces MediaPipe returned in the frame
    image_size: Tuple[int, int]  # (H, W)
    mode: str  # "video" or "static"
    warnings: List[str] = field(default_factory=list)

    @property
    def num_frames(self) -> int:
        return int(self.found.shape[0])

    def landmarks68(self, index: int) -> Optional[np.ndarray]:
        """``[68, 2]`` landmarks of frame ``index``, or None when it has no face."""
        return self.points68[index].copy() if self.found[index] else None

    def missing_ranges(self) -> List[Tuple[int, int]]:
        """Inclusive frame ranges ``(first, last)`` without a face."""
        return missing_ranges(self.found)


def missing_ranges(found: Sequence[bool]) -> List[Tuple[int, int]]:
    """Inclusive ``(first, last)`` runs of False in ``found`` (frames without a face)."""
    ranges: List[Tuple[int, int]] = []
    start = None
    for i, ok in enumerate([bool(v) for v in found] + [True]):
        if not ok and start is None:
            start = i
        elif ok and start is not None:
            ranges.append((start, i - 1))
            start = None
    return ranges


def mediapipe_to_ibug68(points478: np.ndarray) -> np.ndarray:
    """``[..., 478, C]`` mesh points -> ``[..., 68, 2]`` iBUG points (x, y)."""
    pts = np.asarray(points478)
    if pts.ndim < 2 or pts.shape[-2] < 468 or pts.shape[-1] < 2:
        raise ValueError(f"points478 must have shape [..., 478, >=2], got {pts.shape}")
    return pts[..., list(MEDIAPIPE_TO_IBUG68), :2]


def read_lms(path: PathLike) -> np.ndarray:
    """An ER-NeRF ``.lms`` file as ``[68, 2]`` float32, the dtype the preprocessing steps work in
    (:func:`gaussiantalker.fileio.read_lms` reads and checks it)."""
    return fileio.read_lms(path).astype(np.float32)


def iter_video_rgb(path: PathLike, max_frames: Optional[int] = None) -> Iterator[np.ndarray]:
    """Decode a video (or an ffmpeg image pattern) to ``[H, W, 3]`` uint8 RGB frames, in order.

    Uses the ffmpeg binary shipped by ``imageio-ffmpeg`` through a rawvideo pipe (argument lists,
    no shell). ``max_frames`` stops after that many frames.
    """
    import imageio_ffmpeg

    if not Path(path).exists() and "%" not in str(path):
        raise FileNotFoundError(f"video not found: {path}")
    output_params = ["-frames:v", str(int(max_frames))] if max_frames is not None else None
    gen = imageio_ffmpeg.read_frames(str(path), pix_fmt="rgb24", output_params=output_params)
    try:
        meta = next(gen)
        w, h = meta["size"]
        for raw in gen:
            yield np.frombuffer(raw, dtype=np.uint8).reshape(h, w, 3)
    finally:
        gen.close()


def read_video_rgb(path: PathLike, max_frames: Optional[int] = None) -> np.ndarray:
    """All frames of a video as ``[F, H, W, 3]`` uint8 RGB (see :func:`iter_video_rgb`)."""
    frames = list(iter_video_rgb(path, max_frames))
    if not frames:
        raise ValueError(f"{path}: no video frames decoded")
    return np.stack(frames)


def import_mediapipe_solution(name: str, purpose: str):
    """Import ``mediapipe.python.solutions.<name>`` lazily, with an install hint when it is missing.

    ``import mediapipe`` imports TensorFlow when it is installed (``mediapipe.tasks`` probes for it),
    and importing torchvision *after* TensorFlow segfaults this stack (measured: exit 139 with
    TensorFlow 2.19 and torchvision 0.29). Importing torchvision first avoids it.

    Args:
        name: the solution module, e.g. ``"face_mesh"``, ``"selfie_segmentation"``.
        purpose: what it is needed for, for the error message.
    """
    from .._import_order import before_tensorflow

    before_tensorflow()  # torchvision and aiortc's pylibsrtp segfault when loaded after TensorFlow
    try:
        return importlib.import_module(f"mediapipe.python.solutions.{name}")
    except ImportError as exc:
        raise ImportError(
            f"MediaPipe {name.replace('_', ' ')} is needed for {purpose}: pip install mediapipe==0.10.21 "
            "(later releases no longer ship its models)"
        ) from exc


def _import_face_mesh():
    return import_mediapipe_solution("face_mesh", "landmark detection")


def _box(points: np.ndarray) -> np.ndarray:
    return np.array([points[:, 0].min(), points[:, 1].min(), points[:, 0].max(), points[:, 1].max()])


def _iou(a: np.ndarray, b: np.ndarray) -> float:
    ix = max(0.0, min(a[2], b[2]) - max(a[0], b[0]))
    iy = max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
    inter = ix * iy
    union = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter
    return float(inter / union) if union > 0 else 0.0


class _MainFaceFollower:
    """Chooses the main face among a frame's faces (see the module docstring)."""

    def __init__(self, min_iou: float, reacquire_after: int) -> None:
        self.min_iou = min_iou
        self.reacquire_after = reacquire_after
        self.last_box: Optional[np.ndarray] = None
        self.misses = 0
        self.warnings: List[str] = []

    def choose(self, frame: int, faces: List[np.ndarray]) -> Optional[int]:
        if not faces:
            self.misses += 1
            return None
        boxes = [_box(p) for p in faces]
        areas = [(b[2] - b[0]) * (b[3] - b[1]) for b in boxes]
        if self.last_box is None or self.misses >= self.reacquire_after:
            pick = int(np.argmax(areas))
            if self.last_box is not None and len(faces) > 1:
                msg = f"frame {frame}: main face lost for {self.misses} frames, re-acquired the largest face"
                logger.warning(msg)
                self.warnings.append(msg)
        else:
            ious = [_iou(self.last_box, b) for b in boxes]
            pick = int(np.argmax(ious))
            if ious[pick] < self.min_iou:
                self.misses += 1
                return None
        self.last_box = boxes[pick]
        self.misses = 0
        return pick


def detect_landmarks(
    frames: Union[np.ndarray, Iterable[np.ndarray]],
    mode: str = "video",
    max_faces: int = 2,
    min_detection_confidence: float = 0.5,
    min_tracking_confidence: float = 0.5,
    min_iou: float = 0.3,
    reacquire_after: int = 25,
) -> LandmarkResult:
    """Detect the main face's landmarks in each frame with MediaPipe face mesh.

    Args:
        frames: ``[F, H, W, 3]`` uint8 RGB array, or an iterable of ``[H, W, 3]`` uint8 RGB frames
            of one size (e.g. :func:`iter_video_rgb`, so a long clip is never held in memory).
        mode: ``"video"`` (consecutive frames of one clip; default) or ``"static"`` (independent
            images).
        max_faces: faces MediaPipe looks for per frame (>= 2 lets the main face be told apart).
        min_detection_confidence, min_tracking_confidence: MediaPipe's thresholds.
        min_iou: overlap with the last main-face box for a face to count as the main face.
        reacquire_after: frames without the main face after which the largest face is taken.
    Returns:
        :class:`LandmarkResult`.
    Raises:
        ValueError: on a bad frame shape/dtype, mixed frame sizes or an unknown mode.
        ImportError: when MediaPipe is not installed.
    """
    if mode not in ("video", "static"):
        raise ValueError(f"mode must be 'video' or 'static', got {mode!r}")
    if isinstance(frames, np.ndarray) and frames.ndim != 4:
        raise ValueError(f"frames must have shape [F, H, W, 3], got {frames.shape}")
    face_mesh = _import_face_mesh()
    follower = _MainFaceFollower(min_iou, reacquire_after)
    pts478: List[np.ndarray] = []
    counts: List[int] = []
    size: Optional[Tuple[int, int]] = None
    with face_mesh.FaceMesh(
        static_image_mode=(mode == "static"), max_num_faces=max_faces, refine_landmarks=True,
        min_detection_confidence=min_detection_confidence, min_tracking_confidence=min_tracking_confidence,
    ) as mesh:
        for i, frame in enumerate(frames):
            frame = np.asarray(frame)
            if frame.ndim != 3 or frame.shape[2] != 3 or frame.dtype != np.uint8:
                raise ValueError(f"frame {i} must be [H, W, 3] uint8 RGB, got {frame.shape} {frame.dtype}")
            if size is None:
                size = (frame.shape[0], frame.shape[1])
            elif frame.shape[:2] != size:
                raise ValueError(f"frame {i} has size {frame.shape[:2]}, expected {size} like frame 0")
            h, w = size
            result = mesh.process(np.ascontiguousarray(frame))
            faces = []
            for lm in result.multi_face_landmarks or []:
                arr = np.array([(p.x, p.y, p.z) for p in lm.landmark], dtype=np.float64)
                if arr.shape[0] != NUM_MESH_POINTS:
                    raise RuntimeError(f"MediaPipe returned {arr.shape[0]} points, expected {NUM_MESH_POINTS}")
                arr[:, 0] = arr[:, 0] * w - 0.5
                arr[:, 1] = arr[:, 1] * h - 0.5
                arr[:, 2] = arr[:, 2] * w
                faces.append(arr)
            counts.append(len(faces))
            pick = follower.choose(i, faces)
            pts478.append(faces[pick] if pick is not None else np.full((NUM_MESH_POINTS, 3), np.nan))
    if size is None:
        raise ValueError("frames is empty")
    points478 = np.stack(pts478).astype(np.float32)
    found = np.isfinite(points478[:, 0, 0])
    result = LandmarkResult(
        points478=points478, points68=mediapipe_to_ibug68(points478).astype(np.float32), found=found,
        num_faces=np.asarray(counts, dtype=np.int64), image_size=size, mode=mode,
        warnings=follower.warnings,
    )
    if not found.all():
        logger.info("no main face in %d of %d frames: %s", int((~found).sum()), len(found),
                    result.missing_ranges())
    return result


__all__ = [
    "MEDIAPIPE_TO_IBUG68", "IBUG68_MIRROR", "NUM_MESH_POINTS", "LandmarkResult", "detect_landmarks",
    "mediapipe_to_ibug68", "write_lms", "read_lms", "iter_video_rgb", "read_video_rgb",
]
