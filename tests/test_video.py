"""The ffmpeg video writer/reader, the pose-sequence continuation and the paste-back blend."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from gaussiantalker.audio import write_wav
from gaussiantalker.camera import c2w_from_pose
from gaussiantalker.media import MediaError, probe
from gaussiantalker.render.paste import Crop, feather_mask, paste
from gaussiantalker.render.poses import PoseSchedule, blend_c2w, matrix_from_quat, quat_from_matrix
from gaussiantalker.render.video import iter_frames, read_frames, to_uint8, write_video


def _frames(n: int, h: int, w: int) -> np.ndarray:
    """Smooth gradients with a moving square: easy to encode, easy to recognise after decoding."""
    yy, xx = np.mgrid[0:h, 0:w]
    out = np.empty((n, h, w, 3), np.uint8)
    for i in range(n):
        out[i, ..., 0] = (xx * 255 // max(1, w - 1)).astype(np.uint8)
        out[i, ..., 1] = (yy * 255 // max(1, h - 1)).astype(np.uint8)
        out[i, ..., 2] = 40
        x0 = (3 * i) % max(1, w - 16)
        out[i, 8:24, x0:x0 + 16] = (250, 250, 250)
    return out


def _psnr(a: np.ndarray, b: np.ndarray) -> float:
    mse = np.mean((a.astype(np.float64) - b.astype(np.float64)) ** 2)
    return float(10 * np.log10(255.0 ** 2 / max(mse, 1e-12)))


def _tone(path, seconds: float, sample_rate: int = 16000):
    t = np.arange(int(seconds * sample_rate)) / sample_rate
    write_wav(path, (0.3 * np.sin(2 * np.pi * 220 * t)).astype(np.float32), sample_rate)
    return path


def test_write_video_with_audio_round_trip(tmp_path):
    frames = _frames(30, 48, 64)
    wav = _tone(tmp_path / "tone.wav", 1.2)
    out = tmp_path / "v.mp4"
    # A generator of batches of different sizes: the writer consumes it item by item.
    info = write_video(out, (frames[i:i + 7] for i in range(0, 30, 7)), 64, 48, audio=wav)
    assert info.frames == 30 and info.has_audio
    media = probe(out)
    assert len(media.video_streams) == 1 and len(media.audio_streams) == 1
    assert media.video.codec == "h264" and media.audio.codec == "aac"
    assert (media.video.width, media.video.height) == (64, 48)
    assert media.video.fps == pytest.approx(25.0)
    assert media.duration == pytest.approx(1.2, abs=0.06)
    back = read_frames(out)
    assert back.shape == frames.shape
    assert _psnr(back, frames) > 30.0
    assert sorted(p.name for p in tmp_path.iterdir()) == ["tone.wav", "v.mp4"]  # no temporary left


def test_yuv420p_and_faststart(tmp_path):
    out = tmp_path / "v.mp4"
    write_video(out, _frames(5, 32, 32), 32, 32)
    data = out.read_bytes()
    # +faststart: the index ('moov') comes before the media data ('mdat').
    assert 0 <= data.find(b"moov") < data.find(b"mdat")
    from gaussiantalker.media import run_ffmpeg

    text = run_ffmpeg(["-i", str(out)], check=False).stderr
    assert "yuv420p" in text and "h264" in text
    assert probe(out).audio is None


def test_odd_size_is_padded_to_even(tmp_path):
    out = tmp_path / "odd.mp4"
    write_video(out, _frames(4, 47, 63), 63, 47)
    v = probe(out).video
    assert (v.width, v.height) == (64, 48)
    back = read_frames(out)
    assert _psnr(back[:, :47, :63], _frames(4, 47, 63)) > 30.0


def test_failed_render_leaves_nothing(tmp_path):
    def broken():
        yield _frames(3, 32, 32)
        raise RuntimeError("renderer failed")

    out = tmp_path / "broken.mp4"
    with pytest.raises(RuntimeError, match="renderer failed"):
        write_video(out, broken(), 32, 32)
    assert list(tmp_path.iterdir()) == []


def test_bad_frames_and_audio_without_stream(tmp_path):
    with pytest.raises(ValueError, match="uint8"):
        write_video(tmp_path / "a.mp4", [np.zeros((32, 32, 3), np.float32)], 32, 32)
    silent = tmp_path / "silent.mp4"
    write_video(silent, _frames(3, 32, 32), 32, 32)
    with pytest.raises(MediaError, match="no audio stream"):
        write_video(tmp_path / "b.mp4", _frames(3, 32, 32), 32, 32, audio=silent)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["silent.mp4"]


def test_iter_frames_resamples_to_constant_rate(tmp_path):
    out = tmp_path / "v.mp4"
    write_video(out, _frames(25, 32, 32), 32, 32, fps=50.0)
    assert len(list(iter_frames(out, fps=25.0))) == 13  # 0.5 s at 25 fps (ffmpeg rounds the last frame up)
    assert len(list(iter_frames(out, max_frames=4))) == 4


def test_to_uint8_rounds_and_clamps():
    x = torch.tensor([-0.1, 0.0, 0.5 / 255, 0.499, 1.0, 1.3]).view(1, 1, 1, 6).expand(1, 3, 1, 6)
    out = to_uint8(x)
    assert out.shape == (1, 1, 6, 3) and out.dtype == np.uint8
    assert out[0, 0, :, 0].tolist() == [0, 0, 0, 127, 255, 255]  # 0.5/255*255 = 0.5 rounds to even
    assert np.array_equal(to_uint8(x.numpy()), out)


# --------------------------------------------------------------------------------------------------
# pose continuation


def test_schedule_first_pass_is_the_tracked_sequence():
    s = PoseSchedule(40)
    u = s.positions(np.arange(36))
    assert np.array_equal(u, np.arange(36, dtype=np.float64))
    i0, i1, w = s.neighbours(np.arange(36))
    assert np.array_equal(i0, np.arange(36)) and np.all(w == 0)


@pytest.mark.parametrize("length", [2, 3, 7, 12, 40, 113])
def test_schedule_ping_pong_has_no_velocity_jump(length):
    s = PoseSchedule(length)
    u = s.positions(np.arange(2000))
    assert u.min() >= 0 and u.max() <= length - 1
    v = np.diff(u)
    assert np.abs(v).max() <= 1.0 + 1e-12
    # A plain reflection changes velocity by 2 frames/frame at a turn; the blended turn by <= 1/turn.
    r = min(4.0, (length - 1) / 2)
    assert np.abs(np.diff(v)).max() <= 1.0 / r + 1e-9
    # It keeps moving back and forth: both ends of the sequence are visited again and again.
    assert (u[500:] < (length - 1) * 0.3).any() and (u[500:] > (length - 1) * 0.7).any()


def test_schedule_static_and_single_frame():
    assert np.all(PoseSchedule(30, "static").positions(np.arange(100)) == 0)
    assert np.all(PoseSchedule(1).positions(np.arange(100)) == 0)
    with pytest.raises(ValueError, match="pose must be"):
        PoseSchedule(10, "loop")
    with pytest.raises(ValueError, match="at least one frame"):
        PoseSchedule(0)


def test_schedule_is_stateless():
    s = PoseSchedule(23)
    whole = s.positions(np.arange(300))
    parts = np.concatenate([s.positions(np.arange(a, min(300, a + 7))) for a in range(0, 300, 7)])
    assert np.array_equal(whole, parts)


def _poses(n: int, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    euler = (torch.rand(n, 3, generator=g) - 0.5) * 0.6
    trans = torch.randn(n, 3, generator=g) + torch.tensor([0.0, 0.0, -6.0])
    return c2w_from_pose(euler.double(), trans.double())


def test_quaternion_round_trip():
    c2w = _poses(64)
    rot = c2w[:, :3, :3]
    q = quat_from_matrix(rot)
    assert torch.allclose(q.norm(dim=-1), torch.ones(64, dtype=q.dtype))
    assert torch.allclose(matrix_from_quat(q), rot, atol=1e-12)


def test_blend_c2w_endpoints_and_midpoint():
    c2w = _poses(8)
    a, b = c2w[:4], c2w[4:]
    assert torch.equal(blend_c2w(a, b, torch.zeros(4)), a)
    assert torch.equal(blend_c2w(a, b, torch.ones(4)), b)
    mid = blend_c2w(a, b, torch.full((4,), 0.5))
    rot = mid[:, :3, :3]
    assert torch.allclose(rot @ rot.transpose(1, 2), torch.eye(3, dtype=rot.dtype).expand(4, 3, 3), atol=1e-12)
    # Halfway in angle: the relative rotation from a to mid equals the one from mid to b.
    def angle(x, y):
        rel = x.transpose(1, 2) @ y
        return torch.acos(((rel.diagonal(dim1=1, dim2=2).sum(-1) - 1) / 2).clamp(-1, 1))

    assert torch.allclose(angle(a[:, :3, :3], rot), angle(rot, b[:, :3, :3]), atol=1e-9)
    assert torch.allclose(mid[:, :3, 3], (a[:, :3, 3] + b[:, :3, 3]) / 2)


# --------------------------------------------------------------------------------------------------
# paste-back


def test_feather_mask_and_paste():
    m = feather_mask(48)
    assert m.shape == (48, 48, 1)
    assert m[24, 24, 0] == 1.0 and m[0, 0, 0] < 0.05 and m[24, 0, 0] < 0.2
    src = np.full((100, 80, 3), 10, np.uint8)
    crop = Crop(x=16, y=30, size=48, source_width=80, source_height=100)
    rendered = np.full((24, 24, 3), 200, np.uint8)
    out = paste(src, rendered, crop)
    assert out.shape == src.shape
    assert np.all(out[:30] == 10) and np.all(out[:, :16] == 10)  # outside the crop: untouched
    assert np.all(out[54, 40] == 200)  # centre of the crop: the render
    edge = out[30:78, 16, 0]
    assert edge.max() < 60  # feathered edge stays close to the source
    with pytest.raises(ValueError, match="does not fit"):
        Crop.from_meta({"x": 50, "y": 0, "size": 48, "source_width": 80, "source_height": 100})
