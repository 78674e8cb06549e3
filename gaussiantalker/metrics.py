"""Image and lip-sync metrics for evaluation (reference §8.4): PSNR, SSIM, LPIPS (when its weights are
present) and the landmark distance (LMD).

Images are ``[B, 3, H, W]`` (or ``[3, H, W]``) float in [0, 1], RGB; every metric returns one value per
image, ``[B]``.

LPIPS (Zhang et al. 2018, v0.1) is defined here: a frozen ImageNet backbone (VGG16 or AlexNet, with
torchvision's weight files) and the release's 1x1 linear layers (``vgg.pth`` / ``alex.pth``, keys
``lin<i>.model.1.weight``). All files come from the asset folder, nothing is downloaded; without them
:func:`make_lpips` returns None and says so once in the log.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Union

import torch
from torch import nn

from .losses import (
    VGG16_FILENAME,
    SlicedFeatures,
    VGG16Features,
    _as_batch,
    _check_pair,
    load_state_file,
)
from .losses import ssim as _ssim

log = logging.getLogger(__name__)

Tensor = torch.Tensor
PathLike = Union[str, os.PathLike]

__all__ = ["ALEXNET_FILENAMES", "LPIPS", "LPIPS_LINEAR_FILES", "landmark_distance", "lpips", "make_lpips", "psnr",
           "ssim"]

#: torchvision's AlexNet weight files (current and older name).
ALEXNET_FILENAMES = ("alexnet-owt-7be5be79.pth", "alexnet-owt-4df8aa71.pth")
#: The LPIPS v0.1 linear-layer files of the release, by backbone.
LPIPS_LINEAR_FILES = {"alex": "alex.pth", "vgg": "vgg.pth"}
# LPIPS's input scaling layer (inputs in [-1, 1]).
_SHIFT = (-0.030, -0.088, -0.188)
_SCALE = (0.458, 0.448, 0.450)


def psnr(pred: Tensor, target: Tensor) -> Tensor:
    """``20·log10(1 / sqrt(MSE))`` per image (data range 1), ``[B]``; capped at 100 dB for equal images."""
    _check_pair(pred, target)
    x, y = _as_batch(pred, "pred"), _as_batch(target, "target")
    mse = (x - y).pow(2).flatten(1).mean(1).clamp_min(1e-10)
    return -10.0 * torch.log10(mse)


def ssim(pred: Tensor, target: Tensor) -> Tensor:
    """SSIM per image, ``[B]`` (the loss's SSIM: 11x11 Gaussian window, σ 1.5)."""
    return _ssim(pred, target, reduction="none")


def landmark_distance(pred: Tensor, gt: Tensor, mouth_only: bool = True) -> Tensor:
    """Landmark distance (LMD): mean Euclidean distance in pixels between corresponding 68-point
    landmarks, per frame.

    Args:
        pred, gt: ``[B, 68, 2]`` landmarks (x, y in pixels) of the rendered and the real frames.
        mouth_only: only the 20 mouth points 48-67 (the usual lip-sync LMD); else all 68.
    Returns:
        ``[B]``.
    """
    if pred.shape != gt.shape or pred.ndim != 3 or tuple(pred.shape[1:]) != (68, 2):
        raise ValueError(f"pred and gt must both be [B, 68, 2], got {tuple(pred.shape)} and {tuple(gt.shape)}")
    sel = slice(48, 68) if mouth_only else slice(0, 68)
    return (pred[:, sel] - gt[:, sel]).norm(dim=-1).mean(1)


# ----------------------------------------------------------------------------------------------
# LPIPS
# ----------------------------------------------------------------------------------------------


class _AlexFeatures(SlicedFeatures):
    """torchvision's AlexNet ``features`` with the LPIPS taps (relu1 .. relu5)."""

    def __init__(self, weights: PathLike):
        m = "meta"  # built without random init, then filled from the file
        features = nn.Sequential(
            nn.Conv2d(3, 64, 11, stride=4, padding=2, device=m), nn.ReLU(), nn.MaxPool2d(3, 2),
            nn.Conv2d(64, 192, 5, padding=2, device=m), nn.ReLU(), nn.MaxPool2d(3, 2),
            nn.Conv2d(192, 384, 3, padding=1, device=m), nn.ReLU(),
            nn.Conv2d(384, 256, 3, padding=1, device=m), nn.ReLU(),
            nn.Conv2d(256, 256, 3, padding=1, device=m), nn.ReLU(),
        )
        super().__init__(features, weights, slices=(2, 5, 8, 10, 12))


_CHANNELS = {"alex": (64, 192, 384, 256, 256), "vgg": (64, 128, 256, 512, 512)}


def _load_linear(path: Path, channels) -> list:
    state = load_state_file(path)
    out = []
    for i, c in enumerate(channels):
        keys = [k for k in state if k.startswith(f"lin{i}.") and k.endswith("weight")]
        if len(keys) != 1:
            raise ValueError(f"{path}: expected one key 'lin{i}.model.1.weight' (LPIPS v0.1 layout), found {keys}")
        w = state[keys[0]]
        if tuple(w.shape) != (1, c, 1, 1):
            raise ValueError(f"{path}: {keys[0]} has shape {tuple(w.shape)}, expected (1, {c}, 1, 1)")
        out.append(w.float().clone())
    return out


class LPIPS(nn.Module):
    """Learned perceptual image patch similarity (v0.1), lower is more similar; per image ``[B]``.

    Args:
        net: ``"alex"`` or ``"vgg"``.
        backbone_weights: torchvision's AlexNet / VGG16 weight file.
        linear_weights: the LPIPS release's ``alex.pth`` / ``vgg.pth``.
    """

    def __init__(self, net: str, backbone_weights: PathLike, linear_weights: PathLike):
        super().__init__()
        if net not in _CHANNELS:
            raise ValueError(f"net must be 'alex' or 'vgg', got {net!r}")
        self.net = net
        if net == "vgg":
            self.backbone = VGG16Features(backbone_weights, upto=30, slices=(4, 9, 16, 23, 30))
        else:
            self.backbone = _AlexFeatures(backbone_weights)
        for i, w in enumerate(_load_linear(Path(linear_weights), _CHANNELS[net])):
            self.register_buffer(f"lin{i}", w)
        self.register_buffer("shift", torch.tensor(_SHIFT).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("scale", torch.tensor(_SCALE).view(1, 3, 1, 1), persistent=False)
        self.requires_grad_(False)
        self.eval()

    def forward(self, pred: Tensor, target: Tensor) -> Tensor:
        """``pred``, ``target``: ``[B, 3, H, W]`` in [0, 1]. Returns ``[B]``."""
        _check_pair(pred, target)
        x = ((_as_batch(pred, "pred") * 2 - 1) - self.shift) / self.scale
        y = ((_as_batch(target, "target") * 2 - 1) - self.shift) / self.scale
        total = x.new_zeros(x.shape[0])
        for i, (fx, fy) in enumerate(zip(self.backbone(x), self.backbone(y))):
            nx = fx / (fx.pow(2).sum(1, keepdim=True).sqrt() + 1e-10)
            ny = fy / (fy.pow(2).sum(1, keepdim=True).sqrt() + 1e-10)
            d = torch.nn.functional.conv2d((nx - ny) ** 2, getattr(self, f"lin{i}"))  # [B, 1, h, w]
            total = total + d.mean(dim=(1, 2, 3))
        return total


_LPIPS_CACHE: dict = {}
_LOGGED_ABSENT: set = set()


def _find_lpips_files(net: str, assets) -> tuple | None:
    from .assets import find_asset

    names = (VGG16_FILENAME,) if net == "vgg" else ALEXNET_FILENAMES
    backbone = next((p for p in (find_asset(n, assets) for n in names) if p is not None), None)
    linear = find_asset(LPIPS_LINEAR_FILES[net], assets)
    return (backbone, linear) if backbone is not None and linear is not None else None


def make_lpips(net: str = "auto", assets: PathLike | None = None, device=None) -> LPIPS | None:
    """An :class:`LPIPS` network from the asset folder, or None (logged once) when its files are absent.

    ``net="auto"`` takes AlexNet (LPIPS's default) when its two files are present, else VGG16.
    Files: ``alexnet-owt-7be5be79.pth`` + ``alex.pth``, or ``vgg16-397923af.pth`` + ``vgg.pth``.
    Networks are cached per (net, asset folder, device).
    """
    from .assets import asset_dir

    if net not in ("auto", "alex", "vgg"):
        raise ValueError(f"net must be 'auto', 'alex' or 'vgg', got {net!r}")
    choices = ("alex", "vgg") if net == "auto" else (net,)
    for name in choices:
        files = _find_lpips_files(name, assets)
        if files is None:
            continue
        key = (name, str(asset_dir(assets)), str(device))
        if key not in _LPIPS_CACHE:
            log.info("LPIPS-%s: %s + %s", name, files[0], files[1])
            model = LPIPS(name, files[0], files[1])
            _LPIPS_CACHE[key] = model.to(device) if device is not None else model
        return _LPIPS_CACHE[key]
    key = (net, str(asset_dir(assets)))
    if key not in _LOGGED_ABSENT:
        _LOGGED_ABSENT.add(key)
        log.info("LPIPS off: needs %s in %s (torchvision backbone + LPIPS v0.1 linear layers)",
                 " or ".join(f"{ALEXNET_FILENAMES[0] if n == 'alex' else VGG16_FILENAME} + {LPIPS_LINEAR_FILES[n]}"
                             for n in choices), asset_dir(assets))
    return None


def lpips(pred: Tensor, target: Tensor, net: str = "auto", assets: PathLike | None = None) -> Tensor | None:
    """LPIPS per image ``[B]``, or None when the weights are absent (see :func:`make_lpips`)."""
    model = make_lpips(net, assets, device=pred.device)
    if model is None:
        return None
    with torch.no_grad():
        return model(pred, target)
