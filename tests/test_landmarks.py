"""MediaPipe face-mesh landmarks: the 478 -> 68 mapping, .lms files, main-face following, missing faces.

The detection tests need ``mediapipe==0.10.21`` and the real clip in ``../shared/data``; they skip with
the reason otherwise. Importing MediaPipe takes ~15 s on this machine when TensorFlow is installed
(MediaPipe imports it), so the clip is decoded once per module.
"""

import importlib.util
import sys

import numpy as np
import pytest

from gaussiantalker.preprocess.landmarks import (
    IBUG68_MIRROR, MEDIAPIPE_TO_IBUG68, LandmarkResult, detect_landmarks, mediapipe_to_ibug68, read_lms,
    write_lms,
)
from _tracking_helpers import GERMAN_CLIP, read_frames

needs_mediapipe = pytest.mark.skipif(importlib.util.find_spec("mediapipe") is None,
                                     reason="mediapipe is not installed (pip install mediapipe==0.10.21)")
needs_clip = pytest.mark.skipif(not GERMAN_CLIP.is_file(), reason=f"real test clip not found at {GERMAN_CLIP}")


def test_mapping_is_a_mirror_symmetric_selection():
    assert len(MEDIAPIPE_TO_IBUG68) == 68 and len(set(MEDIAPIPE_TO_IBUG68)) == 68
    assert all(0 <= i < 468 for i in MEDIAPIPE_TO_IBUG68)
    mirror = np.array(IBUG68_MIRROR)
    assert sorted(IBUG68_MIRROR) == list(range(68))
    np.testing.assert_array_equal(mirror[mirror], np.arange(68))  # an involution
    assert set(np.nonzero(mirror == np.arange(68))[0]) == {8, 27, 28, 29, 30, 33, 51, 57, 62, 66}
    pts = np.zeros((3, 478, 3))
    pts[:, :, 0] = np.arange(478)
    np.testing.assert_array_equal(mediapipe_to_ibug68(pts)[0, :, 0], MEDIAPIPE_TO_IBUG68)
    with pytest.raises(ValueError, match="points478"):
        mediapipe_to_ibug68(np.zeros((10, 2)))


def test_lms_round_trip_and_errors(tmp_path):
    pts = np.random.default_rng(0).uniform(0, 512, (68, 2)).astype(np.float32)
    write_lms(tmp_path / "3.lms", pts)
    lines = (tmp_path / "3.lms").read_text().splitlines()
    assert len(lines) == 68 and all(len(line.split()) == 2 for line in lines)
    np.testing.assert_allclose(read_lms(tmp_path / "3.lms"), pts, atol=1e-5)
    with pytest.raises(ValueError, match="NaN"):
        write_lms(tmp_path / "4.lms", np.full((68, 2), np.nan))
    with pytest.raises(ValueError, match=r"\[68, 2\]"):
        write_lms(tmp_path / "5.lms", np.zeros((67, 2)))
    (tmp_path / "6.lms").write_text("1 2\n3 4\n")
    with pytest.raises(ValueError, match="68 lines"):
        read_lms(tmp_path / "6.lms")
    assert not list(tmp_path.glob(".*tmp"))


def test_missing_ranges():
    found = np.array([True, False, False, True, False])
    res = LandmarkResult(np.zeros((5, 478, 3)), np.zeros((5, 68, 2)), found, np.zeros(5, int), (8, 8), "video")
    assert res.missing_ranges() == [(1, 2), (4, 4)]
    assert res.landmarks68(1) is None and res.landmarks68(0).shape == (68, 2)


@pytest.fixture(scope="module")
def clip():
    if not GERMAN_CLIP.is_file():
        pytest.skip(f"real test clip not found at {GERMAN_CLIP}")
    return read_frames(GERMAN_CLIP, max_frames=100)


@needs_mediapipe
@needs_clip
def test_landmarks_on_the_real_clip(clip):
    res = detect_landmarks(clip[:60])
    assert "torchvision" in sys.modules, "torchvision must be imported before MediaPipe (TensorFlow crash)"
    assert res.points478.shape == (60, 478, 3) and res.points68.shape == (60, 68, 2)
    assert res.found.all() and (res.num_faces == 1).all()
    h, w = res.image_size
    p = res.points68
    assert (p[..., 0] > 0).all() and (p[..., 0] < w - 1).all() and (p[..., 1] > 0).all() and (p[..., 1] < h - 1).all()
    y = p[..., 1].mean(0)
    assert y[list(range(17, 27))].mean() < y[[36, 39, 42, 45]].mean() < y[30] < y[51] < y[57] < y[8]
    assert (p[:, 0, 0] < p[:, 16, 0]).all() and (p[:, 36, 0] < p[:, 45, 0]).all() and (p[:, 48, 0] < p[:, 54, 0]).all()
    # The mapping is mirror-symmetric: the 3D points, mirrored and re-ordered by IBUG68_MIRROR, fit back
    # onto themselves by a rotation (rotation-invariant, so the presenter's small head turn is fine).
    pts3 = res.points478[:, list(MEDIAPIPE_TO_IBUG68)].astype(np.float64)
    rms = []
    for q in pts3:
        a = q[list(IBUG68_MIRROR)] * [-1, 1, 1] - q[list(IBUG68_MIRROR)].mean(0) * [-1, 1, 1]
        b = q - q.mean(0)
        u, _, vt = np.linalg.svd(a.T @ b)
        r = u @ np.diag([1, 1, np.sign(np.linalg.det(u @ vt))]) @ vt
        rms.append(np.sqrt(((a @ r - b) ** 2).sum(1).mean()))
    face_width = np.linalg.norm(p[:, 0] - p[:, 16], axis=1).mean()
    print(f"mirror asymmetry of the 68-point mapping: {np.median(rms):.2f} px RMS (face width {face_width:.0f} px)")
    assert np.median(rms) < 0.02 * face_width


@needs_mediapipe
@needs_clip
def test_video_mode_is_smoother_than_static_mode(clip):
    """The reason video mode is the default: the detector box re-estimated per frame adds jitter."""
    acc = {}
    for mode in ("video", "static"):
        p = detect_landmarks(clip, mode=mode).points68.astype(np.float64)
        rigid = p[:, [27, 28, 29, 30, 36, 39, 42, 45]]
        acc[mode] = float(np.median(np.linalg.norm(rigid[2:] - 2 * rigid[1:-1] + rigid[:-2], axis=-1)))
    print(f"median landmark acceleration (px/frame²) on rigid points: {acc}")
    assert acc["video"] <= 1.05 * acc["static"]


@needs_mediapipe
@needs_clip
def test_no_face_is_reported_not_invented(clip):
    frames = np.concatenate([clip[:3], np.full((2,) + clip.shape[1:], 128, np.uint8), clip[3:5]])
    res = detect_landmarks(frames)
    assert res.found.tolist() == [True, True, True, False, False, True, True]
    assert res.missing_ranges() == [(3, 4)]
    assert res.landmarks68(3) is None and np.isnan(res.points478[3]).all()


def _two_faces(frame: np.ndarray, left: int, right: int) -> np.ndarray:
    """A 512 x 512 canvas with the presenter scaled to ``left`` px (left side) and ``right`` px (right)."""
    import cv2

    canvas = np.full((512, 512, 3), 40, np.uint8)
    a = cv2.resize(frame, (left, left), interpolation=cv2.INTER_AREA)
    b = cv2.resize(frame, (right, right), interpolation=cv2.INTER_AREA)
    canvas[512 - left:, :left] = a
    canvas[512 - right:, 512 - right:] = b[:, : min(right, 512)]
    return canvas


@needs_mediapipe
@needs_clip
def test_follows_the_main_face_when_another_face_grows(clip):
    """The larger face at the start is followed even when the other one becomes larger later."""
    sizes = np.linspace(0, 1, 16)
    frames = np.stack([_two_faces(clip[i], int(300 - 70 * s), int(210 + 70 * s)) for i, s in enumerate(sizes)])
    res = detect_landmarks(frames, max_faces=2)
    assert (res.num_faces == 2).sum() >= 12, res.num_faces
    assert res.found.all()
    centre_x = res.points68[:, 30, 0]
    assert (centre_x < 256).all(), centre_x  # always the face on the left
