"""Training benchmark: iterations per second of the coarse and fine stages, per config and device.

A synthetic dataset (``gaussiantalker.synthetic``) at 512x512 with ~35k points (the size of a real
GaussianTalker scene) is trained for a few iterations of each stage with the real trainer (data loading,
deformation, rasterizer, loss, backward, Adam, densification bookkeeping); ``cpu_small`` trains it at its
own 256 px / 8k points, the default config at 512 px / 35k points and its batch of 32 frames.

    python benchmarks/train.py [--configs cpu_small 64_dim_1_transformer] [--iterations 3] [--devices cpu cuda]

Prints a table and writes ``benchmarks/results/train.json``. CUDA is measured when available.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from _result import write_result  # noqa: E402  (benchmarks/, the script's own folder)

from gaussiantalker.config import load_config
from gaussiantalker.data import TalkingHeadData
from gaussiantalker.synthetic import make_synthetic_dataset
from gaussiantalker.train import Trainer


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _stage_rate(trainer: Trainer, stage: str, iterations: int) -> dict:
    """Iterations per second of ``stage`` after one warm-up iteration."""
    if stage == "fine":
        trainer.state.stage = "fine"
        trainer._begin_stage("fine")
    bs = trainer._batch_size(stage)
    batches = trainer._loader(stage, bs)
    trainer._iteration(stage, 1, next(batches))  # warm-up (allocations, lazy imports)
    _sync(trainer.device)
    start = time.perf_counter()
    for it in range(2, iterations + 2):
        trainer._iteration(stage, it, next(batches))
    _sync(trainer.device)
    seconds = (time.perf_counter() - start) / iterations
    return {"seconds_per_iteration": seconds, "iterations_per_second": 1.0 / seconds, "batch_size": bs,
            "frames_per_second": bs / seconds}


def bench(dataset: Path, preset: str, device: torch.device, iterations: int, workdir: Path,
          max_fine_batch: int = 0) -> dict:
    cfg = load_config(preset, checkpoint_every=0, tensorboard=False, num_workers=0)
    if max_fine_batch and cfg.optimization.batch_size > max_fine_batch:
        cfg = cfg.replace(batch_size=max_fine_batch)
    m = cfg.model
    data = TalkingHeadData.open(dataset, resolution=None if m.resolution == -1 else m.resolution,
                                cache_mb=2048)
    trainer = Trainer(data, cfg, workdir / f"{preset}-{device.type}", device, progress=False)
    trainer.prepare()
    row = {"config": preset, "device": str(device), "image": f"{data.width}x{data.height}",
           "gaussians": trainer.model.num_points}
    row["coarse"] = _stage_rate(trainer, "coarse", iterations)
    row["fine"] = _stage_rate(trainer, "fine", iterations)
    return row


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--configs", nargs="+", default=["cpu_small", "64_dim_1_transformer"])
    ap.add_argument("--devices", nargs="+", default=["cpu", "cuda"])
    ap.add_argument("--iterations", type=int, default=3, help="timed iterations per stage (after 1 warm-up)")
    ap.add_argument("--points", type=int, default=35000)
    ap.add_argument("--size", type=int, default=512)
    ap.add_argument("--max-fine-batch", type=int, default=0,
                    help="cap the fine-stage batch (memory of a small machine); 0 = the config's")
    ap.add_argument("--out", default=str(Path(__file__).resolve().parent / "results" / "train.json"))
    args = ap.parse_args()
    devices = [torch.device(d) for d in args.devices if d == "cpu" or torch.cuda.is_available()]
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        t0 = time.perf_counter()
        dataset = make_synthetic_dataset(tmp / "data" / "bench", num_frames=24, size=args.size,
                                         num_points=args.points)
        print(f"synthetic dataset {args.size}x{args.size}, {args.points} points: {time.perf_counter() - t0:.1f} s")
        for device in devices:
            for preset in args.configs:
                row = bench(dataset, preset, device, args.iterations, tmp, args.max_fine_batch)
                rows.append(row)
                print(f"{preset:22s} {row['device']:6s} {row['image']:8s} N={row['gaussians']:6d} "
                      f"coarse {row['coarse']['iterations_per_second']:7.3f} it/s   "
                      f"fine (B={row['fine']['batch_size']}) {row['fine']['iterations_per_second']:7.3f} it/s "
                      f"({row['fine']['frames_per_second']:.2f} frames/s)", flush=True)
    write_result(args.out, "train", iterations_timed=args.iterations, max_fine_batch=args.max_fine_batch, rows=rows)


if __name__ == "__main__":
    main()
