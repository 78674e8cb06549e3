"""Native modules that crash the process when they are loaded after TensorFlow, and the one place that loads
them first.

Measured (Python 3.11, TensorFlow 2.19, this environment): ``import tensorflow`` followed by
``import torchvision`` (0.29) segfaults (DESIGN.md, "Measured crash"), and so does ``import tensorflow``
followed by ``import pylibsrtp`` (1.0, the SRTP library of aiortc, which the web app's live sessions use:
the crash is in its ``srtp_init()``). The other order works for both. Code about to import TensorFlow (the
DeepSpeech graph, MediaPipe) calls :func:`before_tensorflow`.
"""

from __future__ import annotations

import importlib
import importlib.util
import logging
import sys

log = logging.getLogger(__name__)

#: Importable modules that must be loaded before TensorFlow, in this order.
BEFORE_TENSORFLOW = ("torchvision", "pylibsrtp")


def before_tensorflow(names=BEFORE_TENSORFLOW) -> None:
    """Import each of ``names`` that is installed and not imported yet, unless TensorFlow is already loaded
    (then importing them would crash; only a debug message: most processes, e.g. ``train`` from the command line,
    never import them, and the web app calls this at start, before anything loads TensorFlow)."""
    for name in names:
        if name in sys.modules or importlib.util.find_spec(name) is None:
            continue
        if "tensorflow" in sys.modules:
            log.debug("TensorFlow was imported before %s; importing %s later in this process may crash it",
                      name, name)
            continue
        importlib.import_module(name)


__all__ = ["BEFORE_TENSORFLOW", "before_tensorflow"]
