"""The gaussiantalker web application: training, video-generation and chat pages over the library, in process.

    python -m examples.webapp --workspace GaussianTalker --port 8000     # from the repository root

:func:`create_app` builds the FastAPI application; ``docs/webapp.md`` describes the pages, the JSON API,
the pluggable ASR / LLM / TTS stages of the chat page, the job model and the safety limits.
"""

from .app import create_app
from .backend.settings import Settings

__all__ = ["Settings", "create_app"]
