"""Face parsing: a per-frame label map head / neck / torso / background.

Labels (``uint8``): 0 background, 1 head (face, hair, ears, hat: everything the head Gaussians model),
2 neck, 3 torso (cloth, shoulders). On disk the original's colour codes are kept (reference §1: RGB
background white, head blue, neck green, torso red), so legacy datasets read back unchanged.

Backends (:func:`make_parser`):

* ``"bisenet"``: the original's BiSeNet (CelebAMask-HQ, 19 classes) with ``79999_iter.pth`` from the
  asset folder; our own network definition (:mod:`.bisenet`), no torchvision, nothing downloaded.
* ``"mediapipe-selfie"`` (offline default): MediaPipe selfie segmentation (its model ships inside
  ``mediapipe==0.10.21``) separates the person from the background, and the 68 face landmarks split
  the person into head, neck and torso (:func:`split_person`). The selfie graph has no temporal
  smoothing, so each frame's result depends on that frame and its landmarks only.
"""

from __future__ import annotations

import functools
import logging
import os
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Union

import numpy as np

from ..assets import find_asset
from ..fileio import atomic_write

logger = logging.getLogger(__name__)

PathLike = Union[str, os.PathLike]

BACKGROUND, HEAD, NECK, TORSO = 0, 1, 2, 3
LABEL_NAMES = ("background", "head", "neck", "torso")

#: RGB colour of each label as written on disk by the original (index = label).
LABEL_COLORS = np.array([(255, 255, 255), (0, 0, 255), (0, 255, 0), (255, 0, 0)], dtype=np.uint8)

BISENET_FILE = "79999_iter.pth"
BACKENDS = ("auto", "bisenet", "mediapipe-selfie")


class ParsingError(ValueError):
    """A parsing map that cannot be read or used (the message names the file)."""


# ----------------------------------------------------------------------------------------- colours


def labels_to_colors(labels: np.ndarray) -> np.ndarray:
    """``[H, W]`` uint8 labels (0..3) -> ``[H, W, 3]`` uint8 RGB in the original's colour codes."""
    labels = np.asarray(labels)
    if labels.ndim != 2:
        raise ValueError(f"labels must have shape [H, W], got {labels.shape}")
    if labels.size and int(labels.max()) > TORSO:
        raise ValueError(f"labels must be in 0..{TORSO}, got a maximum of {int(labels.max())}")
    return LABEL_COLORS[labels.astype(np.intp)]


# label of each RGB cube corner (R>127)·4 + (G>127)·2 + (B>127); 255 = not one of the four codes
_CORNER_LABEL = np.array([255, HEAD, NECK, 255, TORSO, 255, 255, BACKGROUND], dtype=np.uint8)


def colors_to_labels(rgb: np.ndarray) -> np.ndarray:
    """``[H, W, 3]`` uint8 RGB colour parsing map -> ``[H, W]`` uint8 labels.

    Each pixel takes the label of the nearest of the four colour codes (Euclidean in RGB), so maps
    that went through lossy compression or resizing read back correctly.
    """
    rgb = np.asarray(rgb)
    if rgb.ndim != 3 or rgb.shape[2] != 3:
        raise ValueError(f"rgb must have shape [H, W, 3], got {rgb.shape}")
    # the codes are corners of the RGB cube: the nearest corner (per-channel threshold) is the nearest
    # code whenever it is one of the four; only the other pixels need the full distance comparison
    high = rgb > 127
    labels = _CORNER_LABEL[high[:, :, 0] * 4 + high[:, :, 1] * 2 + high[:, :, 2]]
    odd = labels == 255
    if odd.any():
        px = rgb[odd].astype(np.int32)  # [M, 3]
        d = ((px[:, None, :] - LABEL_COLORS[None].astype(np.int32)) ** 2).sum(axis=2)  # [M, 4]
        labels[odd] = np.argmin(d, axis=1)
    return labels


def write_parsing(path: PathLike, labels: np.ndarray) -> Path:
    """Write labels as the original's colour PNG (``parsing/<i>.png``), atomically. Returns ``path``."""
    import cv2

    bgr = np.ascontiguousarray(labels_to_colors(labels)[:, :, ::-1])

    def _write(tmp: Path) -> None:
        if not cv2.imwrite(str(tmp), bgr):
            raise OSError(f"could not write parsing PNG {path}")

    return atomic_write(path, _write)


def read_parsing(path: PathLike) -> np.ndarray:
    """Read a parsing map written by us or by the original -> ``[H, W]`` uint8 labels.

    Raises:
        FileNotFoundError: the file does not exist.
        ParsingError: the file is not an image or not a 3-colour parsing map.
    """
    import cv2

    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"parsing map not found: {path}")
    img = cv2.imread(str(path), cv2.IMREAD_UNCHANGED)
    if img is None:
        raise ParsingError(f"{path}: not a readable image")
    if img.ndim == 2:
        raise ParsingError(f"{path}: a one-channel image, expected a colour parsing map (RGB codes)")
    if img.dtype != np.uint8:
        raise ParsingError(f"{path}: expected 8-bit colours, got {img.dtype}")
    return colors_to_labels(np.ascontiguousarray(img[:, :, 2::-1]))


# ----------------------------------------------------------------------------------------- parsers


def _check_frame(rgb: np.ndarray) -> np.ndarray:
    rgb = np.asarray(rgb)
    if rgb.ndim != 3 or rgb.shape[2] != 3 or rgb.dtype != np.uint8:
        raise ValueError(f"rgb must be an [H, W, 3] uint8 RGB image, got {rgb.shape} {rgb.dtype}")
    return rgb


def _check_lms(lms68: np.ndarray | None, required: bool) -> np.ndarray | None:
    if lms68 is None:
        if required:
            raise ValueError("lms68 is required by this parser (the 68 face landmarks of the frame)")
        return None
    pts = np.asarray(lms68, dtype=np.float64)
    if pts.shape != (68, 2):
        raise ValueError(f"lms68 must have shape [68, 2], got {pts.shape}")
    if not np.isfinite(pts).all():
        raise ValueError("lms68 contains NaN/inf (frame without a face?)")
    return pts


class FaceParser:
    """Base class: ``parser(rgb [H,W,3] uint8, lms68 [68,2]) -> [H,W] uint8 labels``."""

    name = "base"

    def __call__(self, rgb: np.ndarray, lms68: np.ndarray | None) -> np.ndarray:
        raise NotImplementedError

    def parse_many(
        self, frames: Iterable[np.ndarray], lms68: Iterable[np.ndarray | None]
    ) -> Iterator[np.ndarray]:
        """Parse a sequence of frames lazily (one label map per frame, in order)."""
        for rgb, lms in zip(frames, lms68):
            yield self(rgb, lms)

    def close(self) -> None:
        """Release the backend's resources (the parser may not be used afterwards)."""

    def __enter__(self):
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def _import_selfie_segmentation():
    """MediaPipe's selfie segmentation, imported lazily (torchvision first: see ``landmarks``)."""
    from .landmarks import import_mediapipe_solution

    return import_mediapipe_solution("selfie_segmentation", "the offline face parser")


class SelfieParser(FaceParser):
    """Offline parser: MediaPipe selfie segmentation + landmark geometry (:func:`split_person`)."""

    name = "mediapipe-selfie"

    def __init__(self, threshold: float = 0.5, geometry: HeadGeometry | None = None) -> None:
        module = _import_selfie_segmentation()
        # model 0 = the general (square 256x256) model; the landscape one is meant for 16:9 calls.
        self._seg = module.SelfieSegmentation(model_selection=0)
        self.threshold = float(threshold)
        self.geometry = geometry or HeadGeometry()

    def person_probability(self, rgb: np.ndarray) -> np.ndarray:
        """``[H, W]`` float32 probability that a pixel belongs to the person."""
        rgb = _check_frame(rgb)
        if self._seg is None:
            raise RuntimeError("this parser was closed")
        return np.asarray(self._seg.process(np.ascontiguousarray(rgb)).segmentation_mask, dtype=np.float32)

    def __call__(self, rgb: np.ndarray, lms68: np.ndarray | None) -> np.ndarray:
        pts = _check_lms(lms68, required=True)
        person = self.person_probability(rgb) > self.threshold
        return split_person(person, pts, self.geometry, rgb=rgb)

    def close(self) -> None:
        if self._seg is not None:
            self._seg.close()
            self._seg = None


class BiSeNetParser(FaceParser):
    """The original's face parser: BiSeNet with the ``79999_iter.pth`` weights (landmarks unused)."""

    name = "bisenet"

    def __init__(self, weights: PathLike, device: str = "cpu", input_size: int = 512) -> None:
        from ..devices import resolve_device
        from .bisenet import load_bisenet

        self.weights = Path(weights)
        self.device = str(resolve_device(device))
        self.input_size = int(input_size)  # the network's input square, 512 as trained
        self.model = load_bisenet(self.weights, device=device)

    def __call__(self, rgb: np.ndarray, lms68: np.ndarray | None = None) -> np.ndarray:
        from .bisenet import classes_to_labels, parse_classes

        rgb = _check_frame(rgb)
        classes = parse_classes(self.model, rgb[None], device=self.device, input_size=self.input_size)
        return classes_to_labels(classes[0])

    def parse_many(
        self, frames: Iterable[np.ndarray], lms68: Iterable[np.ndarray | None], batch_size: int = 8
    ) -> Iterator[np.ndarray]:
        """Batched inference (``batch_size`` frames of one size per forward pass)."""
        from .bisenet import classes_to_labels, parse_classes

        batch: list = []

        def flush():
            classes = parse_classes(self.model, np.stack(batch), device=self.device, input_size=self.input_size)
            batch.clear()
            return [classes_to_labels(c) for c in classes]

        for rgb in frames:
            rgb = _check_frame(rgb)
            if batch and rgb.shape != batch[0].shape:
                yield from flush()
            batch.append(rgb)
            if len(batch) >= batch_size:
                yield from flush()
        if batch:
            yield from flush()


def make_parser(backend: str = "auto", assets: PathLike | None = None, device: str = "cpu") -> FaceParser:
    """The face parser for ``backend``.

    Args:
        backend: ``"auto"`` (BiSeNet when ``79999_iter.pth`` is in the asset folder, else the offline
            MediaPipe parser, with one log message), ``"bisenet"`` or ``"mediapipe-selfie"``.
        assets: asset folder (see :func:`gaussiantalker.assets.asset_dir`).
        device: device for BiSeNet (``"cpu"``, ``"auto"``, ``"cuda:0"``, ``"GPU0"``: see
            :func:`gaussiantalker.devices.resolve_device`); the MediaPipe parser runs on the CPU.
    Raises:
        ValueError: unknown backend.
        FileNotFoundError: ``"bisenet"`` asked for but its weights are not in the asset folder.
    """
    if backend not in BACKENDS:
        raise ValueError(f"unknown parsing backend {backend!r}; choose one of {', '.join(BACKENDS)}")
    if backend in ("auto", "bisenet"):
        weights = find_asset(BISENET_FILE, assets)
        if weights is not None:
            return BiSeNetParser(weights, device=device)
        if backend == "bisenet":
            from ..assets import asset_dir

            raise FileNotFoundError(
                f"BiSeNet face parsing needs {BISENET_FILE} (the original's face-parsing weights): place it in "
                f"{asset_dir(assets)} or pass assets=DIR; or use backend='mediapipe-selfie'"
            )
        logger.info("%s not found in the asset folder: face parsing uses MediaPipe selfie segmentation + "
                    "landmark geometry (offline default)", BISENET_FILE)
    return SelfieParser()


# ----------------------------------------------------------------------------------------- geometry


@dataclass
class HeadGeometry:
    """Proportions used to split a person mask with the face landmarks, in units of the face size.

    ``d`` is the distance chin -> brow centre, ``w`` the width of the face oval (jaw points 0 -> 16).
    """

    head_half_width: float = 1.0  #: half width of the head ellipse (hair), in ``w``
    forehead: float = 0.45  #: height of the forced face region above the brows, in ``d``
    side_level: float = 0.15  #: lowest level of head (side hair) beside the jaw, above the chin, in ``d``
    side_reach: float = 0.3  #: how far beside the jaw the side level is reached, in ``w``
    neck_half_width: float = 0.38  #: half width of the neck band at the chin level and below, in ``w``
    neck_top_half_width: float = 0.45  #: half width of the neck band at the jaw angles (skin only), in ``w``
    neck_length: float = 0.75  #: lowest neck pixel below the chin (skin-coloured pixels), in ``d``
    neck_always: float = 0.12  #: band under the jaw that is neck whatever its colour, in ``d``
    skin_tolerance: float = 3.5  #: chroma distance to the face's skin, in robust standard deviations


@dataclass
class _FaceFrame:
    """Per-pixel face coordinates: ``a`` across the face, ``b`` height above the chin (pixels)."""

    a: np.ndarray  # [H, W] float32
    b: np.ndarray  # [H, W] float32
    up: np.ndarray  # [2] unit vector chin -> brows (image x, y)
    d: float  # chin -> brow centre, pixels
    face_w: float  # jaw-oval width, pixels
    jaw_a: np.ndarray  # [17]
    jaw_b: np.ndarray  # [17]


@functools.lru_cache(maxsize=4)
def _pixel_grid(h: int, w: int) -> tuple[np.ndarray, np.ndarray]:
    """Column and row coordinates ``[1, W]``, ``[H, 1]`` float32 (broadcast, shared, read-only)."""
    xs = np.arange(w, dtype=np.float32)[None, :]
    ys = np.arange(h, dtype=np.float32)[:, None]
    xs.flags.writeable = False
    ys.flags.writeable = False
    return xs, ys


def _face_frame(pts: np.ndarray, shape: tuple[int, int]) -> _FaceFrame:
    chin = pts[8]
    up = pts[17:27].mean(axis=0) - chin
    d = float(np.hypot(*up))
    if d < 2.0:
        raise ValueError(f"degenerate landmarks: chin and brows {d:.1f} px apart")
    up = up / d
    right = np.array([-up[1], up[0]])  # image right when the face is upright (up = (0, -1))
    jaw_a = (pts[:17] - chin) @ right
    jaw_b = (pts[:17] - chin) @ up
    xs, ys = _pixel_grid(int(shape[0]), int(shape[1]))
    rel_x, rel_y = xs - np.float32(chin[0]), ys - np.float32(chin[1])
    a = rel_x * np.float32(right[0]) + rel_y * np.float32(right[1])
    b = rel_x * np.float32(up[0]) + rel_y * np.float32(up[1])
    face_w = max(float(abs(jaw_a[16] - jaw_a[0])), 0.5 * d)
    return _FaceFrame(a, b, up, d, face_w, jaw_a, jaw_b)


def _smooth_mask(mask: np.ndarray, radius: int) -> np.ndarray:
    """Morphological opening then closing with a disk: removes specks and fills notches."""
    import cv2

    if radius <= 0:
        return mask
    k = cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (2 * radius + 1, 2 * radius + 1))
    m = mask.astype(np.uint8)
    m = cv2.morphologyEx(m, cv2.MORPH_OPEN, k)
    m = cv2.morphologyEx(m, cv2.MORPH_CLOSE, k)
    return m.astype(bool)


def _components_touching(mask: np.ndarray, seed: np.ndarray, fallback_largest: bool = True) -> np.ndarray:
    """The connected components (8-connected) of ``mask`` that overlap ``seed``; when none does, the
    largest component (``fallback_largest``) or nothing."""
    import cv2

    n, comp = cv2.connectedComponents(mask.astype(np.uint8), connectivity=8)
    if n <= 1:
        return mask.copy()
    hit = np.unique(comp[seed & mask])
    hit = hit[hit > 0]
    if hit.size == 0:
        if not fallback_largest:
            return np.zeros_like(mask, dtype=bool)
        sizes = np.bincount(comp.ravel(), minlength=n)
        sizes[0] = 0
        hit = np.array([int(np.argmax(sizes))])
    keep = np.zeros(n, dtype=bool)
    keep[hit] = True
    return keep[comp]


def _skin_like(rgb: np.ndarray, pts: np.ndarray, d: float, tolerance: float, region: np.ndarray) -> np.ndarray:
    """``[H, W]`` bool: pixels of ``region`` whose chroma (YCrCb Cr, Cb) is within ``tolerance`` robust
    standard deviations of the skin sampled on the cheeks and the chin (only the region's bounding box
    is converted)."""
    import cv2

    h, w = rgb.shape[:2]
    out = np.zeros((h, w), dtype=bool)
    rows, cols = np.nonzero(region.any(axis=1))[0], np.nonzero(region.any(axis=0))[0]
    if not rows.size:
        return out
    centres = [0.5 * (pts[2] + pts[31]), 0.5 * (pts[14] + pts[35]), 0.5 * (pts[8] + pts[57])]
    radius = max(1.0, 0.06 * d)
    samples = []
    for cx, cy in centres:
        x0, x1 = int(max(0, cx - radius)), int(min(w, cx + radius + 1))
        y0, y1 = int(max(0, cy - radius)), int(min(h, cy + radius + 1))
        if x1 > x0 and y1 > y0:
            samples.append(cv2.cvtColor(rgb[y0:y1, x0:x1], cv2.COLOR_RGB2YCrCb).reshape(-1, 3).astype(np.float32))
    if not samples:
        return out
    sample = np.concatenate(samples)
    med = np.median(sample, axis=0)
    spread = np.maximum(1.4826 * np.median(np.abs(sample - med), axis=0), 3.0)
    box = (slice(rows[0], rows[-1] + 1), slice(cols[0], cols[-1] + 1))
    ycc = cv2.cvtColor(np.ascontiguousarray(rgb[box]), cv2.COLOR_RGB2YCrCb).astype(np.float32)
    dist = np.sqrt(((ycc[:, :, 1] - med[1]) / spread[1]) ** 2 + ((ycc[:, :, 2] - med[2]) / spread[2]) ** 2)
    # very dark pixels have no reliable chroma
    out[box] = (dist <= tolerance) & (ycc[:, :, 0] >= 0.2 * med[0]) & region[box]
    return out


def split_person(
    person: np.ndarray, lms68: np.ndarray, geometry: HeadGeometry | None = None, rgb: np.ndarray | None = None
) -> np.ndarray:
    """Split a person mask into head / neck / torso with the face landmarks (and the frame's colours).

    Face frame: origin at the chin (point 8), ``up`` from the chin to the brow centre (so head roll is
    followed), ``d`` = that distance, ``w`` = jaw-oval width. A pixel is

    * head when it is in the face polygon (jaw line + brows raised by a forehead margin), or when it is
      a person pixel above the lower head boundary (the jaw line between points 3 and 13; beside the
      jaw it descends to ``side_level·d`` above the chin: ears and side hair) and either above the
      brows or inside the half ellipse centred at the brows, ``head_half_width·w`` wide, reaching the
      chin level;
    * neck when it is a person pixel below the jaw line, in a band ``neck_half_width·w`` either side of
      the chin, and either within ``neck_always·d`` of the jaw line or skin-coloured (chroma close to
      the cheeks') down to ``neck_length·d`` below the chin; skin-coloured pixels under the jaw angles
      (band widening to ``neck_top_half_width·w`` there) are neck too; without ``rgb`` the narrow band
      down to ``neck_length·d`` is neck;
    * torso for the remaining pixels of the person; background elsewhere.

    Args:
        person: ``[H, W]`` bool person mask.
        lms68: ``[68, 2]`` float landmarks (x = column, y = row, pixels).
        geometry: the proportions (:class:`HeadGeometry`).
        rgb: ``[H, W, 3]`` uint8 frame, for the skin-colour test of the neck.
    Returns:
        ``[H, W]`` uint8 labels.
    """
    import cv2
    from scipy.ndimage import binary_fill_holes

    g = geometry or HeadGeometry()
    person = np.asarray(person, dtype=bool)
    if person.ndim != 2:
        raise ValueError(f"person must have shape [H, W], got {person.shape}")
    if rgb is not None:
        rgb = np.ascontiguousarray(_check_frame(rgb))  # OpenCV wants positive strides
        if rgb.shape[:2] != person.shape:
            raise ValueError(f"rgb has size {rgb.shape[:2]}, person mask {person.shape}")
    pts = _check_lms(lms68, required=True)
    f = _face_frame(pts, person.shape)
    a, b, d = f.a, f.b, f.d
    scale = max(1, round(d / 60))

    # lower head boundary: the jaw line between points 3 and 13, descending beside it to the side level
    ctrl_a = np.concatenate([[f.jaw_a[0] - g.side_reach * f.face_w], f.jaw_a[3:14],
                             [f.jaw_a[16] + g.side_reach * f.face_w]])
    ctrl_b = np.concatenate([[g.side_level * d], f.jaw_b[3:14], [g.side_level * d]])
    order = np.argsort(ctrl_a)
    low = np.interp(a.ravel(), ctrl_a[order], ctrl_b[order]).reshape(a.shape).astype(np.float32)

    # beside the face (below the brows) the head is bounded by a half ellipse reaching the chin level;
    # above the brows every person pixel is head (hair, hat): shoulders never rise that high
    centre_a = 0.5 * (f.jaw_a[0] + f.jaw_a[16])
    in_ellipse = (b >= d) | (((a - centre_a) / (g.head_half_width * f.face_w)) ** 2 + ((b - d) / d) ** 2 <= 1.0)

    face_poly = np.concatenate([pts[:17], pts[26:16:-1] + f.up * g.forehead * d])
    face = np.zeros(person.shape, dtype=np.uint8)
    cv2.fillPoly(face, [np.round(face_poly).astype(np.int32)], 1)
    face = face.astype(bool)

    person = _components_touching(_smooth_mask(person, scale) | face, face)
    head = _components_touching((person & (b >= low) & in_ellipse) | face, face)

    # the band widens from neck_half_width at the chin level to neck_top_half_width at the jaw angle
    rise = np.clip(b / max(float(f.jaw_b[[4, 12]].mean()), 1.0), 0.0, 1.0)
    half = f.face_w * (g.neck_half_width + (g.neck_top_half_width - g.neck_half_width) * rise)
    narrow = np.abs(a) <= g.neck_half_width * f.face_w
    band = person & ~head & (b < low) & (np.abs(a) <= half) & (b >= -g.neck_length * d)
    if rgb is not None:
        band &= (narrow & (b >= low - g.neck_always * d)) | _skin_like(rgb, pts, d, g.skin_tolerance, band)
    else:
        band &= narrow
    neck = np.zeros_like(band)
    rows, cols = np.nonzero(band.any(axis=1))[0], np.nonzero(band.any(axis=0))[0]
    if rows.size:
        # work in the band's bounding box (with a margin for the morphology and the head contact)
        m = 4 * scale + 2
        box = (slice(max(rows[0] - m, 0), rows[-1] + m + 1), slice(max(cols[0] - m, 0), cols[-1] + m + 1))
        piece = _smooth_mask(band[box], 2 * scale)
        # keep the neck pieces that hang under the head (touch it after a small dilation)
        grown = cv2.dilate(head[box].astype(np.uint8), np.ones((2 * scale + 1, 2 * scale + 1), np.uint8)) > 0
        neck[box] = binary_fill_holes(_components_touching(piece, grown, fallback_largest=False))
        neck &= person & ~head

    labels = np.zeros(person.shape, dtype=np.uint8)
    labels[person] = TORSO
    labels[neck] = NECK
    labels[head] = HEAD
    return labels


__all__ = [
    "BACKENDS",
    "BACKGROUND",
    "BISENET_FILE",
    "HEAD",
    "LABEL_COLORS",
    "LABEL_NAMES",
    "NECK",
    "TORSO",
    "BiSeNetParser",
    "FaceParser",
    "HeadGeometry",
    "ParsingError",
    "SelfieParser",
    "colors_to_labels",
    "labels_to_colors",
    "make_parser",
    "read_parsing",
    "split_person",
    "write_parsing",
]
