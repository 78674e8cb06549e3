"""The data passed between the model, the renderer and the pipelines: conditions in, Gaussians out."""

from __future__ import annotations

from dataclasses import dataclass

import torch

Tensor = torch.Tensor

#: SH degree-0 constant: ``colour = C0 * dc + 0.5``.
SH_C0 = 0.28209479177387814


def rgb_to_sh(rgb: Tensor) -> Tensor:
    """DC SH coefficient of a colour in [0, 1] (inverse of ``C0 * dc + 0.5``)."""
    return (rgb - 0.5) / SH_C0


def sh_to_rgb(sh: Tensor) -> Tensor:
    """Colour of a DC SH coefficient."""
    return sh * SH_C0 + 0.5


@dataclass
class Conditions:
    """Per-frame conditions of the fine stage for a batch of B frames."""

    audio: Tensor  # [B, 8, 16, D] audio-feature windows k-4 .. k+3 (time-major), zero-padded
    eye: Tensor  # [B, 1] blink in [0, 1]
    cam: Tensor  # [B, 12] world-to-camera R (row-major) then t, scene units
    lips: Tensor | None = None  # [B, K] tracked lip codes (training of a lip-code model); None = from the audio
    #: [B] voice activity in [0, 1] of each frame's audio (gaussiantalker.audio.voice); a lip-code model closes the
    #: predicted mouth where it is 0. None = not gated.
    voice: Tensor | None = None

    def __post_init__(self) -> None:
        a, e, c = self.audio, self.eye, self.cam
        if a.ndim != 4 or a.shape[1:3] != (8, 16):
            raise ValueError(f"Conditions.audio must have shape [B, 8, 16, D], got {tuple(a.shape)}")
        b = a.shape[0]
        if tuple(e.shape) != (b, 1):
            raise ValueError(f"Conditions.eye must have shape [{b}, 1], got {tuple(e.shape)}")
        if tuple(c.shape) != (b, 12):
            raise ValueError(f"Conditions.cam must have shape [{b}, 12], got {tuple(c.shape)}")
        if self.lips is not None and (self.lips.ndim != 2 or self.lips.shape[0] != b):
            raise ValueError(f"Conditions.lips must have shape [{b}, K], got {tuple(self.lips.shape)}")
        if self.voice is not None and tuple(self.voice.shape) != (b,):
            raise ValueError(f"Conditions.voice must have shape [{b}], got {tuple(self.voice.shape)}")

    @property
    def batch_size(self) -> int:
        return int(self.audio.shape[0])

    def to(self, device) -> Conditions:
        """The same conditions as float32 tensors on ``device``."""
        lips = None if self.lips is None else self.lips.to(device, torch.float32)
        voice = None if self.voice is None else self.voice.to(device, torch.float32)
        return Conditions(self.audio.to(device, torch.float32), self.eye.to(device, torch.float32),
                          self.cam.to(device, torch.float32), lips, voice)

    def rows(self, start: int, stop: int) -> Conditions:
        """The conditions of frames ``start .. stop-1``."""
        lips = None if self.lips is None else self.lips[start:stop]
        voice = None if self.voice is None else self.voice[start:stop]
        return Conditions(self.audio[start:stop], self.eye[start:stop], self.cam[start:stop], lips, voice)


@dataclass
class GaussianBatch:
    """B sets of N Gaussians, activated, ready for the rasterizer."""

    means: Tensor  # [B, N, 3] world positions (scene units)
    scales: Tensor  # [B, N, 3] positive
    rotations: Tensor  # [B, N, 4] unit quaternions w, x, y, z
    opacities: Tensor  # [B, N, 1] in (0, 1)
    shs: Tensor  # [B, N, 16, 3] SH coefficients (coefficient-major)
    sh_degree: int  # active SH degree (0..3)
    attention: Tensor | None = None  # [B, L, N, 4] attention over (audio, eye, cam, null), fine stage

    @property
    def batch_size(self) -> int:
        return int(self.means.shape[0])

    @property
    def num_points(self) -> int:
        return int(self.means.shape[1])


__all__ = ["SH_C0", "Conditions", "GaussianBatch", "rgb_to_sh", "sh_to_rgb"]
