"""``deepspeech`` features: the DeepSpeech v0.1.0 frozen graph, exactly as the original preprocessing.

What trained GaussianTalker models expect (reference §2.2), reproduced here:

1. 16-bit samples (``int16`` cast), ``python_speech_features.mfcc(numcep=26)`` with its defaults
   (25 ms window, 10 ms step, 26 filters, nfft 512, pre-emphasis 0.97, lifter 22, energy as c0): 100 Hz.
2. Every second row (50 Hz, ``T`` steps); 9 zero rows of context each side; each step's 19 x 26 context
   flattened to 494 values; the whole ``[T, 494]`` matrix standardised with one mean and one std.
3. The graph (imported under ``deepspeech/``) is fed ``input_node`` ``[1, T, 494]`` and
   ``input_lengths`` ``[T]`` and gives time-major ``logits`` ``[T, 1, 29]``.
4. Logits interpolated per channel onto ``round(d * 50)`` timestamps at 50 Hz, then, as the original's
   size-1 inner window does, the last row dropped.
5. Windows: :func:`gaussiantalker.audio.windows.make_windows` (at 25 fps, rows ``[2j-8, 2j+8)``).

The graph file is looked up in the asset folder under its original name and its SHA-1 is checked, as
the original does; a graph passed by path under another name is not checked (a warning says so), which
lets people use re-exported or test graphs.

Streaming: DeepSpeech 0.1.0 is a bidirectional RNN fed with per-utterance-normalised input, so no
finite look-ahead reproduces the offline logits. :class:`~gaussiantalker.audio.StreamingFeatures`
runs it on blocks of 1 s with 1 s of context on each side, each block standardised on its own: close
to, but not equal to, the offline features (``exact_streaming = False``).
"""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Dict, Optional, Tuple, Union

import numpy as np

from ..assets import asset_dir, file_digest, find_asset
from ._tf_graph import DeepSpeechGraphError
from .base import BlockPlan, Extractor
from .windows import ROW_RATE

log = logging.getLogger(__name__)

PathLike = Union[str, os.PathLike]

GRAPH_FILENAME = "deepspeech-0_1_0-b90017e8.pb"
"""The file name the original code (and osmr/deepspeech_features) uses."""
GRAPH_SHA1 = "b90017e816572ddce84f5843f1fa21e6a377975e"
"""SHA-1 of the original graph file, checked by the original download code."""
NUM_CEPSTRUM = 26
NUM_CONTEXT = 9
INPUT_DIM = (2 * NUM_CONTEXT + 1) * NUM_CEPSTRUM  # 494
NUM_SYMBOLS = 29

__all__ = [
    "DeepSpeechExtractor",
    "DeepSpeechGraphError",
    "GRAPH_FILENAME",
    "GRAPH_SHA1",
    "deepspeech_input",
    "deepspeech_rows",
    "find_graph",
    "verify_graph",
]


def find_graph(assets: Optional[PathLike] = None, model_path: Optional[PathLike] = None) -> Path:
    """The DeepSpeech graph to use: ``model_path`` when given, else ``GRAPH_FILENAME`` in the asset folder.

    Raises:
        FileNotFoundError: no graph; the message says where to put it.
    """
    if model_path is not None:
        p = Path(model_path).expanduser()
        if not p.is_file():
            raise FileNotFoundError(f"DeepSpeech graph {p} does not exist")
        return p
    found = find_asset(GRAPH_FILENAME, assets)
    if found is None:
        raise FileNotFoundError(
            f"DeepSpeech graph not found: place {GRAPH_FILENAME} (SHA-1 {GRAPH_SHA1}, the v0.1.0 graph "
            f"released with osmr/deepspeech_features) in {asset_dir(assets)}, or use kind='mfcc'"
        )
    return found


_VERIFIED: Dict[Tuple[str, int, int], str] = {}


def verify_graph(path: PathLike) -> str:
    """Check the graph file; returns a one-line description of what was checked.

    A file named ``GRAPH_FILENAME`` must have ``GRAPH_SHA1`` (the name promises the original graph, and a
    truncated download is the usual failure). Any other name is used unverified, with a warning, since
    trained models expect the original graph's logits.

    Raises:
        DeepSpeechGraphError: wrong SHA-1 for the original name.
    """
    p = Path(path)
    st = p.stat()
    key = (str(p.resolve()), st.st_size, st.st_mtime_ns)
    if key in _VERIFIED:
        return _VERIFIED[key]
    if p.name == GRAPH_FILENAME:
        digest = file_digest(p, "sha1")
        if digest != GRAPH_SHA1:
            raise DeepSpeechGraphError(
                f"{p} has SHA-1 {digest}, but the DeepSpeech v0.1.0 graph {GRAPH_FILENAME} has {GRAPH_SHA1}: "
                "the file is damaged or a different model; replace it (or pass another graph by path "
                "under a different name to use it unverified)"
            )
        note = f"{GRAPH_FILENAME} (SHA-1 verified)"
    else:
        log.warning(
            "DeepSpeech graph %s is used without a checksum (only %s is verified); models trained on "
            "the original graph's features will not understand another graph's", p, GRAPH_FILENAME
        )
        note = f"{p.name} (unverified graph)"
    _VERIFIED[key] = note
    return note


def deepspeech_input(audio: np.ndarray) -> np.ndarray:
    """The graph's input for an utterance (steps 1-2 above).

    Args:
        audio: ``[T]`` float samples at 16 kHz in [-1, 1].

    Returns:
        ``[T50, 494]`` float32 with ``T50 = ceil(n100 / 2)`` (``n100`` = python_speech_features frames).
    """
    from python_speech_features import mfcc

    # The original reads int16 samples and casts them to int16 again after any resampling.
    samples = np.clip(np.asarray(audio, dtype=np.float64) * 32768.0, -32768, 32767).astype(np.int16)
    feats = mfcc(samples, samplerate=16000, numcep=NUM_CEPSTRUM)  # [n100, 26]
    feats = feats[::2]  # [T50, 26]: the graph's BiRNN runs at half the MFCC rate
    steps = feats.shape[0]
    ctx = np.zeros((steps + 2 * NUM_CONTEXT, NUM_CEPSTRUM), feats.dtype)
    ctx[NUM_CONTEXT : NUM_CONTEXT + steps] = feats
    win = np.lib.stride_tricks.sliding_window_view(ctx, 2 * NUM_CONTEXT + 1, axis=0)  # [T50, 26, 19]
    x = win.transpose(0, 2, 1).reshape(steps, INPUT_DIM)  # [T50, 494], row-major over (context, cepstrum)
    # One mean and one std over the whole matrix, context zeros included, as the original.
    x = (x - x.mean()) / x.std()
    return x.astype(np.float32)


def deepspeech_rows(logits: np.ndarray, num_samples: int) -> np.ndarray:
    """Logits ``[T50, 29]`` -> the original's 50 Hz rows ``[round(d*50) - 1, 29]`` (step 4 above)."""
    n50 = int(round(num_samples / 16000.0 * ROW_RATE))
    if n50 <= 0 or logits.shape[0] == 0:
        return np.zeros((0, logits.shape[1]), np.float32)
    t_in = np.arange(logits.shape[0], dtype=np.float64) / ROW_RATE
    t_out = np.arange(n50, dtype=np.float64) / ROW_RATE
    rows = np.stack([np.interp(t_out, t_in, logits[:, c].astype(np.float64)) for c in range(logits.shape[1])], 1)
    return rows[:-1].astype(np.float32)  # [n50 - 1, 29]


class DeepSpeechExtractor(Extractor):
    """The ``deepspeech`` kind (D = 29). The graph loads on first use."""

    kind = "deepspeech"
    pad_front = 0  # the original's rows start their window at k/50 (not centred)
    exact_streaming = False

    def __init__(self, graph_path: PathLike, plan: Optional[BlockPlan] = None):
        self.graph_path = Path(graph_path)
        self.source = verify_graph(self.graph_path)
        self.dim = NUM_SYMBOLS
        self.plan = plan or BlockPlan(block=50, left=50, right=50)
        self._runner = None

    def _run(self, x: np.ndarray) -> np.ndarray:
        if self._runner is None:
            from ._tf_graph import open_graph

            self._runner = open_graph(self.graph_path)
        logits = self._runner(x)  # [T50, C]
        if logits.shape[1] != self.dim:
            raise DeepSpeechGraphError(
                f"{self.graph_path}: logits have {logits.shape[1]} symbols, DeepSpeech v0.1.0 has {self.dim}"
            )
        return logits

    def row_count(self, num_samples: int) -> int:
        return max(0, int(round(num_samples / 16000.0 * ROW_RATE)) - 1)

    def rows(self, audio: np.ndarray) -> np.ndarray:
        audio = np.asarray(audio, dtype=np.float32).reshape(-1)
        return deepspeech_rows(self._run(deepspeech_input(audio)), audio.size)

    def chunk_rows(self, chunk: np.ndarray) -> np.ndarray:
        # A chunk of HOP*(n-1)+400 samples gives exactly n steps at 50 Hz (2n-1 MFCC frames, every second).
        return self._run(deepspeech_input(chunk))
