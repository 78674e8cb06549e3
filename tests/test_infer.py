"""Inference: render / load / Talker.stream on a tiny model, memory-aware batching, bad inputs."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
import torch
from _infer_helpers import audio_model, lip_model, model_folder, synthetic, trained_model

from gaussiantalker.audio import frame_count, load_audio, write_wav
from gaussiantalker.infer import FeatureKindUnavailableError, is_out_of_memory, load, render, run_batches
from gaussiantalker.media import MediaError, probe
from gaussiantalker.model.io import IterationNotFoundError, ModelNotFoundError, list_iterations
from gaussiantalker.render.poses import PoseSchedule
from gaussiantalker.render.video import read_frames, write_video


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    return trained_model(tmp_path_factory)


@pytest.fixture(scope="module")
def talker(model_dir):
    return load(model_dir, device="cpu")


@pytest.fixture(scope="module")
def audio_talker(tmp_path_factory):
    """A model whose pixels follow the audio clearly (random deformation heads): equality tests on it can fail."""
    talker = load(audio_model(tmp_path_factory), device="cpu")
    samples = _dataset_audio(talker)[:8000]
    a = np.stack(list(talker.frames(samples, pose="static"))).astype(int)
    b = np.stack(list(talker.frames(samples[::-1].copy(), pose="static"))).astype(int)
    assert np.abs(a - b).max() > 20  # other audio, other pixels
    return talker


def _dataset_audio(talker) -> np.ndarray:
    return load_audio(talker.data.path / "aud.wav")


# --------------------------------------------------------------------------------------------------
# memory-aware batching (a stand-in function; no model needed)


def _stand_in(limit: int, calls: list, exc_factory):
    def fn(start: int, stop: int):
        calls.append((start, stop))
        if stop - start > limit:
            raise exc_factory(stop - start)
        return torch.arange(start, stop) * 10

    return fn


@pytest.mark.parametrize("make_exc", [
    lambda b: torch.cuda.OutOfMemoryError(f"CUDA out of memory. Tried to allocate {b} GiB"),
    lambda b: RuntimeError(f"[enforce fail at alloc_cpu.cpp:117] DefaultCPUAllocator: can't allocate memory: {b}"),
    lambda b: MemoryError(),
])
def test_run_batches_splits_on_out_of_memory(make_exc):
    calls = []
    out = list(run_batches(_stand_in(3, calls, make_exc), 23, 16))
    assert torch.equal(torch.cat([r for _, _, r in out]), torch.arange(23) * 10)
    assert [(a, b) for a, b, _ in out] == [(0, 2), (2, 4)] + [(a, min(23, a + 2)) for a in range(4, 23, 2)]
    assert calls[:3] == [(0, 16), (0, 8), (0, 4)]  # halved until it fits, then kept at that size


def test_run_batches_reraises_other_errors_and_single_frames():
    with pytest.raises(ValueError, match="boom"):
        list(run_batches(lambda a, b: (_ for _ in ()).throw(ValueError("boom")), 5, 4))
    with pytest.raises(RuntimeError, match="out of memory"):
        list(run_batches(_stand_in(0, [], lambda b: RuntimeError("CUDA out of memory")), 5, 4))
    assert is_out_of_memory(RuntimeError("CUDA error: out of memory"))
    assert not is_out_of_memory(RuntimeError("shape mismatch"))
    with pytest.raises(ValueError, match="batch_size"):
        list(run_batches(lambda a, b: None, 5, 0))


# --------------------------------------------------------------------------------------------------
# rendering


def test_render_writes_mp4_with_audio(model_dir, tmp_path):
    wav = tmp_path / "speech.wav"
    dataset = json.loads((model_dir / "model.json").read_text())["dataset_path"]
    shutil.copyfile(f"{dataset}/aud.wav", wav)
    seen = []
    result = render(model_dir, wav, device="cpu", progress=False, batch_size=16, callback=seen.append)
    assert result.path == model_dir / "renders" / "output.mp4"
    assert [p.iteration for p in seen] == [min(k, result.frames) for k in range(16, result.frames + 16, 16)]
    assert {p.stage for p in seen} == {"render"} and seen[-1].total == result.frames
    k = list_iterations(model_dir)[-1]
    assert result.copies == (model_dir / "custom" / f"ours_{k}" / "renders" / "output.mp4",)
    seconds = load_audio(wav).shape[0] / 16000
    assert result.frames == frame_count(seconds, 25.0)
    for path in (result.path, *result.copies):
        info = probe(path)
        assert len(info.video_streams) == 1 and len(info.audio_streams) == 1
        assert info.video.codec == "h264" and info.audio.codec == "aac" and info.video.fps == pytest.approx(25)
        assert info.duration == pytest.approx(seconds, abs=0.08)
    assert read_frames(result.path).shape[0] == result.frames
    assert not [p for p in result.path.parent.iterdir() if p.name.startswith(".")]  # no temporaries left


def test_audio_longer_than_the_tracked_sequence(talker, tmp_path):
    """3x the whole tracked sequence (far more than 3x the held-out split): ping-pong continues the poses."""
    samples = np.tile(_dataset_audio(talker), 3)
    wav = tmp_path / "long.wav"
    write_wav(wav, samples)
    out = tmp_path / "long.mp4"
    result = talker.render(wav, out=out, progress=False)
    assert result.path == out and result.copies == ()
    assert result.frames == frame_count(samples.shape[0] / 16000, 25.0) > 3 * talker.length - 2
    frames = read_frames(out)
    assert frames.shape[0] == result.frames
    # The pose and torso keep following the tracked sequence: past the first pass the frames change from
    # one frame to the next about as much as in the first pass (no frozen video, no jumps).
    motion = np.abs(np.diff(frames.astype(np.int16), axis=0)).mean(axis=(1, 2, 3))  # [frames - 1]
    first, later = motion[: talker.length - 6].mean(), motion[talker.length + 6:]
    assert later.mean() > 0.3 * first
    assert later.max() < 4 * motion[: talker.length - 6].max() + 1


def test_static_pose_holds_the_first_frame(talker, tmp_path):
    samples = _dataset_audio(talker)[: 16000]
    frames = np.stack(list(talker.frames(samples, pose="static")))
    assert frames.shape == (25, talker.height, talker.width, 3)
    u = PoseSchedule(talker.length, "static").positions(np.arange(25))
    assert np.all(u == 0)


def test_every_shared_audio_file_renders(talker, shared_data, tmp_path):
    files = sorted((shared_data / "audio").glob("*"))
    if not files:
        pytest.skip(f"no files in {shared_data / 'audio'}")
    for f in files:
        out = tmp_path / f"{f.stem}.mp4"
        result = talker.render(f, out=out, progress=False)
        seconds = load_audio(f).shape[0] / 16000
        assert result.frames == frame_count(seconds, 25.0), f
        info = probe(out)
        assert len(info.video_streams) == 1 and len(info.audio_streams) == 1, f
        assert info.duration == pytest.approx(seconds, abs=0.08), f


def test_batch_size_does_not_change_pixels(audio_talker):
    talker = audio_talker
    samples = _dataset_audio(talker)[: 16000]  # 25 frames
    windows = torch.from_numpy(talker.features(samples))
    schedule = PoseSchedule(talker.length)
    frames = np.arange(25)
    one = torch.cat([talker.render_frames(windows, frames[i:i + 1], schedule) for i in range(25)])
    seven = torch.cat([talker.render_frames(windows, frames[i:i + 7], schedule) for i in range(0, 25, 7)])
    assert (one - seven).abs().max().item() == 0.0
    a = np.stack(list(talker.frames(samples, batch_size=1)))
    b = np.stack(list(talker.frames(samples, batch_size=7)))
    assert np.array_equal(a, b)


@pytest.mark.gpu
def test_batch_size_does_not_change_pixels_on_cuda(tmp_path_factory):
    if not torch.cuda.is_available():
        pytest.skip("no CUDA device")
    talker = load(audio_model(tmp_path_factory), device="cuda")
    samples = _dataset_audio(talker)[: 16000]
    a = np.stack(list(talker.frames(samples, batch_size=1)))
    b = np.stack(list(talker.frames(samples, batch_size=7)))
    assert np.array_equal(a, b)


def test_stream_equals_offline(audio_talker):
    talker = audio_talker
    samples = _dataset_audio(talker)
    offline = np.stack(list(talker.frames(samples, batch_size=8)))
    rng = np.random.default_rng(0)
    cuts = np.sort(rng.choice(np.arange(1, samples.shape[0]), 40, replace=False))
    chunks = np.split(samples, cuts)  # irregular chunk sizes, some tiny
    got = []
    stream = talker.stream(iter(chunks), batch_size=5)
    for frame in stream:
        got.append(frame)
    streamed = np.stack(got)
    assert streamed.shape == offline.shape
    assert np.array_equal(streamed, offline)
    # Frames come while audio arrives, not only at the end: feed 20 ms chunks of 1 s of audio and count
    # the frames out before the last chunk went in.
    short = samples[:16000]
    twenty = np.array_split(short, short.shape[0] // 320)
    got2, counts = [], []

    def chunks_counted():
        for c in twenty:
            counts.append(len(got2))
            yield c

    for frame in talker.stream(chunks_counted()):
        got2.append(frame)
    assert counts[-1] >= 25 - 8  # all but the frames whose windows reach past the end of the audio
    assert np.array_equal(np.stack(got2), np.stack(list(talker.frames(short))))
    with pytest.raises(ValueError, match="16 kHz"):
        next(talker.stream(iter(chunks), sample_rate=48000))


# --------------------------------------------------------------------------------------------------
# closing the mouth in silences (lip-code models)


@pytest.fixture(scope="module")
def lip_talker(tmp_path_factory):
    talker = load(lip_model(tmp_path_factory), device="cpu")
    assert talker.gates_silence
    return talker


def _with_pause(talker) -> np.ndarray:
    """The dataset's audio (1.6 s) with 0.6 s of near silence (-80 dBFS) in it (the samples of frames 12.5 .. 27.5)."""
    x = _dataset_audio(talker)[:25600].copy()
    x[8000:17600] *= 1e-4
    return x


def test_silence_closes_the_mouth(lip_talker):
    from gaussiantalker.audio.voice import voice_activity
    from gaussiantalker.data import audio_context
    from gaussiantalker.render.video import to_uint8

    talker = lip_talker
    samples = _with_pause(talker)
    gated = np.stack(list(talker.frames(samples, pose="static"))).astype(int)
    free = np.stack(list(talker.frames(samples, pose="static", close_in_silence=False))).astype(int)
    voice = voice_activity(samples, len(gated))
    speech, pause = np.flatnonzero(voice == 1), np.flatnonzero(voice == 0)
    assert len(speech) >= 10 and len(pause) >= 10 and set(range(15, 26)) <= set(pause)
    # speech frames as the audio predicts them; the silent ones closed: each is the render of the closed code
    assert np.array_equal(gated[speech], free[speech])
    assert np.abs(gated[pause] - free[pause]).max() > 20
    i0, _, _ = PoseSchedule(talker.length, "static").neighbours(pause)
    bg = torch.stack([talker._background(int(a), int(a), 0.0) for a in i0])
    audio = audio_context(torch.from_numpy(np.ascontiguousarray(talker.features(samples))), torch.as_tensor(pause))
    comp = talker.compose(audio, talker.eye[i0], talker.c2w[i0], bg,
                          lips=talker.model.lip_closed.expand(len(pause), -1))
    assert np.abs(to_uint8(comp.image).astype(int) - gated[pause]).max() <= 1


def test_silence_gate_stream_equals_offline(lip_talker):
    samples = _with_pause(lip_talker)
    offline = np.stack(list(lip_talker.frames(samples, batch_size=8)))
    cuts = np.sort(np.random.default_rng(1).choice(np.arange(1, samples.shape[0]), 30, replace=False))
    streamed = np.stack(list(lip_talker.stream(iter(np.split(samples, cuts)), batch_size=5)))
    assert np.array_equal(streamed, offline)


def test_models_saved_before_the_gate_load_without_it(lip_talker, tmp_path):
    folder = tmp_path / "old"
    shutil.copytree(lip_talker.model_dir, folder)
    pth = next(folder.glob("point_cloud/iteration_*/deformation.pth"))
    state = torch.load(pth, weights_only=True)
    del state["lip_closed"]
    torch.save(state, pth)
    old = load(folder, device="cpu")
    assert not old.gates_silence and not old.model.has_silence_gate
    samples = _with_pause(lip_talker)
    free = np.stack(list(lip_talker.frames(samples, close_in_silence=False)))
    assert np.array_equal(np.stack(list(old.frames(samples, close_in_silence=True))), free)  # it cannot close it


def test_close_in_silence_default_is_the_models_choice(lip_talker, tmp_path):
    folder = tmp_path / "open"
    shutil.copytree(lip_talker.model_dir, folder)
    pth = next(folder.glob("point_cloud/iteration_*/deformation.pth"))
    state = torch.load(pth, weights_only=True)
    state["lip_gate"] = torch.zeros(())  # training found this subject's mouth open in its own pauses
    torch.save(state, pth)
    talker = load(folder, device="cpu")
    assert talker.model.has_silence_gate and not talker.gates_silence
    samples = _with_pause(lip_talker)
    default = np.stack(list(talker.frames(samples)))
    assert np.array_equal(default, np.stack(list(lip_talker.frames(samples, close_in_silence=False))))
    closed = np.stack(list(talker.frames(samples, close_in_silence=True)))
    assert np.array_equal(closed, np.stack(list(lip_talker.frames(samples))))
    talker.close_in_silence = True  # the Talker-wide setting
    assert talker.gates_silence and np.array_equal(np.stack(list(talker.frames(samples))), closed)


def test_training_sets_the_closed_code(talker):
    model = talker.model
    assert model.has_silence_gate
    assert bool(((model.lip_closed >= model.lip_low) & (model.lip_closed <= model.lip_high)).all())
    assert not model.closes_in_silence  # 40 training frames: too few to cross-validate the choice, so no


# --------------------------------------------------------------------------------------------------
# paste-back


def test_paste_back_full_frame(model_dir, tmp_path):
    from gaussiantalker.data import TalkingHeadData

    src_data = TalkingHeadData.open(json.loads((model_dir / "model.json").read_text())["dataset_path"])
    dataset = tmp_path / "data" / "cropped"
    shutil.copytree(src_data.path, dataset)
    size, (sw, sh), (x, y) = src_data.width, (src_data.width + 30, src_data.height + 20), (18, 6)
    import cv2

    def source_frames():
        for i in range(src_data.num_frames):
            frame = np.full((sh, sw, 3), 30, np.uint8)
            frame[y:y + size, x:x + size] = cv2.imread(str(dataset / "ori_imgs" / f"{i}.jpg"))[..., ::-1]
            yield frame

    video = write_video(tmp_path / "source.mp4", source_frames(), sw, sh).path
    meta = json.loads((dataset / "meta.json").read_text())
    meta["crop"] = {"x": x, "y": y, "size": size, "source_width": sw, "source_height": sh}
    meta["source"]["path"] = str(video)
    (dataset / "meta.json").write_text(json.dumps(meta))
    model = model_folder(dataset, tmp_path / "output" / "cropped")
    talker = load(model, device="cpu")
    samples = _dataset_audio(talker)[: 24000]
    result = talker.render(samples, out=tmp_path / "out.mp4", progress=False, paste_back=True)
    assert result.full_frame == tmp_path / "out_full.mp4"
    info = probe(result.full_frame)
    assert (info.video.width, info.video.height) == (sw, sh) and info.audio is not None
    full, crop = read_frames(result.full_frame), read_frames(result.path)
    assert full.shape[0] == crop.shape[0] == result.frames
    assert np.abs(full[:, :, :x - 2].astype(int) - 30).mean() < 3  # outside: the source frame
    inner = full[:, y + 8:y + size - 8, x + 8:x + size - 8].astype(int)
    assert np.abs(inner - crop[:, 8:size - 8, 8:size - 8].astype(int)).mean() < 4  # inside: the render
    video.unlink()
    with pytest.raises(FileNotFoundError, match="source video"):
        talker.render(samples, out=tmp_path / "again.mp4", progress=False, paste_back=True)
    with pytest.raises(ValueError, match="not cropped"):
        load(model_dir, device="cpu").render(samples, out=tmp_path / "x.mp4", paste_back=True)


# --------------------------------------------------------------------------------------------------
# bad inputs


def test_model_by_name_in_a_workspace(model_dir):
    talker = load(model_dir.name, workspace=model_dir.parent.parent, device="cpu")
    assert talker.model_dir == model_dir
    with pytest.raises(ModelNotFoundError):
        load("no_such_model", workspace=model_dir.parent.parent, device="cpu")


def test_missing_model_folder(tmp_path):
    with pytest.raises(ModelNotFoundError, match="does not exist"):
        render(tmp_path / "nope", tmp_path / "a.wav", device="cpu")


def test_iteration_that_does_not_exist_lists_the_saved_ones(model_dir, tmp_path):
    saved = list_iterations(model_dir)
    with pytest.raises(IterationNotFoundError) as err:
        render(model_dir, tmp_path / "a.wav", iteration=987654, device="cpu")
    assert "987654" in str(err.value) and all(str(k) in str(err.value) for k in saved)


def test_audio_file_without_audio_stream(talker, tmp_path):
    silent = write_video(tmp_path / "silent.mp4", [np.zeros((16, 16, 3), np.uint8)] * 5, 16, 16).path
    with pytest.raises(MediaError, match="no audio stream"):
        talker.render(silent, out=tmp_path / "o.mp4", progress=False)
    with pytest.raises(FileNotFoundError):
        talker.render(tmp_path / "missing.wav", out=tmp_path / "o.mp4", progress=False)
    assert not (tmp_path / "o.mp4").exists()


def test_model_trained_on_another_feature_kind(tmp_path, monkeypatch):
    """A model on (stand-in) DeepSpeech features where the DeepSpeech graph is absent: one clear error."""
    monkeypatch.setenv("GAUSSIANTALKER_HOME", str(tmp_path / "empty_assets"))
    dataset = synthetic(tmp_path, "legacy", legacy=True, num_points=200)
    model = model_folder(dataset, tmp_path / "output" / "legacy")
    assert json.loads((model / "model.json").read_text())["audio_kind"] == "deepspeech"
    with pytest.raises(FeatureKindUnavailableError, match="deepspeech"):
        render(model, tmp_path / "a.wav", device="cpu")
