"""Audio front end: any audio file in, frame-aligned speech feature windows out.

* :func:`load_audio` decodes any audio (or a video's audio track) to 16 kHz mono float32 ``[T]``.
* :func:`extract_features` gives :class:`AudioFeatures` with ``windows`` ``[F, 16, D]``, one window of 16
  rows at 50 Hz centred on each video frame; kinds ``deepspeech`` (D=29, the original's features),
  ``phonetic`` (D=32: MFCC + the recognised phone's articulation, the offline default), ``mfcc`` (D=26, no
  weights), ``hubert`` (D=hidden size) and ``auto``.
* :class:`StreamingFeatures` does the same as audio arrives.
* :func:`save_features` / :func:`load_features` read and write ``aud_ds.npy``, ``aud_mfcc.npy``, ``aud_phonetic.npy``,
  ``aud_hubert.npy`` in a dataset folder.

Importing this package does not import TensorFlow, transformers or torch. The alignment rule and
the TensorFlow safety measures are described in ``docs/audio.md``.
"""

from ._tf_graph import DeepSpeechGraphError
from .base import BlockPlan, Extractor
from .features import (
    KINDS,
    AudioFeatures,
    FeatureKind,
    extract_features,
    feature_filename,
    get_extractor,
    load_features,
    register_kind,
    resolve_kind,
    save_features,
)
from .io import SAMPLE_RATE, load_audio, write_wav
from .streaming import StreamingFeatures
from .windows import ROW_RATE, WINDOW, frame_count, make_windows

__all__ = [
    "KINDS",
    "ROW_RATE",
    "SAMPLE_RATE",
    "WINDOW",
    "AudioFeatures",
    "BlockPlan",
    "DeepSpeechGraphError",
    "Extractor",
    "FeatureKind",
    "StreamingFeatures",
    "extract_features",
    "feature_filename",
    "frame_count",
    "get_extractor",
    "load_audio",
    "load_features",
    "make_windows",
    "register_kind",
    "resolve_kind",
    "save_features",
    "write_wav",
]
