"""Data-parallel benchmark: training iterations/s with 1 rank vs N ranks, all-reduce bytes per step, and the frames/s
of rendering many audio files at 1 vs N ranks.

On the CPU the comparison is fair only at equal cores: 1 rank x T threads against T ranks x 1 thread (gloo). On a
machine with several GPUs the scaling efficiency at 1/2/4 GPUs is measured too (NCCL); without them it is reported
as not measured. The training figure is the fine stage of the real trainer (``Trainer._iteration``: data, deformation,
rasterizer, loss, backward, the bucketed all-reduce, Adam, densification statistics, the lip-predictor step) at the
``cpu_small`` preset's size (256 px, 8k Gaussians) with its batch raised to ``--batch`` frames (so that it splits).

    python benchmarks/distributed.py [--ranks 2] [--iterations 4] [--batch 8] [--files 4]

Prints a table and writes ``benchmarks/results/distributed.json``.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "benchmarks"))

from _result import write_result  # noqa: E402


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def train_rank(dataset: str, workdir: str, batch: int, iterations: int, threads: int, device: str = "cpu") -> dict:
    """One rank (or the single process) timing the fine stage; returns its figures."""
    from gaussiantalker.config import load_config
    from gaussiantalker.data import TalkingHeadData
    from gaussiantalker.distributed import init, this_rank_device
    from gaussiantalker.train import Trainer

    torch.set_num_threads(threads)
    dev = torch.device(this_rank_device(device))
    comm = init(dev)
    cfg = load_config("cpu_small", checkpoint_every=0, tensorboard=False, num_workers=0, batch_size=batch,
                      hash_check_every=0)
    data = TalkingHeadData.open(dataset, resolution=cfg.model.resolution, cache_mb=2048)
    trainer = Trainer(data, cfg, Path(workdir) / f"w{comm.world}", dev, progress=False, comm=comm)
    trainer.prepare()
    trainer.state.stage = "fine"
    trainer._begin_stage("fine")
    batches = trainer._loader("fine", batch)

    def step(it: int) -> None:
        trainer._iteration("fine", it, next(batches))
        trainer.state.consumed += batch

    warm = -(-len(trainer.train_split) // batch)  # one epoch: every frame decoded into the cache once
    for it in range(1, warm + 1):
        step(it)
    _sync(dev)
    comm.barrier()
    bytes0, calls0 = comm.bytes_reduced, comm.calls
    start = time.perf_counter()
    for it in range(warm + 1, warm + iterations + 1):
        step(it)
    _sync(dev)
    seconds = (time.perf_counter() - start) / iterations
    return {"rank": comm.rank, "world": comm.world, "gaussians": trainer.model.num_points,
            "seconds_per_iteration": seconds, "iterations_per_second": 1.0 / seconds,
            "allreduce_bytes_per_step": (comm.bytes_reduced - bytes0) / iterations,
            "allreduce_calls_per_step": (comm.calls - calls0) / iterations}


def bench_train(dataset: Path, workdir: Path, ranks: int, batch: int, iterations: int, threads: int) -> dict:
    from gaussiantalker.distributed import launch

    # 1 rank before and after the N ranks (the machine is shared: its load drifts); the better of the two counts
    before = train_rank(str(dataset), str(workdir), batch, iterations, threads=threads)
    os.environ["OMP_NUM_THREADS"] = str(max(1, threads // ranks))
    try:
        many = launch(train_rank, ["cpu"] * ranks, str(dataset), str(workdir), batch, iterations,
                      max(1, threads // ranks))[0]
    finally:
        os.environ.pop("OMP_NUM_THREADS", None)
    after = train_rank(str(dataset), str(workdir), batch, iterations, threads=threads)
    one = max(before, after, key=lambda r: r["iterations_per_second"])
    return {"one": one, "one_runs_iterations_per_second": [before["iterations_per_second"],
                                                           after["iterations_per_second"]],
            "many": many, "speedup": many["iterations_per_second"] / one["iterations_per_second"]}


def bench_gpus(dataset: Path, workdir: Path, batch: int, iterations: int) -> dict:
    """Scaling efficiency at 1/2/4 GPUs (NCCL), or why it was not measured."""
    from gaussiantalker.distributed import launch

    count = torch.cuda.device_count() if torch.cuda.is_available() else 0
    if count < 2:
        return {"measured": False, "reason": f"not measured: {count} CUDA device(s) on this machine"}
    rows, base = [], None
    for n in (1, 2, 4):
        if n > count:
            break
        if n == 1:
            r = train_rank(str(dataset), str(workdir), batch, iterations, threads=1, device="cuda:0")
        else:
            r = launch(train_rank, [f"cuda:{i}" for i in range(n)], str(dataset), str(workdir), batch, iterations,
                       1)[0]
        base = base or r["iterations_per_second"]
        # the global batch is fixed: ideal scaling makes n GPUs n times faster per iteration
        rows.append({"gpus": n, "iterations_per_second": r["iterations_per_second"],
                     "efficiency": r["iterations_per_second"] / base / n})
    return {"measured": True, "gpu": torch.cuda.get_device_name(0), "rows": rows}


def bench_render(root: Path, ranks: int, files: int, threads: int) -> dict:
    """Frames/s over ``files`` audio files rendered by 1 process (``threads`` threads) and by ``ranks`` ranks."""
    import numpy as np
    from render import build

    import gaussiantalker as gt
    from gaussiantalker.audio import write_wav

    model_dir = build(root, 256, 8000, 48)
    folder = root / "replies"
    folder.mkdir()
    rng = np.random.default_rng(0)
    for i in range(files):  # 2 s of noise-modulated tone each: the features differ per file
        t = np.arange(32000) / 16000.0
        write_wav(folder / f"reply{i}.wav", (0.3 * np.sin(2 * np.pi * (120 + 20 * i) * t)
                                              * rng.uniform(0.2, 1.0, t.shape)).astype(np.float32))
    torch.set_num_threads(threads)
    start = time.perf_counter()
    one = gt.render(model_dir, folder, device="cpu", progress=False, out=root / "r1", batch_size=16)
    t1 = time.perf_counter() - start
    frames = sum(r.frames for r in one)
    os.environ["OMP_NUM_THREADS"] = str(max(1, threads // ranks))
    try:
        start = time.perf_counter()
        gt.render(model_dir, folder, device=",".join(["CPU"] * ranks), progress=False, out=root / "r2",
                  batch_size=16)
        t2 = time.perf_counter() - start
    finally:
        os.environ.pop("OMP_NUM_THREADS", None)
    return {"files": files, "frames": frames, "one_fps": frames / t1, "many_fps": frames / t2,
            "many_includes_process_start": True, "speedup": t1 / t2}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--ranks", type=int, default=2)
    ap.add_argument("--threads", type=int, default=os.cpu_count() or 1, help="CPU threads in all (1 rank x T vs T "
                    "ranks x 1)")
    ap.add_argument("--iterations", type=int, default=6, help="timed fine-stage iterations (after one epoch of "
                    "warm-up)")
    ap.add_argument("--batch", type=int, default=8, help="global fine-stage batch")
    ap.add_argument("--files", type=int, default=4, help="audio files rendered")
    ap.add_argument("--out", default=str(Path(__file__).resolve().parent / "results" / "distributed.json"))
    args = ap.parse_args()
    from gaussiantalker.synthetic import make_synthetic_dataset

    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        dataset = make_synthetic_dataset(tmp / "data" / "bench", num_frames=24, size=256, num_points=8000)
        train = bench_train(dataset, tmp, args.ranks, args.batch, args.iterations, args.threads)
        one, many = train["one"], train["many"]
        print(f"training, cpu_small 256 px, {one['gaussians']} Gaussians, global batch {args.batch}:")
        print(f"  1 rank x {args.threads} threads   {one['iterations_per_second']:7.3f} it/s")
        print(f"  {args.ranks} ranks x {max(1, args.threads // args.ranks)} thread(s)  "
              f"{many['iterations_per_second']:7.3f} it/s   ratio {train['speedup']:.2f}")
        print(f"  all-reduce per step: {many['allreduce_calls_per_step']:.0f} calls, "
              f"{many['allreduce_bytes_per_step'] / 1e6:.2f} MB")
        gpus = bench_gpus(dataset, tmp, args.batch, args.iterations)
        if gpus["measured"]:
            for row in gpus["rows"]:
                print(f"  {row['gpus']} GPU(s): {row['iterations_per_second']:.3f} it/s, efficiency "
                      f"{row['efficiency']:.2f}")
        else:
            print(f"  multi-GPU scaling: {gpus['reason']}")
        render = bench_render(tmp, args.ranks, args.files, args.threads)
        print(f"rendering {render['files']} files ({render['frames']} frames, 256 px, 8k Gaussians):")
        print(f"  1 process x {args.threads} threads  {render['one_fps']:7.2f} frames/s")
        print(f"  {args.ranks} ranks x {max(1, args.threads // args.ranks)} thread(s)  {render['many_fps']:7.2f} "
              f"frames/s (process start included)   ratio {render['speedup']:.2f}")
    write_result(args.out, "distributed", threads=args.threads, ranks=args.ranks, batch=args.batch,
                 iterations_timed=args.iterations, train=train, gpus=gpus, render=render)


if __name__ == "__main__":
    main()
