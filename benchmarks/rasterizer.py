"""Rasterizer benchmark: forward and forward+backward times of the reference, the CPU kernels and (when
present) the CUDA kernels, measured side by side in one run on the same scenes.

Scenes: N Gaussians on a head-like ellipsoid surface with nearest-neighbour-sized scales, seen frontally
so that the head fills most of the image (the load of a GaussianTalker render). SH degree 3.

    python benchmarks/rasterizer.py [--sizes 10000 35000 100000] [--batches 1 8] [--repeats 3]
                                    [--out benchmarks/results/rasterizer.json]

With ``--batches``, B > 1 renders the same Gaussians (shared [N, ...] attributes) from B cameras in one call.

Prints a table and writes JSON with the times and the speed-up ratios of the same run.

Two builds of the CPU kernels, side by side (e.g. before and after a change):

    python benchmarks/rasterizer.py --compare ../other-checkout --rounds 5 [--resolutions 128 512]

``--compare PATH`` names another source tree whose extension is built in place (``setup.py build_ext
--inplace``). Each build runs in its own worker process (the package imported from its tree, the scenes from
this one); the workers take turns, config by config and round after round, so that a change of machine load
hits both. Modes: forward, backward (timed alone, after an untimed forward) and forward+backward. A row gives
each build's best time over the rounds and ``speedup_vs_compare`` = PATH's time / this checkout's (> 1: this
checkout is faster). Set OMP_NUM_THREADS for single-threaded figures.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import time
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[1]
PKG_DIR = Path("submodules") / "diff-gaussian-rasterization"  # holds the package and its built extension
sys.path.insert(0, str(REPO / "tests"))
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
    ap.add_argument("--compare", metavar="PATH",
                    help="another source tree with a built extension: time both builds' CPU kernels, alternating")
    ap.add_argument("--rounds", type=int, default=5, help="with --compare: turns each build takes per config")
    ap.add_argument("--resolutions", type=int, nargs="+", help="with --compare: image sizes (default: --resolution)")
    ap.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.worker:
        return _worker()
    if args.compare:
        return _compare(args)

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
    _write(args.out, result)
    return 0


def _write(out: str, result: dict) -> None:
    Path(out).parent.mkdir(parents=True, exist_ok=True)
    Path(out).write_text(json.dumps(result, indent=2))
    print(f"\nwrote {out}")


def _machine() -> dict:
    return {"platform": platform.platform(), "processor": platform.processor(), "cpu_count": os.cpu_count(),
            "torch_threads": torch.get_num_threads(), "omp_num_threads": os.environ.get("OMP_NUM_THREADS")}


def _worker() -> int:
    """Serve timing requests (one JSON line each on stdin) with the package found first on sys.path."""
    import diff_gaussian_rasterization as pkg

    scenes = {}
    print(json.dumps({"package": str(Path(pkg.__file__).parent), "build_info": build_info()}), flush=True)
    for line in sys.stdin:
        req = json.loads(line)
        key = (req["N"], req["resolution"], req["B"])
        if key not in scenes:
            scenes[key] = scene(*key)
        st, kw = scenes[key]
        times = [_timed(st, kw, req["mode"]) for _ in range(req["repeats"] + 1)][1:]  # (the first warms up)
        print(json.dumps({"times": times}), flush=True)
    return 0


def _timed(st, kw, mode: str) -> float:
    """Seconds of one forward, one forward+backward, or the backward alone (its forward untimed)."""
    if mode == "forward":
        t0 = time.perf_counter()
        with torch.no_grad():
            rasterize_gaussians(st, **kw)
        return time.perf_counter() - t0
    t0 = time.perf_counter()
    leaves = {k: v.detach().requires_grad_() for k, v in kw.items()}
    out = rasterize_gaussians(st, **leaves)
    loss = out.color.sum() + 0.1 * out.depth.sum() + out.alpha.sum()
    if mode == "backward":
        t0 = time.perf_counter()
    loss.backward()
    return time.perf_counter() - t0


class _Worker:
    """A worker process timing the CPU kernels of the build in source tree `tree`."""

    def __init__(self, tree: Path):
        env = dict(os.environ, PYTHONPATH=os.pathsep.join(
            [str(tree / PKG_DIR)] + [p for p in os.environ.get("PYTHONPATH", "").split(os.pathsep) if p]))
        self.proc = subprocess.Popen([sys.executable, str(Path(__file__).resolve()), "--worker"], env=env,
                                     stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
        self.info = self._read()
        if Path(self.info["package"]).resolve() != (tree / PKG_DIR / "diff_gaussian_rasterization").resolve():
            raise SystemExit(f"the worker for {tree} imported {self.info['package']} instead")

    def _read(self) -> dict:
        line = self.proc.stdout.readline()
        if not line:
            raise SystemExit(f"a benchmark worker died (exit code {self.proc.wait()})")
        return json.loads(line)

    def time(self, **req) -> list:
        self.proc.stdin.write(json.dumps(req) + "\n")
        self.proc.stdin.flush()
        return self._read()["times"]

    def close(self) -> None:
        self.proc.stdin.close()
        self.proc.wait()


def _compare(args) -> int:
    """This checkout's CPU kernels against those built in args.compare, in alternating worker processes."""
    trees = {"cpu": REPO, "cpu_compare": Path(args.compare).resolve()}
    workers = {k: _Worker(tree) for k, tree in trees.items()}
    rows = []
    try:
        for n, batch, res in [(n, b, r) for n in args.sizes for b in args.batches
                              for r in (args.resolutions or [args.resolution])]:
            for mode in ("forward", "backward", "forward+backward"):
                req = {"N": n, "B": batch, "resolution": res, "mode": mode, "repeats": args.repeats}
                best = {k: float("inf") for k in workers}
                for r in range(args.rounds):
                    # alternate which build goes first, so that neither always follows the other
                    for k in (list(workers) if r % 2 == 0 else list(workers)[::-1]):
                        best[k] = min(best[k], min(workers[k].time(**req)))
                row = {"N": n, "B": batch, "resolution": res, "mode": mode, **best,
                       "speedup_vs_compare": best["cpu_compare"] / best["cpu"]}
                rows.append(row)
                print(_fmt(row), flush=True)
    finally:
        for w in workers.values():
            w.close()
    result = {"machine": _machine(), "rounds": args.rounds, "repeats": args.repeats,
              "builds": {k: {"tree": str(trees[k]), **w.info} for k, w in workers.items()}, "rows": rows}
    _write(args.out, result)
    return 0


def _fmt(row: dict) -> str:
    parts = [f"N={row['N']:>7}", f"B={row['B']:>3}", f"{row['resolution']:>4}px", f"{row['mode']:<17}"]
    for k in ("reference", "cpu", "cpu_compare", "cuda"):
        if k in row:
            parts.append(f"{k}={row[k] * 1000:9.1f} ms")
    for k in ("cpu_speedup_vs_reference", "cuda_speedup_vs_cpu"):
        if k in row:
            parts.append(f"{k}={row[k]:.1f}x")
    if "speedup_vs_compare" in row:
        parts.append(f"speedup_vs_compare={row['speedup_vs_compare']:.3f}x")
    return "  ".join(parts)


if __name__ == "__main__":
    sys.exit(main())
