"""The data-parallel side of one training step (``docs/distributed.md``): this rank's weights in the global batch's
loss, and the one all-reduce after backward. The trainer calls these only when it runs on several ranks."""

from __future__ import annotations

from collections.abc import Sequence

import torch

from ..distributed import Comm
from .objective import Share, psnr
from .strategy import DensifyStrategy

Tensor = torch.Tensor


def _crop_elements(rect: Sequence[int]) -> int:
    r0, r1, c0, c1 = (int(x) for x in rect)
    return 3 * (r1 - r0) * (c1 - c0)


def batch_share(comm: Comm, part: tuple[int, int, int], local_rects: Tensor | None,
                global_rects: Sequence[Sequence[int]] | None) -> Share:
    """This rank's weights for rows ``part = (lo, hi, B)`` of a global batch of B frames: ``(hi - lo) / B`` for the
    per-frame means, its lip-crop pixels / the batch's (``local_rects [hi - lo, 4]`` of its rows, ``global_rects``
    of all B; None = no lip term) for the lip L1, ``1 / world`` for the batch-independent regularisers."""
    lo, hi, total = part
    lips = 1.0
    if local_rects is not None and global_rects is not None:
        lips = sum(_crop_elements(r) for r in local_rects.tolist()) / sum(_crop_elements(r) for r in global_rects)
    return Share(frames=(hi - lo) / total, lips=lips, regularisers=1.0 / comm.world)


def reduce_step(comm: Comm, optimizer: torch.optim.Optimizer, strategy: DensifyStrategy, num_points: int,
                part: tuple[int, int, int], out, target: Tensor | None, loss: Tensor) -> tuple[Tensor, Tensor]:
    """After this rank's backward: sum over the ranks, in ONE all-reduce, the gradients of ``optimizer``'s parameters,
    the densification statistics of the batch (screen-gradient sums ``[N, 2]`` and visibility ``[N]``; the max
    radii stay per rank until :meth:`DensifyStrategy.synchronise`) and the loss / PSNR to log. The losses are
    share-weighted (:func:`batch_share`), so the summed gradient is that of the global batch's loss.

    ``out``: this rank's render (None: no rows), ``target [hi - lo, 3, H, W]``. Returns the global batch's loss and
    mean PSNR."""
    lo, hi, total = part
    device = loss.device
    params = [p for group in optimizer.param_groups for p in group["params"]]
    extras, rmax = [], None
    if strategy.enabled:
        if out is not None and out.means2d is not None and out.means2d.grad is not None:
            gsum, visible, rmax = strategy.batch_statistics(out.radii, out.means2d.grad)
        else:  # no rows here: this rank adds nothing
            gsum = torch.zeros(num_points, 2, device=device)
            visible, rmax = torch.zeros(num_points, device=device), torch.zeros(num_points, device=device)
        extras = [gsum, visible]
    figures = torch.zeros(2, device=device)
    figures[0] = loss.detach()
    if out is not None:
        figures[1] = psnr(out.image.detach().clamp(0, 1), target) * (hi - lo)
    comm.reduce_gradients(params, [*extras, figures])
    if extras:
        strategy.accumulate(extras[0], extras[1], rmax)
    return figures[0], figures[1] / total


class SilentMonitor:
    """The monitor of ranks other than 0: no bar, no logs, no callback (rank 0 alone reports)."""

    def update(self, *args: object) -> None:
        pass

    def close(self) -> None:
        pass


def no_frames():
    """The batches of a rank that takes no rows of the global batch (more ranks than frames, e.g. the coarse stage's
    one): None forever."""
    while True:
        yield None


__all__ = ["SilentMonitor", "batch_share", "no_frames", "reduce_step"]
