"""Frame-aligned speech features: one interface over the kinds, their files, and ``auto``.

>>> feats = extract_features("speech.wav")           # kind="auto": deepspeech if its graph is present
>>> feats.windows.shape                              # [F, 16, D], F = round(duration * 25)
"""

from __future__ import annotations

import importlib.util
import logging
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Dict, Optional, Tuple, Union

import numpy as np

from ..assets import asset_dir, find_asset
from .base import Extractor
from .io import SAMPLE_RATE, load_audio
from .windows import ROW_RATE, WINDOW, check_windows, frame_count, make_windows

log = logging.getLogger(__name__)

PathLike = Union[str, os.PathLike]
AudioInput = Union[PathLike, np.ndarray]

__all__ = [
    "AudioFeatures",
    "FeatureKind",
    "KINDS",
    "MFCC_KINDS",
    "energy_column",
    "extract_features",
    "feature_filename",
    "fixed_dim",
    "get_extractor",
    "load_features",
    "register_kind",
    "resolve_kind",
    "save_features",
]


@dataclass
class AudioFeatures:
    """Per-video-frame speech feature windows."""

    windows: np.ndarray
    """``[F, 16, D]`` float32: window ``j`` is 16 rows at 50 Hz, row 8 at the time ``j / fps`` of frame ``j``."""
    kind: str
    """``"deepspeech"``, ``"mfcc"``, ``"hubert"`` (or a registered kind)."""
    fps: float
    """Video frame rate the windows are aligned to."""
    source: str = ""
    """What produced them (graph file and checksum state, model folder, library version)."""
    duration: Optional[float] = None
    """Seconds of audio they were made from, when known."""

    def __post_init__(self) -> None:
        self.windows = check_windows(self.windows, "AudioFeatures.windows").astype(np.float32, copy=False)

    @property
    def dim(self) -> int:
        """Feature dimension D (29 for deepspeech, 26 for mfcc, the hidden size for hubert)."""
        return int(self.windows.shape[2])

    @property
    def num_frames(self) -> int:
        return int(self.windows.shape[0])

    @property
    def filename(self) -> str:
        """File name in a dataset folder (``aud_ds.npy`` for deepspeech, as the original datasets)."""
        return feature_filename(self.kind)

    def meta(self) -> dict:
        """The fragment preprocessing writes into the dataset's ``meta.json`` (plain JSON values)."""
        return {
            "audio_features": {
                "kind": self.kind,
                "dim": self.dim,
                "file": self.filename,
                "fps": self.fps,
                "frames": self.num_frames,
                "rows_per_second": ROW_RATE,
                "window": WINDOW,
                "source": self.source,
            }
        }


@dataclass(frozen=True)
class FeatureKind:
    """A registered feature kind."""

    name: str
    filename: str
    """File name in a dataset folder."""
    description: str
    make: Callable[..., Extractor]
    """``make(assets, model_path, device) -> Extractor``; raises FileNotFoundError when its file is absent."""
    needs_file: bool = False
    """Whether ``make`` needs a user-provided file (so ``auto`` checks for it)."""
    dim: Optional[int] = None
    """The row width D of every file of this kind, or None where it depends on the model (hubert)."""


KINDS: Dict[str, FeatureKind] = {}
MFCC_KINDS = frozenset({"mfcc", "phonetic"})
"""Kinds whose rows start with the 26 ``mfcc`` values (c0, the log energy, first)."""


def energy_column(kind: str) -> Optional[int]:
    """The column of a kind's rows that holds the log energy (0 for the MFCC kinds), or None."""
    return 0 if kind in MFCC_KINDS else None


def fixed_dim(kind: str) -> Optional[int]:
    """The row width every file of a registered ``kind`` has (deepspeech 29, mfcc 26, phonetic 32), or None (an
    unknown kind, or one whose width depends on its model)."""
    k = KINDS.get(kind)
    return None if k is None else k.dim


def register_kind(kind: FeatureKind) -> None:
    """Add (or replace) a feature kind."""
    KINDS[kind.name] = kind


def _make_mfcc(assets, model_path, device) -> Extractor:
    from .mfcc import MfccExtractor

    return MfccExtractor()


def _make_phonetic(assets, model_path, device) -> Extractor:
    from .phonetic import PhoneticExtractor

    return PhoneticExtractor()


def _make_deepspeech(assets, model_path, device) -> Extractor:
    from .deepspeech import DeepSpeechExtractor, find_graph

    return DeepSpeechExtractor(find_graph(assets, model_path))


def _make_hubert(assets, model_path, device) -> Extractor:
    from .hubert import HubertExtractor, find_hubert

    return HubertExtractor(find_hubert(assets, model_path), device=device)


register_kind(
    FeatureKind("deepspeech", "aud_ds.npy", "DeepSpeech v0.1.0 logits (TensorFlow), D=29", _make_deepspeech, True,
                dim=29)
)
register_kind(FeatureKind("mfcc", "aud_mfcc.npy", "MFCC, no weights, D=26", _make_mfcc, dim=26))
register_kind(FeatureKind("phonetic", "aud_phonetic.npy",
                          "MFCC + articulation of the recognised phone (pocketsphinx), D=32", _make_phonetic, dim=32))
register_kind(
    FeatureKind("hubert", "aud_hubert.npy", "HuBERT last hidden state (transformers), D=hidden", _make_hubert, True)
)


def feature_filename(kind: str) -> str:
    """Dataset file name for ``kind``: ``aud_ds.npy``, ``aud_mfcc.npy`` or ``aud_hubert.npy``."""
    if kind not in KINDS:
        raise ValueError(f"unknown audio feature kind {kind!r}; known: {sorted(KINDS)}")
    return KINDS[kind].filename


_AUTO_LOGGED: set = set()


def resolve_kind(kind: str = "auto", assets: Optional[PathLike] = None, model_path: Optional[PathLike] = None) -> str:
    """The kind ``kind`` stands for: ``auto`` is deepspeech when its graph is present, else phonetic (mfcc when
    pocketsphinx cannot be imported).

    The choice made by ``auto`` is logged once per process and asset folder.
    """
    if kind != "auto":
        if kind not in KINDS:
            raise ValueError(f"unknown audio feature kind {kind!r}; use 'auto' or one of {sorted(KINDS)}")
        return kind
    from .deepspeech import GRAPH_FILENAME

    if model_path is not None or find_asset(GRAPH_FILENAME, assets) is not None:
        chosen = "deepspeech"
    else:
        chosen = "phonetic" if importlib.util.find_spec("pocketsphinx") is not None else "mfcc"
    key = (chosen, str(asset_dir(assets)))
    if key not in _AUTO_LOGGED:
        _AUTO_LOGGED.add(key)
        if chosen != "deepspeech":
            log.warning(
                "audio features: %s not found in %s, using the offline '%s' features%s "
                "(place the graph there for DeepSpeech features)", GRAPH_FILENAME, asset_dir(assets), chosen,
                "" if chosen == "phonetic" else " (pocketsphinx, which the 'phonetic' features need, is not installed)"
            )
        else:
            log.info("audio features: using DeepSpeech (%s)", model_path or asset_dir(assets))
    return chosen


_EXTRACTORS: Dict[Tuple[str, str, str, str], Extractor] = {}


def get_extractor(
    kind: str = "auto", assets: Optional[PathLike] = None, model_path: Optional[PathLike] = None, device=None
) -> Extractor:
    """The (cached) extractor of ``kind``; models load once per process.

    Raises:
        ValueError: unknown kind.
        FileNotFoundError: the kind's model file is absent; the message says where to place it.
        ImportError: its optional dependency is missing; the message says what to install.
    """
    name = resolve_kind(kind, assets, model_path)
    key = (name, str(asset_dir(assets)), str(model_path), str(device))
    ext = _EXTRACTORS.get(key)
    if ext is None:
        ext = KINDS[name].make(assets, model_path, device)
        _EXTRACTORS[key] = ext
    return ext


def _as_audio(audio_or_path: AudioInput, sample_rate: int) -> np.ndarray:
    if isinstance(audio_or_path, (str, os.PathLike)):
        return load_audio(audio_or_path, SAMPLE_RATE)
    audio = np.asarray(audio_or_path, dtype=np.float32)
    if audio.ndim != 1:
        raise ValueError(f"audio must be [T] mono samples, got shape {tuple(audio.shape)}")
    if audio.size == 0:
        raise ValueError("audio is empty (0 samples)")
    if not np.all(np.isfinite(audio)):
        raise ValueError("audio contains NaN or infinite samples")
    if sample_rate != SAMPLE_RATE:
        from math import gcd

        from scipy.signal import resample_poly

        g = gcd(int(sample_rate), SAMPLE_RATE)
        audio = resample_poly(audio, SAMPLE_RATE // g, int(sample_rate) // g).astype(np.float32)
    return audio


def extract_features(
    audio_or_path: AudioInput,
    kind: Union[str, Extractor] = "auto",
    fps: float = 25.0,
    assets: Optional[PathLike] = None,
    *,
    sample_rate: int = SAMPLE_RATE,
    num_frames: Optional[int] = None,
    model_path: Optional[PathLike] = None,
    device=None,
) -> AudioFeatures:
    """Speech feature windows for every video frame of an utterance.

    Args:
        audio_or_path: a media file (any format :func:`load_audio` reads), or ``[T]`` float samples.
        kind: ``"auto"``, ``"deepspeech"``, ``"mfcc"``, ``"hubert"``, or an :class:`Extractor` instance.
        fps: video frame rate the windows align to.
        assets: asset folder to look for model files in (default ``$GAUSSIANTALKER_HOME``).
        sample_rate: rate of ``audio_or_path`` when it is an array (resampled to 16 kHz).
        num_frames: number of windows; default ``round(duration * fps)``. Preprocessing passes the count of
            extracted video frames so the two always agree; windows past the audio read zeros.
        model_path: explicit DeepSpeech graph file or HuBERT folder instead of the asset folder's.
        device: torch device for HuBERT (default: first GPU, else CPU).

    Returns:
        :class:`AudioFeatures` with ``windows`` ``[F, 16, D]`` float32.

    Raises:
        ValueError: bad kind, fps, num_frames or audio array.
        FileNotFoundError / MediaError: the audio cannot be read (see :func:`load_audio`), or the kind's
            model file is absent.
        ImportError: the kind's optional dependency is not installed.
    """
    audio = _as_audio(audio_or_path, sample_rate)  # [T] at 16 kHz
    ext = kind if isinstance(kind, Extractor) else get_extractor(kind, assets, model_path, device)
    duration = audio.size / SAMPLE_RATE
    if num_frames is None:
        num_frames = frame_count(duration, fps)
    elif int(num_frames) != num_frames or num_frames < 0:
        raise ValueError(f"num_frames must be a non-negative integer, got {num_frames!r}")
    rows = ext.rows(audio)  # [N, D]
    windows = make_windows(rows, int(num_frames), fps)  # [F, 16, D]
    return AudioFeatures(windows=windows, kind=ext.kind, fps=float(fps), source=ext.source, duration=duration)


def save_features(features: AudioFeatures, dataset_dir: PathLike) -> Path:
    """Write ``features.windows`` to ``<dataset_dir>/<feature_filename(kind)>`` (float32 ``[F,16,D]``)."""
    folder = Path(dataset_dir)
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / feature_filename(features.kind)
    np.save(path, np.ascontiguousarray(features.windows, dtype=np.float32))
    return path


def load_features(path_or_dir: PathLike, kind: Optional[str] = None, fps: float = 25.0) -> AudioFeatures:
    """Read windows written by :func:`save_features` or by the original preprocessing.

    Args:
        path_or_dir: an ``aud_*.npy`` file, or a dataset folder (then ``kind`` picks the file; without it
            the only ``aud_*.npy`` of a known kind present).
        kind: expected kind; default from the file name.
        fps: frame rate the windows were made for (not stored in the file).

    Raises:
        FileNotFoundError: no such file, or no (or several) candidate files in the folder.
        ValueError: the array is not ``[F, 16, D]``, or its D contradicts the kind (:func:`fixed_dim`).
    """
    p = Path(path_or_dir)
    by_file = {k.filename: k.name for k in KINDS.values()}
    if p.is_dir():
        names = [feature_filename(kind)] if kind else [f for f in by_file if (p / f).is_file()]
        names = [n for n in names if (p / n).is_file()]
        if len(names) != 1:
            what = "none" if not names else ", ".join(names)
            raise FileNotFoundError(f"{p}: expected one audio feature file ({', '.join(by_file)}), found {what}")
        p = p / names[0]
    if not p.is_file():
        raise FileNotFoundError(f"audio feature file {p} does not exist")
    kind = kind or by_file.get(p.name)
    if kind is None:
        raise ValueError(f"{p}: cannot tell the feature kind from the file name; pass kind=")
    windows = check_windows(np.load(p, allow_pickle=False), str(p))
    dim = fixed_dim(kind)
    if dim is not None and windows.shape[2] != dim:
        raise ValueError(f"{p}: {kind} windows have D={dim}, this file has D={windows.shape[2]}")
    return AudioFeatures(windows=windows, kind=kind, fps=float(fps), source=str(p))
