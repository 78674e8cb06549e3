"""Audio front-end speed on CPU: real-time factor of each extractor on a generated 60 s file.

    python benchmarks/audio.py [--seconds 60] [--assets DIR] [--out benchmarks/results/audio.json]

Real-time factor (RTF) = seconds of compute per second of audio (lower is faster); "x real time" is
its inverse. Target: mfcc faster than 50x real time. The deepspeech and hubert rows use small stand-in
models built here (a 64-unit graph with DeepSpeech's interface; a 2-layer, 32-wide HubertModel), so
they time the pipeline around the model, not the real models; when the real files are in the asset
folder they are timed too. Everything runs on CPU; the first call of a kind (TensorFlow import, graph
load) is timed separately from the steady-state run.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from gaussiantalker.audio import StreamingFeatures, extract_features, get_extractor, load_audio, write_wav  # noqa: E402
from gaussiantalker.media import run_ffmpeg  # noqa: E402

MFCC_TARGET = 50.0


def speech_like(seconds: float, seed: int = 0) -> np.ndarray:
    """Syllable-rate bursts of a harmonic tone with a gliding pitch, plus a little noise."""
    rng = np.random.default_rng(seed)
    t = np.arange(int(seconds * 16000)) / 16000
    phase = 2 * np.pi * np.cumsum(110 + 30 * np.sin(2 * np.pi * 0.7 * t)) / 16000
    voiced = sum(np.sin(k * phase) / k for k in range(1, 8))
    envelope = np.clip(np.sin(2 * np.pi * 4.0 * t), 0, None) ** 2
    return (0.2 * envelope * voiced + 0.02 * rng.normal(0, 1, t.size)).astype(np.float32)


def timed(fn, repeats: int = 1):
    best, result = float("inf"), None
    for _ in range(repeats):
        start = time.perf_counter()
        result = fn()
        best = min(best, time.perf_counter() - start)
    return best, result


def stand_in_deepspeech_graph(path: Path) -> Path:
    """A frozen graph with DeepSpeech 0.1.0's tensor names and shapes (64 hidden units, random)."""
    from gaussiantalker.audio._tf_graph import import_tensorflow

    tf = import_tensorflow()
    rng = np.random.default_rng(0)
    graph = tf.Graph()
    with graph.as_default():
        x = tf.compat.v1.placeholder(tf.float32, [1, None, 494], name="input_node")
        lengths = tf.compat.v1.placeholder(tf.int32, [None], name="input_lengths")
        w_in = tf.constant(rng.normal(0, 0.05, (494, 64)).astype(np.float32))
        hidden = tf.nn.relu(tf.einsum("btd,dh->bth", x, w_in))  # [1, T, 64]
        out = tf.nn.conv1d(hidden, tf.constant(rng.normal(0, 0.2, (3, 64, 29)).astype(np.float32)), 1, "SAME")
        mask = tf.sequence_mask(lengths, tf.shape(x)[1], dtype=tf.float32)[..., None]
        tf.transpose(out * mask, [1, 0, 2], name="logits")
    path.write_bytes(graph.as_graph_def().SerializeToString())
    return path


def stand_in_hubert(folder: Path) -> Path:
    import torch
    from transformers import HubertConfig, HubertModel

    torch.manual_seed(0)
    config = HubertConfig(
        hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64, conv_dim=(16,) * 7,
        num_conv_pos_embeddings=16, num_conv_pos_embedding_groups=2, feat_extract_norm="layer",
        do_stable_layer_norm=True,
    )
    HubertModel(config).save_pretrained(folder)
    return folder


def row(name: str, seconds: float, audio_s: float, note: str = "") -> dict:
    return {
        "name": name,
        "seconds": round(seconds, 4),
        "rtf": round(seconds / audio_s, 5),
        "x_realtime": round(audio_s / seconds, 1) if seconds > 0 else None,
        "note": note,
    }


def run(seconds: float, assets, work: Path) -> list:
    audio = speech_like(seconds)
    wav = write_wav(work / "speech.wav", audio)
    m4a = work / "speech.m4a"
    run_ffmpeg(["-v", "error", "-y", "-i", str(wav), "-ar", "44100", "-ac", "2", "-c:a", "aac", str(m4a)], path=m4a)
    results = []
    t, _ = timed(lambda: load_audio(m4a), repeats=3)
    results.append(row("load_audio (m4a 44.1 kHz stereo -> 16 kHz mono)", t, seconds))
    t, _ = timed(lambda: extract_features(audio, kind="mfcc"), repeats=3)
    results.append(row("mfcc offline", t, seconds, f"target > {MFCC_TARGET:.0f}x real time"))

    def stream_mfcc():
        stream = StreamingFeatures("mfcc")
        for i in range(0, audio.size, 320):
            stream.push(audio[i : i + 320])
        stream.finish()

    t, _ = timed(stream_mfcc)
    results.append(row("mfcc streaming, 20 ms chunks", t, seconds))

    import importlib.util

    if importlib.util.find_spec("tensorflow") is not None:
        from gaussiantalker.audio._tf_graph import import_tensorflow

        t_import, _ = timed(import_tensorflow)
        results.append(row("TensorFlow import (torchvision first)", t_import, 1.0, "one-off, per process"))
        graph = stand_in_deepspeech_graph(work / "stand_in_deepspeech.pb")
        t_first, _ = timed(lambda: extract_features(audio[:16000], kind="deepspeech", model_path=graph))
        results.append(row("deepspeech first call (graph load + session, 1 s audio)", t_first, 1.0, "one-off"))
        t, _ = timed(lambda: extract_features(audio, kind="deepspeech", model_path=graph))
        results.append(row("deepspeech offline, stand-in graph", t, seconds, "report only: tiny stand-in graph"))
        try:
            get_extractor("deepspeech", assets)
        except FileNotFoundError:
            results.append({"name": "deepspeech offline, real v0.1.0 graph", "note": "graph not in the asset folder"})
        else:
            t, _ = timed(lambda: extract_features(audio, kind="deepspeech", assets=assets))
            results.append(row("deepspeech offline, real v0.1.0 graph", t, seconds, "report only"))
    else:
        results.append({"name": "deepspeech", "note": "TensorFlow not installed"})

    if importlib.util.find_spec("transformers") is not None:
        folder = stand_in_hubert(work / "hubert")
        t_first, _ = timed(lambda: extract_features(audio[:16000], kind="hubert", model_path=folder, device="cpu"))
        results.append(row("hubert first call (model load, 1 s audio)", t_first, 1.0, "one-off"))
        import torch

        threads = torch.get_num_threads()
        t, _ = timed(lambda: extract_features(audio, kind="hubert", model_path=folder, device="cpu"))
        note = f"report only: 2 layers, width 32; torch threads {threads}"
        results.append(row("hubert offline, tiny random model", t, seconds, note))
        # Tiny ops make torch's intra-op thread pool pure overhead on a busy machine: show the difference.
        torch.set_num_threads(1)
        try:
            t, _ = timed(lambda: extract_features(audio, kind="hubert", model_path=folder, device="cpu"))
        finally:
            torch.set_num_threads(threads)
        results.append(row("hubert offline, tiny random model, 1 torch thread", t, seconds, "report only"))
        try:
            get_extractor("hubert", assets, device="cpu")
        except FileNotFoundError:
            missing = "no hubert-large-ls960-ft folder in the asset folder"
            results.append({"name": "hubert offline, real model", "note": missing})
        else:
            t, _ = timed(lambda: extract_features(audio, kind="hubert", assets=assets, device="cpu"))
            results.append(row("hubert offline, real model (CPU)", t, seconds, "report only"))
    else:
        results.append({"name": "hubert", "note": "transformers not installed"})
    return results


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=60.0, help="length of the generated audio")
    parser.add_argument("--assets", default=None, help="asset folder with real model files (optional)")
    parser.add_argument("--out", default=str(REPO / "benchmarks" / "results" / "audio.json"))
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        results = run(args.seconds, args.assets, Path(tmp))
    print(f"{'extractor':60s} {'seconds':>9s} {'RTF':>9s} {'x real time':>12s}  note")
    # one-off rows are timed on 1 s of audio, so their RTF column is just their seconds
    for r in results:
        if "seconds" in r:
            print(f"{r['name']:60s} {r['seconds']:9.3f} {r['rtf']:9.5f} {r['x_realtime']:12.1f}  {r['note']}")
        else:
            print(f"{r['name']:60s} {'-':>9s} {'-':>9s} {'-':>12s}  {r['note']}")
    mfcc = next(r for r in results if r["name"] == "mfcc offline")
    passed = mfcc["x_realtime"] > MFCC_TARGET
    print(f"\nmfcc: {mfcc['x_realtime']:.1f}x real time (target > {MFCC_TARGET:.0f}x): {'PASS' if passed else 'FAIL'}")
    report = {
        "benchmark": "audio",
        "audio_seconds": args.seconds,
        "device": "cpu",
        "cpu_count": os.cpu_count(),
        "machine": platform.platform(),
        "python": platform.python_version(),
        "results": results,
        "mfcc_target_x_realtime": MFCC_TARGET,
        "mfcc_pass": passed,
    }
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(report, indent=2))
    print(f"wrote {out}")
    return 0 if passed else 1


if __name__ == "__main__":
    sys.exit(main())
