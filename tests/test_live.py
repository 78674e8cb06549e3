"""gaussiantalker.live.LiveSession without any network: listening frames, speech on the clock, the audio
timeline, queued replies, barge-in, and one pose cursor across the switches (the tiny synthetic model)."""

from __future__ import annotations

import numpy as np
import pytest

import _webapp_helpers as H
from gaussiantalker.infer import load
from gaussiantalker.live import PAD_AFTER, IdleFrames, LiveSession, _resample


@pytest.fixture(scope="module")
def talker(tmp_path_factory):
    root = H.make_workspace(tmp_path_factory.mktemp("live_ws"))
    return load(root / "output" / "tiny", device="cpu")


def voice(seconds: float) -> np.ndarray:
    t = np.arange(int(seconds * 16000)) / 16000
    env = np.clip(np.sin(2 * np.pi * 3.0 * t), 0, None) ** 0.5
    return (0.2 * env * sum(np.sin(2 * np.pi * 140 * k * t) / k for k in range(1, 6))).astype(np.float32)


def frames(session: LiveSession, start: int, stop: int):
    """Frames start..stop-1, each waited for (all fresh: no clock)."""
    return [session.frame(n, wait=60.0) for n in range(start, stop)]


def test_listening_speaking_listening_on_one_pose_cursor(talker):
    with LiveSession(talker, loop_frames=1, ahead=2) as s:
        idle = frames(s, 0, 6)
        assert all(f.fresh and not f.speaking for f in idle)
        assert all(np.array_equal(f.image, idle[0].image) for f in idle)  # still head, mouth at rest
        assert idle[0].image.shape == (talker.height, talker.width, 3)
        utt = s.say(voice(1.0))
        assert utt.start_frame >= s.playhead + 3  # LEAD frames after the one on screen, more if rendering is slow
        seq = frames(s, 6, utt.end_frame + 4)
        speaking = [f for f in seq if f.speaking]
        assert [f.index for f in speaking] == list(range(utt.start_frame, utt.end_frame))
        assert all(f.utterance == utt.id for f in speaking)
        assert max(np.abs(f.image.astype(int) - idle[0].image).max() for f in speaking) > 20
        assert not seq[-1].speaking and np.array_equal(seq[-1].image, idle[0].image)  # listening again
        assert utt.timings()["first_frame_shown"] is not None
        assert s.stats.utterances == 1 and s.stats.frames_repeated == 0


def test_audio_timeline_matches_the_frames(talker):
    with LiveSession(talker, loop_frames=1, audio_rate=48000) as s:
        frames(s, 0, 3)
        x = voice(0.8)
        utt = s.say(x)
        spf = 48000 // 25
        a = s.audio(0, (utt.start_frame + utt.speech_frames + 5) * spf)
        assert not a[: utt.start_frame * spf].any()  # silent before the reply's first frame
        expected = _resample(x, 16000, 48000)
        got = a[utt.start_frame * spf: utt.start_frame * spf + expected.shape[0]]
        np.testing.assert_allclose(got, expected, atol=1e-6)


def test_pose_positions_continue_across_modes(talker):
    """Listening and speaking frames take their pose from one schedule indexed by the clock frame: the same
    frame index gives the same pose key whatever the mode, so a switch never jumps."""
    idle = IdleFrames.of(talker, 20)
    keys = [idle.key(n) for n in range(60)]
    pos = [(a + (b - a) * w) for a, b, w in keys]
    assert max(abs(p1 - p0) for p0, p1 in zip(pos, pos[1:])) <= 1.0 + 1e-6
    with LiveSession(talker, loop_frames=20) as s:
        assert s.idle is idle  # shared by the sessions of one model


def test_queued_replies_and_barge_in(talker):
    with LiveSession(talker, loop_frames=1) as s:
        frames(s, 0, 3)
        first, second = s.say(voice(2.0)), s.say(voice(0.5))
        assert second.start_frame >= first.end_frame  # queued after the first (and its closing tail)
        frames(s, 3, first.start_frame + 10)
        cut = s.interrupt()
        assert cut is first and cut.interrupted_at == s.playhead + 1
        assert s.stats.interrupts == 1
        spf = s.samples_per_frame
        after = s.audio(cut.interrupted_at * spf, 60 * spf)
        assert not after.any()  # the sound stops at the next frame; the queued reply is dropped
        rest = frames(s, s.playhead + 1, cut.interrupted_at + PAD_AFTER + 4)
        assert not rest[-1].speaking
        assert s.interrupt() is None


def test_bad_arguments(talker):
    with pytest.raises(ValueError):
        LiveSession(talker, ahead=0)
    with pytest.raises(ValueError):
        LiveSession(talker, audio_rate=44101)
    with LiveSession(talker) as s, pytest.raises(ValueError):
        s.say(np.zeros(0, np.float32))


def test_live_constants_match_the_renderer():
    from gaussiantalker import infer, live

    assert live.FPS == infer.FPS and live.SAMPLE_RATE == infer.SAMPLE_RATE


def test_listening_and_pauses_close_the_mouth_of_a_model_that_closes_in_silence(tmp_path_factory):
    """A lip-code model that closes the mouth in silences does so while it listens and in a reply's pauses: those
    frames are the renders of its closed code, and a said reply's speech still moves the mouth."""
    from _infer_helpers import lip_model

    folder = lip_model(tmp_path_factory)
    closed = load(folder, device="cpu")
    assert closed.gates_silence
    still = np.stack(list(closed.frames(np.zeros(16000, np.float32), pose="static")))
    with LiveSession(closed, loop_frames=1, ahead=2) as s:
        idle = frames(s, 0, 4)
        assert all(np.array_equal(f.image, still[10]) for f in idle)  # the closed code's render
        utt = s.say(np.concatenate([voice(0.6), np.zeros(8000, np.float32), voice(0.6)]))
        seq = {f.index: f for f in frames(s, 4, utt.end_frame + 2)}
    speaking = [seq[n].image for n in range(utt.start_frame, utt.end_frame)]
    assert max(np.abs(im.astype(int) - still[10]).max() for im in speaking) > 20
    pause = [seq[utt.start_frame + k].image for k in range(18, 26)]  # frames 15-30 of the reply are silent
    assert all(np.array_equal(im, still[10]) for im in pause)
    # the same model told not to close it: listening shows the mouth the audio predicts for silence
    other = load(folder, device="cpu")
    other.close_in_silence = False
    with LiveSession(other, loop_frames=1, ahead=2) as s:
        assert np.abs(frames(s, 0, 1)[0].image.astype(int) - still[10]).max() > 20
