"""Shared helpers for the audio tests: real data location, generated media, a tiny DeepSpeech graph."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path
from typing import Sequence

import numpy as np
import pytest

from gaussiantalker.media import run_ffmpeg

REPO = Path(__file__).resolve().parents[1]
# Same location rule as tests/conftest.py: $GT_SHARED_DATA, else ../shared/data beside the repository.
SHARED_DATA = Path(os.environ.get("GT_SHARED_DATA", REPO.parent / "shared" / "data"))


def shared_files(sub: str, pattern: str = "*") -> list:
    """Files of ``../shared/data/<sub>``; the calling test skips when the folder is absent."""
    folder = SHARED_DATA / sub
    if not folder.is_dir():
        pytest.skip(f"real test data absent: {folder} (see shared/data/README.md)")
    files = sorted(p for p in folder.glob(pattern) if p.is_file())
    if not files:
        pytest.skip(f"no files matching {pattern} in {folder}")
    return files


def generate(path: Path, args: Sequence[str]) -> Path:
    """Make a media file with ffmpeg's lavfi sources: ``args`` go between ``-y`` and the output path."""
    run_ffmpeg(["-v", "error", "-y", *args, str(path)], path=path)
    return path


def tone_args(seconds: float = 1.0, freq: float = 440.0, rate: int = 44100, channels: int = 2) -> list:
    """lavfi input for a sine tone of amplitude 0.5 (computed in double precision) in ``channels``
    identical channels."""
    expr = "|".join([f"0.5*sin(2*PI*{freq}*t)"] * channels)
    return ["-f", "lavfi", "-i", f"aevalsrc={expr}:s={rate}:d={seconds}"]


def dominant_frequency(audio: np.ndarray, sample_rate: int = 16000) -> float:
    spectrum = np.abs(np.fft.rfft(audio * np.hanning(audio.size)))
    return float(np.argmax(spectrum) * sample_rate / audio.size)


def subprocess_env() -> dict:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(REPO), env.get("PYTHONPATH", "")) if p)
    return env


def run_python(code: str, timeout: float = 300) -> subprocess.CompletedProcess:
    """Run ``code`` in a fresh interpreter (same venv) with the repository importable."""
    return subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=timeout, env=subprocess_env()
    )


def tensorflow():
    """TensorFlow imported the safe way (torchvision first), or skip when it is not installed.

    Tests must never ``import tensorflow`` directly: a later ``import torchvision`` in the same pytest
    process would segfault.
    """
    import importlib.util

    # Not pytest.importorskip: that would import tensorflow itself, before torchvision.
    if importlib.util.find_spec("tensorflow") is None:
        pytest.skip("TensorFlow not installed (pip install gaussiantalker[deepspeech])")
    from gaussiantalker.audio._tf_graph import import_tensorflow

    try:
        return import_tensorflow()
    except ImportError as exc:  # installed but broken (e.g. a protobuf mismatch): say so, do not fail
        pytest.skip(f"TensorFlow cannot be imported: {exc.__cause__ or exc}")


def build_tiny_deepspeech_graph(
    path: Path, names: Sequence[str] = ("input_node", "input_lengths", "logits"), seed: int = 0, symbols: int = 29
) -> Path:
    """Freeze a small graph with DeepSpeech 0.1.0's interface to ``path``.

    ``input_node`` ``[1, T, 494]`` float32 and ``input_lengths`` ``[1]`` int32 in, time-major ``logits``
    ``[T, 1, symbols]`` out. The body mixes neighbouring steps (a time convolution) so that the output
    depends on context as the real bidirectional RNN does, and masks by ``input_lengths`` as it does.
    """
    tf = tensorflow()
    rng = np.random.default_rng(seed)
    w_in = rng.normal(0.0, 0.05, (494, 64)).astype(np.float32)
    w_time = rng.normal(0.0, 0.2, (3, 64, symbols)).astype(np.float32)
    bias = rng.normal(0.0, 0.1, (symbols,)).astype(np.float32)
    graph = tf.Graph()
    with graph.as_default():
        x = tf.compat.v1.placeholder(tf.float32, [1, None, 494], name=names[0])
        lengths = tf.compat.v1.placeholder(tf.int32, [None], name=names[1])
        v_in = tf.compat.v1.Variable(w_in)
        v_time = tf.compat.v1.Variable(w_time)
        hidden = tf.nn.relu(tf.einsum("btd,dh->bth", x, v_in))  # [1, T, 64]
        mixed = tf.nn.conv1d(hidden, v_time, stride=1, padding="SAME") + bias  # [1, T, C]
        mask = tf.sequence_mask(lengths, tf.shape(x)[1], dtype=tf.float32)[..., None]
        tf.transpose(mixed * mask, [1, 0, 2], name=names[2])  # [T, 1, C]
        with tf.compat.v1.Session(graph=graph) as sess:
            sess.run(tf.compat.v1.global_variables_initializer())
            frozen = tf.compat.v1.graph_util.convert_variables_to_constants(sess, graph.as_graph_def(), [names[2]])
    path.write_bytes(frozen.SerializeToString())
    return path


def run_graph_directly(graph_path: Path, x: np.ndarray) -> np.ndarray:
    """The reference computation: import the frozen graph and run one session, as the original does."""
    tf = tensorflow()
    graph_def = tf.compat.v1.GraphDef()
    graph_def.ParseFromString(graph_path.read_bytes())
    graph = tf.Graph()
    with graph.as_default():
        tf.compat.v1.import_graph_def(graph_def, name="deepspeech")
    with tf.compat.v1.Session(graph=graph) as sess:
        out = sess.run(
            graph.get_tensor_by_name("deepspeech/logits:0"),
            feed_dict={
                graph.get_tensor_by_name("deepspeech/input_node:0"): x[np.newaxis, ...],
                graph.get_tensor_by_name("deepspeech/input_lengths:0"): [x.shape[0]],
            },
        )
    return out  # [T, 1, C]


def original_deepspeech_windows(audio: np.ndarray, graph_path: Path) -> np.ndarray:
    """The original extract_ds_features pipeline, written out step by step from the reference (§2.2)."""
    from python_speech_features import mfcc

    signal = np.clip(audio.astype(np.float64) * 32768.0, -32768, 32767).astype(np.int16)
    feats = mfcc(signal, samplerate=16000, numcep=26)[::2]  # [T, 26]
    steps = len(feats)
    padded = np.concatenate([np.zeros((9, 26)), feats, np.zeros((9, 26))])
    x = np.stack([padded[t : t + 19].reshape(-1) for t in range(steps)])  # [T, 494]
    x = (x - np.mean(x)) / np.std(x)
    logits = run_graph_directly(graph_path, x.astype(np.float32))[:, 0, :]  # [T, 29]
    n50 = int(round(audio.size / 16000 * 50))
    t_in = np.arange(steps) / 50.0
    t_out = np.arange(n50) / 50.0
    rows = np.stack([np.interp(t_out, t_in, logits[:, c]) for c in range(logits.shape[1])], 1)
    rows = np.stack([rows[i : i + 1] for i in range(0, n50 - 1)]).reshape(-1, logits.shape[1])  # last row dropped
    rows = np.concatenate([np.zeros((8, rows.shape[1])), rows, np.zeros((8, rows.shape[1]))])
    return np.stack([rows[i : i + 16] for i in range(0, rows.shape[0] - 16, 2)])  # [M, 16, 29]


def speech_like(seconds: float, seed: int = 0, sample_rate: int = 16000) -> np.ndarray:
    """Deterministic speech-like test audio: syllable-rate amplitude bursts of harmonic tones and noise."""
    rng = np.random.default_rng(seed)
    t = np.arange(int(seconds * sample_rate)) / sample_rate
    f0 = 110 + 30 * np.sin(2 * np.pi * 0.7 * t)
    phase = 2 * np.pi * np.cumsum(f0) / sample_rate
    voiced = sum(np.sin(k * phase) / k for k in range(1, 8))
    envelope = np.clip(np.sin(2 * np.pi * 4.0 * t + rng.uniform(0, 6)), 0, None) ** 2
    noise = rng.normal(0, 0.05, t.size)
    return (0.2 * envelope * voiced + 0.02 * noise).astype(np.float32)
