"""The GaussianTalker model: canonical Gaussians, tri-plane, condition encoders, spatial-audio attention.

``GaussianTalkerModel.deform(stage, cond) -> GaussianBatch``; saving and loading in :mod:`.io`.
"""

from .io import (
    IterationNotFoundError,
    LoadedModel,
    ModelNotFoundError,
    list_iterations,
    load_model,
)
from .talker import GAUSSIAN_PARAMS, STAGES, GaussianTalkerModel
from .types import Conditions, GaussianBatch

__all__ = [
    "GAUSSIAN_PARAMS",
    "STAGES",
    "Conditions",
    "GaussianBatch",
    "GaussianTalkerModel",
    "IterationNotFoundError",
    "LoadedModel",
    "ModelNotFoundError",
    "list_iterations",
    "load_model",
]
