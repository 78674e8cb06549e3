"""Rendering speed: frames per second of ``render`` at 512x512 with ~35k Gaussians, per batch size, and the
share of time in features, data, deformation, rasterization and encoding; streaming latency.

    python benchmarks/render.py [--batch-sizes 1 32 128] [--frames 128] [--points 35000] [--size 512]
                                [--devices cpu cuda] [--out benchmarks/results/render.json]

The model is untrained (the canonical Gaussians of a synthetic dataset's point cloud, the default
``64_dim_1_transformer`` network with random deformation heads): its cost per frame is that of a trained
model of the same size. Frames come from ``Talker.render`` (features + pose schedule + deformation +
rasterizer + H.264/AAC encoding through ffmpeg), so the figures are end to end; the dataset and model
are built first and not timed. Streaming latency: ``Talker.stream`` fed 20 ms chunks as fast as it takes
them; latency of a frame = time from the arrival of the chunk that completed its audio to its yield
(compute latency), to which the algorithmic look-ahead (audio after the frame's time that must have
arrived, 0.2725 s for mfcc) adds.
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
import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

GOAL_CPU_FPS = 5.0


def build(root: Path, size: int, points: int, frames: int) -> Path:
    """A synthetic dataset at ``size`` and an untrained model folder on it; returns the model folder."""
    from gaussiantalker.config import load_config
    from gaussiantalker.data import TalkingHeadData
    from gaussiantalker.model.io import ModelInfo, save_iteration, save_model_info
    from gaussiantalker.model.talker import GaussianTalkerModel
    from gaussiantalker.synthetic import make_synthetic_dataset

    dataset = make_synthetic_dataset(root / "data" / "bench", num_frames=frames, size=size, num_points=points)
    torch.manual_seed(0)
    data = TalkingHeadData.open(dataset)
    cfg = load_config()
    xyz, rgb = data.point_cloud()
    model = GaussianTalkerModel.from_point_cloud(xyz, rgb, cfg, data.audio_dim)
    model.start_fine()
    with torch.no_grad():
        model.opacity.fill_(2.0)
        for seq in model.offset_heads.values():
            [m for m in seq.modules() if isinstance(m, torch.nn.Linear)][-1].weight.normal_(0.0, 0.002)
    out = root / "output" / "bench"
    save_iteration(out, 1, model)
    save_model_info(out, cfg, ModelInfo(audio_kind=data.audio_kind, audio_dim=data.audio_dim,
                                        dataset_path=str(dataset), width=data.width, height=data.height,
                                        focal=data.focal))
    return out


def speech(seconds: float) -> np.ndarray:
    t = np.arange(int(seconds * 16000)) / 16000
    env = np.clip(np.sin(2 * np.pi * 4.0 * t), 0, None) ** 2
    return (0.2 * env * np.sin(2 * np.pi * 140 * t)).astype(np.float32)


def bench_render(talker, batch_size: int, frames: int, tmp: Path) -> dict:
    audio = speech(frames / 25.0)
    talker.render(speech(0.4), out=tmp / "warm.mp4", batch_size=min(batch_size, 4), progress=False)  # warm-up
    res = talker.render(audio, out=tmp / f"b{batch_size}.mp4", batch_size=batch_size, progress=False)
    t = res.timings
    parts = {k: getattr(t, k) for k in ("features", "data", "deform", "rasterize", "encode")}
    rest = max(0.0, t.total - sum(parts.values()))
    return {"batch_size": batch_size, "frames": res.frames, "seconds": round(res.seconds, 3),
            "fps": round(res.fps, 3), "seconds_per_frame": round(res.seconds / res.frames, 4),
            "share": {k: round(v / t.total, 3) for k, v in {**parts, "other": rest}.items()},
            "timings": t.as_dict()}


def bench_stream(talker, seconds: float, batch_size: int) -> dict:
    audio = speech(seconds)
    chunks = np.array_split(audio, max(1, audio.shape[0] // 320))  # 20 ms
    arrivals = []

    def feed():
        for c in chunks:
            arrivals.append(time.perf_counter())
            yield c

    latencies, start = [], time.perf_counter()
    for _ in talker.stream(feed(), batch_size=batch_size):
        latencies.append(time.perf_counter() - arrivals[-1])
    total = time.perf_counter() - start
    lat = np.array(latencies)
    from gaussiantalker.audio import StreamingFeatures

    lookahead = StreamingFeatures(talker.audio_kind).lookahead_s + 3 / 25.0
    return {"seconds_of_audio": seconds, "frames": int(lat.size), "wall_seconds": round(total, 3),
            "realtime_factor": round(total / seconds, 3), "compute_latency_median_s": round(float(np.median(lat)), 4),
            "compute_latency_p95_s": round(float(np.percentile(lat, 95)), 4),
            "algorithmic_lookahead_s": round(lookahead, 4)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--batch-sizes", type=int, nargs="+", default=[1, 32, 128])
    ap.add_argument("--frames", type=int, default=128, help="frames rendered per batch size (>= the batch size)")
    ap.add_argument("--frames-bs1", type=int, default=16, help="frames rendered at batch size 1")
    ap.add_argument("--points", type=int, default=35000)
    ap.add_argument("--size", type=int, default=512)
    ap.add_argument("--devices", nargs="+", default=None, help="cpu and/or cuda (default: cpu, plus cuda if present)")
    ap.add_argument("--stream-seconds", type=float, default=2.0)
    ap.add_argument("--out", type=Path, default=REPO / "benchmarks" / "results" / "render.json")
    args = ap.parse_args()
    from gaussiantalker.infer import load

    devices = args.devices or (["cpu", "cuda"] if torch.cuda.is_available() else ["cpu"])
    load_before = os.getloadavg()
    rows, streams = [], {}
    with tempfile.TemporaryDirectory(prefix="gt_bench_render_") as d:
        tmp = Path(d)
        t0 = time.perf_counter()
        model_dir = build(tmp, args.size, args.points, num_frames := 40)
        print(f"built a {args.size}x{args.size} synthetic dataset ({num_frames} frames) and a model in "
              f"{time.perf_counter() - t0:.1f} s")
        for dev in devices:
            talker = load(model_dir, device=dev)
            n = talker.model.num_points
            for bs in args.batch_sizes:
                frames = args.frames_bs1 if bs == 1 else max(args.frames, bs)
                row = {"device": dev, "gaussians": n, **bench_render(talker, bs, frames, tmp)}
                rows.append(row)
                sh = row["share"]
                print(f"{dev:5s} N={n} batch {bs:4d}: {row['fps']:7.2f} fps ({row['frames']} frames)  "
                      + "  ".join(f"{k} {100 * v:4.1f}%" for k, v in sh.items()), flush=True)
            streams[dev] = bench_stream(talker, args.stream_seconds, batch_size=8)
            s = streams[dev]
            print(f"{dev:5s} stream: computing takes {s['realtime_factor']:.2f}x the audio's duration, "
                  f"compute latency median "
                  f"{s['compute_latency_median_s']:.3f} s (p95 {s['compute_latency_p95_s']:.3f} s) + look-ahead "
                  f"{s['algorithmic_lookahead_s']:.4f} s")
            del talker
    cpu_best = max((r["fps"] for r in rows if r["device"] == "cpu"), default=None)
    result = {
        "benchmark": "render", "size": args.size, "points_requested": args.points,
        "machine": {"platform": platform.platform(), "cpus": os.cpu_count(), "torch": torch.__version__,
                    "threads": torch.get_num_threads(),
                    "cuda": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
                    "loadavg_before": [round(x, 2) for x in load_before],
                    "loadavg_after": [round(x, 2) for x in os.getloadavg()]},
        "rows": rows, "stream": streams, "peak_rss_gb": _peak_rss_gb(),
        "goal_cpu_fps": GOAL_CPU_FPS, "cpu_best_fps": cpu_best,
        "time": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    from gaussiantalker.fileio import atomic_write

    text = json.dumps(result, indent=2) + "\n"
    atomic_write(args.out, lambda p: p.write_text(text))
    print(f"load average before/after: {result['machine']['loadavg_before']} / {result['machine']['loadavg_after']}; "
          f"peak RSS {result['peak_rss_gb']} GB")
    print(f"wrote {args.out}")


def _peak_rss_gb() -> float:
    """Peak resident memory of this process so far (Linux reports kilobytes)."""
    import resource

    return round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2 ** 20, 2)


if __name__ == "__main__":
    main()
