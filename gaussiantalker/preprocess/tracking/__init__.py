"""Head tracking: per-frame head pose, one focal length and a canonical face point cloud.

Two models behind one interface (:class:`MorphableModel`):

* the offline default, :func:`landmark_model`: a subject-specific 68-point shape fitted to the video
  itself by a self-calibrating bundle adjustment (shape, per-frame pose, one focal length), starting
  from a generic frontal layout, with a small expression space learned from the clip for mouth, jaw,
  brows and lids, which cannot move the rigid landmarks — so speech does not leak into the pose;
* :class:`BFM2009`, the Basel Face Model 2009 as in the original, when its files are in the asset
  folder.

:func:`fit_landmarks` runs the stages of reference §2.8 on a landmark sequence (batched over frames,
CPU or GPU); :func:`track_landmarks` also writes ``track_params.pt``, ``transforms_{train,val}.json``,
``points3d.ply`` and a preview video.
"""

from .bfm import BFM2009, bfm_available, load_bfm2009
from .fit import TrackerConfig, TrackingResult, fit_landmarks
from .model import MorphableModel
from .outputs import TrackingOutputs, write_tracking_outputs
from .run import select_model, track_landmarks
from .surface import HeadSurface, dense_head_surface
from .template import generic_layout, generic_layout_mm, landmark_model

__all__ = [
    "MorphableModel", "BFM2009", "bfm_available", "load_bfm2009", "landmark_model", "generic_layout",
    "generic_layout_mm", "TrackerConfig", "TrackingResult", "fit_landmarks", "TrackingOutputs",
    "write_tracking_outputs", "select_model", "track_landmarks", "HeadSurface", "dense_head_surface",
]
