"""Background plate (reference §2.5) and GT / torso images (§2.6) on synthetic frames of known geometry.

The plate is checked against a KD-tree implementation of §2.5 written here (the original's method), the
torso layer against a per-column loop transcription of §2.6: both are independent of the vectorised
code under test.
"""

import cv2
import numpy as np
import pytest
from scipy.spatial import cKDTree

from gaussiantalker.preprocess.background import LazySequence, background_plate
from gaussiantalker.preprocess.parsing import BACKGROUND, HEAD, NECK, TORSO, write_parsing
from gaussiantalker.preprocess.torso import compose_gt_torso, torso_over_background

H, W = 72, 96


def _coded_background(frame_tag: int) -> np.ndarray:
    """A background whose colour names its pixel (R = row, G = column) and its frame (B)."""
    img = np.zeros((H, W, 3), dtype=np.uint8)
    img[:, :, 0] = np.arange(H)[:, None]
    img[:, :, 1] = np.arange(W)[None, :]
    img[:, :, 2] = frame_tag
    return img


def _disk_clip(num_frames: int):
    """A disk (the person) sliding left to right over the coded background; the foreground is grey."""
    yy, xx = np.mgrid[0:H, 0:W]
    frames, labels = [], []
    for i in range(num_frames):
        cx = 30 + 30 * i / max(1, num_frames - 1)
        disk = (yy - 40) ** 2 + (xx - cx) ** 2 <= 14 ** 2
        img = _coded_background(i)
        img[disk] = 128
        lab = np.zeros((H, W), dtype=np.uint8)
        lab[disk] = HEAD
        lab[disk & (yy > 46)] = TORSO
        frames.append(img)
        labels.append(lab)
    return frames, labels


def _reference_plate(frames, labels, step=20):
    """§2.5 the original's way: KD-tree distances to the foreground, argmax frame, 1-NN fill."""
    coords = np.stack(np.mgrid[0:H, 0:W], axis=-1).reshape(-1, 2)
    dists = []
    picks = list(range(0, len(frames), step))
    for k in picks:
        fg = np.argwhere(labels[k] != BACKGROUND)
        dists.append(cKDTree(fg).query(coords)[0])
    dists = np.stack(dists)  # [S, H*W]
    best = dists.max(axis=0)
    arg = dists.argmax(axis=0)
    colors = np.stack([frames[k] for k in picks]).reshape(len(picks), -1, 3)[arg, np.arange(H * W)]
    reliable = best > 5
    return colors.reshape(H, W, 3), reliable.reshape(H, W), best.reshape(H, W)


def test_plate_recovers_the_background_like_the_kdtree_method():
    frames, labels = _disk_clip(41)  # frames 0, 20, 40 are sampled
    accessed = []

    def get(i):
        accessed.append(i)
        return frames[i]

    plate = background_plate(LazySequence(len(frames), get), labels, step=20)
    assert sorted(set(accessed)) == [0, 20, 40], "only the sampled frames may be read"
    ref_colors, reliable, _ = _reference_plate(frames, labels)
    assert 0.5 < reliable.mean() < 1.0
    # reliable pixels: the exact background, from the frame where they were farthest from the person
    np.testing.assert_array_equal(plate[reliable], ref_colors[reliable])
    assert set(np.unique(plate[:, :, 2])) <= {0, 20, 40}
    # every other pixel: the colour of *a* nearest reliable pixel (the coded colour names its source)
    src = plate[~reliable][:, :2].astype(np.int64)
    assert reliable[src[:, 0], src[:, 1]].all()
    targets = np.argwhere(~reliable)
    nearest = cKDTree(np.argwhere(reliable)).query(targets)[0]
    np.testing.assert_allclose(np.hypot(*(src - targets).T), nearest, rtol=0, atol=1e-9)


def test_plate_from_files_equals_plate_from_arrays(tmp_path):
    frames, labels = _disk_clip(25)
    fpaths, lpaths = [], []
    for i, (img, lab) in enumerate(zip(frames, labels)):
        fpaths.append(tmp_path / f"{i}.png")
        cv2.imwrite(str(fpaths[-1]), img[:, :, ::-1])
        lpaths.append(write_parsing(tmp_path / "parsing" / f"{i}.png", lab))
    np.testing.assert_array_equal(background_plate(fpaths, lpaths, step=20), background_plate(frames, labels, step=20))
    # the default uses every frame given (the caller samples): the same as passing the sampled frames
    np.testing.assert_array_equal(background_plate(frames[::20], labels[::20]), background_plate(frames, labels, step=20))


def test_plate_errors():
    frames, labels = _disk_clip(3)
    with pytest.raises(ValueError, match="2 label maps"):
        background_plate(frames, labels[:2])
    with pytest.raises(ValueError, match="at least one"):
        background_plate([], [])
    with pytest.raises(ValueError, match="more than 5 px from the person"):
        background_plate(frames, [np.full((H, W), TORSO, np.uint8)] * 3)
    with pytest.raises(FileNotFoundError, match="nope.jpg"):
        background_plate(["nope.jpg"], labels[:1])


# ----------------------------------------------------------------------------------------- torso


def _person_labels() -> np.ndarray:
    lab = np.zeros((H, W), dtype=np.uint8)
    lab[8:40, 24:72] = HEAD
    lab[30:40, 40:56] = NECK  # the neck is carved into the bottom of the head
    lab[40:, 10:86] = TORSO
    lab[40:, 0:4] = TORSO  # a torso column with background above: no strip there
    return lab


def _reference_torso(rgb, lab, plate):
    """§2.6 transcribed with per-column loops (slow, obvious)."""
    head, neck, torso_part = lab == HEAD, lab == NECK, lab == TORSO
    gt = rgb.copy()
    gt[lab == BACKGROUND] = plate[lab == BACKGROUND]
    img = gt.copy()
    img[head] = plate[head]
    torso_strip = np.zeros((H, W), bool)
    for c in range(W):
        rows = np.nonzero(torso_part[:, c])[0]
        if rows.size and rows[0] > 0 and head[rows[0] - 1, c]:
            color = gt[rows[0], c].astype(np.float64)
            for k in range(9):
                if rows[0] - k >= 0:
                    img[rows[0] - k, c] = (color * 0.98 ** k).astype(np.uint8)
                    torso_strip[rows[0] - k, c] = True
    grown = neck.copy()
    for _ in range(3):  # vertical 3x1 dilation
        g = grown.copy()
        g[1:] |= grown[:-1]
        g[:-1] |= grown[1:]
        grown = g
    neck_strip = np.zeros((H, W), bool)
    for c in range(W):
        rows = np.nonzero(grown[:, c])[0]
        if rows.size and rows[0] > 0 and head[rows[0] - 1, c]:
            seed = rows[0] + min(rows.size - 1, 4)
            color = gt[seed, c].astype(np.float64)
            for k in range(53):
                if seed - k >= 0:
                    img[seed - k, c] = (color * 0.98 ** k).astype(np.uint8)
                    neck_strip[seed - k, c] = True
    blurred = cv2.GaussianBlur(img, (5, 5), 4)
    img[neck_strip] = blurred[neck_strip]
    alpha = grown | torso_part | neck_strip | torso_strip
    img[~alpha] = 0
    return gt, img, alpha, torso_strip, neck_strip


def test_compose_gt_torso_matches_the_column_loop_transcription():
    rng = np.random.default_rng(1)
    rgb = rng.integers(0, 256, (H, W, 3), dtype=np.uint8)
    plate = rng.integers(0, 256, (H, W, 3), dtype=np.uint8)
    lab = _person_labels()
    gt, torso = compose_gt_torso(rgb, lab, plate)
    ref_gt, ref_img, ref_alpha, torso_strip, neck_strip = _reference_torso(rgb, lab, plate)
    assert gt.shape == (H, W, 3) and torso.shape == (H, W, 4) and torso.dtype == np.uint8
    np.testing.assert_array_equal(gt, ref_gt)
    np.testing.assert_array_equal(torso[:, :, 3], ref_alpha * 255)
    np.testing.assert_array_equal(torso[:, :, :3], ref_img)
    # the geometry the reference spells out: a 9-row shoulder strip beside the neck (rows 32..40) under
    # the head, none where background is above the torso; the neck strip from row 31 (dilated top 27
    # pushed down by 4) up to the image top, as wide as the neck
    assert np.array_equal(np.nonzero(torso_strip.any(axis=1))[0], np.arange(32, 41))
    assert not torso_strip[:, 0:4].any() and torso_strip[32:41, 24:40].all() and torso_strip[32:41, 56:72].all()
    assert np.array_equal(np.nonzero(neck_strip.any(axis=0))[0], np.arange(40, 56))
    assert neck_strip[0:32, 40:56].all() and not neck_strip[32:].any()
    # head pixels outside the strips are transparent; background stays transparent
    assert (torso[10:20, 24:40, 3] == 0).all() and (torso[10:20, 24:40, :3] == 0).all()
    assert (torso[0:40, 0:4] == 0).all()


def test_compose_without_head_above_paints_nothing_and_checks_shapes():
    rgb = np.full((H, W, 3), 200, np.uint8)
    plate = np.zeros((H, W, 3), np.uint8)
    lab = np.zeros((H, W), np.uint8)
    lab[50:, :] = TORSO
    lab[0:10, 40:50] = NECK  # neck touching the top row: nothing above it, no wrap-around
    gt, torso = compose_gt_torso(rgb, lab, plate)
    alpha = torso[:, :, 3] > 0
    grown_neck = np.zeros((H, W), bool)
    grown_neck[0:13, 40:50] = True
    np.testing.assert_array_equal(alpha, (lab == TORSO) | grown_neck)
    assert (gt[20:40] == 0).all() and (gt[50:] == 200).all()
    with pytest.raises(ValueError, match="plate"):
        compose_gt_torso(rgb, lab, plate[:-1])
    with pytest.raises(ValueError, match="labels"):
        compose_gt_torso(rgb, lab[:-1], plate)


def test_torso_over_background():
    plate = np.full((4, 4, 3), 100, np.uint8)
    rgba = np.zeros((4, 4, 4), np.uint8)
    rgba[0, 0] = (200, 50, 0, 255)
    rgba[1, 1] = (200, 200, 200, 0)
    out = torso_over_background(rgba, plate)
    assert tuple(out[0, 0]) == (200, 50, 0) and tuple(out[1, 1]) == (100, 100, 100)
