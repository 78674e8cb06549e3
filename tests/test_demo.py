"""The built-in example subject: the generated speech, the talking video made from scikit-image's
astronaut photograph (real ffmpeg, real MediaPipe), and the whole demo end to end at reduced length."""

from __future__ import annotations

import numpy as np
import pytest

pytest.importorskip("skimage", reason="the demo photograph ships in scikit-image")

from gaussiantalker import demo  # noqa: E402
from gaussiantalker.audio import load_audio  # noqa: E402
from gaussiantalker.media import probe  # noqa: E402

SECONDS = 4.0


def frame_rms(audio: np.ndarray, num_frames: int, fps: float = 25.0, sr: int = 16000) -> np.ndarray:
    """RMS of the audio around each video frame (40 ms windows), computed here independently of the demo."""
    half = int(0.02 * sr)
    centres = (np.arange(num_frames) / fps * sr).astype(int)
    return np.array([np.sqrt(np.mean(audio[max(0, c - half): c + half] ** 2)) for c in centres])


def test_speech_is_speech_like(tmp_path):
    a = demo.make_demo_speech(tmp_path / "a.wav", seconds=3.0, seed=3)
    info = probe(a)
    assert info.audio.sample_rate == 16000 and info.audio.channels == 1
    assert abs(info.duration - 3.0) < 0.02
    x = load_audio(a)
    assert x.shape == (48000,) and np.abs(x).max() > 0.3
    rms = frame_rms(x, 75)
    loud = rms > 0.3 * rms.max()
    assert 0.3 < loud.mean() < 0.9  # syllables and pauses
    assert (np.abs(np.diff(loud.astype(int))).sum()) >= 6  # several separate syllables
    spectrum = np.abs(np.fft.rfft(x))
    freqs = np.fft.rfftfreq(x.size, 1 / 16000)
    assert spectrum[(freqs > 100) & (freqs < 1000)].sum() > spectrum[freqs > 4000].sum()  # voiced energy
    b = load_audio(demo.make_demo_speech(tmp_path / "b.wav", seconds=3.0, seed=3))
    c = load_audio(demo.make_demo_speech(tmp_path / "c.wav", seconds=3.0, seed=4))
    assert np.array_equal(x, b) and not np.allclose(x, c)


@pytest.fixture(scope="module")
def demo_video(tmp_path_factory):
    path = tmp_path_factory.mktemp("demo") / "astronaut.mp4"
    demo.make_demo_video(path, seconds=SECONDS, size=384, seed=0)
    return path


def test_video_streams_and_duration(demo_video):
    info = probe(demo_video)
    assert len(info.video_streams) == 1 and len(info.audio_streams) == 1
    assert info.video.codec == "h264" and info.audio.codec == "aac"
    assert (info.video.width, info.video.height) == (384, 384) and info.video.fps == 25.0
    assert abs(info.duration - SECONDS) < 0.1
    assert not list(demo_video.parent.glob(".*"))  # no temporary files left


def test_face_everywhere_and_mouth_follows_the_speech(demo_video):
    from gaussiantalker.preprocess.landmarks import detect_landmarks, read_video_rgb

    frames = read_video_rgb(demo_video)
    assert frames.shape[0] == int(SECONDS * 25)
    result = detect_landmarks(frames, mode="video")
    assert result.found.all(), result.missing_ranges()
    p = result.points68
    opening = np.linalg.norm(p[:, 66] - p[:, 62], axis=-1) / np.linalg.norm(p[:, 54] - p[:, 48], axis=-1)
    envelope = frame_rms(load_audio(demo_video), frames.shape[0])
    r = np.corrcoef(opening, envelope)[0, 1]
    assert r > 0.7, r
    assert opening.max() - opening.min() > 0.15  # visibly opens and closes
    # the head moves a little, smoothly: nose tip within a few pixels, no jumps
    nose = p[:, 30]
    assert 1.0 < np.ptp(nose, axis=0).max() < 0.1 * frames.shape[1]
    assert np.abs(np.diff(nose, axis=0)).max() < 4.0


@pytest.mark.slow
def test_run_demo_end_to_end(tmp_path, capsys):
    """The whole demo at reduced length: a 2.4 s video, a few training iterations."""
    from gaussiantalker.config import load_config

    config = load_config("cpu_small", coarse_iterations=20)
    result = demo.run_demo(tmp_path / "demo", seconds=2.4, iterations=10, device="cpu", progress=True,
                           config=config)
    out = capsys.readouterr().out
    assert str(result.render.path) in out and "evaluation report" in out
    info = probe(result.render.path)
    assert info.video is not None and info.audio is not None
    assert abs(info.duration - probe(result.speech).duration) < 0.2
    assert result.dataset.num_frames == 60
    assert (result.model.path / "metrics.json").is_file() and result.evaluation.report_path.is_file()
    assert result.video.is_file() and result.model.iteration == 10


@pytest.mark.slow
def test_quickstart_notebook_runs(tmp_path, monkeypatch):
    """examples/quickstart.ipynb, executed top to bottom at reduced length."""
    nbformat = pytest.importorskip("nbformat")
    nbclient = pytest.importorskip("nbclient")
    pytest.importorskip("ipykernel")
    from pathlib import Path

    path = Path(__file__).resolve().parents[1] / "examples" / "quickstart.ipynb"
    nb = nbformat.read(path, as_version=4)
    for key, value in {"GT_QUICKSTART_OUT": str(tmp_path / "out"), "GT_QUICKSTART_SECONDS": "2.4",
                       "GT_QUICKSTART_COARSE": "20", "GT_QUICKSTART_FINE": "10", "GT_QUICKSTART_DEVICE": "cpu"}.items():
        monkeypatch.setenv(key, value)  # the kernel inherits the environment
    client = nbclient.NotebookClient(nb, timeout=900, kernel_name="python3",
                                     resources={"metadata": {"path": str(tmp_path)}})
    client.execute()
    text = "\n".join(o.get("text", "") for c in nb.cells if c.cell_type == "code" for o in c.get("outputs", []))
    assert "frames of (" in text
    assert list((tmp_path / "out" / "GaussianTalker" / "output").glob("*/metrics.json"))
