"""extract_features: the alignment rule, the mfcc kind, auto, files, real clips and the hubert kind."""

from __future__ import annotations

import json
import logging
import math

import numpy as np
import pytest
from _audio_helpers import shared_files, speech_like

from gaussiantalker.audio import (
    AudioFeatures,
    DeepSpeechGraphError,
    StreamingFeatures,
    extract_features,
    feature_filename,
    frame_count,
    get_extractor,
    load_audio,
    load_features,
    make_windows,
    resolve_kind,
    save_features,
)
from gaussiantalker.audio import features as features_module
from gaussiantalker.audio.mfcc import MFCC_MEAN, MFCC_STD, mfcc_rows
from gaussiantalker.media import run_ffmpeg

# --------------------------------------------------------------------------------------------------
# the alignment rule


def test_frame_count_is_round_duration_times_fps():
    assert frame_count(8.0, 25) == 200
    assert frame_count(10.0078125, 25) == 250
    assert frame_count(6.106875, 25) == 153
    assert frame_count(1.01, 25) == 25  # 25.25
    assert frame_count(1.03, 25) == 26  # 25.75
    assert frame_count(2.0, 29.97) == 60  # 59.94
    with pytest.raises(ValueError, match="fps"):
        frame_count(1.0, 0)
    with pytest.raises(ValueError, match="duration"):
        frame_count(-1.0, 25)


@pytest.mark.parametrize("seconds", [0.02, 0.5, 1.0, 1.01, 1.03, 3.337])
@pytest.mark.parametrize("fps", [25, 30, 29.97])
def test_window_count_rule(seconds, fps):
    audio = speech_like(seconds, seed=1)
    feats = extract_features(audio, kind="mfcc", fps=fps)
    assert feats.num_frames == round(audio.size / 16000 * fps)
    assert feats.windows.shape[1:] == (16, 26) and feats.windows.dtype == np.float32


@pytest.mark.parametrize("fps", [25, 30, 29.97, 24])
def test_window_j_is_centred_on_time_j_over_fps(fps):
    n_rows = 300
    rows = (np.arange(n_rows, dtype=np.float32) + 1.0)[:, None]  # row k holds k + 1 (0 means padding)
    frames = 150
    w = make_windows(rows, frames, fps)[..., 0]  # [F, 16]
    for j in range(frames):
        for i in range(16):
            pos = j * 50 / fps + i - 8  # the documented rule: row 8 is at time j / fps
            lo = math.floor(pos)
            frac = pos - lo
            value = lambda k: k + 1.0 if 0 <= k < n_rows else 0.0  # noqa: E731
            expected = (1 - frac) * value(lo) + frac * value(lo + 1)
            assert w[j, i] == pytest.approx(expected, abs=1e-4), (j, i)


def test_windows_equal_the_original_stride_two_loop_at_25fps():
    rng = np.random.default_rng(0)
    for n in (1, 2, 17, 100, 101):
        rows = rng.normal(size=(n, 29)).astype(np.float32)
        padded = np.concatenate([np.zeros((8, 29)), rows, np.zeros((8, 29))])
        original = np.stack([padded[i : i + 16] for i in range(0, padded.shape[0] - 16, 2)])
        ours = make_windows(rows, original.shape[0], 25)
        np.testing.assert_array_equal(ours, original.astype(np.float32))


def test_clicks_land_in_the_window_of_frame_round_t_times_25():
    rng = np.random.default_rng(3)
    audio = rng.normal(0, 1e-3, 6 * 16000).astype(np.float32)
    # On a frame's time (to within 6 ms), and between frames (then one row off the centre). Times are
    # kept away from half-row boundaries, where two rows would see the click equally.
    on_frame = [0.483, 1.236, 2.0, 2.717, 3.4, 4.083, 5.561]
    between = [1.614, 3.066, 4.934]  # t * 25 = 40.35, 76.65, 123.35
    for t in on_frame + between:
        s = int(round(t * 16000))
        audio[s : s + 16] = 0.8  # 1 ms click
    energy = extract_features(audio, kind="mfcc", fps=25).windows[..., 0]  # [F, 16] log energy
    for t in on_frame + between:
        j = round(t * 25)
        row = 8 + round(t * 50) - 2 * j  # where row round(t*50) (time nearest t) sits in window j
        assert row == 8 if t in on_frame else abs(row - 8) == 1
        assert int(np.argmax(energy[j])) == row, (t, energy[j])
        assert energy[j, row] > np.delete(energy[j], row).max() + 1.0
    for t in on_frame:  # no other frame has the click at its centre row
        j = round(t * 25)
        centre = energy[:, 8]
        assert centre[j] > np.delete(centre[max(0, j - 4) : j + 5], min(j, 4)).max() + 1.0, t


# --------------------------------------------------------------------------------------------------
# the mfcc kind


def test_mfcc_rows_are_python_speech_features_called_directly():
    from python_speech_features import mfcc

    audio = speech_like(1.37, seed=2)
    n = math.ceil(audio.size / 320)
    signal = np.zeros(320 * (n - 1) + 400)
    signal[200 : 200 + audio.size] = audio[: 320 * (n - 1) + 200].astype(np.float64) * 32768
    direct = mfcc(
        signal, samplerate=16000, winlen=0.025, winstep=0.02, numcep=26, nfilt=26, nfft=512,
        lowfreq=0, highfreq=None, preemph=0.97, ceplifter=22, appendEnergy=True,
    )
    assert direct.shape == (n, 26)
    direct[:, 0] = np.maximum(direct[:, 0], 0.0)
    expected = (direct - MFCC_MEAN) / MFCC_STD
    np.testing.assert_allclose(mfcc_rows(audio), expected, rtol=1e-5, atol=1e-5)


def test_mfcc_constants_bring_real_speech_to_unit_scale():
    files = shared_files("audio", "*.wav")
    rows = np.concatenate([mfcc_rows(load_audio(p)) for p in files])
    assert np.all(np.abs(rows.mean(axis=0)) < 1.0)
    assert np.all((rows.std(axis=0) > 0.3) & (rows.std(axis=0) < 3.0))


def test_mfcc_digital_silence_is_floored():
    rows = mfcc_rows(np.zeros(16000, np.float32))
    assert np.isfinite(rows).all()
    np.testing.assert_allclose(rows[:, 0], (0.0 - MFCC_MEAN[0]) / MFCC_STD[0], rtol=1e-6)


# --------------------------------------------------------------------------------------------------
# extract_features


def test_path_and_array_inputs_agree(tmp_path):
    from gaussiantalker.audio import write_wav

    audio = np.round(speech_like(2.3, seed=4) * 32768) / 32768
    path = write_wav(tmp_path / "a.wav", audio)
    from_path = extract_features(path, kind="mfcc")
    from_array = extract_features(audio, kind="mfcc")
    np.testing.assert_array_equal(from_path.windows, from_array.windows)
    assert from_path.duration == pytest.approx(2.3) and from_path.fps == 25.0
    # another rate is resampled
    up = np.interp(np.arange(int(2.3 * 48000)) / 48000, np.arange(audio.size) / 16000, audio).astype(np.float32)
    resampled = extract_features(up, kind="mfcc", sample_rate=48000)
    assert resampled.windows.shape == from_array.windows.shape
    assert np.corrcoef(resampled.windows.ravel(), from_array.windows.ravel())[0, 1] > 0.95


def test_num_frames_override():
    audio = speech_like(2.0, seed=5)
    base = extract_features(audio, kind="mfcc")
    longer = extract_features(audio, kind="mfcc", num_frames=60)
    np.testing.assert_array_equal(longer.windows[:50], base.windows)
    assert not longer.windows[55:].any()  # past the audio: zeros
    shorter = extract_features(audio, kind="mfcc", num_frames=10)
    np.testing.assert_array_equal(shorter.windows, base.windows[:10])
    with pytest.raises(ValueError, match="num_frames"):
        extract_features(audio, kind="mfcc", num_frames=-1)


def test_bad_arguments():
    audio = speech_like(0.5)
    with pytest.raises(ValueError, match="unknown audio feature kind 'wav2vec'"):
        extract_features(audio, kind="wav2vec")
    with pytest.raises(ValueError, match="fps"):
        extract_features(audio, kind="mfcc", fps=0)
    with pytest.raises(ValueError, match=r"\[T\] mono"):
        extract_features(np.zeros((100, 2)), kind="mfcc")
    with pytest.raises(ValueError, match="empty"):
        extract_features(np.zeros(0), kind="mfcc")
    with pytest.raises(ValueError, match="NaN"):
        extract_features(np.full(1000, np.nan), kind="mfcc")
    with pytest.raises(FileNotFoundError, match="missing.wav"):
        extract_features("missing.wav", kind="mfcc")


def test_auto_uses_phonetic_without_the_graph_and_says_so_once(tmp_path, caplog, monkeypatch):
    pytest.importorskip("pocketsphinx", reason="pocketsphinx (a core dependency) is not installed")
    monkeypatch.setattr(features_module, "_AUTO_LOGGED", set())
    with caplog.at_level(logging.INFO, logger="gaussiantalker.audio.features"):
        a = extract_features(speech_like(0.5), kind="auto", assets=tmp_path)
        b = extract_features(speech_like(0.6), kind="auto", assets=tmp_path)
    assert a.kind == b.kind == "phonetic"
    notes = [r for r in caplog.records if "deepspeech-0_1_0-b90017e8.pb not found" in r.getMessage()]
    assert len(notes) == 1 and notes[0].levelno == logging.WARNING
    assert str(tmp_path) in notes[0].getMessage() and "'phonetic'" in notes[0].getMessage()


def test_auto_falls_back_to_mfcc_without_pocketsphinx(tmp_path, caplog, monkeypatch):
    import importlib.util

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "pocketsphinx" else real(name, *a))
    monkeypatch.setattr(features_module, "_AUTO_LOGGED", set())
    with caplog.at_level(logging.INFO, logger="gaussiantalker.audio.features"):
        assert resolve_kind("auto", tmp_path) == "mfcc"
    assert any("pocketsphinx" in r.getMessage() and "'mfcc'" in r.getMessage() for r in caplog.records)


def test_auto_picks_deepspeech_when_the_graph_file_is_present(tmp_path, monkeypatch):
    monkeypatch.setattr(features_module, "_AUTO_LOGGED", set())
    (tmp_path / "models").mkdir()
    fake = tmp_path / "models" / "deepspeech-0_1_0-b90017e8.pb"  # one sub-folder down is searched too
    fake.write_bytes(b"not the real graph")
    assert resolve_kind("auto", tmp_path) == "deepspeech"
    # ... and a damaged file under the original name fails its checksum before TensorFlow is touched
    with pytest.raises(DeepSpeechGraphError, match=r"deepspeech-0_1_0-b90017e8\.pb has SHA-1 [0-9a-f]{40}"):
        get_extractor("auto", tmp_path)


def test_files_and_meta(tmp_path):
    names = [feature_filename(k) for k in ("deepspeech", "mfcc", "hubert", "phonetic")]
    assert names == ["aud_ds.npy", "aud_mfcc.npy", "aud_hubert.npy", "aud_phonetic.npy"]
    with pytest.raises(ValueError, match="unknown"):
        feature_filename("mel")
    feats = extract_features(speech_like(1.0), kind="mfcc")
    path = save_features(feats, tmp_path / "data" / "obama")
    assert path.name == "aud_mfcc.npy"
    back = load_features(tmp_path / "data" / "obama")
    assert back.kind == "mfcc" and back.dim == 26
    np.testing.assert_array_equal(back.windows, feats.windows)
    meta = json.loads(json.dumps(feats.meta()))
    assert meta["audio_features"]["kind"] == "mfcc" and meta["audio_features"]["dim"] == 26
    assert meta["audio_features"]["file"] == "aud_mfcc.npy" and meta["audio_features"]["frames"] == 25


def test_load_features_reads_original_datasets_and_checks_shapes(tmp_path):
    original = np.random.default_rng(0).normal(size=(40, 16, 29))  # the original writes float64
    np.save(tmp_path / "aud_ds.npy", original)
    feats = load_features(tmp_path / "aud_ds.npy")
    assert feats.kind == "deepspeech" and feats.windows.dtype == np.float32 and feats.dim == 29
    np.save(tmp_path / "aud_mfcc.npy", np.zeros((40, 16, 26), np.float32))
    with pytest.raises(FileNotFoundError, match="expected one audio feature file"):
        load_features(tmp_path)
    assert load_features(tmp_path, kind="mfcc").dim == 26
    np.save(tmp_path / "aud_hubert.npy", np.zeros((40, 29)))
    with pytest.raises(ValueError, match=r"must be \[F, 16, D\], got shape \(40, 29\)"):
        load_features(tmp_path / "aud_hubert.npy")
    np.save(tmp_path / "aud_ds.npy", np.zeros((40, 16, 26)))
    with pytest.raises(ValueError, match="D=29"):
        load_features(tmp_path / "aud_ds.npy")
    with pytest.raises(ValueError, match="windows"):
        AudioFeatures(windows=np.zeros((3, 8, 29)), kind="deepspeech", fps=25)


# --------------------------------------------------------------------------------------------------
# real clips: window count = extracted video frames


def _ffmpeg_frame_count(path) -> int:
    proc = run_ffmpeg(["-i", str(path), "-map", "0:v:0", "-vf", "fps=25", "-f", "null", "-"], path=path)
    counts = [int(x) for x in __import__("re").findall(r"frame=\s*(\d+)", proc.stderr)]
    return counts[-1]


def test_window_count_matches_extracted_frames_of_real_clips():
    for clip in shared_files("clips", "*.mp4"):
        if clip.name.startswith("LatentSync"):
            continue  # 1080x1920 HEVC: slow to decode on two cores and adds nothing here
        frames = _ffmpeg_frame_count(clip)
        audio = load_audio(clip)
        feats = extract_features(audio, kind="mfcc", num_frames=frames)
        assert feats.num_frames == frames
        # The audio stream may outlast the video stream by a few frames (DFRF's 30 fps clip: audio 50.43 s, video
        # 50.32 s -> 1261 against 1258 frames; the variable-frame-rate clip: one); num_frames absorbs it.
        assert abs(frame_count(audio.size / 16000, 25) - frames) <= 3, clip.name


# --------------------------------------------------------------------------------------------------
# the hubert kind, with a tiny randomly initialised model saved to a local folder


@pytest.fixture(scope="module")
def hubert_assets(tmp_path_factory):
    pytest.importorskip("transformers", reason="transformers not installed (pip install gaussiantalker[hubert])")
    import torch
    from transformers import HubertConfig, HubertModel

    torch.manual_seed(0)
    config = HubertConfig(
        hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64,
        conv_dim=(16,) * 7, num_conv_pos_embeddings=16, num_conv_pos_embedding_groups=2,
        feat_extract_norm="layer", do_stable_layer_norm=True,
    )
    root = tmp_path_factory.mktemp("assets")
    HubertModel(config).eval().save_pretrained(root / "hubert-large-ls960-ft")
    return root


def test_hubert_from_the_asset_folder(hubert_assets):
    import torch
    from transformers import HubertModel

    audio = speech_like(0.7, seed=6)  # 35 rows: one block, so a single model call makes every row
    feats = extract_features(audio, kind="hubert", assets=hubert_assets, device="cpu")
    assert feats.kind == "hubert" and feats.dim == 32 and feats.num_frames == round(0.7 * 25)
    assert "hubert-large-ls960-ft" in feats.source
    model = HubertModel.from_pretrained(hubert_assets / "hubert-large-ls960-ft").eval()
    chunk = np.zeros(320 * 34 + 400, np.float32)
    chunk[200:] = audio[: chunk.size - 200]  # 200 zeros in front: row k centred on k / 50
    x = torch.from_numpy(chunk)[None]
    x = (x - x.mean()) / torch.sqrt(x.var(unbiased=False) + 1e-7)  # feat_extract_norm "layer": normalised
    with torch.no_grad():
        rows = model(x).last_hidden_state[0].numpy()  # [35, 32]
    np.testing.assert_allclose(feats.windows, make_windows(rows, feats.num_frames, 25), rtol=1e-5, atol=1e-5)


def test_hubert_streaming_equals_offline(hubert_assets):
    audio = speech_like(3.3, seed=7)  # several blocks
    offline = extract_features(audio, kind="hubert", assets=hubert_assets, device="cpu").windows
    stream = StreamingFeatures("hubert", 25, assets=hubert_assets, device="cpu")
    rng = np.random.default_rng(1)
    parts, i = [], 0
    while i < audio.size:
        n = int(rng.integers(1, 4000))
        parts.append(stream.push(audio[i : i + n]))
        i += n
    parts.append(stream.finish())
    np.testing.assert_array_equal(np.concatenate(parts), offline)


def test_hubert_without_transformers_says_what_to_install(hubert_assets, monkeypatch):
    monkeypatch.setitem(__import__("sys").modules, "transformers", None)  # as if not installed
    monkeypatch.setattr(features_module, "_EXTRACTORS", {})
    with pytest.raises(ImportError, match=r"pip install gaussiantalker\[hubert\]"):
        extract_features(speech_like(0.5), kind="hubert", assets=hubert_assets, device="cpu")


def test_hubert_missing_folder_says_where(tmp_path):
    with pytest.raises(FileNotFoundError, match=r"hubert-large-ls960-ft/ with config.json"):
        extract_features(speech_like(0.5), kind="hubert", assets=tmp_path)
    with pytest.raises(FileNotFoundError, match="has no config.json"):
        extract_features(speech_like(0.5), kind="hubert", model_path=tmp_path)
