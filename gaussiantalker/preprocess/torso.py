"""Ground-truth and torso images (reference §2.6): ``gt_imgs/<i>.jpg`` and ``torso_imgs/<i>.png``.

``gt`` is the frame with its background pixels replaced by the plate. ``torso`` is the layer the head
Gaussians are composited over at training time: the frame with the head replaced by the plate, plus

1. a 9-row strip painted upward from the top torso pixel of every column whose pixel above is head
   (the shoulder line under hair), darkened by ``0.98**k`` at ``k`` rows up;
2. a 53-row strip painted upward from the top of the neck (neck mask dilated 3 px up and down, seed
   pushed down by ``min(column count - 1, 4)``), darkened the same way and blurred, so a slightly moving
   head never uncovers a hole between chin and neck.

Alpha is 255 on neck (dilated) ∪ torso ∪ both strips, 0 elsewhere, and RGB is zeroed where alpha is 0.
Strip rows above the image top are dropped (the original's negative indices wrapped to the bottom rows).

The blur is OpenCV's 5x5 Gaussian with sigma 4: the original passes ``cv2.BORDER_DEFAULT`` (= 4) in the
``sigmaX`` position, so that is the blur its datasets were made with.
"""

from __future__ import annotations

import numpy as np

from .parsing import BACKGROUND, HEAD, NECK, TORSO

TORSO_STRIP = 9  # rows painted above the torso top (8 + 1)
NECK_PUSH_DOWN = 4
NECK_STRIP = 48 + NECK_PUSH_DOWN + 1  # 53 rows painted above the neck seed
DARKEN = 0.98
NECK_DILATION = 3  # iterations of the vertical 3x1 dilation of the neck mask
BLUR_SIGMA = 4.0  # see the module docstring


def _top_seeds(mask: np.ndarray, head: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Columns whose top-most ``mask`` pixel has a head pixel directly above it.

    Returns ``(rows, cols, counts)``: the top row per kept column, the column, and the number of
    ``mask`` pixels in that column.
    """
    present = mask.any(axis=0)  # [W]
    top = np.argmax(mask, axis=0)  # [W] first True row
    cols = np.nonzero(present & (top > 0))[0]
    rows = top[cols]
    keep = head[rows - 1, cols]
    cols, rows = cols[keep], rows[keep]
    counts = mask[:, cols].sum(axis=0)
    return rows, cols, counts


def _paint_up(
    image: np.ndarray, painted: np.ndarray, colors: np.ndarray, rows: np.ndarray, cols: np.ndarray, length: int
) -> None:
    """Paint ``colors`` [m, 3] upward from (rows, cols) for ``length`` rows with the 0.98^k darkening."""
    for k in range(length):
        r = rows - k
        ok = r >= 0
        if not ok.any():
            break
        # float colour times the factor, truncated to uint8 as the original's assignment does
        image[r[ok], cols[ok]] = (colors[ok] * DARKEN**k).astype(np.uint8)
        painted[r[ok], cols[ok]] = True


def compose_gt_torso(
    rgb: np.ndarray, labels: np.ndarray, plate: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """Build the GT image and the torso layer of one frame.

    Args:
        rgb: ``[H, W, 3]`` uint8 RGB frame.
        labels: ``[H, W]`` uint8 labels (0 background, 1 head, 2 neck, 3 torso).
        plate: ``[H, W, 3]`` uint8 RGB background plate.
    Returns:
        ``(gt [H, W, 3] uint8 RGB, torso [H, W, 4] uint8 RGBA)``.
    Raises:
        ValueError: on shapes or dtypes that do not match.
    """
    import cv2

    rgb, labels, plate = np.asarray(rgb), np.asarray(labels), np.asarray(plate)
    if rgb.ndim != 3 or rgb.shape[2] != 3 or rgb.dtype != np.uint8:
        raise ValueError(f"rgb must be [H, W, 3] uint8, got {rgb.shape} {rgb.dtype}")
    if plate.shape != rgb.shape or plate.dtype != np.uint8:
        raise ValueError(f"plate must be {rgb.shape} uint8 like the frame, got {plate.shape} {plate.dtype}")
    if labels.shape != rgb.shape[:2]:
        raise ValueError(f"labels must have shape {rgb.shape[:2]}, got {labels.shape}")
    plate = np.ascontiguousarray(plate)
    head, neck, torso_part = labels == HEAD, labels == NECK, labels == TORSO

    # masked copies with OpenCV: ~30x faster than numpy boolean indexing of [H, W, 3] arrays
    gt = np.ascontiguousarray(rgb).copy()
    cv2.copyTo(plate, (labels == BACKGROUND).view(np.uint8), gt)

    torso = gt.copy()
    cv2.copyTo(plate, head.view(np.uint8), torso)

    torso_painted = np.zeros(head.shape, dtype=bool)
    rows, cols, _ = _top_seeds(torso_part, head)
    if cols.size:
        _paint_up(torso, torso_painted, gt[rows, cols].astype(np.float64), rows, cols, TORSO_STRIP)

    # NECK_DILATION iterations of a vertical 3x1 element = one vertical (2·NECK_DILATION + 1)x1 element
    neck_grown = cv2.dilate(neck.astype(np.uint8), np.ones((2 * NECK_DILATION + 1, 1), np.uint8)).astype(bool)
    neck_painted = np.zeros(head.shape, dtype=bool)
    rows, cols, counts = _top_seeds(neck_grown, head)
    if cols.size:
        seeds = rows + np.minimum(counts - 1, NECK_PUSH_DOWN)
        _paint_up(torso, neck_painted, gt[seeds, cols].astype(np.float64), seeds, cols, NECK_STRIP)
        blurred = cv2.GaussianBlur(torso, (5, 5), BLUR_SIGMA)
        cv2.copyTo(blurred, neck_painted.view(np.uint8), torso)

    alpha = (neck_grown | torso_part | neck_painted | torso_painted).view(np.uint8)  # [H, W] 0 / 1
    rgba = cv2.cvtColor(cv2.bitwise_and(torso, torso, mask=alpha), cv2.COLOR_RGB2RGBA)
    rgba[:, :, 3] = alpha * 255
    return gt, rgba


def torso_over_background(torso_rgba: np.ndarray, plate: np.ndarray, out: np.ndarray | None = None) -> np.ndarray:
    """``torso·α + plate·(1-α)`` (the training-time ``bg_w_torso``, reference §3.3) as uint8 RGB."""
    if torso_rgba.ndim != 3 or torso_rgba.shape[2] != 4 or torso_rgba.shape[:2] != plate.shape[:2]:
        raise ValueError(f"torso_rgba must be [H, W, 4] matching the plate {plate.shape}, got {torso_rgba.shape}")
    a = torso_rgba[:, :, 3:4].astype(np.float32) / 255.0
    mixed = torso_rgba[:, :, :3].astype(np.float32) * a + plate.astype(np.float32) * (1.0 - a)
    result = np.clip(np.rint(mixed), 0, 255).astype(np.uint8)
    if out is not None:
        out[...] = result
        return out
    return result


__all__ = [
    "BLUR_SIGMA",
    "DARKEN",
    "NECK_PUSH_DOWN",
    "NECK_STRIP",
    "TORSO_STRIP",
    "compose_gt_torso",
    "torso_over_background",
]
