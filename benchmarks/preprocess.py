"""Preprocessing speed: seconds per step and in total for the 20 s MimicTalk clip, as a multiple of the
clip's duration (real-time factor). Goal: the whole offline pipeline, tracking included, under 5x real
time on 2 CPU cores.

    python benchmarks/preprocess.py [--video PATH] [--device cpu] [--keep DIR]

Runs :func:`gaussiantalker.preprocess.preprocess` from scratch in a temporary workspace (offline
defaults: MediaPipe landmarks and parsing, MFCC features, offline tracker, blink from the eye
landmarks), prints a table and writes ``benchmarks/results/preprocess.json``. The first step that
imports MediaPipe pays TensorFlow's import (~8-15 s), counted in its time. Timings on a shared machine
vary with its load: the 1-minute load average before and after is recorded, with the process CPU time
in total and per step (all threads; the CPU seconds depend much less on the load than the wall time).
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import platform
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from gaussiantalker.media import probe  # noqa: E402
from gaussiantalker.preprocess import preprocess  # noqa: E402

DEFAULT_VIDEO = ROOT.parent / "shared" / "data" / "clips" / "MimicTalk__German_20s.mp4"
GOAL = 5.0


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--video", type=Path, default=DEFAULT_VIDEO)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--keep", type=Path, default=None, help="workspace to keep the dataset in (default: temporary)")
    ap.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results" / "preprocess.json")
    args = ap.parse_args(argv)
    logging.basicConfig(level=logging.WARNING)
    if not args.video.is_file():
        print(f"video {args.video} not found (the shared test clips are absent)", file=sys.stderr)
        return 1
    duration = float(probe(args.video).duration)
    load_before = os.getloadavg()[0]
    with tempfile.TemporaryDirectory(prefix="gt-bench-preprocess-") as tmp:
        ws = args.keep or Path(tmp)
        t0, c0 = time.perf_counter(), time.process_time()
        data = preprocess(args.video, workspace=ws, name="bench", device=args.device, progress=False)
        wall, cpu = time.perf_counter() - t0, time.process_time() - c0
        markers = {p.stem: json.loads(p.read_text()) for p in (data.path / ".steps").glob("*.json")}
    load_after = os.getloadavg()[0]
    s = data.summary
    steps = {k: round(v, 2) for k, v in s.seconds.items()}
    result = {
        "video": args.video.name, "clip_seconds": duration, "frames": s.frames, "device": args.device,
        "cpu": platform.machine(), "cpu_count": os.cpu_count(),
        "load_average_1min_before": round(load_before, 2), "load_average_1min_after": round(load_after, 2),
        "backends": s.backends, "steps_seconds": steps,
        "steps_x_realtime": {k: round(v / duration, 3) for k, v in s.seconds.items()},
        "steps_cpu_seconds": {k: markers[k].get("cpu_seconds") for k in s.seconds if k in markers},
        "total_seconds": round(wall, 2), "process_cpu_seconds": round(cpu, 2),
        "x_realtime": round(wall / duration, 2), "goal_x_realtime": GOAL,
    }
    print(f"{args.video.name}: {duration:.1f} s, {s.frames} frames, device {args.device}, "
          f"load average {load_before:.2f} -> {load_after:.2f} on {os.cpu_count()} cores")
    print(f"{'step':<12}{'seconds':>9}{'x clip':>9}{'CPU s':>9}")
    for k, v in s.seconds.items():
        print(f"{k:<12}{v:>9.2f}{v / duration:>9.3f}{result['steps_cpu_seconds'].get(k) or 0:>9.2f}")
    print(f"{'total':<12}{wall:>9.2f}{wall / duration:>9.2f}   (goal < {GOAL:g}x; process CPU {cpu:.1f} s)")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
