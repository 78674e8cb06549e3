"""Training: ``gaussiantalker.train.train(dataset, config=..., iterations=..., device=...) -> Model``.

Two stages (coarse canonical Gaussians, then the audio-driven fine stage), resumable checkpoints,
densification as a strategy object that keeps Adam's state consistent. See :mod:`.trainer`.
"""

from .trainer import Model, Trainer, TrainingError, train

__all__ = ["Model", "Trainer", "TrainingError", "train"]
