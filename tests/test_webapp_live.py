"""Live sessions of the web app over real WebRTC: an aiortc client (``live_client.py``) connects to a uvicorn
server, receives the avatar's decoded video and audio, makes it speak (an audio upload, TTS text, the
microphone), barges in, and checks the errors and the session limits. The model is the tiny synthetic one
of ``_webapp_helpers``, with a still head (``live_loop_frames=1``): every listening frame is the same
image, so a change of the mouth region can only come from speech."""

from __future__ import annotations

import asyncio
import os
import time

import numpy as np
import pytest

pytest.importorskip("fastapi", reason="the web app needs fastapi (pip install fastapi uvicorn)")
pytest.importorskip("uvicorn", reason="the live tests serve the app with uvicorn")
pytest.importorskip("aiortc", reason="live sessions need aiortc (pip install aiortc)")

import _webapp_helpers as H  # noqa: E402
from examples.webapp.live_client import LiveClient, audio_onsets, http  # noqa: E402

from examples.webapp import Settings, create_app  # noqa: E402
from gaussiantalker.audio import write_wav  # noqa: E402


@pytest.fixture(scope="module")
def ws(tmp_path_factory):
    return H.make_workspace(tmp_path_factory.mktemp("webapp_live_ws"))


@pytest.fixture(scope="module")
def app(ws):
    with pytest.MonkeyPatch.context() as mp:
        for var in ("GT_LLM_BASE_URL", "GT_LLM_MODEL", "GT_LLM_API_KEY"):
            mp.delenv(var, raising=False)
        return create_app(Settings(workspace=ws, device="cpu", live_loop_frames=1, max_live_sessions=2))


@pytest.fixture(scope="module")
def server(app):
    with H.serve(app) as url:
        yield url


def run(coro):
    return asyncio.run(asyncio.wait_for(coro, timeout=150))


def voice(seconds: float, rate: int = 16000) -> np.ndarray:
    """A voiced sound (a 140 Hz buzz with a syllable envelope): drives the mouth like speech does."""
    t = np.arange(int(seconds * rate)) / rate
    env = np.clip(np.sin(2 * np.pi * 3.0 * t), 0, None) ** 0.5
    buzz = sum(np.sin(2 * np.pi * 140 * k * t) / k for k in range(1, 8))
    return (0.25 * env * buzz / 2).astype(np.float32)


def wav_bytes(samples: np.ndarray, tmp_path) -> bytes:
    path = tmp_path / "say.wav"
    write_wav(path, samples)
    return path.read_bytes()


def mouth(img: np.ndarray) -> np.ndarray:
    """The lower middle of the face: rows 55-85 %, columns 30-70 % of the frame."""
    h, w = img.shape[:2]
    return img[int(0.55 * h):int(0.85 * h), int(0.3 * w):int(0.7 * w)].astype(np.float32)


def test_live_session_streams_listens_and_speaks(server, app, tmp_path):
    talker_size = None

    async def main():
        nonlocal talker_size
        async with LiveClient(server, "tiny", mic=False) as c:
            await c.wait_video(50)
            state = await c.state()
            talker_size = (state["height"], state["width"])
            listening = [img for _, _, img in c.video[10:50]]
            status, turn = await c.say(wav=wav_bytes(voice(1.6), tmp_path))
            assert status == 200, turn
            await c.wait_video(len(c.video) + 70)
            await asyncio.sleep(0.5)
            return listening, list(c.video), list(c.audio), turn, await c.state()

    listening, video, audio, turn, state = run(main())
    assert len(video) >= 50 and len(audio) >= 50
    assert all(img.shape == (*talker_size, 3) for _, _, img in video if img is not None)
    assert talker_size == (48, 48)
    # media timestamps: video on the 90 kHz clock at 25 fps, audio on the 48 kHz clock
    pts = np.array([p for p, _, _ in video])
    assert np.all(np.diff(pts) == 3600)
    # listening frames are one still image (mouth closed, head still); speaking frames move the mouth
    ref = mouth(listening[0])
    assert max(np.abs(mouth(img) - ref).mean() for img in listening) < 1.0
    start = turn["start_frame"]
    speaking = [img for p, _, img in video if img is not None and start * 3600 <= p < (start + turn["frames"]) * 3600]
    assert len(speaking) >= 20
    change = [np.abs(mouth(img) - ref).mean() for img in speaking]
    print(f"\nmouth region change while speaking: max {max(change):.2f}, median {np.median(change):.2f} levels")
    assert max(change) > 3.0
    # the speech's sound starts at the media time of its first frame (A/V offset from the timestamps)
    onsets = audio_onsets(audio)
    assert onsets, "no speech heard"
    offset_ms = 1000 * (onsets[-1] / 48000 - start / 25)
    print(f"A/V offset of the speech onset: {offset_ms:+.1f} ms")
    assert abs(offset_ms) <= 40
    # after the reply the avatar listens again: the last frame is the listening image (to the video codec's
    # noise, which settles over a few frames after a change)
    tail = [img for p, _, img in video if img is not None and p >= (start + turn["frames"] + 10) * 3600]
    if tail:
        assert np.abs(mouth(tail[-1]) - ref).mean() < min(3.0, max(change) / 2)
    assert state["turns"][-1]["timings"]["first_frame"] is not None
    assert state["speaking"] is False


def test_live_say_text_and_two_isolated_sessions_share_one_model(server, app):
    if not H.espeak_available():
        pytest.skip("espeak-ng is absent (apt-get install espeak-ng): the default TTS")
    loads_before = app.state.cache.loads

    async def main():
        async with LiveClient(server, "tiny", mic=False) as a, LiveClient(server, "tiny", mic=False) as b:
            await a.wait_video(20)
            await b.wait_video(20)
            status, turn = await a.say(text="hello, I am the first avatar")
            assert status == 200, turn
            assert turn["timings"]["tts"] >= 0
            await asyncio.sleep(2.5)
            return list(a.audio), list(b.audio), await a.state(), await b.state()

    a_audio, b_audio, a_state, b_state = run(main())
    assert audio_onsets(a_audio), "session a did not speak"
    assert not audio_onsets(b_audio), "session b heard session a's reply"
    assert a_state["turns"] and not b_state["turns"]
    first = a_state["turns"][-1]["timings"]
    print(f"\nsay(text) timings: {first}")
    assert app.state.cache.loads - loads_before <= 1  # both sessions on one loaded model


def test_live_errors_are_one_line_and_the_server_keeps_serving(server, app):
    sdp_ok = "v=0\r\n"
    status, body = http("POST", f"{server}/api/live/offer", {"sdp": "hello", "type": "offer", "model": "tiny"})
    assert status == 400 and "SDP" in body["error"] and "\n" not in body["error"]
    status, body = http("POST", f"{server}/api/live/offer", {"sdp": sdp_ok + "garbage", "type": "offer", "model": "tiny"})
    assert status == 400 and "bad SDP" in body["error"]
    status, body = http("POST", f"{server}/api/live/offer", {"sdp": sdp_ok, "type": "offer", "model": "nope"})
    assert status == 404 and "nope" in body["error"]
    status, body = http("POST", f"{server}/api/live/offer", {"sdp": sdp_ok, "type": "offer", "model": "../x"})
    assert status == 400
    status, body = http("POST", f"{server}/api/live/offer", {"sdp": sdp_ok, "type": "answer", "model": "tiny"})
    assert status == 400
    status, body = http("POST", f"{server}/api/live/offer", b"sdp", "text/plain")
    assert status == 415
    status, body = http("POST", f"{server}/api/live/0123456789abcdef/say", {"text": "hi"})
    assert status == 404
    status, body = http("DELETE", f"{server}/api/live/0123456789abcdef")
    assert status == 404

    async def too_many():
        async with LiveClient(server, "tiny", mic=False) as a, LiveClient(server, "tiny", mic=False) as b:
            await a.wait_video(5)
            await b.wait_video(5)
            with pytest.raises(RuntimeError) as err:
                async with LiveClient(server, "tiny", mic=False):
                    pass
            assert "503" in str(err.value) and "too many live sessions" in str(err.value)
            bad = await asyncio.to_thread(http, "POST", f"{server}/api/live/{a.session}/say", b"x", "text/plain")
            assert bad[0] == 415
            empty = await asyncio.to_thread(http, "POST", f"{server}/api/live/{a.session}/say", {"text": " "})
            assert empty[0] == 400
            n = len(a.video)
            await asyncio.sleep(0.5)
            assert len(a.video) > n  # the refused third session did not disturb the others

    run(too_many())
    assert http("GET", f"{server}/api/status")[1]["live"]["sessions"] == 0
    # a session whose peer goes away without DELETE is cleaned up

    async def vanish():
        c = LiveClient(server, "tiny", mic=False)
        await c.__aenter__()
        await c.wait_video(5)
        sid = c.session
        await c.pc.close()
        return sid

    sid = run(vanish())
    end = time.monotonic() + 20
    while time.monotonic() < end and http("GET", f"{server}/api/live/{sid}")[0] == 200:
        time.sleep(0.2)
    assert http("GET", f"{server}/api/live/{sid}")[0] == 404
    assert http("GET", f"{server}/api/models")[0] == 200


def test_live_microphone_barge_in_stops_the_reply(server, tmp_path):
    async def main():
        async with LiveClient(server, "tiny", mic=True) as c:
            await c.wait_video(20)
            status, turn = await c.say(wav=wav_bytes(voice(4.0), tmp_path))
            assert status == 200, turn
            start = turn["start_frame"]
            while not c.audio or c.audio[-1][0] < (start + 25) * 1920:  # one second into the reply
                await asyncio.sleep(0.02)
            loud = 0.4 * np.sin(2 * np.pi * 300 * np.arange(48000) / 48000)
            c.mic.play(loud)  # the user talks over the avatar
            await asyncio.sleep(1.5)
            return list(c.audio), c.mic.onset, await c.state(), turn

    audio, onset, state, turn = run(main())
    said = state["turns"][0]
    assert said.get("interrupted_at_frame") is not None, said
    # the reply's sound stopped long before its 4 s were over
    loud = [(p, t) for p, t, x in audio if np.abs(x).max() > 0.01]
    last_pts, last_arrival = loud[-1]
    heard_s = last_pts / 48000 - turn["start_frame"] / 25
    print(f"\nreply heard for {heard_s:.2f} s of 4 s; last loud audio arrived {last_arrival - onset:+.3f} s after the "
          f"microphone onset; stop_after_interrupt {said['timings'].get('stop_after_interrupt')}")
    assert heard_s < 2.5


def test_live_microphone_turn_asr_echo_tts(server, tmp_path):
    if not H.espeak_available():
        pytest.skip("espeak-ng is absent (apt-get install espeak-ng): the default TTS and the test's speech")
    from gaussiantalker.audio import load_audio
    from gaussiantalker.live import _resample

    speech = _resample(load_audio(H.speech_wav(tmp_path / "q.wav", "hello world how are you today")), 16000, 48000)

    async def main():
        async with LiveClient(server, "tiny", mic=True) as c:
            await c.wait_video(20)
            c.mic.play(speech)
            end = time.monotonic() + 30
            while time.monotonic() < end:
                st = await c.state()
                if st["turns"] and st["turns"][-1].get("timings", {}).get("first_frame") is not None:
                    return st
                await asyncio.sleep(0.1)
            return await c.state()

    st = run(main())
    assert st["turns"], st
    t = st["turns"][-1]
    print(f"\nmicrophone turn: {t.get('transcript')!r} -> {t.get('reply')!r}; timings {t.get('timings')}")
    assert t.get("transcript") and t.get("reply") == t["transcript"] and t.get("llm") == "echo"
    for k in ("vad_end", "asr", "llm", "tts", "first_frame", "total_to_first_frame"):
        assert k in t["timings"], k




def test_aiortc_after_the_librarys_tensorflow_does_not_crash(tmp_path):
    """``import tensorflow`` then aiortc's ``pylibsrtp`` segfaults (measured); the library imports it before
    TensorFlow (``gaussiantalker._import_order``), so a server that has preprocessed a video (MediaPipe,
    TensorFlow) can still open live sessions. Checked in a fresh process."""
    import importlib.util
    import subprocess
    import sys

    if importlib.util.find_spec("tensorflow") is None:
        pytest.skip("TensorFlow not installed: nothing to crash")
    code = ("import sys\n"
            "from gaussiantalker.audio._tf_graph import import_tensorflow\n"
            "import_tensorflow()\n"
            "assert 'tensorflow' in sys.modules\n"
            "from aiortc import RTCPeerConnection\n"
            "print('ALIVE')\n")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300,
                          cwd=str(H.REPO), env={**os.environ, "PYTHONPATH": str(H.REPO)})
    assert proc.returncode == 0 and "ALIVE" in proc.stdout, proc.stderr[-2000:]
