"""Progress and logs of a training run: a tqdm bar (loss, PSNR, ETA) and optional TensorBoard output."""

from __future__ import annotations

import json
import logging
import sys
import time
import types
from pathlib import Path
from typing import Any, Optional

import torch

from ..config import TrainConfig
from ..progress import Progress, ProgressCallback, eta

log = logging.getLogger(__name__)


def _summary_writer(folder: Path):
    """A TensorBoard ``SummaryWriter``, or None when the ``tensorboard`` package is not installed."""
    if "tensorflow" not in sys.modules:
        # Without this marker tensorboard imports TensorFlow for file I/O: ~10 s, it claims GPU memory, and a
        # later torchvision import would crash. Its own stub handles local files.
        sys.modules.setdefault("tensorboard.compat.notf", types.ModuleType("tensorboard.compat.notf"))
    try:
        from torch.utils.tensorboard import SummaryWriter
    except ImportError as exc:
        log.debug("TensorBoard logging off: %s", exc)
        return None
    return SummaryWriter(str(folder))


class Monitor:
    """Updates the bar every iteration, calls the progress callback and appends to ``train_log.jsonl`` every
    10 iterations (the figures the bar shows), and writes TensorBoard scalars / previews every ``log_every`` /
    ``preview_every``."""

    def __init__(self, model_dir: Path, config: TrainConfig, total: int, initial: int, progress: bool,
                 callback: Optional[ProgressCallback] = None) -> None:
        from tqdm.auto import tqdm

        o = config.optimization
        self.log_every, self.preview_every = max(int(o.log_every), 1), int(o.preview_every)
        self.bar = tqdm(total=total, initial=initial, disable=not progress, desc="train", unit="it",
                        dynamic_ncols=True)
        self.writer = _summary_writer(Path(model_dir) / "tensorboard") if o.tensorboard else None
        self.ema: dict[str, float] = {}
        self.callback, self.total, self.initial = callback, int(total), int(initial)
        self.log_path = Path(model_dir) / "train_log.jsonl"
        self.start = time.perf_counter()

    def update(self, iteration: int, stage: str, num_points: int, result: dict[str, Any]) -> None:
        self.bar.update(1)
        writing = self.writer is not None
        scalars = writing and iteration % self.log_every == 0
        images = writing and self.preview_every > 0 and iteration % self.preview_every == 0
        mouth = result.get("mouth") or {}
        if iteration % 10 and not scalars and not images and not mouth:
            return  # reading the loss synchronises a GPU: only every 10 iterations for the bar
        loss, psnr = float(result["loss"]), float(result["psnr"])
        for key, value in (("loss", loss), ("psnr", psnr)):
            self.ema[key] = value if key not in self.ema else 0.6 * self.ema[key] + 0.4 * value
        self.bar.set_postfix(stage=stage, loss=f"{self.ema['loss']:.4f}", psnr=f"{self.ema['psnr']:.2f}",
                             points=num_points, refresh=False)
        if iteration % 10 == 0 or mouth:
            self._report(iteration, stage, num_points, mouth)
        if scalars:
            self.writer.add_scalar(f"{stage}/loss", loss, iteration)
            self.writer.add_scalar(f"{stage}/psnr", psnr, iteration)
            self.writer.add_scalar(f"{stage}/points", num_points, iteration)
            for key, value in result["parts"].items():
                self.writer.add_scalar(f"{stage}/{key}", float(value), iteration)
        if writing:
            for key, value in mouth.items():  # held-out lip sync at each preview: watch it arrive (or not)
                self.writer.add_scalar(f"{stage}/{key}", float(value), iteration)
        if images:
            self.writer.add_image(f"{stage}/preview", preview(result["batch"].target[0], result["out"].image[0]),
                                  iteration)

    def _report(self, iteration: int, stage: str, num_points: int, mouth: Optional[dict] = None) -> None:
        """A line in ``train_log.jsonl`` (read by the evaluation report) and the caller's callback."""
        elapsed = time.perf_counter() - self.start
        # loss / psnr smoothed as on the bar (one batch is noisy); elapsed counts from this (resumed) run's start
        record = {"iteration": iteration, "stage": stage, "loss": self.ema["loss"], "psnr": self.ema["psnr"],
                  "points": num_points, "elapsed": round(elapsed, 3)}
        record.update({k: round(float(v), 4) for k, v in (mouth or {}).items()})
        if mouth:
            log.info("%s iteration %d: held-out mouth opening r %.3f, amplitude %.2f", stage, iteration,
                     record.get("val_mouth_r", float("nan")), record.get("val_mouth_amplitude", float("nan")))
        with open(self.log_path, "a", encoding="utf-8") as f:  # append-only log: a torn last line is skipped
            f.write(json.dumps(record) + "\n")
        if self.callback is not None:
            self.callback(Progress(
                stage=stage, iteration=iteration, total=self.total, loss=self.ema["loss"], psnr=self.ema["psnr"],
                points=num_points, elapsed=elapsed, eta=eta(iteration, self.total, elapsed, self.initial),
                message=f"{stage} iteration {iteration}/{self.total}: loss {self.ema['loss']:.4f}, "
                        f"PSNR {self.ema['psnr']:.2f} dB, {num_points} Gaussians"))

    def close(self) -> None:
        self.bar.close()
        if self.writer is not None:
            self.writer.close()


def preview(target: torch.Tensor, render: torch.Tensor) -> torch.Tensor:
    """``[3, H, 3W]`` image: ground truth | render | absolute difference."""
    target = target.detach().float().cpu().clamp(0, 1)
    render = render.detach().float().cpu().clamp(0, 1)
    return torch.cat([target, render, (target - render).abs()], dim=-1)


__all__ = ["Monitor", "preview"]

