"""Preprocessing: a talking-head video in, a training dataset folder out.

``preprocess(video, ...) -> Dataset`` runs the steps (frames, crop, audio and features, landmarks, blink,
tracking, parsing, background, torso, preview) with completion markers; ``plan_preprocess`` says what it
would do; ``Dataset.open(path)`` reads our folders and the original tools' folders alike.

Importing this package is cheap: MediaPipe, TensorFlow and OpenCV are imported only by the steps
that use them.
"""

from __future__ import annotations

import importlib
from typing import Any

_EXPORTS = {
    "preprocess": ".pipeline",
    "plan_preprocess": ".pipeline",
    "format_plan": ".pipeline",
    "PlannedStep": ".pipeline",
    "Dataset": ".dataset",
    "PreprocessSummary": ".dataset",
    "CropBox": ".crop",
    "PreprocessError": ".steps",
}

__all__ = ["CropBox", "Dataset", "PlannedStep", "PreprocessError", "PreprocessSummary", "format_plan",
           "plan_preprocess", "preprocess"]


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(module, __name__), name)
    globals()[name] = value
    return value


def __dir__():
    return sorted(list(globals()) + __all__)
