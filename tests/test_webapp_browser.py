"""The three pages in a real headless Chromium (Debian's ``chromium``, driven by Playwright; no browser
download): a training job from the page, a generated video that plays, the chat loop
ASR -> echo -> TTS -> video from an uploaded wav, and the live (WebRTC) conversation with a fake microphone
that plays a wav. Screenshots of the pages are saved as test artefacts
(``$GT_TEST_ARTIFACTS/webapp`` when set, else a temporary folder whose path is printed)."""

from __future__ import annotations

import pytest

pytest.importorskip("fastapi", reason="the web app needs fastapi (pip install fastapi uvicorn)")
pytest.importorskip("uvicorn", reason="the browser tests serve the app with uvicorn")
sync_api = pytest.importorskip("playwright.sync_api", reason="pip install playwright (the binding only; "
                                                             "the browser is Debian's chromium)")

import _webapp_helpers as H  # noqa: E402

from examples.webapp import Settings, create_app  # noqa: E402

if not H.CHROMIUM.is_file():
    pytest.skip(f"{H.CHROMIUM} is absent (apt-get install chromium)", allow_module_level=True)

TIMEOUT_MS = 60_000


@pytest.fixture(scope="module")
def ws(tmp_path_factory):
    root = H.make_workspace(tmp_path_factory.mktemp("webapp_browser_ws"))
    H.write_tiny_config(root / "webapp" / "configs")
    return root


@pytest.fixture(scope="module")
def server(ws):
    with pytest.MonkeyPatch.context() as mp:
        for var in ("GT_LLM_BASE_URL", "GT_LLM_MODEL", "GT_LLM_API_KEY"):
            mp.delenv(var, raising=False)  # the chat test expects the no-LLM page
        app = create_app(Settings(workspace=ws, device="cpu"))
    with H.serve(app) as url:
        yield url


@pytest.fixture(scope="module")
def playwright():
    with sync_api.sync_playwright() as pw:  # one per thread: every browser of this module comes from it
        yield pw


@pytest.fixture(scope="module")
def browser(playwright, tmp_path_factory):
    context = playwright.chromium.launch_persistent_context(
        str(tmp_path_factory.mktemp("chromium_profile")), executable_path=str(H.CHROMIUM), headless=True,
        args=H.CHROMIUM_ARGS, viewport={"width": 1100, "height": 1000})
    try:
        yield context
    finally:
        context.close()


@pytest.fixture(scope="module")
def artifacts(tmp_path_factory):
    folder = H.artifacts_dir(tmp_path_factory)
    print(f"\nweb app screenshots: {folder}")
    return folder


@pytest.fixture()
def page(browser):
    p = browser.new_page()
    errors = []
    p.on("pageerror", lambda exc: errors.append(str(exc)))
    yield p
    p.close()
    assert not errors, f"JavaScript errors on the page: {errors}"


def _media_ready(page, selector: str) -> None:
    """Wait until the <video> has decoded its current frame (HAVE_CURRENT_DATA) and has a positive duration."""
    page.wait_for_function(
        f"() => {{ const v = document.querySelector('{selector}'); "
        "return v && v.readyState >= 2 && isFinite(v.duration) && v.duration > 0; }", timeout=TIMEOUT_MS)


def test_training_page_runs_a_job_and_keeps_it_across_a_reload(page, server, artifacts):
    page.goto(f"{server}/model_training.html")
    page.wait_for_function("() => document.querySelector('#config').options.length > 3")
    page.check("input[name=source][value=server]")
    page.select_option("#server-video", "dataset:tiny")
    page.fill("#name", "from_browser")
    page.select_option("#device", "CPU")
    page.select_option("#config", "tiny.json")
    page.fill("#iterations", "2")
    page.click("#train-submit")
    page.wait_for_selector("#jobs tr.selected", timeout=TIMEOUT_MS)
    page.wait_for_function("() => document.querySelector('#jobs tr.selected td:nth-child(2)').textContent === 'done'",
                           timeout=TIMEOUT_MS)
    assert page.text_content("#error") == ""
    page.reload()
    page.wait_for_function("() => document.querySelector('#sel-title').textContent.includes('from_browser')",
                           timeout=TIMEOUT_MS)
    assert "done" in page.text_content("#sel-status")
    assert "training from_browser" in page.text_content("#log")
    page.screenshot(path=str(artifacts / "model_training.png"), full_page=True)
    # a bad upload: a text file named .mp4 gives one line on the page
    bad = artifacts / "not_a_video.mp4"
    bad.write_text("hello\n")
    page.check("input[name=source][value=upload]")
    page.set_input_files("#video-file", str(bad))
    page.click("#train-submit")
    page.wait_for_function("() => document.querySelector('#error').textContent.length > 0", timeout=TIMEOUT_MS)
    assert "not an audio or video file" in page.text_content("#error")


def test_generation_page_plays_the_rendered_video(page, server, artifacts, tmp_path):
    audio = H.tone_wav(tmp_path / "speech.wav", 1.2)
    page.goto(f"{server}/video_generation.html")
    page.wait_for_function("() => [...document.querySelector('#model').options].some(o => o.value === 'tiny')")
    page.select_option("#model", "tiny")
    page.fill("#batch-size", "8")
    page.set_input_files("#audio-file", str(audio))
    page.click("#generate")
    _media_ready(page, "#result")
    duration = page.evaluate("() => document.querySelector('#result').duration")
    assert 1.0 < duration < 1.6
    assert page.get_attribute("#download", "href").startswith("/static/videos/")
    assert page.text_content("#error") == ""
    page.screenshot(path=str(artifacts / "video_generation.png"), full_page=True)


def test_chat_page_echo_loop_plays_the_reply(page, server, artifacts, tmp_path):
    if not H.espeak_available():
        pytest.skip("espeak-ng is absent (apt-get install espeak-ng): the default TTS")
    speech = H.speech_wav(tmp_path / "question.wav", "hello world how are you today")
    page.goto(f"{server}/chat_system.html")
    page.wait_for_function("() => document.querySelector('#mode').options.length > 0")
    assert "No LLM is configured" in page.text_content("#llm-note")
    assert page.eval_on_selector("#mode", "s => [...s.options].map(o => o.value)") == ["echo"]
    page.select_option("#model", "tiny")
    page.set_input_files("#audio-file", str(speech))
    page.click("#send")
    _media_ready(page, "#reply")
    assert page.text_content("#error") == ""
    conversation = page.text_content("#conversation")
    assert "echo - not an LLM" in conversation and "Reply:" in conversation
    page.wait_for_function("() => document.querySelector('#live').dataset.firstPlayMs !== undefined",
                           timeout=TIMEOUT_MS)
    first_play = page.evaluate("() => Number(document.querySelector('#live').dataset.firstPlayMs)")
    timings = page.text_content("#timings")
    print(f"\nchat page: first reply piece playing {first_play} ms after send; {timings}")
    assert first_play > 0
    page.screenshot(path=str(artifacts / "chat_system.png"), full_page=True)


def test_another_sites_page_cannot_start_training(page, server):
    """A page of another origin (here another port of 127.0.0.1, a different origin for the browser) sends the
    cross-site requests a malicious site could: a no-cors text/plain POST and a JSON POST. Neither is
    accepted, and the page's own requests keep working."""
    import json
    import threading
    import urllib.request
    from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

    class Evil(BaseHTTPRequestHandler):
        def do_GET(self):  # noqa: N802 - http.server's naming
            body = b"<!doctype html><title>elsewhere</title><p>another site</p>"
            self.send_response(200)
            self.send_header("Content-Type", "text/html")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args):
            pass

    evil = ThreadingHTTPServer(("127.0.0.1", 0), Evil)
    threading.Thread(target=evil.serve_forever, daemon=True).start()
    try:
        page.goto(f"http://127.0.0.1:{evil.server_address[1]}/")
        body = json.dumps({"dataset": "tiny", "name": "csrf", "config": "tiny.json", "iterations": 1})
        page.evaluate("""async ([url, body]) => {
            await fetch(url + '/api/train', {method: 'POST', mode: 'no-cors', headers: {'Content-Type': 'text/plain'},
                                             body}).catch(() => null);
            await fetch(url + '/api/train', {method: 'POST', headers: {'Content-Type': 'application/json'},
                                             body}).catch(() => null);
        }""", [server, body])
    finally:
        evil.shutdown()
        evil.server_close()
    with urllib.request.urlopen(f"{server}/api/jobs?kind=train") as resp:
        jobs = json.loads(resp.read())["jobs"]
    assert [j for j in jobs if j["params"].get("name") == "csrf"] == []


def test_pages_work_with_a_token(browser, ws, tmp_path):
    app = create_app(Settings(workspace=ws, device="cpu", token="browser-secret"))
    with H.serve(app) as url:
        page = browser.new_page()
        try:
            assert page.goto(f"{url}/video_generation.html").status == 401
            page.goto(f"{url}/video_generation.html?token=browser-secret")
            assert page.url == f"{url}/video_generation.html"  # the token left the address bar
            page.wait_for_function("() => [...document.querySelector('#model').options].some(o => o.value === 'tiny')",
                                   timeout=TIMEOUT_MS)
            page.select_option("#model", "tiny")
            page.fill("#batch-size", "8")
            page.set_input_files("#audio-file", str(H.tone_wav(tmp_path / "speech.wav", 0.8)))
            page.click("#generate")
            _media_ready(page, "#result")  # the <video> loads with the cookie too
            assert page.text_content("#error") == ""
        finally:
            page.close()


def test_chat_page_live_conversation_over_webrtc(playwright, ws, tmp_path, artifacts):
    """Chromium's fake devices feed a wav (1.5 s of silence, a spoken sentence, silence) as the microphone: the
    page starts a live session, the <video> plays live frames of the avatar, the sentence goes through
    ASR -> echo -> TTS and the avatar answers."""
    if not H.espeak_available():
        pytest.skip("espeak-ng is absent (apt-get install espeak-ng): the default TTS and the test's speech")
    pytest.importorskip("aiortc", reason="live sessions need aiortc (pip install aiortc)")
    import numpy as np

    from gaussiantalker.audio import load_audio, write_wav

    speech = load_audio(H.speech_wav(tmp_path / "q.wav", "hello world how are you today"))
    mic = write_wav(tmp_path / "mic.wav", np.concatenate([np.zeros(24000, np.float32), speech,
                                                           np.zeros(48000, np.float32)]))
    with pytest.MonkeyPatch.context() as mp:
        for var in ("GT_LLM_BASE_URL", "GT_LLM_MODEL", "GT_LLM_API_KEY"):
            mp.delenv(var, raising=False)
        app = create_app(Settings(workspace=ws, device="cpu"))
    args = [*H.CHROMIUM_ARGS, "--use-fake-ui-for-media-stream", "--use-fake-device-for-media-stream",
            f"--use-file-for-fake-audio-capture={mic}%noloop"]
    with H.serve(app) as url:
        context = playwright.chromium.launch_persistent_context(
            str(tmp_path / "profile"), executable_path=str(H.CHROMIUM), headless=True, args=args,
            viewport={"width": 1100, "height": 1300}, permissions=["microphone"])
        try:
            page = context.new_page()
            errors = []
            page.on("pageerror", lambda exc: errors.append(str(exc)))
            page.goto(f"{url}/chat_system.html")
            page.wait_for_function("() => [...document.querySelector('#model').options].some(o => o.value === 'tiny')")
            page.select_option("#model", "tiny")
            page.click("#live-start")
            # live frames: requestVideoFrameCallback counts frames the <video> presents
            page.wait_for_function("() => { const v = document.querySelector('#avatar'); return v.readyState >= 2 && "
                                   "v.videoWidth > 0; }", timeout=TIMEOUT_MS)
            page.evaluate("""() => { const v = document.querySelector('#avatar'); window.liveFrames = 0;
                const tick = () => { window.liveFrames++; v.requestVideoFrameCallback(tick); };
                v.requestVideoFrameCallback(tick); }""")
            t0 = page.evaluate("() => document.querySelector('#avatar').currentTime")
            page.wait_for_function("() => window.liveFrames >= 25", timeout=TIMEOUT_MS)
            assert page.evaluate("() => document.querySelector('#avatar').currentTime") > t0
            assert page.evaluate("() => document.querySelector('#avatar').videoWidth") == 48
            assert page.evaluate("() => document.querySelector('#avatar').paused") is False
            # the spoken sentence comes back as a live turn: transcript, echo reply, first frame timing
            page.wait_for_function("() => document.querySelector('#live-turns').textContent.includes('Avatar:')",
                                   timeout=TIMEOUT_MS)
            page.wait_for_function("() => document.querySelector('#live-timings').textContent.includes('in all') && "
                                   "!document.querySelector('#live-timings').textContent.includes('- in all')",
                                   timeout=TIMEOUT_MS)
            turns = page.text_content("#live-turns")
            assert "You:" in turns and "echo - not an LLM" in turns
            frames_before = page.evaluate("() => window.liveFrames")
            page.wait_for_timeout(1000)
            frames_after = page.evaluate("() => window.liveFrames")
            print(f"\nlive page: {turns.strip()!r}; {page.text_content('#live-timings')}; "
                  f"{frames_after - frames_before} frames presented in 1 s")
            assert frames_after - frames_before >= 10
            assert page.text_content("#live-error") == ""
            page.screenshot(path=str(artifacts / "chat_system_live.png"), full_page=True)
            session = page.get_attribute("#avatar", "data-session")
            page.click("#live-stop")
            page.wait_for_function("() => document.querySelector('#live-status').textContent === 'stopped'")
            assert app.state.live.sessions.get(session) is None
            assert not errors, f"JavaScript errors on the page: {errors}"
        finally:
            context.close()
