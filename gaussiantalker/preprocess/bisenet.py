"""BiSeNet face parser (reference §2.4), our own definition, loading the original's ``79999_iter.pth``.

The module tree and parameter names follow the face-parsing.PyTorch checkpoint layout
(``cp.resnet.*``, ``cp.arm16``, ``cp.arm32``, ``cp.conv_head32``, ``cp.conv_head16``, ``cp.conv_avg``,
``ffm.*``, ``conv_out``, ``conv_out16``, ``conv_out32``), so the checkpoint loads strictly. There is no
ImageNet initialisation and no torchvision: every weight comes from the checkpoint.

CelebAMask-HQ classes: 0 background, 1 skin, 2-3 brows, 4-5 eyes, 6 glasses, 7-8 ears, 9 earring,
10 nose, 11 mouth, 12-13 lips, 14 neck, 15 necklace, 16 cloth, 17 hair, 18 hat.
"""

from __future__ import annotations

import os
import pickle
from pathlib import Path
from typing import Union

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

PathLike = Union[str, os.PathLike]

NUM_CLASSES = 19
INPUT_SIZE = 512
MEAN = (0.485, 0.456, 0.406)
STD = (0.229, 0.224, 0.225)

#: CelebAMask-HQ class -> our label (0 background, 1 head, 2 neck, 3 torso), reference §2.4.
CLASS_TO_LABEL = np.array([0] + [1] * 13 + [2, 2, 3, 1, 1], dtype=np.uint8)


class ConvBNReLU(nn.Module):
    """Conv (no bias) -> BatchNorm -> ReLU; parameters ``conv.*``, ``bn.*``."""

    def __init__(self, cin: int, cout: int, kernel: int = 3, stride: int = 1, padding: int = 1) -> None:
        super().__init__()
        self.conv = nn.Conv2d(cin, cout, kernel, stride, padding, bias=False)
        self.bn = nn.BatchNorm2d(cout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.relu(self.bn(self.conv(x)))


class BasicBlock(nn.Module):
    """ResNet basic block; ``downsample`` = (1x1 conv, BN) when the shape changes."""

    def __init__(self, cin: int, cout: int, stride: int = 1) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(cin, cout, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(cout)
        self.conv2 = nn.Conv2d(cout, cout, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(cout)
        self.downsample = None
        if cin != cout or stride != 1:
            self.downsample = nn.Sequential(nn.Conv2d(cin, cout, 1, stride, bias=False), nn.BatchNorm2d(cout))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = F.relu(self.bn1(self.conv1(x)))
        y = self.bn2(self.conv2(y))
        shortcut = x if self.downsample is None else self.downsample(x)
        return F.relu(shortcut + y)


def _stage(cin: int, cout: int, stride: int) -> nn.Sequential:
    return nn.Sequential(BasicBlock(cin, cout, stride), BasicBlock(cout, cout, 1))


class ResNet18Trunk(nn.Module):
    """ResNet-18 without the classifier; returns the 1/8, 1/16 and 1/32 features (128, 256, 512 ch)."""

    def __init__(self) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(3, 64, 7, 2, 3, bias=False)
        self.bn1 = nn.BatchNorm2d(64)
        self.layer1 = _stage(64, 64, 1)
        self.layer2 = _stage(64, 128, 2)
        self.layer3 = _stage(128, 256, 2)
        self.layer4 = _stage(256, 512, 2)

    def forward(self, x: torch.Tensor):
        x = F.max_pool2d(F.relu(self.bn1(self.conv1(x))), 3, 2, 1)
        x = self.layer1(x)
        f8 = self.layer2(x)
        f16 = self.layer3(f8)
        f32 = self.layer4(f16)
        return f8, f16, f32


class AttentionRefinement(nn.Module):
    """3x3 ConvBNReLU, then channel attention GAP -> 1x1 conv -> BN -> sigmoid."""

    def __init__(self, cin: int, cout: int) -> None:
        super().__init__()
        self.conv = ConvBNReLU(cin, cout, 3, 1, 1)
        self.conv_atten = nn.Conv2d(cout, cout, 1, bias=False)
        self.bn_atten = nn.BatchNorm2d(cout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        feat = self.conv(x)
        att = torch.sigmoid(self.bn_atten(self.conv_atten(feat.mean(dim=(2, 3), keepdim=True))))
        return feat * att


class ContextPath(nn.Module):
    """ResNet trunk + global context + ARMs; returns (1/8 trunk feature, 1/8 context, 1/16 context)."""

    def __init__(self) -> None:
        super().__init__()
        self.resnet = ResNet18Trunk()
        self.arm16 = AttentionRefinement(256, 128)
        self.arm32 = AttentionRefinement(512, 128)
        self.conv_head32 = ConvBNReLU(128, 128, 3, 1, 1)
        self.conv_head16 = ConvBNReLU(128, 128, 3, 1, 1)
        self.conv_avg = ConvBNReLU(512, 128, 1, 1, 0)

    def forward(self, x: torch.Tensor):
        f8, f16, f32 = self.resnet(x)
        avg = self.conv_avg(f32.mean(dim=(2, 3), keepdim=True))
        s32 = self.arm32(f32) + F.interpolate(avg, size=f32.shape[2:], mode="nearest")
        up32 = self.conv_head32(F.interpolate(s32, size=f16.shape[2:], mode="nearest"))
        s16 = self.arm16(f16) + up32
        up16 = self.conv_head16(F.interpolate(s16, size=f8.shape[2:], mode="nearest"))
        return f8, up16, up32


class FeatureFusion(nn.Module):
    """Concatenate, 1x1 ConvBNReLU, SE-like attention added back (``feat + feat·att``)."""

    def __init__(self, cin: int, cout: int) -> None:
        super().__init__()
        self.convblk = ConvBNReLU(cin, cout, 1, 1, 0)
        self.conv1 = nn.Conv2d(cout, cout // 4, 1, bias=False)
        self.conv2 = nn.Conv2d(cout // 4, cout, 1, bias=False)

    def forward(self, fsp: torch.Tensor, fcp: torch.Tensor) -> torch.Tensor:
        feat = self.convblk(torch.cat([fsp, fcp], dim=1))
        att = torch.sigmoid(self.conv2(F.relu(self.conv1(feat.mean(dim=(2, 3), keepdim=True)))))
        return feat + feat * att


class OutputHead(nn.Module):
    """3x3 ConvBNReLU then a 1x1 conv (no bias) to the classes."""

    def __init__(self, cin: int, cmid: int, classes: int) -> None:
        super().__init__()
        self.conv = ConvBNReLU(cin, cmid, 3, 1, 1)
        self.conv_out = nn.Conv2d(cmid, classes, 1, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv_out(self.conv(x))


class BiSeNet(nn.Module):
    """BiSeNet for face parsing: ``[B, 3, H, W]`` normalised RGB -> ``[B, 19, H, W]`` logits.

    The auxiliary 1/8-context and 1/16-context heads (``conv_out16``, ``conv_out32``) exist so the
    checkpoint loads strictly; they are not evaluated.
    """

    def __init__(self, classes: int = NUM_CLASSES) -> None:
        super().__init__()
        self.cp = ContextPath()
        self.ffm = FeatureFusion(256, 256)
        self.conv_out = OutputHead(256, 256, classes)
        self.conv_out16 = OutputHead(128, 64, classes)
        self.conv_out32 = OutputHead(128, 64, classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        f8, c8, _ = self.cp(x)
        logits = self.conv_out(self.ffm(f8, c8))
        return F.interpolate(logits, size=x.shape[2:], mode="bilinear", align_corners=True)


class CheckpointError(ValueError):
    """A weights file that is not a BiSeNet face-parsing checkpoint (the message names the file)."""


def load_bisenet(path: PathLike, device: str = "cpu") -> BiSeNet:
    """Load ``79999_iter.pth`` (or a checkpoint in its layout) into :class:`BiSeNet`, in eval mode.

    Accepts a plain state dict or one wrapped by ``DataParallel`` (``module.`` prefixes). BatchNorm
    ``num_batches_tracked`` buffers may be absent (older PyTorch); every other key must match.

    Raises:
        FileNotFoundError: the file does not exist.
        CheckpointError: unreadable, or keys / shapes that do not match (listed in the message).
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"BiSeNet weights not found: {path}")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except (RuntimeError, ValueError, EOFError, OSError, pickle.UnpicklingError) as exc:
        raise CheckpointError(f"{path}: not a readable PyTorch checkpoint ({exc})") from exc
    if isinstance(state, dict) and "state_dict" in state and isinstance(state["state_dict"], dict):
        state = state["state_dict"]
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise CheckpointError(f"{path}: expected a state dict of tensors")
    state = {k.removeprefix("module."): v for k, v in state.items()}
    model = BiSeNet()
    expected = model.state_dict()
    missing = [k for k in expected if k not in state and not k.endswith("num_batches_tracked")]
    unexpected = [k for k in state if k not in expected]
    wrong = [f"{k} {tuple(state[k].shape)} != {tuple(v.shape)}" for k, v in expected.items()
             if k in state and state[k].shape != v.shape]
    if missing or unexpected or wrong:
        parts = []
        for title, items in (("missing", missing), ("unexpected", unexpected), ("wrong shape", wrong)):
            if items:
                more = f" (+{len(items) - 5} more)" if len(items) > 5 else ""
                parts.append(f"{title}: {', '.join(items[:5])}{more}")
        raise CheckpointError(f"{path}: not a BiSeNet face-parsing checkpoint; " + "; ".join(parts))
    model.load_state_dict(state, strict=False)  # only num_batches_tracked may be left at its default
    return model.to(device).eval()


@torch.no_grad()
def parse_classes(model: BiSeNet, frames: np.ndarray, device: str = "cpu", input_size: int = INPUT_SIZE) -> np.ndarray:
    """``[B, H, W, 3]`` uint8 RGB -> ``[B, H, W]`` uint8 CelebAMask-HQ classes.

    As the original: bilinear resize to ``input_size`` (512) square, ImageNet normalisation, argmax,
    then the class map resized back to the frame size with nearest-neighbour.
    """
    frames = np.asarray(frames)
    if frames.ndim != 4 or frames.shape[3] != 3 or frames.dtype != np.uint8:
        raise ValueError(f"frames must be [B, H, W, 3] uint8 RGB, got {frames.shape} {frames.dtype}")
    h, w = frames.shape[1:3]
    x = torch.from_numpy(frames).to(device).permute(0, 3, 1, 2).float().div_(255.0)
    if (h, w) != (input_size, input_size):
        x = F.interpolate(x, size=(input_size, input_size), mode="bilinear", align_corners=False, antialias=True)
    mean = torch.tensor(MEAN, device=x.device).view(1, 3, 1, 1)
    std = torch.tensor(STD, device=x.device).view(1, 3, 1, 1)
    classes = model((x - mean) / std).argmax(dim=1, keepdim=True).float()  # [B, 1, 512, 512]
    if (h, w) != (input_size, input_size):
        classes = F.interpolate(classes, size=(h, w), mode="nearest")
    return classes[:, 0].to(torch.uint8).cpu().numpy()


def classes_to_labels(classes: np.ndarray) -> np.ndarray:
    """CelebAMask-HQ classes (any shape) -> our labels (0 background, 1 head, 2 neck, 3 torso)."""
    classes = np.asarray(classes)
    if classes.size and int(classes.max()) >= NUM_CLASSES:
        raise ValueError(f"classes must be < {NUM_CLASSES}, got {int(classes.max())}")
    return CLASS_TO_LABEL[classes.astype(np.intp)]


__all__ = [
    "CLASS_TO_LABEL",
    "NUM_CLASSES",
    "BiSeNet",
    "CheckpointError",
    "classes_to_labels",
    "load_bisenet",
    "parse_classes",
]
