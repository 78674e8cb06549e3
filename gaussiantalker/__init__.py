"""gaussiantalker: audio-driven 3D Gaussian talking heads (GaussianTalker, ACM MM 2024) as a library.

Importing this package is cheap: it compiles nothing, downloads nothing, and imports heavy optional
dependencies (TensorFlow, MediaPipe, ...) only when a step that needs them runs.
"""

__version__ = "0.1.0.dev0"

__all__ = ["__version__"]
