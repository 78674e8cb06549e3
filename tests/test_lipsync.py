"""The lip-sync measures (gaussiantalker.lipsync) on constructed landmarks and signals."""

import numpy as np
import pytest

from gaussiantalker import lipsync as ls


def _face(opening: float, rng=None) -> np.ndarray:
    """A crude frontal 68-point face, 100 px from nose bridge (27) to chin (8), inner lips ``opening`` x 100 px
    apart."""
    p = np.zeros((68, 2))
    p[:17] = np.stack([np.linspace(-50, 50, 17), 40 + 40 * np.cos(np.linspace(-1.3, 1.3, 17))], 1)
    p[8] = (0, 100)
    p[27:31] = [(0, 0), (0, 10), (0, 20), (0, 30)]
    p[31:36] = [(-10, 35), (-5, 37), (0, 38), (5, 37), (10, 35)]
    p[36:42] = [(-35, 0), (-28, -4), (-22, -4), (-15, 0), (-22, 3), (-28, 3)]
    p[42:48] = p[36:42] * [-1, 1]
    p[17:27] = np.stack([np.linspace(-40, 40, 10), np.full(10, -15)], 1)
    gap = 100 * opening
    mid = 60.0
    p[48:60] = [(-25, mid), (-15, mid - 6), (-5, mid - 8), (0, mid - 7), (5, mid - 8), (15, mid - 6), (25, mid),
                (15, mid + 8 + gap), (5, mid + 10 + gap), (0, mid + 10 + gap), (-5, mid + 10 + gap),
                (-15, mid + 8 + gap)]
    p[60:68] = [(-20, mid), (-8, mid - 2), (0, mid - 2), (8, mid - 2), (20, mid), (8, mid - 2 + gap),
                (0, mid - 2 + gap), (-8, mid - 2 + gap)]
    if rng is not None:
        p = p + rng.normal(0, 0.05, p.shape)
    return p + [256, 200]


def _similar(p: np.ndarray, scale: float, angle: float, shift) -> np.ndarray:
    c, s = np.cos(angle), np.sin(angle)
    return (p - p.mean(0)) @ (scale * np.array([[c, -s], [s, c]])).T + p.mean(0) + shift


def test_mouth_opening_is_the_inner_gap_over_face_height_and_scale_free():
    lms = np.stack([_face(0.0), _face(0.1), _face(0.2)])
    op = ls.mouth_opening(lms)
    assert op == pytest.approx([0.0, 0.1, 0.2], abs=1e-9)
    moved = np.stack([_similar(f, 2.5, 0.2, (30, -12)) for f in lms])
    assert ls.mouth_opening(moved) == pytest.approx(op, abs=1e-9)
    lms[1] = np.nan
    assert np.isnan(ls.mouth_opening(lms)[1])


def test_pearson_lag_and_scores():
    t = np.arange(200)
    a = np.sin(t / 5.0)
    assert ls.pearson(a, 3 * a + 1) == pytest.approx(1.0)
    assert ls.pearson(a, -a) == pytest.approx(-1.0)
    assert np.isnan(ls.pearson(a, np.ones_like(a)))
    lagged = np.roll(a, 2)  # b[t] = a[t - 2]: b is 2 frames later
    k, r = ls.best_lag(a, lagged)
    assert k == 2 and r > 0.99
    assert ls.best_lag(a[:5], a[:5])[0] == 0  # short series: lags limited to keep 3 frames of overlap
    assert ls.lagged_pearson(a, lagged, 2) == pytest.approx(1.0)  # one chosen shift, as best_lag measures it
    assert ls.lagged_pearson(a, lagged, 0) == pytest.approx(ls.pearson(a, lagged))
    assert ls.lagged_pearson(lagged, a, -2) == pytest.approx(1.0)
    s = ls.lip_sync_scores(0.5 * a, a)
    assert s.pearson == pytest.approx(1.0) and s.amplitude_ratio == pytest.approx(0.5)
    with pytest.raises(ValueError):
        ls.lip_sync_scores(a, a[:-1])


def test_envelope_and_silences_follow_the_signal():
    sr, fps = 16000, 25.0
    rng = np.random.default_rng(0)
    x = np.zeros(sr * 4)
    x[: sr] = 0.3 * rng.standard_normal(sr)  # 1 s of loud noise, 2 s of silence, 1 s loud again
    x[3 * sr:] = 0.3 * rng.standard_normal(sr)
    env = ls.audio_envelope(x, 100, fps, sr)
    assert env.shape == (100,)
    assert env[10] > -15 and env[50] < -90
    quiet = ls.silent_frames(env)
    assert quiet[30:70].all() and not quiet[:24].any() and not quiet[78:].any()
    # a mouth that opens with the loud parts follows the envelope and is closed in the silence
    mouth = np.where(env > -50, 0.15, 0.01)
    sc = ls.audio_sync_scores(mouth, env)
    assert sc.envelope_pearson > 0.9 and sc.silence_opening == pytest.approx(0.01)
    assert ls.closed_gap(np.r_[np.full(20, 0.01), np.full(80, 0.2)]) == pytest.approx(0.01)


def test_lip_shape_removes_head_motion_and_the_code_tracks_the_opening():
    rng = np.random.default_rng(1)
    openings = rng.uniform(0, 0.25, 120)
    faces = np.stack([_face(o, rng) for o in openings])
    moved = np.stack([_similar(f, rng.uniform(0.8, 1.3), rng.uniform(-0.15, 0.15), rng.uniform(-20, 20, 2))
                      for f in faces])
    a, b = ls.lip_shape(faces, reference=faces[0]), ls.lip_shape(moved, reference=faces[0])
    assert a.shape == (120, 40)
    # the same mouths, whatever the head's scale, roll and position (up to the landmark noise)
    assert np.abs(a - b).max() < 0.01
    code = ls.LipCode.fit(ls.lip_shape(moved), 4)  # the clip's own mean face as the reference
    z = code.encode(ls.lip_shape(moved))
    assert z.std(0) == pytest.approx(np.ones(4), rel=1e-6)
    assert ls.pearson(z[:, 0], openings) > 0.99  # the dominant component is the opening, signed with it
    assert code.explained[0] > 0.9



def test_opening_readout_fits_a_linear_map_and_skips_missing_rows():
    rng = np.random.default_rng(0)
    codes = rng.standard_normal((50, 3))
    opening = codes @ np.array([0.02, -0.01, 0.005]) + 0.03
    codes[4, 1], opening[7] = np.nan, np.nan  # untracked frames: left out of the fit
    read = ls.opening_readout(codes, opening)
    new = rng.standard_normal((5, 3))
    assert np.allclose(read(new), new @ np.array([0.02, -0.01, 0.005]) + 0.03)
