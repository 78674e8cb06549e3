"""Head-tracking speed: seconds per 1000 frames for the offline tracker and for the BFM tracker.

Both run on the synthetic morphable model of the tests (``tests/_tracking_helpers.py``, BFM 2009 file
layout, read through the real loader), with a smooth head trajectory, random expressions and 1 px
landmark noise; the accuracy against the ground truth is printed alongside. Goal: the offline tracker
under 60 s per 1000 frames on the CPU.

    python benchmarks/tracking.py [--frames 1000] [--device cpu] [--threads 2,1]

Prints a table and writes ``benchmarks/results/tracking.json``. Timings on a shared machine vary with
its load (reported as the 1-minute load average); process CPU time is reported too.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import platform
import sys
import tempfile
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tests"))

from _tracking_helpers import (  # noqa: E402
    JAW_LEFT, JAW_RIGHT, aligned_rotation_errors, synthesize, write_synthetic_bfm,
)
from gaussiantalker.preprocess.tracking import BFM2009, fit_landmarks, landmark_model  # noqa: E402
from gaussiantalker.preprocess.tracking.fit import rotation_angle_deg  # noqa: E402


def _run(name, model, seq, device, aligned, threads):
    torch.set_num_threads(threads)
    t0, c0 = time.perf_counter(), time.process_time()
    res = fit_landmarks(seq.landmarks, model, seq.image_size, device=device)
    wall, cpu = time.perf_counter() - t0, time.process_time() - c0
    if aligned:
        rot_err, _ = aligned_rotation_errors(seq.rot, res.rotation.double().numpy())
    else:
        rot_err = rotation_angle_deg(res.rotation.double(), torch.as_tensor(seq.rot)).numpy()
    n = seq.landmarks.shape[0]
    return {
        "tracker": name, "threads": threads, "frames": n, "seconds": round(wall, 2), "cpu_seconds": round(cpu, 2),
        "seconds_per_1000_frames": round(1000 * wall / n, 2),
        "stages": {k: round(v, 2) for k, v in res.timings.items()},
        "rotation_error_max_deg": round(float(rot_err.max()), 3),
        "focal_error_percent": round(100 * (res.focal / seq.focal - 1), 2),
        "reprojection_median_px": round(float(res.reprojection_error().median()), 3),
    }


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--frames", type=int, default=1000)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--threads", default=None,
                    help="comma-separated torch CPU thread counts to time (default: torch's setting, then 1)")
    ap.add_argument("--skip-bfm", action="store_true")
    args = ap.parse_args(argv)
    default_threads = torch.get_num_threads()
    threads = [int(t) for t in args.threads.split(",")] if args.threads else sorted({default_threads, 1}, reverse=True)
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        syn = write_synthetic_bfm(Path(tmp) / "bfm")
        fixed = dataclasses.replace(syn, left_contour=syn.keyinds[JAW_LEFT][:, None].repeat(20, 1),
                                    right_contour=syn.keyinds[JAW_RIGHT][:, None].repeat(20, 1))
        offline_seq, bfm_seq = synthesize(fixed, args.frames, seed=1), synthesize(syn, args.frames, seed=1)
        bfm = None if args.skip_bfm else BFM2009.load(syn.folder)
        for n in threads:
            rows.append(_run("offline (landmark model)", landmark_model(), offline_seq, args.device, True, n))
            if bfm is not None:
                rows.append(_run("BFM 2009 (synthetic)", bfm, bfm_seq, args.device, False, n))
    torch.set_num_threads(default_threads)
    header = (f"{'tracker':<26}{'threads':>8}{'frames':>7}{'s':>8}{'s/1000 fr':>11}{'cpu s':>8}{'rot max°':>10}"
              f"{'focal %':>9}{'reproj px':>11}")
    print(f"head tracking on {args.device}, {os.cpu_count()} CPUs, load average {load:.2f} at the start")
    print(header)
    print("-" * len(header))
    for r in rows:
        print(f"{r['tracker']:<26}{r['threads']:>8}{r['frames']:>7}{r['seconds']:>8.1f}{r['seconds_per_1000_frames']:>11.1f}"
              f"{r['cpu_seconds']:>8.1f}{r['rotation_error_max_deg']:>10.3f}{r['focal_error_percent']:>9.2f}"
              f"{r['reprojection_median_px']:>11.3f}")
    out = ROOT / "benchmarks" / "results" / "tracking.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({
        "device": args.device, "load_average_1min_at_start": load,
        "cpu": platform.processor() or platform.machine(), "cpu_count": os.cpu_count(),
        "torch": torch.__version__, "goal_offline_seconds_per_1000_frames": 60, "results": rows,
    }, indent=2))
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
