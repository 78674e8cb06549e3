"""load_audio and gaussiantalker.media: every format, the real files, and clear errors."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from _audio_helpers import dominant_frequency, generate, shared_files, tone_args
from scipy.io import wavfile

from gaussiantalker.audio import load_audio, write_wav
from gaussiantalker.media import MediaError, _parse_probe, ffmpeg_exe, probe, run_ffmpeg

# --------------------------------------------------------------------------------------------------
# real files


def test_every_shared_audio_file_loads_as_16k_mono():
    for path in shared_files("audio", "*.wav"):
        info = probe(path)
        audio = load_audio(path)
        assert audio.dtype == np.float32 and audio.ndim == 1, path
        assert abs(audio.size / 16000 - info.duration) < 0.02, path
        assert 0.05 < np.abs(audio).max() <= 1.0, path
        assert np.isfinite(audio).all(), path


def test_shared_16k_pcm16_stereo_is_the_channel_average_exactly():
    files = [p for p in shared_files("audio", "*.wav") if p.name == "SadTalker__RD_Radio31_000.wav"]
    if not files:
        pytest.skip("SadTalker__RD_Radio31_000.wav absent")
    rate, data = wavfile.read(files[0])
    assert rate == 16000 and data.dtype == np.int16 and data.shape[1] == 2
    expected = data.astype(np.float64).mean(axis=1) / 32768.0
    np.testing.assert_allclose(load_audio(files[0]), expected, rtol=0, atol=1e-7)


@pytest.mark.filterwarnings("ignore:Chunk .non-data. not understood")  # scipy on the file's LIST chunk
def test_shared_24bit_file_matches_scipy_at_native_rate():
    files = [p for p in shared_files("audio", "*.wav") if p.name == "SadTalker__japanese.wav"]
    if not files:
        pytest.skip("SadTalker__japanese.wav absent")
    assert probe(files[0]).audio.codec == "pcm_s24le"
    rate, data = wavfile.read(files[0])  # 24-bit samples arrive left-aligned in int32
    expected = data.astype(np.float64).mean(axis=1) / 2**31
    got = load_audio(files[0], sample_rate=rate)
    np.testing.assert_allclose(got, expected, rtol=0, atol=1e-6)


def test_audio_track_of_every_shared_clip():
    for path in shared_files("clips", "*.mp4"):
        info = probe(path)
        assert info.video is not None and info.audio is not None, path
        audio = load_audio(path)
        assert abs(audio.size / 16000 - info.duration) < 0.05, path
        assert np.abs(audio).max() > 0.05, path


def test_probe_of_shared_clips():
    clips = {p.name: p for p in shared_files("clips", "*.mp4")}
    if "SadTalker__WDA_KatieHill_000.mp4" in clips:
        info = probe(clips["SadTalker__WDA_KatieHill_000.mp4"])
        assert (info.video.codec, info.video.width, info.video.height, info.video.fps) == ("mpeg4", 512, 512, 25.0)
        assert (info.audio.codec, info.audio.sample_rate, info.audio.channels) == ("aac", 16000, 2)
        assert info.duration == pytest.approx(8.0, abs=0.02)
    if "LatentSync__demo1_video.mp4" in clips:
        info = probe(clips["LatentSync__demo1_video.mp4"])
        assert (info.video.codec, info.video.width, info.video.height) == ("hevc", 1080, 1920)
    if "video-retalking__1.mp4" in clips:  # variable frame rate: the average is reported
        assert 20 < probe(clips["video-retalking__1.mp4"]).video.fps < 25


# --------------------------------------------------------------------------------------------------
# generated formats

FORMATS = {
    "mp3": ["-c:a", "libmp3lame", "-b:a", "128k"],
    "flac": ["-c:a", "flac"],
    "m4a": ["-c:a", "aac", "-b:a", "128k"],
    "ogg": ["-c:a", "libvorbis"],
    "opus": ["-c:a", "libopus"],
    "wav": ["-c:a", "pcm_s16le"],
}


@pytest.mark.parametrize("ext", sorted(FORMATS))
def test_generated_formats(tmp_path, ext):
    path = generate(tmp_path / f"tone.{ext}", tone_args(1.0, 440.0, 44100, 2) + FORMATS[ext])
    audio = load_audio(path)
    # Lossy codecs add encoder delay/padding of some tens of ms; the decoder trims most of it.
    assert abs(audio.size / 16000 - 1.0) < 0.06, audio.size
    assert dominant_frequency(audio) == pytest.approx(440.0, abs=3.0)
    # Two identical channels averaged keep the amplitude (ffmpeg's -ac 1 would give 0.707 instead of 0.5).
    steady = audio[2000:-2000]
    assert np.abs(steady).max() == pytest.approx(0.5, abs=0.03)


@pytest.mark.parametrize(
    "codec,bits", [("pcm_s16le", 16), ("pcm_s24le", 24), ("pcm_s32le", 32), ("pcm_f32le", 32), ("pcm_u8", 8)]
)
def test_wav_sample_formats(tmp_path, codec, bits):
    path = generate(tmp_path / f"{codec}.wav", tone_args(0.5, 1000.0, 16000, 1) + ["-c:a", codec])
    audio = load_audio(path)
    assert audio.size == 8000
    ref = 0.5 * np.sin(2 * np.pi * 1000.0 * np.arange(8000) / 16000)
    np.testing.assert_allclose(audio, ref, atol=2.0 ** (1 - bits) + 1e-4 if bits < 32 else 1e-4)


def test_mono_and_8k_inputs_and_output_rates(tmp_path):
    mono8k = generate(tmp_path / "mono8k.wav", tone_args(2.0, 300.0, 8000, 1) + ["-c:a", "pcm_s16le"])
    assert probe(mono8k).audio.channels == 1 and probe(mono8k).audio.sample_rate == 8000
    audio = load_audio(mono8k)
    assert audio.size == 32000
    assert dominant_frequency(audio) == pytest.approx(300.0, abs=1.0)
    assert load_audio(mono8k, sample_rate=8000).size == 16000
    assert load_audio(mono8k, sample_rate=48000).size == 96000


def test_audio_track_of_generated_video(tmp_path):
    video = generate(
        tmp_path / "talk.mp4",
        ["-f", "lavfi", "-i", "testsrc=size=64x64:rate=25:duration=2"]
        + tone_args(2.0, 500.0, 48000, 2)
        + ["-c:v", "libx264", "-pix_fmt", "yuv420p", "-c:a", "aac", "-shortest"],
    )
    info = probe(video)
    assert (info.video.width, info.video.height, info.video.fps) == (64, 64, 25.0)
    assert info.audio.sample_rate == 48000
    audio = load_audio(video)
    assert abs(audio.size / 16000 - 2.0) < 0.06
    assert dominant_frequency(audio) == pytest.approx(500.0, abs=3.0)


def test_write_wav_round_trip(tmp_path):
    x = np.round(np.sin(np.linspace(0, 40, 3210)) * 20000) / 32768.0
    path = write_wav(tmp_path / "x.wav", x.astype(np.float32))
    np.testing.assert_array_equal(load_audio(path), x.astype(np.float32))
    with pytest.raises(ValueError, match="mono"):
        write_wav(tmp_path / "y.wav", np.zeros((10, 2)))


# --------------------------------------------------------------------------------------------------
# bad inputs


def test_missing_file(tmp_path):
    missing = tmp_path / "nope.wav"
    with pytest.raises(FileNotFoundError, match="nope.wav"):
        load_audio(missing)
    with pytest.raises(FileNotFoundError, match="folder"):
        load_audio(tmp_path)


def test_not_a_media_file(tmp_path):
    bogus = tmp_path / "notes.wav"
    bogus.write_text("these are not samples\n" * 20)
    with pytest.raises(MediaError, match=r"notes\.wav is not a media file"):
        load_audio(bogus)


def test_video_without_audio_stream(tmp_path):
    silent = generate(
        tmp_path / "silent.mp4",
        ["-f", "lavfi", "-i", "testsrc=size=32x32:rate=25:duration=0.4", "-c:v", "libx264", "-pix_fmt", "yuv420p"],
    )
    with pytest.raises(MediaError, match=r"silent\.mp4 has no audio stream \(streams found: video\)"):
        load_audio(silent)


def test_zero_length_audio(tmp_path):
    empty = generate(tmp_path / "empty.wav", ["-f", "lavfi", "-i", "anullsrc=r=16000:cl=mono", "-frames:a", "0"])
    with pytest.raises(MediaError, match=r"empty\.wav has an audio stream .* zero samples"):
        load_audio(empty)


def test_bad_sample_rate(tmp_path):
    with pytest.raises(ValueError, match="sample_rate"):
        load_audio(tmp_path / "x.wav", sample_rate=0)


# --------------------------------------------------------------------------------------------------
# media module


def test_ffmpeg_exe_and_errors_name_the_file(tmp_path):
    assert Path(ffmpeg_exe()).is_file()
    with pytest.raises(MediaError, match=r"ffmpeg failed on .*missing\.wav"):
        run_ffmpeg(["-i", str(tmp_path / "missing.wav"), "-f", "null", "-"], path=tmp_path / "missing.wav")
    proc = run_ffmpeg(["-version"], check=False, capture_stdout=True)
    assert proc.returncode == 0 and b"ffmpeg version" in proc.stdout


def test_probe_parser_on_canned_output():
    text = """Input #0, mov,mp4,m4a,3gp,3g2,mj2, from 'x.m4a':
  Metadata:
    title           : Stream #0:9: Audio: fake, 1 Hz
  Duration: 00:01:02.50, start: 0.021333, bitrate: 130 kb/s
  Stream #0:0[0x1](und): Audio: aac (LC) (mp4a / 0x6134706D), 48000 Hz, 5.1(side), fltp, 384 kb/s (default)
  Stream #0:1[0x2](und): Video: mjpeg (Baseline), yuvj420p(pc), 600x600 [SAR 1:1 DAR 1:1], 90k tbr (attached pic)
  Stream #0:2[0x3](eng): Video: h264 (High) (avc1 / 0x31637661), yuv420p, 1920x1080, 29.97 fps, 29.97 tbr, 30k tbn
  Stream #0:3: Audio: pcm_s16le, 8000 Hz, 3 channels, s16, 384 kb/s
At least one output file must be specified
"""
    info = _parse_probe(Path("x.m4a"), text)
    assert info.container == "mov,mp4,m4a,3gp,3g2,mj2"
    assert info.duration == pytest.approx(62.5) and info.start == pytest.approx(0.021333)
    assert [s.kind for s in info.streams] == ["audio", "video", "video", "audio"]
    a = info.audio
    assert (a.codec, a.sample_rate, a.channels, a.sample_format) == ("aac", 48000, 6, "fltp")
    assert info.streams[1].attached_pic and info.video.index == 2
    assert (info.video.width, info.video.height, info.video.fps) == (1920, 1080, 29.97)
    assert info.streams[3].channels == 3
    with pytest.raises(MediaError, match="not a media file"):
        _parse_probe(Path("bad.bin"), "bad.bin: Invalid data found when processing input\n")
