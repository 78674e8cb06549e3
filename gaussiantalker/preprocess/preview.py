"""A quick-look video of a dataset: a few frames with the landmarks and the parsing overlaid.

Each preview frame is two panels side by side: the frame with its 68 landmarks (green dots, the
mouth in red), and the frame tinted with the parsing colours (head blue, neck green, torso red,
background left as is). :data:`MAX_FRAMES` frames evenly spaced over the clip, shown at
:data:`PREVIEW_FPS` frames per second, so a user can check the preprocessing by eye in a few seconds.
"""

from __future__ import annotations

import subprocess
from pathlib import Path

import numpy as np

from ..fileio import atomic_write
from .frames import frame_path, read_rgb

MAX_FRAMES = 40
PREVIEW_FPS = 5
TINT = 0.45
"""Opacity of the parsing colours over the frame."""


def preview_indices(num_frames: int, count: int = MAX_FRAMES) -> np.ndarray:
    """``count`` frame indices evenly spaced over the clip (all frames when there are fewer)."""
    if num_frames <= count:
        return np.arange(num_frames)
    return np.unique(np.linspace(0, num_frames - 1, count).round().astype(int))


def _dots(img: np.ndarray, pts: np.ndarray, colour, radius: int) -> None:
    h, w = img.shape[:2]
    p = np.round(pts[np.isfinite(pts).all(1)]).astype(int)
    for dy in range(-radius, radius + 1):
        for dx in range(-radius, radius + 1):
            if dx * dx + dy * dy <= radius * radius:
                x, y = p[:, 0] + dx, p[:, 1] + dy
                ok = (x >= 0) & (x < w) & (y >= 0) & (y < h)
                img[y[ok], x[ok]] = colour


def preview_panel(rgb: np.ndarray, lms68: np.ndarray, labels=None) -> np.ndarray:
    """``[H, 2W, 3]`` uint8: frame with landmarks | frame tinted by the parsing (or the plain frame)."""
    left = np.array(rgb, copy=True)
    r = max(1, round(max(rgb.shape[:2]) / 256))
    _dots(left, lms68[:48], (40, 255, 40), r)
    _dots(left, lms68[48:], (255, 40, 40), r)
    right = np.array(rgb, copy=True)
    if labels is not None:
        from .parsing import labels_to_colors

        colours = labels_to_colors(labels).astype(np.float32)
        fg = (labels > 0)[..., None]
        mixed = (1 - TINT) * rgb.astype(np.float32) + TINT * colours
        right = np.where(fg, mixed, rgb.astype(np.float32)).round().clip(0, 255).astype(np.uint8)
    return np.concatenate([left, right], axis=1)


def write_preview(path: Path, folder: Path, num_frames: int, with_parsing: bool = True) -> int:
    """Write the preview mp4 of the dataset in ``folder`` to ``path`` (atomically); returns its frame count."""
    from ..media import ffmpeg_exe
    from .landmarks import read_lms

    idx = preview_indices(num_frames)
    first = read_rgb(frame_path(folder / "ori_imgs", int(idx[0])))
    h, w = first.shape[:2]

    def write(tmp: Path) -> None:
        cmd = [ffmpeg_exe(), "-y", "-loglevel", "error", "-f", "rawvideo", "-pix_fmt", "rgb24", "-s", f"{2 * w}x{h}",
               "-r", str(PREVIEW_FPS), "-i", "-", "-vf", "pad=ceil(iw/2)*2:ceil(ih/2)*2", "-c:v", "libx264",
               "-preset", "veryfast", "-crf", "23", "-pix_fmt", "yuv420p", "-f", "mp4", str(tmp)]
        proc = subprocess.Popen(cmd, stdin=subprocess.PIPE, stderr=subprocess.PIPE)
        try:
            for i in idx.tolist():
                rgb = read_rgb(frame_path(folder / "ori_imgs", i))
                lms = read_lms(frame_path(folder / "ori_imgs", i, ".lms"))
                labels = None
                if with_parsing:
                    from .parsing import read_parsing

                    labels = read_parsing(frame_path(folder / "parsing", i, ".png"))
                proc.stdin.write(preview_panel(rgb, lms, labels).tobytes())
        finally:
            proc.stdin.close()
            err = proc.stderr.read().decode(errors="replace")
            code = proc.wait()
        if code != 0:
            raise RuntimeError(f"ffmpeg failed writing the preview {path} ({code}): {err.strip()}")

    atomic_write(path, write)
    return len(idx)


__all__ = ["preview_indices", "preview_panel", "write_preview"]
