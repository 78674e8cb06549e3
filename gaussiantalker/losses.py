"""Training losses (reference §7.2): L1, SSIM, the lip-crop L1, the head-mask term, and the optional VGG16
perceptual loss.

Images are ``[B, 3, H, W]`` (or ``[3, H, W]``) float in [0, 1], RGB. The perceptual loss needs the
torchvision ImageNet VGG16 weights ``vgg16-397923af.pth`` in the asset folder; nothing is downloaded:
:func:`make_perceptual_loss` returns None (logged once) when the file is absent. The VGG16 layers are
defined here with torchvision's state-dict keys (``features.<i>.weight``), so torchvision is not needed.
"""

from __future__ import annotations

import logging
import os
import pickle
from collections.abc import Sequence
from pathlib import Path
from typing import Union

import torch
import torch.nn.functional as F
from torch import nn

log = logging.getLogger(__name__)

Tensor = torch.Tensor
PathLike = Union[str, os.PathLike]

__all__ = [
    "IMAGENET_MEAN", "IMAGENET_STD", "VGG16_FILENAME", "PerceptualLoss", "VGG16Features", "gaussian_window",
    "head_mask_term", "l1", "lip_l1", "load_conv_weights", "load_state_file", "make_perceptual_loss", "ssim",
]

#: torchvision's file name of the ImageNet VGG16 weights (looked up in the asset folder).
VGG16_FILENAME = "vgg16-397923af.pth"
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
SSIM_C1 = 0.01**2
SSIM_C2 = 0.03**2


def _check_pair(pred: Tensor, target: Tensor, name: str = "pred") -> None:
    if pred.shape != target.shape:
        raise ValueError(f"{name} and target must have the same shape, got {tuple(pred.shape)} and "
                         f"{tuple(target.shape)}")


def _as_batch(img: Tensor, name: str) -> Tensor:
    if img.ndim == 3:
        return img[None]
    if img.ndim != 4:
        raise ValueError(f"{name} must be [B, C, H, W] or [C, H, W], got {tuple(img.shape)}")
    return img


def l1(pred: Tensor, target: Tensor) -> Tensor:
    """Mean absolute error over all elements (a scalar)."""
    _check_pair(pred, target)
    return (pred - target).abs().mean()


def gaussian_window(size: int = 11, sigma: float = 1.5, dtype=torch.float32, device=None) -> Tensor:
    """Normalised 2-D Gaussian window ``[size, size]`` (outer product of the 1-D window)."""
    x = torch.arange(size, dtype=torch.float64, device=device) - (size - 1) / 2.0
    g = torch.exp(-(x**2) / (2.0 * sigma**2))
    g = g / g.sum()
    return (g[:, None] * g[None, :]).to(dtype)


def ssim(pred: Tensor, target: Tensor, window_size: int = 11, sigma: float = 1.5,
         reduction: str = "mean") -> Tensor:
    """Structural similarity as in the reference (§7.2) and 3DGS: an 11x11 Gaussian window (σ 1.5)
    applied per channel with zero padding, ``C1 = 0.01²``, ``C2 = 0.03²`` (data range 1).

    Args:
        pred, target: ``[B, C, H, W]`` or ``[C, H, W]`` images in [0, 1].
        reduction: ``"mean"`` (a scalar over everything) or ``"none"`` (``[B]``, the mean per image).
    Returns:
        A scalar, or ``[B]``.
    """
    _check_pair(pred, target)
    x, y = _as_batch(pred, "pred"), _as_batch(target, "target")
    if reduction not in ("mean", "none"):
        raise ValueError(f"reduction must be 'mean' or 'none', got {reduction!r}")
    b, c = x.shape[:2]
    pad = window_size // 2
    # The 2-D window is the outer product of a 1-D one, and zero padding commutes with the split: two
    # 1-D passes (11 taps each instead of 121) give the same blur. The five blurred maps go through one
    # convolution per pass ([B, 5C, H, W]).
    g = torch.exp(-((torch.arange(window_size, dtype=torch.float64) - (window_size - 1) / 2.0) ** 2) / (2.0 * sigma**2))
    g = (g / g.sum()).to(dtype=x.dtype, device=x.device)
    k = 5 * c
    stacked = torch.cat([x, y, x * x, y * y, x * y], dim=1)  # [B, 5C, H, W]
    blurred = F.conv2d(stacked, g.view(1, 1, window_size, 1).expand(k, 1, window_size, 1), padding=(pad, 0), groups=k)
    blurred = F.conv2d(blurred, g.view(1, 1, 1, window_size).expand(k, 1, 1, window_size), padding=(0, pad), groups=k)
    mu_x, mu_y, e_xx, e_yy, e_xy = blurred.view(b, 5, c, *blurred.shape[2:]).unbind(1)
    mu_xx, mu_yy, mu_xy = mu_x * mu_x, mu_y * mu_y, mu_x * mu_y
    var_x = e_xx - mu_xx
    var_y = e_yy - mu_yy
    cov = e_xy - mu_xy
    num = (2 * mu_xy + SSIM_C1) * (2 * cov + SSIM_C2)
    den = (mu_xx + mu_yy + SSIM_C1) * (var_x + var_y + SSIM_C2)
    smap = num / den  # [B, C, H, W]
    return smap.mean() if reduction == "mean" else smap.flatten(1).mean(1)


def lip_l1(render: Tensor, target: Tensor, rects: Tensor | Sequence[Sequence[int]]) -> Tensor:
    """L1 over the lip crops of a batch (the original concatenates the crops, so larger crops weigh more).

    Args:
        render, target: ``[B, 3, H, W]``.
        rects: ``[B, 4]`` (or B tuples) ``(r0, r1, c0, c1)``: rows ``r0:r1``, columns ``c0:c1``.
    Returns:
        A scalar: the sum of absolute differences over all crops / the number of cropped elements.
    """
    _check_pair(render, target, "render")
    if render.ndim != 4:
        raise ValueError(f"render must be [B, 3, H, W], got {tuple(render.shape)}")
    rects = torch.as_tensor(rects, dtype=torch.long).reshape(-1, 4).tolist()
    if len(rects) != render.shape[0]:
        raise ValueError(f"rects must hold one (r0, r1, c0, c1) per image: {len(rects)} for {render.shape[0]}")
    total = render.new_zeros(())
    count = 0
    for b, (r0, r1, c0, c1) in enumerate(rects):
        if not (0 <= r0 < r1 <= render.shape[2] and 0 <= c0 < c1 <= render.shape[3]):
            raise ValueError(f"lip rect {b} {(r0, r1, c0, c1)} is empty or outside the {render.shape[2]}x"
                             f"{render.shape[3]} image")
        diff = render[b, :, r0:r1, c0:c1] - target[b, :, r0:r1, c0:c1]
        total = total + diff.abs().sum()
        count += diff.numel()
    return total / count


def head_mask_term(alpha_or_depth: Tensor, head_mask: Tensor, kind: str = "alpha") -> Tensor:
    """The "depth mask" term of the reference, with a real gradient (reference §10.1).

    ``kind="alpha"`` (the fix): ``L1(alpha, head_mask)``, the rendered coverage against the parsing head
    mask. ``kind="depth"``: the original's formula ``L1(head_mask, sigmoid(depth)·2 − 1)``.

    Args:
        alpha_or_depth: ``[B, 1, H, W]`` rasterizer alpha or depth.
        head_mask: ``[B, 1, H, W]`` in {0, 1}.
    """
    _check_pair(alpha_or_depth, head_mask, "alpha_or_depth")
    if kind == "alpha":
        return (alpha_or_depth - head_mask).abs().mean()
    if kind == "depth":
        return (head_mask - (torch.sigmoid(alpha_or_depth) * 2.0 - 1.0)).abs().mean()
    raise ValueError(f"kind must be 'alpha' or 'depth', got {kind!r}")


# ----------------------------------------------------------------------------------------------
# VGG16 features and the perceptual loss
# ----------------------------------------------------------------------------------------------

# torchvision's VGG16 "features": channels of each conv, "M" = 2x2 max pool.
_VGG16_CFG = (64, 64, "M", 128, 128, "M", 256, 256, 256, "M", 512, 512, 512, "M", 512, 512, 512, "M")


def _vgg16_layers(upto: int) -> nn.Sequential:
    layers = []
    cin = 3
    for v in _VGG16_CFG:
        if v == "M":
            layers.append(nn.MaxPool2d(2, 2))
        else:
            layers += [nn.Conv2d(cin, v, 3, padding=1, device="meta"), nn.ReLU(inplace=False)]
            cin = v
    return nn.Sequential(*layers[:upto])


def load_state_file(path: PathLike) -> dict:
    """A state dict read with ``torch.load(weights_only=True)`` on the CPU.

    Raises:
        FileNotFoundError: no such file.
        ValueError: not a readable weights file, or not a dict (the message names the file).
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"weights file {path} does not exist")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except (RuntimeError, OSError, EOFError, ValueError, pickle.UnpicklingError) as e:  # what torch.load raises
        raise ValueError(f"{path}: not a readable PyTorch weights file ({e})") from None
    if not isinstance(state, dict):
        raise ValueError(f"{path}: expected a state dict, got {type(state).__name__}")  # noqa: TRY004 (bad file)
    return state


def load_conv_weights(module: nn.Sequential, path: PathLike, prefix: str = "features.") -> None:
    """Copy ``<prefix><i>.weight`` / ``.bias`` of a torchvision state-dict file into the convolutions of
    ``module`` (indices as in torchvision). Loaded with ``weights_only=True``.

    Raises:
        ValueError: the file is not a state dict, or a needed key is missing or has the wrong shape
            (the message names the file and the key).
    """
    path = Path(path)
    state = load_state_file(path)
    with torch.no_grad():
        for i, layer in enumerate(module):
            if not isinstance(layer, nn.Conv2d):
                continue
            for name in ("weight", "bias"):
                key = f"{prefix}{i}.{name}"
                if key not in state:
                    raise ValueError(f"{path}: missing key {key!r} (is this torchvision's file?)")
                src, dst = state[key], getattr(layer, name)
                if tuple(src.shape) != tuple(dst.shape):
                    raise ValueError(f"{path}: {key} has shape {tuple(src.shape)}, expected {tuple(dst.shape)}")
                dst.copy_(src)


class SlicedFeatures(nn.Module):
    """A frozen feature extractor (eval mode) that returns the activations at the ends of ``slices``
    (layer-index boundaries of ``features``); conv weights come from a torchvision file."""

    def __init__(self, features: nn.Sequential, weights: PathLike, slices: Sequence[int]):
        super().__init__()
        self.features = features.to_empty(device="cpu")  # built on "meta": no random init
        load_conv_weights(self.features, weights)
        self.slices = tuple(slices)
        self.requires_grad_(False)
        self.eval()

    def forward(self, x: Tensor) -> list:
        out, start = [], 0
        for end in self.slices:
            for layer in self.features[start:end]:
                x = layer(x)
            out.append(x)
            start = end
        return out


class VGG16Features(SlicedFeatures):
    """torchvision's VGG16 ``features`` (first ``upto`` layers) with the weights of a torchvision file,
    returning the activations at the ends of ``slices``. Inputs already normalised."""

    def __init__(self, weights: PathLike, upto: int = 23, slices: Sequence[int] = (4, 9, 16, 23)):
        super().__init__(_vgg16_layers(upto), weights, slices)


class PerceptualLoss(nn.Module):
    """VGG16 perceptual loss (reference §7.2): ImageNet-normalised inputs, bilinearly resized to 224x224,
    the sum over relu1_2, relu2_2, relu3_3 and relu4_3 of the mean L1 feature difference.

    Args:
        weights: torchvision's ``vgg16-397923af.pth`` (keys ``features.<i>.weight`` / ``.bias``).
        resize: side the inputs are resized to before the network (224 as the original), None to keep them.
    """

    def __init__(self, weights: PathLike, resize: int | None = 224):
        super().__init__()
        self.vgg = VGG16Features(weights, upto=23, slices=(4, 9, 16, 23))
        self.resize = resize
        self.weights = Path(weights)
        self.register_buffer("mean", torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(IMAGENET_STD).view(1, 3, 1, 1), persistent=False)

    def train(self, mode: bool = True) -> PerceptualLoss:
        super().train(mode)
        self.vgg.eval()  # frozen network, always in eval mode
        return self

    def forward(self, pred: Tensor, target: Tensor) -> Tensor:
        """``pred``, ``target``: ``[B, 3, H, W]`` in [0, 1]. Returns a scalar."""
        _check_pair(pred, target)
        x = (_as_batch(pred, "pred") - self.mean) / self.std
        y = (_as_batch(target, "target") - self.mean) / self.std
        if self.resize:
            size = (int(self.resize), int(self.resize))
            x = F.interpolate(x, size=size, mode="bilinear", align_corners=False)
            y = F.interpolate(y, size=size, mode="bilinear", align_corners=False)
        loss = x.new_zeros(())
        for fx, fy in zip(self.vgg(x), self.vgg(y)):
            loss = loss + (fx - fy).abs().mean()
        return loss


_LOGGED_ABSENT: set = set()


def make_perceptual_loss(assets: PathLike | None = None, device=None) -> PerceptualLoss | None:
    """The VGG16 perceptual loss when ``vgg16-397923af.pth`` is in the asset folder, else None (logged
    once per asset folder: the loss is then off)."""
    from .assets import asset_dir, find_asset

    path = find_asset(VGG16_FILENAME, assets)
    if path is None:
        key = str(asset_dir(assets))
        if key not in _LOGGED_ABSENT:
            _LOGGED_ABSENT.add(key)
            log.info("perceptual loss off: %s not found in %s (torchvision's ImageNet VGG16 weights)",
                     VGG16_FILENAME, asset_dir(assets))
        return None
    log.info("perceptual loss: VGG16 weights %s", path)
    loss = PerceptualLoss(path)
    return loss.to(device) if device is not None else loss
