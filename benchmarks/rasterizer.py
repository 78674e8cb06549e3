"""Rasterizer benchmark: forward and forward+backward times of the reference, the CPU kernels and (when
present) the CUDA kernels, measured side by side in one run on the same scenes.

Scenes: N Gaussians on a head-like ellipsoid surface with nearest-neighbour-sized scales, seen frontally
so that the head fills most of the image (the load of a GaussianTalker render). SH degree 3.

    python benchmarks/rasterizer.py [--sizes 10000 35000 100000] [--batches 1 8] [--repeats 3]
                                    [--out benchmarks/results/rasterizer.json]

With ``--batches``, B > 1 renders the same Gaussians (shared [N, ...] attributes) from B cameras in one call.

Prints a table and writes JSON with the times and the speed-up ratios of the same run.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
from _raster_scenes import batch_cameras, camera, head_scene  # noqa: E402

from diff_gaussian_rasterization import _rasterize_reference, build_info, rasterize_gaussians  # noqa: E402


def _to(st, kw, device):
    st = st._replace(bg=st.bg.to(device), viewmatrix=st.viewmatrix.to(device), projmatrix=st.projmatrix.to(device),
                     campos=st.campos.to(device))
    return st, {k: v.to(device) for k, v in kw.items()}


def _time(fn, repeats: int, device: torch.device) -> float:
    """Median wall time of fn() over `repeats` runs after one warm-up."""
    fn()
    times = []
    for _ in range(repeats):
        if device.type == "cuda":
            torch.cuda.synchronize()
        t0 = time.perf_counter()
        fn()
        if device.type == "cuda":
            torch.cuda.synchronize()
        times.append(time.perf_counter() - t0)
    times.sort()
    return times[len(times) // 2]


def _case(impl, st, kw, backward: bool):
    def run():
        if backward:
            leaves = {k: v.detach().requires_grad_() for k, v in kw.items()}
            out = impl(st, **leaves)
            (out.color.sum() + 0.1 * out.depth.sum() + out.alpha.sum()).backward()
        else:
            with torch.no_grad():
                impl(st, **kw)
    return run


def scene(n: int, size: int, batch: int = 1):
    sc = head_scene(n, seed=0)
    if batch == 1:
        st = camera(size, size, eye=(0.0, 0.0, -2.6), fovx_deg=45.0)
    else:
        st = batch_cameras(batch, size, size, seed=1, fovx_deg=45.0)
    kw = {"means3D": sc.means3D, "opacities": sc.opacities, "shs": sc.shs, "scales": sc.scales,
          "rotations": sc.rotations}
    return st, kw


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--sizes", type=int, nargs="+", default=[10_000, 35_000, 100_000])
    ap.add_argument("--resolution", type=int, default=512)
    ap.add_argument("--ref-resolution", type=int, default=128)
    ap.add_argument("--ref-max-n", type=int, default=35_000,
                    help="largest N for the dense reference (memory grows as pixels x N)")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--batches", type=int, nargs="+", default=[1], help="cameras per call (shared Gaussians)")
    ap.add_argument("--out", default=str(Path(__file__).resolve().parent / "results" / "rasterizer.json"))
    args = ap.parse_args(argv)

    cpu = torch.device("cpu")
    cuda = torch.device("cuda") if torch.cuda.is_available() and build_info().get("cuda") else None
    rows = []
    for n, batch in [(n, b) for n in args.sizes for b in args.batches]:
        for res, impls in ((args.ref_resolution, ["reference", "cpu"] + (["cuda"] if cuda else [])),
                           (args.resolution, ["cpu"] + (["cuda"] if cuda else []))):
            st, kw = scene(n, res, batch)
            for mode in ("forward", "forward+backward"):
                row = {"N": n, "B": batch, "resolution": res, "mode": mode}
                for impl in impls:
                    if impl == "reference" and n > args.ref_max_n:
                        continue
                    fn = _rasterize_reference if impl == "reference" else rasterize_gaussians
                    dev = cuda if impl == "cuda" else cpu
                    s, k = _to(st, kw, dev)
                    row[impl] = _time(_case(fn, s, k, mode != "forward"), args.repeats, dev)
                if "reference" in row:
                    row["cpu_speedup_vs_reference"] = row["reference"] / row["cpu"]
                if "cuda" in row:
                    row["cuda_speedup_vs_cpu"] = row["cpu"] / row["cuda"]
                rows.append(row)
                print(_fmt(row), flush=True)

    result = {
        "machine": {"platform": platform.platform(), "processor": platform.processor(),
                    "cpu_count": os.cpu_count(), "torch_threads": torch.get_num_threads(),
                    "cuda_device": torch.cuda.get_device_name(0) if cuda else None},
        "build_info": build_info(),
        "rows": rows,
    }
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(result, indent=2))
    print(f"\nwrote {args.out}")
    return 0


def _fmt(row: dict) -> str:
    parts = [f"N={row['N']:>7}", f"B={row['B']:>3}", f"{row['resolution']:>4}px", f"{row['mode']:<17}"]
    for k in ("reference", "cpu", "cuda"):
        if k in row:
            parts.append(f"{k}={row[k] * 1000:9.1f} ms")
    for k in ("cpu_speedup_vs_reference", "cuda_speedup_vs_cpu"):
        if k in row:
            parts.append(f"{k}={row[k]:.1f}x")
    return "  ".join(parts)


if __name__ == "__main__":
    sys.exit(main())
