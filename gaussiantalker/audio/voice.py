"""Voice activity per video frame: where the driving audio is silent, a lip-code model renders a closed mouth.

The audio predictor reads what a sound looks like on the training subject's mouth, including how that subject
holds it in pauses: a speaker who rests with the lips apart (``DFRF__french``: a mean gap of 0.026 face heights in
its own silences) makes a model that keeps the mouth half open whenever another voice pauses. A viewer reads an open
mouth in silence as a fault, so renders close it there: each frame gets a weight in [0, 1] (1 = speech), and the
lip code becomes ``closed + weight * (predicted - closed)`` (:meth:`GaussianTalkerModel.gate_lips`).

The weight of frame ``k`` (at ``k / 25`` s):

* its level: the RMS of the :data:`WINDOW_S` seconds of audio centred on it, in dB of full scale;
* the reference: the loudest level so far (frames ``0 .. k``), at least :data:`REFERENCE_FLOOR_DBFS` (speech is
  assumed that loud before any has been heard, so a quiet start reads as silence);
* ``s_k = clip((level - (reference - BELOW_DB)) / RAMP_DB, 0, 1)``: silent :data:`BELOW_DB` dB under the
  reference, fully open :data:`RAMP_DB` dB above that;
* the weight is the largest ``s`` of frames ``k - 1 .. k + 1``: the mouth starts to open a frame before the sound
  and closes a frame after it, and gaps of one frame (a stop consonant) do not close it.

The reference depends only on the audio up to the frame, so :class:`StreamingVoice` gives, chunk by chunk, the
weights :func:`voice_activity` gives for the whole audio (the same floating-point operations, frame by frame).
It needs the audio up to ``(k + 1) / 25 + WINDOW_S / 2`` s for frame ``k``: less than the features' look-ahead.
"""

from __future__ import annotations

import numpy as np

__all__ = ["BELOW_DB", "RAMP_DB", "REFERENCE_FLOOR_DBFS", "WINDOW_S", "StreamingVoice", "frame_levels",
           "voice_activity"]

#: Seconds of audio (centred on a frame) whose RMS is the frame's level.
WINDOW_S = 0.08
#: A frame this many dB under the reference level (the loudest so far) is silent.
BELOW_DB = 30.0
#: dB over which the weight rises from 0 (silent) to 1 (speech).
RAMP_DB = 6.0
#: The lowest reference level: speech is assumed at least this loud (dBFS) until louder has been heard.
REFERENCE_FLOOR_DBFS = -25.0
_LEVEL_FLOOR_DBFS = -100.0


def _level(x: np.ndarray, centre: int, half: int) -> float:
    """dBFS of the samples ``centre - half .. centre + half`` of ``x`` that exist (-100 where none do)."""
    lo, hi = max(0, centre - half), min(x.size, centre + half)
    if hi <= lo:
        return _LEVEL_FLOOR_DBFS
    seg = x[lo:hi].astype(np.float64)
    rms = float(np.sqrt(np.dot(seg, seg) / (hi - lo)))
    return max(_LEVEL_FLOOR_DBFS, 20.0 * float(np.log10(max(rms, 1e-5))))


def frame_levels(samples: np.ndarray, num_frames: int, fps: float = 25.0, sample_rate: int = 16000) -> np.ndarray:
    """``[num_frames]`` float64: each frame's level (see the module docstring); ``samples`` ``[T]`` in [-1, 1]."""
    x = np.asarray(samples, dtype=np.float32).reshape(-1)
    half = max(1, int(round(WINDOW_S * sample_rate / 2)))
    return np.array([_level(x, int(round(k * sample_rate / fps)), half) for k in range(int(num_frames))],
                    dtype=np.float64)


class StreamingVoice:
    """Voice-activity weights of frames as audio arrives (equal to :func:`voice_activity` on the whole audio).

    >>> v = StreamingVoice()
    >>> for chunk in chunks:
    ...     weights = v.push(chunk)       # [n] for the frames now decided (n may be 0)
    >>> weights = v.finish(num_frames)    # the rest, up to num_frames in all
    """

    def __init__(self, fps: float = 25.0, sample_rate: int = 16000) -> None:
        if sample_rate % fps:
            raise ValueError(f"StreamingVoice needs a whole number of samples per frame, got {sample_rate}/{fps}")
        self.step = int(sample_rate // fps)
        self.half = max(1, int(round(WINDOW_S * sample_rate / 2)))
        self._buf = np.zeros(0, np.float32)
        self._base = 0  # sample index of _buf[0]
        self._next_level = 0  # next frame whose level is not computed
        self._reference = REFERENCE_FLOOR_DBFS
        self._s: list = []  # s of the frames whose weight is not given yet
        self._prev_s = 0.0  # s of the frame before them
        self._emitted = 0

    def _speech(self, level: float) -> float:
        self._reference = max(self._reference, level)
        return float(np.clip((level - (self._reference - BELOW_DB)) / RAMP_DB, 0.0, 1.0))

    def _levels(self, final: bool, num_frames: int = 0) -> None:
        """Compute the levels (and ``s``) of the frames whose audio is all here (``final``: of all ``num_frames``)."""
        while True:
            centre = self._next_level * self.step
            if (self._next_level >= num_frames) if final else (centre + self.half > self._base + self._buf.size):
                return
            lo = max(0, centre - self.half)
            # a frame near the end reads the samples that exist, as frame_levels does
            seg = self._buf[lo - self._base: centre + self.half - self._base]
            self._s.append(self._speech(_level(seg, centre - lo, self.half)))
            self._next_level += 1

    def _weights(self, final: bool) -> np.ndarray:
        """The weights of the frames whose ``s`` and next frame's ``s`` are known (``final``: of all)."""
        out = []
        while self._s and (len(self._s) >= 2 or final):
            nxt = self._s[1] if len(self._s) >= 2 else self._s[0]
            out.append(max(self._prev_s, self._s[0], nxt))
            self._prev_s = self._s.pop(0)
        self._emitted += len(out)
        return np.asarray(out, np.float64)

    def push(self, chunk: np.ndarray) -> np.ndarray:
        """Add ``[t]`` float samples; the weights of the frames now decided, in order."""
        x = np.asarray(chunk, dtype=np.float32).reshape(-1)
        if x.size:
            self._buf = np.concatenate([self._buf, x])
        self._levels(False)
        # keep the samples the next frame's window still reads
        drop = min(self._buf.size, max(0, self._next_level * self.step - self.half - self._base))
        if drop:
            self._buf, self._base = self._buf[drop:], self._base + drop
        return self._weights(False)

    def finish(self, num_frames: int) -> np.ndarray:
        """The weights of the remaining frames, ``num_frames`` in all (frames past the audio read what exists)."""
        before = self._emitted
        self._levels(True, int(num_frames))
        return self._weights(True)[: max(0, int(num_frames) - before)]


def voice_activity(samples: np.ndarray, num_frames: int, fps: float = 25.0, sample_rate: int = 16000) -> np.ndarray:
    """``[num_frames]`` float64 in [0, 1]: each frame's voice-activity weight (the module docstring), 1 = speech."""
    v = StreamingVoice(fps, sample_rate)
    head = v.push(np.asarray(samples, dtype=np.float32).reshape(-1))
    return np.concatenate([head, v.finish(num_frames)])[: int(num_frames)]
