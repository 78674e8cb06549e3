"""gaussiantalker: audio-driven 3D Gaussian talking heads (GaussianTalker, ACM MM 2024) as a library.

```python
import gaussiantalker as gt
data = gt.preprocess("obama.mp4", workspace="GaussianTalker", device="cuda:0")
model = gt.train(data, iterations=10000, config="64_dim_1_transformer", device="cuda:0")
video = gt.render(model, audio="speech.wav", batch_size=128)   # RenderResult; .path is an mp4 with sound
talker = gt.load("GaussianTalker/output/obama")                 # load once, render many
for frame in talker.stream(audio_chunks): ...                   # [H, W, 3] uint8 frames as audio arrives
```

Importing this package is cheap: it compiles nothing, downloads nothing, and imports the pipelines (and
heavy optional dependencies such as TensorFlow or MediaPipe) only when a verb runs.

Four of the verbs share their name with a subpackage (``gaussiantalker.preprocess``, ``.train``,
``.render``, ``.evaluate``). So that both spellings keep working — ``gt.train(...)`` and
``import gaussiantalker.train.loop`` — the package attribute *is* the subpackage, made callable: calling it
calls the verb of :mod:`gaussiantalker.api` (same arguments, same docstring there).
"""

import importlib
import inspect
import sys
import types

__version__ = "0.1.0.dev0"

# verb -> the subpackage that shares its name (None: no subpackage of that name)
_VERBS = {"preprocess": "preprocess", "train": "train", "render": "render", "evaluate": "evaluate", "load": None,
          "export": "export"}

# result type -> module that defines it (imported on first access)
_TYPES = {
    "Dataset": "gaussiantalker.preprocess.dataset",
    "Model": "gaussiantalker.train",
    "RenderResult": "gaussiantalker.infer",
    "Talker": "gaussiantalker.infer",
    "EvaluationResult": "gaussiantalker.evaluate",
    "ExportResult": "gaussiantalker.export",
    "Progress": "gaussiantalker.progress",
    "LiveSession": "gaussiantalker.live",
}

__all__ = ["__version__", "preprocess", "train", "render", "load", "evaluate", "export", *_TYPES]


class _VerbModule(types.ModuleType):
    """A subpackage that can be called: ``gaussiantalker.train(...)`` runs :func:`gaussiantalker.api.train`."""

    def __call__(self, *args, **kwargs):
        from . import api

        return getattr(api, self.__name__.rpartition(".")[2])(*args, **kwargs)


def _make_callable(module: types.ModuleType) -> None:
    if type(module) is types.ModuleType:
        from . import api

        module.__class__ = _VerbModule
        module.__signature__ = inspect.signature(getattr(api, module.__name__.rpartition(".")[2]))


class _Package(types.ModuleType):
    """This package's module type: when the import system binds one of the verb subpackages as an attribute
    (it does so the first time the subpackage is imported), the subpackage is made callable first."""

    def __setattr__(self, name, value):
        if _VERBS.get(name) == name and isinstance(value, types.ModuleType):
            _make_callable(value)
        super().__setattr__(name, value)


sys.modules[__name__].__class__ = _Package


def __getattr__(name):
    if name in _VERBS:
        if _VERBS[name] is None:
            from . import api

            return getattr(api, name)
        module = importlib.import_module(f"{__name__}.{name}")  # binds the (callable) subpackage
        _make_callable(module)
        return module
    if name in _TYPES:
        return getattr(importlib.import_module(_TYPES[name]), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def __dir__():
    return sorted(set(globals()) | set(__all__))
