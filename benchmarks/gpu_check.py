"""One command that proves the GPU path: build, the `gpu` tests, rasterizer speed against gsplat and our CPU
kernels, training speed on a real clip, render FPS and streaming latency. Writes one JSON and prints a table.

    python benchmarks/gpu_check.py                 # on a GPU machine, from a clean checkout (< 6 min on an H100)
    python benchmarks/gpu_check.py --cpu-smoke     # the same stages, tiny, on the CPU (< 1 min; run by CI)

Stages (each is timed; a failing stage is recorded with its error, the others still run, and the exit code is
1 when any stage failed or any test failed):
  build      compile the native packages in place (CUDA for the visible GPU's architecture) and report
             `build_info()`; skipped with --skip-build or when --cpu-smoke finds them built;
  tests      `pytest -m gpu` over the rasterizer and knn tests (counts and failures);
  rasterizer fwd / bwd ms and peak memory at 512x512 for 35k and 1M Gaussians at batch 1 and 32: ours (CUDA)
             vs gsplat when it can be imported or pip-installed and compiled within its time limit (optional:
             the table says why when not) vs our CPU kernels (where they fit the time budget);
  train      the default preset `64_dim_1_transformer` on ../shared/data/clips/MimicTalk__German_20s.mp4
             (preprocessed first): coarse and fine iterations/s over a short run, peak memory, and the
             projected time of a full training;
  render     render FPS at 512x512 at batch 1, 32, 128 (end to end, `benchmarks/render.py`'s model) and the
             streaming compute latency.
--cpu-smoke shrinks everything (64 px, a synthetic dataset, `cpu_small`, two iterations) so that CI proves the
script still runs; its numbers mean nothing.
"""

from __future__ import annotations

import argparse
import glob
import importlib.util
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
import traceback
import xml.etree.ElementTree as ET
from pathlib import Path
from typing import Callable, Optional

REPO = Path(__file__).resolve().parents[1]
PKG_DIRS = [REPO / "submodules" / "diff-gaussian-rasterization", REPO / "submodules" / "simple-knn"]
GERMAN = REPO.parent / "shared" / "data" / "clips" / "MimicTalk__German_20s.mp4"
TEST_FILES = ["tests/test_rasterizer.py", "tests/test_simple_knn.py", "tests/test_rasterizer_safety.py",
              "tests/test_rasterizer_parity.py"]


def _load_module(name: str, path: Path):
    spec = importlib.util.spec_from_file_location(name, path)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def _inplace_built() -> bool:
    return all(glob.glob(str(d / d.name.replace("-", "_") / "_C*.so")) for d in PKG_DIRS)


def _use_checkout_packages() -> None:
    """Import the packages from this checkout when they were built in place (a clean checkout's build);
    otherwise the installed ones are used."""
    if _inplace_built():
        for d in reversed(PKG_DIRS):
            sys.path.insert(0, str(d))
        os.environ["PYTHONPATH"] = os.pathsep.join([str(d) for d in PKG_DIRS] + [os.environ.get("PYTHONPATH", "")])


# ---------------------------------------------------------------------------------------------------
def stage_build(args) -> dict:
    import torch

    out = {"torch": torch.__version__, "torch_cuda": torch.version.cuda,
           "gpu": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None}
    if args.skip_build or (args.cpu_smoke and _inplace_or_installed()):
        out["built_now"] = False
    else:
        env = dict(os.environ, GT_BUILD_CUDA="0" if args.cpu_smoke else "1")
        if torch.cuda.is_available() and "TORCH_CUDA_ARCH_LIST" not in env:
            major, minor = torch.cuda.get_device_capability(0)
            env["TORCH_CUDA_ARCH_LIST"] = f"{major}.{minor}"
        env.setdefault("MAX_JOBS", str(os.cpu_count() or 2))
        t0 = time.perf_counter()
        proc = subprocess.run([sys.executable, "setup.py", "build_ext", "--inplace"], cwd=REPO, env=env,
                              capture_output=True, text=True, timeout=args.build_timeout)
        out["built_now"] = True
        out["build_seconds"] = round(time.perf_counter() - t0, 1)
        if proc.returncode != 0:
            raise RuntimeError("build failed:\n" + (proc.stdout + proc.stderr)[-3000:])
    _use_checkout_packages()
    import diff_gaussian_rasterization as dgr
    import simple_knn

    out["rasterizer"] = dgr.build_info()
    out["simple_knn"] = simple_knn.build_info()
    out["imported_from"] = str(Path(dgr.__file__).parent)
    if not args.cpu_smoke and not out["rasterizer"].get("cuda"):
        raise RuntimeError("the rasterizer was built without CUDA")
    return out


def _inplace_or_installed() -> bool:
    if _inplace_built():
        return True
    return importlib.util.find_spec("diff_gaussian_rasterization") is not None


# ---------------------------------------------------------------------------------------------------
def stage_tests(args) -> dict:
    with tempfile.TemporaryDirectory() as tmp:
        xml = Path(tmp) / "junit.xml"
        cmd = [sys.executable, "-m", "pytest", "-m", "gpu", "-q", "-p", "no:cacheprovider", f"--junitxml={xml}",
               *TEST_FILES]
        t0 = time.perf_counter()
        proc = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=args.tests_timeout)
        seconds = time.perf_counter() - t0
        if not xml.exists():
            raise RuntimeError("pytest wrote no report:\n" + (proc.stdout + proc.stderr)[-3000:])
        root = ET.parse(xml).getroot()
    suite = root if root.tag == "testsuite" else root.find("testsuite")
    failures = []
    for case in suite.iter("testcase"):
        for tag in ("failure", "error"):
            node = case.find(tag)
            if node is not None:
                failures.append({"test": f"{case.get('classname')}::{case.get('name')}",
                                 "message": (node.get("message") or "")[:500]})
    n = {k: int(suite.get(k, 0)) for k in ("tests", "failures", "errors", "skipped")}
    n["passed"] = n["tests"] - n["failures"] - n["errors"] - n["skipped"]
    return {**n, "seconds": round(seconds, 1), "failed": failures, "pytest_exit_code": proc.returncode,
            "command": " ".join(cmd[1:])}


# ---------------------------------------------------------------------------------------------------
def _timed(fn: Callable[[], None], device, repeats: int) -> float:
    import torch

    fn()  # warm-up
    times = []
    for _ in range(repeats):
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        t0 = time.perf_counter()
        fn()
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        times.append(time.perf_counter() - t0)
    return sorted(times)[len(times) // 2] * 1000.0


def _ours(st, kw, device, repeats: int) -> dict:
    import torch
    from diff_gaussian_rasterization import rasterize_gaussians

    def fwd():
        with torch.no_grad():
            rasterize_gaussians(st, **kw)

    leaves = {}

    def fwd_bwd():
        leaves.update({k: v.detach().requires_grad_() for k, v in kw.items()})
        out = rasterize_gaussians(st, **leaves)
        (out.color.sum() + out.alpha.sum()).backward()

    return _measure(fwd, fwd_bwd, device, repeats)


def _measure(fwd, fwd_bwd, device, repeats: int) -> dict:
    import torch

    row = {"fwd_ms": _timed(fwd, device, repeats)}
    row["bwd_ms"] = max(0.0, _timed(fwd_bwd, device, repeats) - row["fwd_ms"])
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
        base = torch.cuda.memory_allocated(device)
        fwd_bwd()
        torch.cuda.synchronize(device)
        row["peak_gb"] = (torch.cuda.max_memory_allocated(device) - base) / 2 ** 30
    return {k: round(v, 3) for k, v in row.items()}


def _gsplat_module(args):
    """gsplat, or the reason it is not available. Installing and compiling it has its own time limit."""
    try:
        import gsplat  # noqa: F401
        return gsplat, None
    except ImportError as exc:
        if not args.install_gsplat:
            return None, f"not installed ({exc}); --install-gsplat tries the package registry"
    try:
        # (no retries: a machine without network access answers at once)
        proc = subprocess.run([sys.executable, "-m", "pip", "install", "-q", "--retries", "0", "--timeout", "15",
                               "gsplat"], capture_output=True, text=True, timeout=args.gsplat_timeout)
    except subprocess.TimeoutExpired:
        return None, f"pip install gsplat took more than {args.gsplat_timeout} s"
    if proc.returncode != 0:
        return None, "pip install gsplat failed: " + (proc.stderr or proc.stdout).strip()[-300:]
    try:
        import gsplat
        return gsplat, None
    except ImportError as exc:
        return None, f"installed but not importable: {exc}"


def _gsplat_case(gsplat, sc, st, B: int, size: int, device, repeats: int) -> dict:
    """gsplat's `rasterization` on the same Gaussians and cameras (shared by the B cameras)."""
    import torch

    w2c = st.viewmatrix.transpose(-1, -2)  # ours are row-vector W2C^T
    w2c = w2c.expand(B, 4, 4) if w2c.dim() == 2 else w2c
    fx = size / (2 * st.tanfovx)
    K = torch.tensor([[fx, 0.0, (size - 1) / 2], [0.0, fx, (size - 1) / 2], [0.0, 0.0, 1.0]], device=device)
    kw = {"means": sc.means3D.to(device), "quats": sc.rotations.to(device), "scales": sc.scales.to(device),
          "opacities": sc.opacities[:, 0].to(device), "colors": sc.shs.to(device)}

    def call(t):
        return gsplat.rasterization(t["means"], t["quats"], t["scales"], t["opacities"], t["colors"],
                                    w2c.contiguous().to(device), K.expand(B, 3, 3).contiguous(), size, size,
                                    sh_degree=3)

    def fwd():
        with torch.no_grad():
            call(kw)

    def fwd_bwd():
        leaves = {k: v.detach().requires_grad_() for k, v in kw.items()}
        colors, alphas, _ = call(leaves)
        (colors.sum() + alphas.sum()).backward()

    return _measure(fwd, fwd_bwd, device, repeats)


def stage_rasterizer(args) -> dict:
    import torch

    bench = _load_module("gt_bench_rasterizer", REPO / "benchmarks" / "rasterizer.py")
    sys.path.insert(0, str(REPO / "tests"))
    from _raster_scenes import batch_cameras, camera, head_scene

    cuda = torch.device("cuda") if torch.cuda.is_available() and not args.cpu_smoke else None
    cpu = torch.device("cpu")
    gsplat, why_not = (None, "--cpu-smoke") if cuda is None else _gsplat_module(args)
    rows = []
    for n in args.raster_sizes:
        sc = head_scene(n, seed=0)  # benchmarks/rasterizer.py's scene: a head filling most of the image
        # shared attributes ([N, ...], the same Gaussians for every camera), as gsplat takes them
        kw = {"means3D": sc.means3D, "opacities": sc.opacities, "shs": sc.shs, "scales": sc.scales,
              "rotations": sc.rotations}
        for B in args.raster_batches:
            if B == 1:
                st = camera(args.resolution, args.resolution, eye=(0.0, 0.0, -2.6), fovx_deg=45.0)
            else:
                st = batch_cameras(B, args.resolution, args.resolution, seed=1, fovx_deg=45.0)
            row = {"N": n, "B": B, "resolution": args.resolution}
            if cuda is not None:
                s, k = bench._to(st, kw, cuda)
                row["ours_cuda"] = _ours(s, k, cuda, args.repeats)
                if gsplat is not None:
                    try:
                        row["gsplat"] = _gsplat_case(gsplat, sc, s, B, args.resolution, cuda, args.repeats)
                    except Exception as exc:  # recorded, shown in the table
                        row["gsplat"] = {"error": f"{type(exc).__name__}: {exc}"[:300]}
                else:
                    row["gsplat"] = {"unavailable": why_not}
                torch.cuda.empty_cache()
            if n * B <= args.cpu_max_instances:
                row["ours_cpu"] = _ours(st, kw, cpu, 1 if cuda is not None else args.repeats)
            else:
                row["ours_cpu"] = {"skipped": f"N*B > {args.cpu_max_instances} (CPU time budget)"}
            rows.append(row)
            print("  rasterizer " + json.dumps(row), flush=True)
    return {"rows": rows, "gsplat": "used" if gsplat is not None else why_not}


# ---------------------------------------------------------------------------------------------------
def stage_train(args) -> dict:
    import torch

    from gaussiantalker.config import load_config
    from gaussiantalker.data import TalkingHeadData
    from gaussiantalker.train import Trainer

    trainbench = _load_module("gt_bench_train", REPO / "benchmarks" / "train.py")
    device = torch.device("cpu" if args.cpu_smoke else "cuda")
    with tempfile.TemporaryDirectory(prefix="gt_gpu_check_") as tmp:
        tmp = Path(tmp)
        t0 = time.perf_counter()
        if args.cpu_smoke:
            from gaussiantalker.synthetic import make_synthetic_dataset

            dataset, source = make_synthetic_dataset(tmp / "data" / "smoke", num_frames=12, size=64,
                                                     num_points=500), "synthetic 64x64"
            preset = "cpu_small"
        else:
            if not GERMAN.exists():
                raise FileNotFoundError(f"{GERMAN} is absent (../shared/data holds the real clips)")
            from gaussiantalker.api import preprocess

            dataset, source = preprocess(GERMAN, workspace=tmp, device="cuda:0", progress=False).path, GERMAN.name
            preset = args.preset
        prep_s = time.perf_counter() - t0
        cfg = load_config(preset, checkpoint_every=0, tensorboard=False, num_workers=0)
        m = cfg.model
        data = TalkingHeadData.open(dataset, resolution=None if m.resolution == -1 else m.resolution,
                                    cache_mb=2048)
        if device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(device)
        trainer = Trainer(data, cfg, tmp / "model", device, progress=False)
        trainer.prepare()
        coarse = trainbench._stage_rate(trainer, "coarse", args.train_iterations)
        fine = trainbench._stage_rate(trainer, "fine", max(1, args.train_iterations // 2))
        o = cfg.optimization
        projected = o.coarse_iterations / coarse["iterations_per_second"] + o.iterations / fine["iterations_per_second"]
        return {"preset": preset, "data": source, "image": f"{data.width}x{data.height}",
                "gaussians": trainer.model.num_points, "preprocess_seconds": round(prep_s, 1),
                "coarse_it_per_s": round(coarse["iterations_per_second"], 3),
                "fine_it_per_s": round(fine["iterations_per_second"], 3), "fine_batch": fine["batch_size"],
                "peak_gb": round(torch.cuda.max_memory_allocated(device) / 2 ** 30, 3) if device.type == "cuda" else None,
                "projected_full_training_minutes": round(projected / 60, 1),
                "full_training": f"{o.coarse_iterations} coarse + {o.iterations} fine iterations"}


def stage_render(args) -> dict:
    import torch

    from gaussiantalker.infer import load

    render = _load_module("gt_bench_render", REPO / "benchmarks" / "render.py")
    device = "cpu" if args.cpu_smoke else "cuda"
    size, points = (64, 500) if args.cpu_smoke else (512, 35000)
    batches = [1, 2] if args.cpu_smoke else [1, 32, 128]
    with tempfile.TemporaryDirectory(prefix="gt_gpu_check_render_") as tmp:
        tmp = Path(tmp)
        model_dir = render.build(tmp, size, points, 12 if args.cpu_smoke else 40)
        talker = load(model_dir, device=device)
        if device == "cuda":
            torch.cuda.reset_peak_memory_stats()
        rows = []
        for bs in batches:
            frames = 4 if args.cpu_smoke else (16 if bs == 1 else max(128, bs))
            r = render.bench_render(talker, bs, frames, tmp)
            rows.append({"batch_size": bs, "fps": r["fps"], "frames": r["frames"], "share": r["share"]})
        stream = render.bench_stream(talker, 0.5 if args.cpu_smoke else 2.0, batch_size=8)
        peak = torch.cuda.max_memory_allocated() / 2 ** 30 if device == "cuda" else None
    return {"device": device, "size": size, "gaussians": points, "rows": rows, "stream": stream,
            "peak_gb": None if peak is None else round(peak, 3)}


# ---------------------------------------------------------------------------------------------------
STAGES = [("build", stage_build), ("tests", stage_tests), ("rasterizer", stage_rasterizer), ("train", stage_train),
          ("render", stage_render)]


def run(args) -> dict:
    result = {"mode": "cpu-smoke" if args.cpu_smoke else "gpu", "time": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
              "machine": {"platform": platform.platform(), "cpus": os.cpu_count()}, "stages": {}}
    t_all = time.perf_counter()
    for name, fn in STAGES:
        if name in args.skip:
            result["stages"][name] = {"status": "skipped", "reason": "--skip"}
            continue
        t0 = time.perf_counter()
        print(f"[gpu_check] {name} ...", flush=True)
        try:
            data = fn(args)
            status = "ok"
            if name == "tests" and (data["failures"] or data["errors"] or data["pytest_exit_code"] not in (0, 5)):
                status = "failed"
            result["stages"][name] = {"status": status, **data}
        except Exception as exc:  # recorded with its traceback; the other stages still run
            result["stages"][name] = {"status": "error", "error": f"{type(exc).__name__}: {exc}"[:2000],
                                      "traceback": traceback.format_exc()[-3000:]}
        result["stages"][name]["stage_seconds"] = round(time.perf_counter() - t0, 1)
    result["total_seconds"] = round(time.perf_counter() - t_all, 1)
    return result


def table(result: dict) -> str:
    lines = [f"gpu_check ({result['mode']}), {result['total_seconds']} s"]
    for name, st in result["stages"].items():
        head = f"{name:<11}{st['status']:<8}{st.get('stage_seconds', 0):>7} s"
        if st["status"] in ("error", "skipped"):
            lines.append(f"{head}  {st.get('error') or st.get('reason')}")
            continue
        if name == "build":
            r = st["rasterizer"]
            lines.append(f"{head}  CUDA compiled: {r.get('cuda')} (archs {','.join(r.get('cuda_arch', [])) or '-'}), "
                         f"gpu {st['gpu']}, torch {st['torch']}")
        elif name == "tests":
            lines.append(f"{head}  pytest -m gpu: {st['passed']} passed, {st['failures'] + st['errors']} failed, "
                         f"{st['skipped']} skipped")
            lines += [f"             FAILED {f['test']}: {f['message'][:150]}" for f in st["failed"]]
        elif name == "rasterizer":
            lines.append(f"{head}  gsplat: {st['gsplat']}")
            lines.append(f"{'':11}{'N':>8} {'B':>4}  {'ours CUDA fwd/bwd ms, GB':<28}{'gsplat fwd/bwd ms, GB':<28}"
                         f"{'ours CPU fwd/bwd ms':<22}")
            for r in st["rows"]:
                lines.append(f"{'':11}{r['N']:>8} {r['B']:>4}  {_cell(r.get('ours_cuda')):<28}"
                             f"{_cell(r.get('gsplat')):<28}{_cell(r.get('ours_cpu')):<22}")
        elif name == "train":
            lines.append(f"{head}  {st['preset']} on {st['data']} ({st['image']}, {st['gaussians']} Gaussians): "
                         f"coarse {st['coarse_it_per_s']} it/s, fine {st['fine_it_per_s']} it/s at batch "
                         f"{st['fine_batch']}, peak {st['peak_gb']} GB; full training ({st['full_training']}) "
                         f"~{st['projected_full_training_minutes']} min")
        elif name == "render":
            fps = ", ".join(f"batch {r['batch_size']}: {r['fps']} fps" for r in st["rows"])
            s = st["stream"]
            lines.append(f"{head}  {st['size']} px, {st['gaussians']} Gaussians on {st['device']}: {fps}; stream latency "
                         f"median {s['compute_latency_median_s']} s (+{s['algorithmic_lookahead_s']} s look-ahead)")
    return "\n".join(lines)


def _cell(c: Optional[dict]) -> str:
    if not c:
        return "-"
    if "fwd_ms" in c:
        mem = f", {c['peak_gb']:.2f}" if "peak_gb" in c else ""
        return f"{c['fwd_ms']:.1f} / {c['bwd_ms']:.1f}{mem}"
    return "n/a: " + str(next(iter(c.values())))[:60]


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--cpu-smoke", action="store_true", help="tiny CPU run of every stage (CI)")
    ap.add_argument("--skip-build", action="store_true", help="use the packages already built or installed")
    ap.add_argument("--skip", nargs="*", default=[], choices=[n for n, _ in STAGES], help="stages to skip")
    ap.add_argument("--install-gsplat", action=argparse.BooleanOptionalAction, default=True,
                    help="pip-install gsplat when it is missing (GPU mode)")
    ap.add_argument("--gsplat-timeout", type=int, default=120)
    ap.add_argument("--build-timeout", type=int, default=240)
    ap.add_argument("--tests-timeout", type=int, default=150)
    ap.add_argument("--preset", default="64_dim_1_transformer")
    ap.add_argument("--train-iterations", type=int, default=None)
    ap.add_argument("--out", type=Path, default=REPO / "benchmarks" / "results" / "gpu_check.json")
    args = ap.parse_args(argv)
    if args.cpu_smoke:
        args.raster_sizes, args.raster_batches, args.resolution = [2000], [1, 2], 64
        args.repeats, args.cpu_max_instances = 1, 10 ** 9
        args.train_iterations = args.train_iterations or 2
    else:
        args.raster_sizes, args.raster_batches, args.resolution = [35_000, 1_000_000], [1, 32], 512
        args.repeats, args.cpu_max_instances = 5, 1_100_000
        args.train_iterations = args.train_iterations or 20
    result = run(args)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    print(table(result))
    print(f"wrote {args.out}")
    return 0 if all(s["status"] in ("ok", "skipped") for s in result["stages"].values()) else 1


if __name__ == "__main__":
    sys.exit(main())
