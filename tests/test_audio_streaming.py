"""StreamingFeatures: pushes of any size give the offline windows, with the documented look-ahead."""

from __future__ import annotations

import numpy as np
import pytest
from _audio_helpers import shared_files, speech_like

from gaussiantalker.audio import BlockPlan, Extractor, StreamingFeatures, extract_features, load_audio
from gaussiantalker.audio.base import BlockRowStream, rows_by_blocks


def _stream_all(stream: StreamingFeatures, audio: np.ndarray, sizes) -> np.ndarray:
    parts, i, k = [], 0, 0
    while i < audio.size:
        n = int(sizes[k % len(sizes)])
        parts.append(stream.push(audio[i : i + n]))
        i += n
        k += 1
    parts.append(stream.finish())
    return np.concatenate(parts)


@pytest.mark.parametrize("fps", [25, 30])
@pytest.mark.parametrize(
    "sizes", [[320], [1, 7, 0, 5000, 319], [160000], list(np.random.default_rng(0).integers(0, 3000, 50))]
)
def test_mfcc_streaming_equals_offline(fps, sizes):
    audio = speech_like(3.77, seed=21)
    offline = extract_features(audio, kind="mfcc", fps=fps).windows
    streamed = _stream_all(StreamingFeatures("mfcc", fps), audio, sizes)
    assert streamed.shape == offline.shape
    np.testing.assert_allclose(streamed, offline, rtol=1e-6, atol=1e-6)


def test_mfcc_streaming_real_speech_in_20ms_chunks():
    path = shared_files("audio", "*.wav")[0]
    audio = load_audio(path)
    offline = extract_features(audio, kind="mfcc").windows
    np.testing.assert_allclose(_stream_all(StreamingFeatures("mfcc"), audio, [320]), offline, rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize("fps", [25, 30])
def test_lookahead_is_the_documented_bound(fps):
    stream = StreamingFeatures("mfcc", fps)
    expected = 0.0125 + (7 if fps == 25 else 8) / 50
    assert stream.lookahead_s == pytest.approx(expected)
    audio = speech_like(3.0, seed=22)
    for start in range(0, audio.size, 320):
        stream.push(audio[start : start + 320])
        have_s = min(audio.size, start + 320) / 16000
        due = [j for j in range(int(3.0 * fps)) if j / fps + stream.lookahead_s <= have_s + 1e-9]
        assert stream.frames_emitted >= len(due), (have_s, stream.frames_emitted)
        # ... and nothing is emitted before its audio exists
        assert stream.frames_emitted <= round(have_s * fps)


def test_finish_with_num_frames_and_misuse():
    audio = speech_like(1.0, seed=23)
    stream = StreamingFeatures("mfcc")
    head = stream.push(audio)
    tail = stream.finish(num_frames=30)
    windows = np.concatenate([head, tail])
    np.testing.assert_array_equal(windows, extract_features(audio, kind="mfcc", num_frames=30).windows)
    with pytest.raises(RuntimeError, match="after finish"):
        stream.push(audio)
    with pytest.raises(RuntimeError, match="twice"):
        stream.finish()
    early = StreamingFeatures("mfcc")
    early.push(audio)
    with pytest.raises(ValueError, match="already returned"):
        early.finish(num_frames=1)
    with pytest.raises(ValueError, match="mono"):
        StreamingFeatures("mfcc").push(np.zeros((320, 2), np.float32))
    with pytest.raises(ValueError, match="fps"):
        StreamingFeatures("mfcc", fps=-1)


def test_memory_stays_bounded():
    stream = StreamingFeatures("mfcc")
    chunk = speech_like(1.0, seed=24)
    for _ in range(30):
        stream.push(chunk)
    assert stream.frames_emitted >= 30 * 25 - 4
    assert stream._rows._buf.size <= 2 * 320 + 400  # audio still to be read by the next rows
    assert stream._buf.shape[0] <= 20  # rows still to be read by the next windows


class _ContextToy(Extractor):
    """Rows that depend on the whole chunk (like attention): row = (chunk mean, position in chunk)."""

    kind = "toy"

    def __init__(self, plan: BlockPlan):
        self.dim, self.source, self.plan = 2, "toy", plan
        self.calls = []

    def chunk_rows(self, chunk):
        n = (chunk.size - self.frame_len) // 320 + 1
        self.calls.append(n)
        return np.stack([np.full(n, chunk.mean()), np.arange(n)], 1).astype(np.float32)


@pytest.mark.parametrize("plan", [BlockPlan(7, 3, 2), BlockPlan(1, 0, 0), BlockPlan(50, 50, 25), BlockPlan(None, 2, 1)])
def test_block_loop_gives_the_same_rows_for_any_push_sizes(plan):
    audio = speech_like(2.51, seed=25)
    offline = rows_by_blocks(_ContextToy(plan), audio)
    assert offline.shape == (int(np.ceil(audio.size / 320)), 2)
    rng = np.random.default_rng(5)
    for _ in range(3):
        toy = _ContextToy(plan)
        stream = BlockRowStream(toy)
        parts, i = [], 0
        while i < audio.size:
            n = int(rng.integers(0, 2500))
            parts.append(stream.push(audio[i : i + n]))
            i += n
        parts.append(stream.finish())
        got = np.concatenate(parts)
        if plan.block is None:  # rows cut anywhere: only the per-row part is comparable
            np.testing.assert_array_equal(got.shape, offline.shape)
        else:
            np.testing.assert_array_equal(got, offline)
    if plan.block is not None:  # a mid-stream block always has its full context
        full = plan.left + plan.block + plan.right
        assert max(toy.calls) == full


def test_an_extractor_instance_can_be_passed():
    from gaussiantalker.audio.mfcc import MfccExtractor

    audio = speech_like(1.2, seed=26)
    ext = MfccExtractor()
    np.testing.assert_allclose(
        _stream_all(StreamingFeatures(ext), audio, [999]), extract_features(audio, kind=ext).windows, atol=1e-6
    )
