"""Streaming features: push audio as it arrives, get the windows of frames whose audio is complete.

Look-ahead: the window of frame ``j`` (time ``j / fps``) is returned by the first :meth:`push` after
which the stream holds audio up to ``j / fps + lookahead_s``:

* ``mfcc``: the window reaches 7 rows (0.14 s) past the frame (8 rows when 50 / fps is not an integer)
  and a row needs 12.5 ms of audio past its time: 0.1525 s at 25 fps.
* ``hubert``: rows come in blocks of 1 s with 0.5 s of future context: up to 1.5 s more.
* ``deepspeech``: blocks of 1 s with 1 s of future context (and approximate: see the kind's module).

The concatenation of every :meth:`push` result and :meth:`finish` equals
``extract_features(whole_audio, kind, fps).windows`` for the exact kinds (mfcc to float rounding,
hubert bit for bit); the last frames, whose windows reach past the end of the audio, come from
:meth:`finish`, which knows where the audio ends.
"""

from __future__ import annotations

import logging
import math
import os
from typing import Optional, Union

import numpy as np

from .base import BlockRowStream, Extractor
from .features import get_extractor
from .io import SAMPLE_RATE
from .windows import CENTER, ROW_RATE, WINDOW, frame_count, last_row_needed, make_windows

log = logging.getLogger(__name__)

PathLike = Union[str, os.PathLike]

__all__ = ["StreamingFeatures"]


class StreamingFeatures:
    """Incremental :func:`~gaussiantalker.audio.extract_features` for 16 kHz mono float audio.

    Args:
        kind: as for ``extract_features`` (``"auto"``, a kind name, or an :class:`Extractor`).
        fps: video frame rate.
        assets, model_path, device: as for ``extract_features``.
    """

    def __init__(
        self,
        kind: Union[str, Extractor] = "auto",
        fps: float = 25.0,
        assets: Optional[PathLike] = None,
        *,
        model_path: Optional[PathLike] = None,
        device=None,
    ):
        self.extractor = kind if isinstance(kind, Extractor) else get_extractor(kind, assets, model_path, device)
        frame_count(0.0, fps)  # validates fps
        self.fps = float(fps)
        if not self.extractor.exact_streaming:
            log.warning(
                "streaming %s features are computed block by block and only approximate the offline "
                "features (see the kind's documentation)", self.extractor.kind
            )
        self._rows = BlockRowStream(self.extractor)
        self._buf = np.zeros((0, self.extractor.dim), np.float32)  # rows [buf_start, buf_start + len)
        self._buf_start = 0
        self._next_frame = 0
        self._finished = False

    @property
    def kind(self) -> str:
        return self.extractor.kind

    @property
    def dim(self) -> int:
        return self.extractor.dim

    @property
    def frames_emitted(self) -> int:
        """Frames whose windows have been returned so far."""
        return self._next_frame

    @property
    def lookahead_s(self) -> float:
        """Most seconds of audio past a frame's time needed before its window is returned."""
        step = ROW_RATE / self.fps
        window_rows = (WINDOW - 1 - CENTER) + (0 if float(step).is_integer() else 1)
        return self.extractor.lookahead_samples() / SAMPLE_RATE + window_rows / ROW_RATE

    def push(self, samples: np.ndarray) -> np.ndarray:
        """Add ``[t]`` float32 samples at 16 kHz (any ``t``, including 0).

        Returns:
            ``[n, 16, D]`` float32: windows of frames ``frames_emitted .. frames_emitted + n - 1``.
        """
        if self._finished:
            raise RuntimeError("push() after finish(): start a new StreamingFeatures")
        x = np.asarray(samples, dtype=np.float32)
        if x.ndim != 1:
            raise ValueError(f"samples must be [t] mono, got shape {tuple(x.shape)}")
        self._append(self._rows.push(x))
        # A frame exists for sure once round(seconds so far * fps) exceeds its index.
        known = frame_count(self._rows.samples_seen / SAMPLE_RATE, self.fps)
        have = self._buf_start + self._buf.shape[0]
        stop = self._next_frame
        while stop < known and last_row_needed(stop, self.fps) < have:
            stop += 1
        return self._emit(stop)

    def finish(self, num_frames: Optional[int] = None) -> np.ndarray:
        """Windows of the remaining frames, up to ``num_frames`` in total (default ``round(d * fps)``).

        Returns:
            ``[n, 16, D]`` float32.
        """
        if self._finished:
            raise RuntimeError("finish() called twice")
        self._finished = True
        self._append(self._rows.finish())
        total = frame_count(self._rows.samples_seen / SAMPLE_RATE, self.fps) if num_frames is None else int(num_frames)
        if total < self._next_frame:
            raise ValueError(f"num_frames={total} but {self._next_frame} frames were already returned")
        return self._emit(total)

    def _append(self, rows: np.ndarray) -> None:
        if rows.shape[0]:
            self._buf = np.concatenate([self._buf, rows])

    def _emit(self, stop: int) -> np.ndarray:
        start = self._next_frame
        windows = make_windows(self._buf, stop - start, self.fps, start_frame=start, row_offset=self._buf_start)
        self._next_frame = stop
        # Drop rows no later window reads (the next window starts 8 rows before its frame).
        first_needed = int(math.floor(stop * ROW_RATE / self.fps)) - CENTER
        drop = min(max(0, first_needed - self._buf_start), self._buf.shape[0])
        if drop:
            self._buf = self._buf[drop:]
            self._buf_start += drop
        return windows
