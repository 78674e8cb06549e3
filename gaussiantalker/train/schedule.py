"""Learning rates of the parameter groups (reference §4.3)."""

from __future__ import annotations

import math

from ..camera import TRANSFORMS_SCALE
from ..config import TrainConfig
from ..model.talker import LIP_BASES


def log_linear(lr_init: float, lr_final: float, step: int, max_steps: int) -> float:
    """``exp((1-t) ln lr_init + t ln lr_final)`` with ``t = clip(step / max_steps, 0, 1)``."""
    if lr_init <= 0.0 or lr_final <= 0.0:
        return 0.0 if step >= max_steps else lr_init
    t = min(max(step / max(max_steps, 1), 0.0), 1.0)
    return math.exp((1.0 - t) * math.log(lr_init) + t * math.log(lr_final))


class LearningRates:
    """Per-group learning rate at a stage iteration (the counter restarts in each stage, as the original).

    ``xyz`` is scaled by the camera extent (scene units); ``deformation`` and ``grid`` by the extent in the
    original's tracker units (``extent / TRANSFORMS_SCALE``), so the networks get the original's step sizes
    although our scene is 10x smaller.
    """

    def __init__(self, config: TrainConfig, camera_extent: float) -> None:
        self.o = config.optimization
        self.extent = float(camera_extent)
        self.net_scale = self.extent / TRANSFORMS_SCALE

    def at(self, step: int) -> dict[str, float]:
        o, m = self.o, self.o.position_lr_max_steps
        lrs = {
            "xyz": log_linear(o.position_lr_init * self.extent, o.position_lr_final * self.extent, step, m),
            "deformation": log_linear(o.deformation_lr_init * self.net_scale, o.deformation_lr_final * self.net_scale,
                                      step, m),
            "grid": log_linear(o.grid_lr_init * self.net_scale, o.grid_lr_final * self.net_scale, step, m),
            "f_dc": o.feature_lr,
            "f_rest": o.feature_lr / 20.0,
            "opacity": o.opacity_lr,
            "scaling": o.scaling_lr,
            "rotation": o.rotation_lr,
        }
        # a lip basis moves an attribute per unit of (whitened) lip code: that attribute's learning rate
        lrs.update({name: lrs[group] for name, (_, _, group) in LIP_BASES.items()})
        lrs["lip_basis_xyz"] *= o.lip_basis_xyz_lr_scale
        return lrs

    def apply(self, optimizer, step: int) -> None:
        """Set the ``lr`` of every named group of ``optimizer`` for stage iteration ``step``."""
        lrs = self.at(step)
        for group in optimizer.param_groups:
            group["lr"] = lrs[group["name"]]


__all__ = ["LearningRates", "log_linear"]
