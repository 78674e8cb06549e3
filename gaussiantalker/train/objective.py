"""The training loss (reference §7.2 with §10's fixes) and the tri-plane regularisers."""

from __future__ import annotations

import logging
from dataclasses import dataclass

import torch

from ..config import TrainConfig
from ..losses import head_mask_term, lip_l1, make_perceptual_loss, ssim
from ..model.talker import GaussianTalkerModel
from ..model.triplane import l1_time_planes, plane_tv, time_smoothness
from ..render.rasterize import RenderOutput

Tensor = torch.Tensor
log = logging.getLogger(__name__)

#: Weights of the loss terms (the original's code: 0.8 L1 + 0.2 D-SSIM + 0.01 VGG + 0.4 lips + 0.4 mask).
W_L1, W_DSSIM, W_PERCEPTUAL, W_LIPS, W_MASK = 0.8, 0.2, 0.01, 0.4, 0.4


def psnr(pred: Tensor, target: Tensor) -> Tensor:
    """Mean over the batch of ``-10 log10(MSE)`` per image (images in [0, 1])."""
    mse = (pred - target).square().flatten(1).mean(1).clamp_min(1e-10)
    return (-10.0 * torch.log10(mse)).mean()


@dataclass(frozen=True)
class Share:
    """One rank's part of a data-parallel batch: the weights that make the ranks' losses add up to the loss of
    the whole batch (``docs/distributed.md``). The defaults (1, 1, 1) are a single-process run."""

    frames: float = 1.0  # B_rank / B: the per-frame means (L1, D-SSIM, mask, perceptual)
    lips: float = 1.0  # this rank's lip-crop elements / the whole batch's (the lip L1 weighs crops by their size)
    regularisers: float = 1.0  # 1 / world size: the batch-independent terms, counted once in the sum


@dataclass
class LossTerms:
    """The total loss and its parts."""

    total: Tensor
    parts: dict[str, Tensor]  # detached scalars (converted only when logged)


class Objective:
    """``0.8 L1 + 0.2 (1 - SSIM) [+ 0.01 VGG] [+ 0.4 lip-crop L1] [+ 0.4 L1(alpha, head mask)] + regularisers``.

    The head-mask term compares the rasterizer's accumulated alpha with the parsing head mask: it now has a
    gradient (the original's depth term had none). The perceptual term is on when the VGG16 weights are in
    the asset folder (else off, logged once by :func:`gaussiantalker.losses.make_perceptual_loss`).
    Regularisers: plane TV on every tri-plane plane; the K-planes time terms act on time planes, of which a
    3-D tri-plane has none (they are 0; logged once when their weight is non-zero).
    """

    def __init__(self, config: TrainConfig, device: torch.device, assets=None) -> None:
        self.o, self.h = config.optimization, config.hidden
        self.perceptual = make_perceptual_loss(assets, device)
        self.backends = {"perceptual": "vgg16" if self.perceptual is not None else "off"}
        for key in ("time_smoothness_weight", "l1_time_planes"):
            if getattr(self.h, key):
                log.info("%s=%g acts on time planes; the 3-D tri-plane has none, so the term is 0",
                         key, getattr(self.h, key))

    def __call__(self, out: RenderOutput, target: Tensor, head_mask: Tensor, lips_rect: Tensor,
                 model: GaussianTalkerModel, share: Share | None = None) -> LossTerms:
        """``out.image [B,3,H,W]`` vs ``target [B,3,H,W]``; ``head_mask [B,1,H,W]``; ``lips_rect [B,4]``.

        ``share``: this rank's part of a data-parallel batch (None: the whole batch); the totals of the ranks then
        add up to the loss of the whole batch (the parts stay this batch's own values)."""
        share = share or Share()
        img = out.image
        l1 = (img - target).abs().mean()
        s = ssim(img, target)
        total = share.frames * (W_L1 * l1 + W_DSSIM * (1.0 - s))
        parts = {"l1": l1.detach(), "ssim": s.detach()}
        if self.perceptual is not None:
            p = self.perceptual(img, target)
            total = total + share.frames * W_PERCEPTUAL * p
            parts["perceptual"] = p.detach()
        if self.o.lip_fine_tuning:
            lips = lip_l1(img, target, lips_rect)
            total = total + share.lips * float(self.o.lip_weight) * lips
            parts["lips"] = lips.detach()
        if self.o.depth_fine_tuning:
            mask = head_mask_term(out.alpha, head_mask, kind="alpha")
            total = total + share.frames * W_MASK * mask
            parts["mask"] = mask.detach()
        total = total + share.regularisers * self.regularisers(model, parts)
        return LossTerms(total, parts)

    def regularisers(self, model: GaussianTalkerModel, parts: dict[str, Tensor] | None = None) -> Tensor:
        h = self.h
        reg = model.xyz.new_zeros(())
        if h.plane_tv_weight:
            tv = plane_tv(model.triplane.planes())
            reg = reg + h.plane_tv_weight * tv
            if parts is not None:
                parts["plane_tv"] = tv.detach()
        time_planes = model.triplane.time_planes()
        if h.time_smoothness_weight and time_planes:
            reg = reg + h.time_smoothness_weight * time_smoothness(time_planes, reg)
        if h.l1_time_planes and time_planes:
            reg = reg + h.l1_time_planes * l1_time_planes(time_planes, reg)
        return reg


__all__ = ["LossTerms", "Objective", "Share", "psnr"]
