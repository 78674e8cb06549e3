"""What every feature kind implements, and the block loop that turns audio into 50 Hz rows.

A kind computes rows from *chunks*: a chunk is the audio that rows ``lo .. hi-1`` read, and the kind
treats it as a whole utterance. How a long input is cut into chunks is the kind's :class:`BlockPlan`;
the same loop (:class:`BlockRowStream`) runs offline and in streaming, so a kind whose offline rows are
made by this loop streams with results equal to offline by construction.
"""

from __future__ import annotations

import abc
from dataclasses import dataclass
from typing import ClassVar, List, Optional

import numpy as np

from .windows import HOP, rows_for_duration

__all__ = ["BlockPlan", "BlockRowStream", "Extractor", "rows_by_blocks"]


@dataclass(frozen=True)
class BlockPlan:
    """How rows are computed from audio that arrives over time."""

    block: Optional[int]
    """Rows kept from each model call; None: every row whose audio is complete (kinds with no long
    context, whose rows do not depend on where the chunks are cut)."""
    left: int = 0
    """Rows of past context given to each call and then discarded."""
    right: int = 0
    """Rows of future context given to each call and then discarded (this is look-ahead)."""

    def __post_init__(self) -> None:
        if self.block is not None and self.block < 1:
            raise ValueError(f"BlockPlan.block must be >= 1 or None, got {self.block}")
        if self.left < 0 or self.right < 0:
            raise ValueError(f"BlockPlan context must be >= 0, got left={self.left} right={self.right}")


class Extractor(abc.ABC):
    """One kind of 50 Hz speech features. Subclasses set ``kind``, ``dim``, ``source`` and ``plan``."""

    kind: ClassVar[str] = ""
    frame_len: ClassVar[int] = 400
    """Samples (16 kHz) that one row's analysis reads: a 25 ms window (MFCC, HuBERT's conv stack)."""
    pad_front: ClassVar[int] = 200
    """Zeros imagined before sample 0, so that row ``k`` reads samples ``320k - pad .. 320k - pad + 400``:
    200 centres the analysis window on the row's time ``k / 50``."""
    exact_streaming: ClassVar[bool] = True
    """Streaming gives the offline rows (False: the offline rows come from another computation)."""

    dim: int
    source: str
    plan: BlockPlan

    def row_count(self, num_samples: int) -> int:
        """Rows for ``num_samples`` samples of audio (rows at times ``k/50`` inside the audio)."""
        return rows_for_duration(num_samples)

    def rows(self, audio: np.ndarray) -> np.ndarray:
        """Offline rows of a whole utterance: ``[T]`` float32 at 16 kHz -> ``[N, D]`` float32."""
        return rows_by_blocks(self, audio)

    @abc.abstractmethod
    def chunk_rows(self, chunk: np.ndarray) -> np.ndarray:
        """Rows of one chunk, treated as a whole utterance.

        Args:
            chunk: ``[HOP * (n - 1) + frame_len]`` float32 samples, the (zero-padded) audio of ``n`` rows.

        Returns:
            ``[n, D]`` float32.
        """

    def lookahead_samples(self) -> int:
        """Most samples after a row's time that must arrive before :class:`BlockRowStream` emits it."""
        p = self.plan
        block = 1 if p.block is None else p.block
        return HOP * (block - 1 + p.right) + self.frame_len - self.pad_front


class BlockRowStream:
    """Feed audio in pieces of any size; get the extractor's rows as soon as their audio is complete."""

    def __init__(self, extractor: Extractor):
        self._ext = extractor
        self._buf = np.zeros(0, np.float32)  # samples [buf_start, total)
        self._buf_start = 0
        self._total = 0
        self._next = 0  # next row to produce
        self._finished = False

    @property
    def samples_seen(self) -> int:
        return self._total

    @property
    def rows_done(self) -> int:
        return self._next

    def push(self, samples: np.ndarray) -> np.ndarray:
        """Add ``[t]`` float32 samples (16 kHz); returns the ``[m, D]`` rows completed by them."""
        if self._finished:
            raise RuntimeError("push() after finish(): start a new stream")
        s = np.asarray(samples, dtype=np.float32).reshape(-1)
        if s.size:
            self._buf = np.concatenate([self._buf, s])
            self._total += s.size
        return self._produce(final=False)

    def finish(self) -> np.ndarray:
        """The remaining rows, computed with the audio's true end (zeros past it)."""
        if self._finished:
            raise RuntimeError("finish() called twice")
        self._finished = True
        return self._produce(final=True)

    def _complete_rows(self) -> int:
        # Rows whose whole analysis window has arrived, capped by the rows the audio so far can have
        # (the cap matters for kinds whose row count is not ceil(T / 320)).
        reach = self._total + self._ext.pad_front - self._ext.frame_len
        complete = reach // HOP + 1 if reach >= 0 else 0
        return max(0, min(complete, self._ext.row_count(self._total)))

    def _produce(self, final: bool) -> np.ndarray:
        plan = self._ext.plan
        out: List[np.ndarray] = []
        end = max(0, self._ext.row_count(self._total)) if final else None
        while True:
            s = self._next
            if final:
                if s >= end:
                    break
                e = end if plan.block is None else min(s + plan.block, end)
                hi = min(e + plan.right, end)
            else:
                complete = self._complete_rows()
                if plan.block is None:
                    hi = complete
                    e = hi - plan.right
                    if e <= s:
                        break
                else:
                    e = s + plan.block
                    hi = e + plan.right
                    if hi > complete:
                        break
            lo = max(0, s - plan.left)
            rows = self._ext.chunk_rows(self._chunk(lo, hi))
            if rows.ndim != 2 or rows.shape[0] != hi - lo:
                raise RuntimeError(
                    f"{self._ext.kind}: chunk of {hi - lo} rows gave shape {tuple(rows.shape)}"
                )
            out.append(rows[s - lo : e - lo])
            self._next = e
            self._trim()
        if not out:
            return np.zeros((0, self._ext.dim), np.float32)
        return np.concatenate(out).astype(np.float32, copy=False)

    def _chunk(self, lo: int, hi: int) -> np.ndarray:
        """Samples read by rows ``lo .. hi-1``, zero outside ``[0, total)``."""
        a = HOP * lo - self._ext.pad_front
        b = HOP * (hi - 1) + self._ext.frame_len - self._ext.pad_front
        chunk = np.zeros(b - a, np.float32)
        src_a, src_b = max(a, self._buf_start), min(b, self._total)
        if src_b > src_a:
            chunk[src_a - a : src_b - a] = self._buf[src_a - self._buf_start : src_b - self._buf_start]
        return chunk

    def _trim(self) -> None:
        # Keep only what the next chunk can read, so an endless stream holds bounded audio.
        keep_from = max(0, HOP * max(0, self._next - self._ext.plan.left) - self._ext.pad_front)
        keep_from = min(keep_from, self._total)
        if keep_from > self._buf_start:
            self._buf = self._buf[keep_from - self._buf_start :].copy()
            self._buf_start = keep_from


def rows_by_blocks(extractor: Extractor, audio: np.ndarray) -> np.ndarray:
    """Offline rows made by the streaming loop itself (so streaming equals offline exactly)."""
    stream = BlockRowStream(extractor)
    head = stream.push(audio)
    return np.concatenate([head, stream.finish()])
