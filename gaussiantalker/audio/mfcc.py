"""``mfcc`` features: the offline default, no weights needed.

Each 50 Hz row is the MFCC vector DeepSpeech itself reads (python_speech_features, 26 filters, all 26
cepstra, energy in c0, lifter 22, pre-emphasis 0.97, 16-bit sample scale), with two differences that
make it a clean per-frame feature:

* the 25 ms analysis window of row ``k`` is *centred* on ``k / 50`` s (DeepSpeech's starts there);
* instead of DeepSpeech's per-utterance standardisation, a fixed per-coefficient standardisation
  (:data:`MFCC_MEAN`, :data:`MFCC_STD`), so a row depends only on its own 25 ms of audio and streaming
  equals offline. c0 (log energy) is floored at 0 so digital silence does not read as ``log(eps)`` = -36.

No deltas: the model's audio encoder sees 16 consecutive rows through 1-D convolutions, which can form
any difference of neighbouring rows themselves, so deltas would add inputs but no information.
D = 26.
"""

from __future__ import annotations

import numpy as np

from .base import BlockPlan, Extractor
from .windows import HOP

__all__ = ["MFCC_MEAN", "MFCC_PARAMS", "MFCC_STD", "MfccExtractor", "mfcc_rows"]

MFCC_PARAMS = dict(
    samplerate=16000,
    winlen=0.025,
    winstep=0.02,
    numcep=26,
    nfilt=26,
    nfft=512,
    lowfreq=0,
    highfreq=None,
    preemph=0.97,
    ceplifter=22,
    appendEnergy=True,
)
"""Arguments to ``python_speech_features.mfcc``: DeepSpeech's MFCC (reference §2.2) at a 20 ms step."""

# Mean and standard deviation of each coefficient over the speech of the eight public demo clips in
# shared/data (3563 rows, c0 floored), rounded. They only bring every input to unit scale; the exact
# values do not matter, but they are fixed forever: a model trained on these features depends on them.
MFCC_MEAN = np.array(
    [16.5, -3.19, -1.4, -2.38, -7.58, -14.5, -13.5, 0.259, -7.56, -2.36, -4.86, -7.25, -5.89,
     -4.28, -3.74, -3.73, -2.04, 0.0878, -1.88, -0.199, -0.473, -0.151, -0.0506, -0.0349, 0.0181, -0.0769],
    dtype=np.float64,
)
MFCC_STD = np.array(
    [3.83, 16.8, 14.2, 14.6, 12.9, 14.9, 15.2, 12.5, 13.9, 12.9, 11.3, 12.3, 10.3,
     9.64, 8.0, 7.44, 6.25, 5.21, 4.49, 2.99, 2.1, 1.26, 0.474, 0.274, 0.967, 1.31],
    dtype=np.float64,
)
ENERGY_FLOOR = 0.0
"""Lowest c0 (natural log of frame energy on the 16-bit scale)."""


def _mfcc_padded(padded: np.ndarray) -> np.ndarray:
    """Standardised MFCC rows of an already padded signal: ``[HOP*(n-1)+400]`` -> ``[n, 26]`` float32."""
    from python_speech_features import mfcc

    # float64 on the 16-bit scale, like DeepSpeech's int16 input, so log energies match its MFCC.
    feats = mfcc(padded.astype(np.float64) * 32768.0, **MFCC_PARAMS)  # [n, 26]
    feats[:, 0] = np.maximum(feats[:, 0], ENERGY_FLOOR)
    return ((feats - MFCC_MEAN) / MFCC_STD).astype(np.float32)


def mfcc_rows(audio: np.ndarray) -> np.ndarray:
    """``mfcc`` rows of a whole utterance.

    Args:
        audio: ``[T]`` float samples at 16 kHz in [-1, 1].

    Returns:
        ``[ceil(T / 320), 26]`` float32; row ``k`` is centred on ``k / 50`` s.
    """
    x = np.asarray(audio, dtype=np.float32).reshape(-1)
    n = -(-x.size // HOP)
    if n == 0:
        return np.zeros((0, 26), np.float32)
    # 200 zeros in front centre row k's 400-sample window on sample 320k; the length is cut so that
    # python_speech_features makes exactly n frames (it would pad a partial last frame itself).
    padded = np.zeros(HOP * (n - 1) + 400, np.float32)
    m = min(x.size, padded.size - 200)
    padded[200 : 200 + m] = x[:m]
    return _mfcc_padded(padded)


class MfccExtractor(Extractor):
    """The ``mfcc`` kind. Rows depend only on their own 25 ms, so streaming emits a row as soon as its
    window has arrived (12.5 ms after the row's time)."""

    kind = "mfcc"

    def __init__(self) -> None:
        self.dim = 26
        import python_speech_features

        version = getattr(python_speech_features, "__version__", "0.6")
        self.source = f"python_speech_features {version} MFCC, 26 cepstra at 50 Hz, fixed standardisation"
        # One row of left context: pre-emphasis reads the sample before each window, so the row just
        # before a chunk is computed and dropped to give every kept row its true predecessor sample.
        self.plan = BlockPlan(block=None, left=1, right=0)

    def rows(self, audio: np.ndarray) -> np.ndarray:
        return mfcc_rows(audio)

    def chunk_rows(self, chunk: np.ndarray) -> np.ndarray:
        return _mfcc_padded(np.asarray(chunk, dtype=np.float32))
