"""The offline tracker on a real clip: MediaPipe landmarks of the first 8 s of
``../shared/data/clips/MimicTalk__German_20s.mp4`` (a seated news presenter, 512 x 512, 25 fps).

There is no ground truth, so the test prints the two numbers that matter and asserts sane bounds:

* median landmark reprojection error < 2 px. MediaPipe's landmarks come from a 3D face mesh, so a
  correct fit explains them to well under a pixel (measured: ~0.3 px); 2 px (1 % of the ~210 px face)
  would mean a wrong pose or shape;
* frame-to-frame head rotation: median < 0.5°/frame and 99th percentile < 2°/frame. A presenter reading
  the news moves slowly; 0.5°/frame is 12.5°/s sustained, which would be a visible shake (measured:
  median ~0.26°, 95th percentile ~0.66°, MediaPipe's own landmark jitter included);
* a focal length between 300 and 4000 px (fields of view of 7° to 80° on 512 px) and a face in front of
  the camera.
"""

import importlib.util
import json

import pytest
import torch

from gaussiantalker.plyio import read_ply
from _tracking_helpers import GERMAN_CLIP, read_frames

pytestmark = [
    pytest.mark.skipif(not GERMAN_CLIP.is_file(), reason=f"real test clip not found at {GERMAN_CLIP}"),
    pytest.mark.skipif(importlib.util.find_spec("mediapipe") is None,
                       reason="mediapipe is not installed (pip install mediapipe==0.10.21)"),
]

SECONDS = 8


def test_offline_tracker_on_the_german_clip(tmp_path):
    from gaussiantalker.preprocess.landmarks import detect_landmarks
    from gaussiantalker.preprocess.tracking import TrackerConfig, track_landmarks

    frames = read_frames(GERMAN_CLIP, max_frames=25 * SECONDS)
    lms = detect_landmarks(frames)
    assert lms.found.all()
    res, out = track_landmarks(lms.points68, tmp_path, lms.image_size, backend="offline", frames=frames,
                               config=TrackerConfig(cpu_threads=1))
    err = res.reprojection_error()
    jitter = res.rotation_jitter_deg()
    print(f"\nGerman clip, first {SECONDS} s ({res.num_frames} frames): tracking {res.timings['total']:.1f} s, "
          f"focal {res.focal:.0f} px, median reprojection error {err.median():.3f} px (95th percentile "
          f"{err.flatten().quantile(0.95):.3f}), frame-to-frame rotation median {jitter.median():.3f}° / "
          f"95th {jitter.quantile(0.95):.3f}° / 99th {jitter.quantile(0.99):.3f}° / max {jitter.max():.3f}°")
    assert float(err.median()) < 2.0
    assert float(jitter.median()) < 0.5 and float(jitter.quantile(0.99)) < 2.0
    assert 300 < res.focal < 4000
    assert bool((res.trans[:, 2] < -1).all())  # in front of the camera (looking down -z)
    params = torch.load(out.track_params)
    assert params["euler"].shape == (res.num_frames, 3)
    val = json.loads(out.transforms_val.read_text())
    assert len(val["frames"]) == res.num_frames - int(res.num_frames * 10 / 11)
    assert 20000 <= len(read_ply(out.points3d).xyz) <= 40000
    assert out.preview.stat().st_size > 10000
