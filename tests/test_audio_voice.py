"""Voice activity per frame (the silence gate): what it calls speech and silence, and streaming = whole audio."""

from __future__ import annotations

import numpy as np
import pytest
from _audio_helpers import shared_files, speech_like

from gaussiantalker.audio import load_audio
from gaussiantalker.audio.voice import BELOW_DB, REFERENCE_FLOOR_DBFS, StreamingVoice, frame_levels, voice_activity

SR, STEP = 16000, 640  # samples per second, per 25 fps frame


def _tone(seconds: float, dbfs: float, seed: int = 0) -> np.ndarray:
    """Noise at an RMS of ``dbfs`` (a stand-in for speech or for a room's hum)."""
    x = np.random.default_rng(seed).standard_normal(int(seconds * SR))
    return (x / np.sqrt(np.mean(x * x)) * 10 ** (dbfs / 20)).astype(np.float32)


def _stream(audio: np.ndarray, sizes, num_frames: int) -> np.ndarray:
    v, parts, i, k = StreamingVoice(), [], 0, 0
    while i < audio.size:
        n = int(sizes[k % len(sizes)])
        parts.append(v.push(audio[i:i + n]))
        i += n
        k += 1
    parts.append(v.finish(num_frames))
    return np.concatenate(parts)


def test_speech_open_pause_closed_and_edges():
    # 1 s of "speech" at -20 dBFS, a 0.6 s pause at -70 dBFS (room noise), 1 s of speech again
    audio = np.concatenate([_tone(1.0, -20, 1), _tone(0.6, -70, 2), _tone(1.0, -20, 3)])
    n = -(-audio.size // STEP)
    v = voice_activity(audio, n)
    assert v.shape == (n,) and v.min() >= 0 and v.max() <= 1
    assert np.all(v[2:23] == 1)  # speech
    assert np.all(v[28:38] == 0)  # inside the pause (frames 25-40), its first and last frames left out
    assert np.all(v[43:63] == 1)
    # the mouth opens a frame before the sound and closes a frame after it
    pause = np.flatnonzero(v < 1)
    assert pause.min() >= 25 and pause.max() <= 40


def test_quiet_start_is_silence_and_reference_follows_the_loudest():
    # a quiet start (-60 dBFS) before any speech is silence; after speech at -10 dBFS, a passage at -45 dBFS
    # (35 dB under it) is silence too, though it is louder than the start
    audio = np.concatenate([_tone(0.5, -60, 1), _tone(0.5, -10, 2), _tone(0.5, -45, 3)])
    v = voice_activity(audio, -(-audio.size // STEP))
    assert np.all(v[1:11] == 0)
    assert np.all(v[14:24] == 1)
    assert np.all(v[27:36] == 0)
    assert BELOW_DB < 35 and REFERENCE_FLOOR_DBFS - BELOW_DB > -60


def test_one_frame_gap_does_not_close_the_mouth():
    gap = np.zeros(STEP // 2, np.float32)  # 20 ms of digital silence (a stop consonant's closure)
    audio = np.concatenate([_tone(0.5, -20, 1), gap, _tone(0.5, -20, 2)])
    v = voice_activity(audio, -(-audio.size // STEP))
    assert np.all(v[1:-2] == 1)


def test_frames_past_the_audio_read_what_exists():
    audio = _tone(0.3, -20)
    v = voice_activity(audio, 12)  # 0.48 s of frames for 0.3 s of audio
    levels = frame_levels(audio, 12)
    assert v.shape == (12,) and levels[-1] == -100.0
    assert v[8] == 1 and np.all(v[10:] == 0)  # frame 8 still reads 20 ms of sound; 9 none (closes after it)


@pytest.mark.parametrize("sizes", [[320], [1, 7, 0, 5000, 319], [10 ** 6],
                                   list(np.random.default_rng(0).integers(0, 3000, 50))])
def test_streaming_equals_whole_audio(sizes):
    audio = speech_like(3.77, seed=21)
    audio[20000:32000] *= 1e-3  # a pause
    n = -(-audio.size // STEP)
    whole = voice_activity(audio, n)
    assert whole.min() < 0.5 and whole.max() == 1  # the pause reads as silent, the rest as speech
    np.testing.assert_array_equal(_stream(audio, sizes, n), whole)


def test_streaming_real_speech_gives_weights_early():
    path = shared_files("audio", "*.wav")[0]
    audio = load_audio(path)
    n = -(-audio.size // STEP)
    v, got = StreamingVoice(), []
    for i in range(0, audio.size, 320):
        got.append(v.push(audio[i:i + 320]))
        # a frame's weight is known once the audio reaches the next frame's window end (+ 40 ms)
        assert sum(len(g) for g in got) >= (i + 320) // STEP - 2
    got.append(v.finish(n))
    np.testing.assert_array_equal(np.concatenate(got), voice_activity(audio, n))


def test_bad_rate():
    with pytest.raises(ValueError, match="whole number of samples per frame"):
        StreamingVoice(fps=30, sample_rate=16001)
