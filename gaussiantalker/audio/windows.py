"""The alignment rule: 50 Hz feature rows -> one 16-row window per video frame.

Rule (also in ``docs/audio.md``):

* Feature row ``k`` stands for time ``k / 50`` s.
* Audio of duration ``d`` seconds at video rate ``r`` gives exactly ``round(d * r)`` windows
  (Python's ``round``: halves go to the even integer, as the original's ``int(round(...))``).
* Window ``j`` holds the rows at positions ``j * 50 / r + i - 8`` for ``i = 0..15``, so row ``i = 8`` of
  the window is at time ``j / r``, the time of video frame ``j``. At 25 fps the positions are the integers
  ``2j - 8 .. 2j + 7``: exactly the original's ``[2j-8, 2j+8)`` windows. At other rates a position falls
  between two rows and the window interpolates them linearly.
* Positions before row 0 or after the last row read zeros (the original pads with zero rows).
"""

from __future__ import annotations

import math
from typing import Optional

import numpy as np

ROW_RATE = 50
"""Feature rows per second (DeepSpeech logits, HuBERT frames and our MFCC rows all run at 50 Hz)."""
HOP = 320
"""Audio samples per feature row at 16 kHz."""
WINDOW = 16
"""Rows per window: 0.32 s of audio around each video frame."""
CENTER = 8
"""Index, inside a window, of the row at the frame's own time."""

__all__ = [
    "CENTER", "HOP", "ROW_RATE", "WINDOW", "check_windows", "frame_count", "last_row_needed", "make_windows",
    "match_statistics", "rows_for_duration", "speech_statistics", "window_positions",
]


def _check_fps(fps: float) -> float:
    fps = float(fps)
    if not math.isfinite(fps) or fps <= 0:
        raise ValueError(f"fps must be a positive number, got {fps!r}")
    return fps


def frame_count(duration_s: float, fps: float) -> int:
    """Number of video frames (= windows) for ``duration_s`` seconds of audio: ``round(d * fps)``."""
    if duration_s < 0:
        raise ValueError(f"duration_s must be >= 0, got {duration_s!r}")
    return int(round(duration_s * _check_fps(fps)))


def window_positions(start: int, stop: int, fps: float) -> np.ndarray:
    """Row positions (in 50 Hz rows, fractional at rates that do not divide 50) read by the windows of
    frames ``start .. stop-1``.

    Returns:
        ``[stop-start, 16]`` float64.
    """
    fps = _check_fps(fps)
    frames = np.arange(start, stop, dtype=np.float64)
    # j * 50 / fps: for fps = 25 this is exactly 2j (an exact integer quotient is exact in floating point).
    centre = frames * ROW_RATE / fps  # [n]
    return centre[:, None] + (np.arange(WINDOW, dtype=np.float64) - CENTER)[None, :]  # [n, 16]


def last_row_needed(frame: int, fps: float) -> int:
    """Index of the last 50 Hz row that the window of ``frame`` reads (the streaming look-ahead)."""
    return int(math.ceil(window_positions(frame, frame + 1, fps)[0, -1]))


def make_windows(
    rows: np.ndarray, num_frames: int, fps: float, start_frame: int = 0, row_offset: int = 0
) -> np.ndarray:
    """Cut per-frame windows out of 50 Hz rows.

    Args:
        rows: ``[N, D]`` rows; ``rows[n]`` is global row ``row_offset + n``. Rows outside the array read
            as zeros (so callers that hold only a tail of the rows must keep every row still needed).
        num_frames: how many windows to make.
        fps: video frame rate.
        start_frame: index of the first window's frame.
        row_offset: global index of ``rows[0]``.

    Returns:
        ``[num_frames, 16, D]`` float32.
    """
    rows = np.asarray(rows)
    if rows.ndim != 2:
        raise ValueError(f"rows must be [N, D], got shape {tuple(rows.shape)}")
    if num_frames < 0:
        raise ValueError(f"num_frames must be >= 0, got {num_frames}")
    n, dim = rows.shape
    pos = window_positions(start_frame, start_frame + num_frames, fps) - row_offset  # [F, 16]
    lo = np.floor(pos).astype(np.int64)  # [F, 16]
    frac = (pos - lo).astype(np.float32)[..., None]  # [F, 16, 1]
    # One zero row at each end stands for every row outside the array.
    zero = np.zeros((1, dim), np.float32)
    padded = np.concatenate([zero, rows.astype(np.float32, copy=False), zero])  # [N + 2, D]
    idx_lo = np.clip(lo + 1, 0, n + 1)
    idx_hi = np.clip(lo + 2, 0, n + 1)
    out = padded[idx_lo]  # [F, 16, D]
    if np.any(frac):
        # Only at frame rates that do not divide 50; at 25 fps the windows are a pure gather.
        out = out * (1.0 - frac) + padded[idx_hi] * frac
    return np.ascontiguousarray(out, dtype=np.float32)


def rows_for_duration(num_samples: int, sample_rate: int = 16000) -> int:
    """Rows at times ``k / 50`` inside audio of ``num_samples`` samples: ``ceil(T / 320)`` at 16 kHz."""
    hop = sample_rate // ROW_RATE
    return -(-int(num_samples) // hop)


def check_windows(windows: np.ndarray, name: str = "windows", dim: Optional[int] = None) -> np.ndarray:
    """Raise ``ValueError`` unless ``windows`` is ``[F, 16, D]`` (with ``D == dim`` when given)."""
    w = np.asarray(windows)
    if w.ndim != 3 or w.shape[1] != WINDOW or (dim is not None and w.shape[2] != dim):
        want = f"[F, {WINDOW}, {dim if dim is not None else 'D'}]"
        raise ValueError(f"{name} must be {want}, got shape {tuple(w.shape)}")
    return w


def speech_statistics(windows: np.ndarray, energy_channel: Optional[int] = None) -> tuple[np.ndarray, np.ndarray]:
    """Per-channel mean and std ``([D], [D])`` of the rows of ``[M, 16, D]`` windows, over speech: rows whose
    ``energy_channel`` (0 for mfcc: log energy) is above the 30th percentile of the clip's, so that pauses and
    silence do not set a voice's statistics (all rows when ``energy_channel`` is None). Zero-padded edge rows
    are left out."""
    w = np.asarray(windows, np.float64)
    rows = w.reshape(-1, w.shape[-1])
    rows = rows[np.any(rows != 0.0, axis=1)]
    if rows.shape[0] == 0:
        return np.zeros(w.shape[-1]), np.ones(w.shape[-1])
    if energy_channel is not None:
        e = rows[:, energy_channel]
        loud = rows[e > np.percentile(e, 30)]
        rows = loud if loud.shape[0] >= 8 else rows
    return rows.mean(0), np.maximum(rows.std(0), 1e-6)


def match_statistics(windows: np.ndarray, mean: np.ndarray, std: np.ndarray,
                     energy_channel: Optional[int] = None) -> np.ndarray:
    """``windows`` ``[M, 16, D]`` moved so that their speech statistics (:func:`speech_statistics`) become
    ``mean`` / ``std`` (per channel): another voice, microphone or level brought to the training clip's range.
    Zero-padded rows stay zero."""
    w = np.asarray(windows, np.float32)
    mu, sd = speech_statistics(w, energy_channel)
    out = (w - mu) / sd * np.asarray(std, np.float64) + np.asarray(mean, np.float64)
    return np.where(np.any(w != 0.0, axis=-1, keepdims=True), out, 0.0).astype(np.float32)
