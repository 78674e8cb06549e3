"""Progress reports for callers that are not a terminal: web back ends, notebooks, job queues.

``preprocess``, ``train`` and ``render`` take ``callback=fn``; ``fn(Progress)`` is called from the thread
that does the work — at every preprocessing step, every 10 training iterations (the same figures the
progress bar shows) and every rendered batch. A callback that raises stops the work with that exception;
everything already saved stays (a stopped ``train`` resumes from its newest checkpoint), so raising is how
a caller cancels a job.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any, Callable, Dict, Optional


@dataclass(frozen=True)
class Progress:
    """One progress report.

    Attributes:
        stage: ``"preprocess"``, ``"coarse"``, ``"fine"``, ``"evaluate"`` or ``"render"``.
        step: the preprocessing step running (``"frames"``, ``"landmarks"``, ...), else ``""``.
        iteration: units done so far in this stage group (steps, global training iterations, frames).
        total: units in all (steps, all training iterations of both stages, frames).
        loss, psnr: smoothed training loss and PSNR (dB) on the training batches; None outside training.
        points: the number of Gaussians (training).
        elapsed: seconds since this call started.
        eta: estimated seconds left, None when unknown.
        message: a one-line description.
    """

    stage: str
    step: str = ""
    iteration: int = 0
    total: int = 0
    loss: Optional[float] = None
    psnr: Optional[float] = None
    points: Optional[int] = None
    elapsed: float = 0.0
    eta: Optional[float] = None
    message: str = ""

    @property
    def fraction(self) -> float:
        """Done share in [0, 1] (0 when the total is unknown)."""
        return min(max(self.iteration / self.total, 0.0), 1.0) if self.total > 0 else 0.0

    def as_dict(self) -> Dict[str, Any]:
        return {**asdict(self), "fraction": self.fraction}


ProgressCallback = Callable[[Progress], None]


def eta(done: int, total: int, elapsed: float, done_at_start: int = 0) -> Optional[float]:
    """Seconds left at the rate measured since the call started (None before the first unit)."""
    ran = done - done_at_start
    if ran <= 0 or elapsed <= 0:
        return None
    return max(total - done, 0) * elapsed / ran


__all__ = ["Progress", "ProgressCallback", "eta"]
