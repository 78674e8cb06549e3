"""The web application's JSON API through FastAPI's test client: every endpoint, bad uploads, bad names,
training jobs (progress, log tail, de-duplication, one per device, cancel, restart), the LLM stage against a
real local HTTP server speaking the OpenAI chat-completions protocol, and pluggable stages."""

from __future__ import annotations

import json
import re
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

pytest.importorskip("fastapi", reason="the web app needs fastapi (pip install fastapi uvicorn httpx)")
pytest.importorskip("httpx", reason="FastAPI's test client needs httpx")

import _webapp_helpers as H  # noqa: E402
from fastapi.testclient import TestClient  # noqa: E402

from examples.webapp import Settings, create_app  # noqa: E402
from examples.webapp.backend.chat_engine import (  # noqa: E402
    CommandTTS,
    EchoLLM,
    OpenAIChatLLM,
    StageError,
    make_stage,
)
from gaussiantalker.media import probe  # noqa: E402

LIMIT_MB = 1.0


@pytest.fixture(scope="module")
def ws(tmp_path_factory) -> Path:
    root = H.make_workspace(tmp_path_factory.mktemp("webapp_ws"))
    H.write_tiny_config(root / "webapp" / "configs")
    return root


@pytest.fixture(scope="module")
def media(tmp_path_factory) -> dict:
    d = tmp_path_factory.mktemp("webapp_media")
    text = d / "notes.mp4"
    text.write_text("this is a text file, not a video\n" * 20)
    out = {"text_mp4": text, "video": H.video_with_audio(d / "talk.mp4"), "silent": H.video_without_audio(d / "silent.mp4"),
           "tone": H.tone_wav(d / "tone.wav", 1.0)}
    if H.espeak_available():
        out["speech"] = H.speech_wav(d / "speech.wav")
    return out


@pytest.fixture(scope="module", autouse=True)
def no_llm_env():
    """The tests configure the LLM themselves: a developer's GT_LLM_* variables must not leak in."""
    with pytest.MonkeyPatch.context() as mp:
        for var in ("GT_LLM_BASE_URL", "GT_LLM_MODEL", "GT_LLM_API_KEY"):
            mp.delenv(var, raising=False)
        yield


@pytest.fixture(scope="module")
def client(ws):
    app = create_app(Settings(workspace=ws, max_upload_mb=LIMIT_MB, device="cpu"))
    with TestClient(app, base_url=H.BASE_URL) as c:
        yield c


def upload(client, path: Path, kind: str, name=None):
    return client.post("/api/uploads", params={"kind": kind, "filename": name or path.name}, content=path.read_bytes())


def wait(client, job_id: str, timeout: float = 120.0, states=("done", "failed", "cancelled", "interrupted")) -> dict:
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        job = client.get(f"/api/jobs/{job_id}").json()
        if job["state"] in states:
            return job
        time.sleep(0.05)
    raise AssertionError(f"job {job_id} still {job['state']}")


def one_line_error(r, status: int) -> str:
    assert r.status_code == status, r.text
    msg = r.json()["error"]
    assert msg and "\n" not in msg and "Traceback" not in msg
    return msg


# ------------------------------------------------------------------------------------------------ pages
def test_pages_status_models_datasets(client):
    r = client.get("/", follow_redirects=False)
    assert r.status_code in (302, 307) and r.headers["location"] == "/model_training.html"
    for page, marker in [("model_training.html", 'id="train-submit"'), ("video_generation.html", 'id="generate"'),
                         ("chat_system.html", 'id="reply"')]:
        r = client.get(f"/{page}")
        assert r.status_code == 200 and r.headers["content-type"].startswith("text/html") and marker in r.text
        assert "http://" not in r.text and "https://" not in r.text  # no CDN
    for asset in ("/static/common.js", "/static/style.css"):
        assert client.get(asset).status_code == 200
    st = client.get("/api/status").json()
    assert "CPU" in st["devices"] and "cpu_small" in st["configs"] and "tiny.json" in st["configs"]
    assert st["max_upload_mb"] == LIMIT_MB and st["render_device"] == "cpu"
    assert st["chat"]["asr"] == "pocketsphinx" and st["chat"]["llm_configured"] is False
    assert st["chat"]["modes"] == ["echo"]
    assert client.get("/api/models").json()["models"] == [{"name": "tiny", "iterations": [3]}]
    assert client.get("/api/datasets").json()["datasets"] == ["tiny"]


# ------------------------------------------------------------------------------------------------ uploads
def test_uploads_are_probed_limited_and_stored_under_generated_names(client, ws, media):
    uploads = ws / "webapp" / "uploads"
    before = set(uploads.iterdir())
    msg = one_line_error(upload(client, media["text_mp4"], "video"), 400)
    assert "notes.mp4" in msg and "not an audio or video file" in msg
    msg = one_line_error(upload(client, media["text_mp4"], "audio"), 400)
    msg = one_line_error(upload(client, media["silent"], "video"), 400)
    assert "no audio stream" in msg
    one_line_error(upload(client, media["silent"], "audio"), 400)
    big = b"\0" * int((LIMIT_MB + 0.5) * 2 ** 20)
    msg = one_line_error(client.post("/api/uploads", params={"kind": "video", "filename": "big.mp4"}, content=big), 413)
    assert "limit" in msg

    def chunked():  # no Content-Length: the server counts while the body streams in
        for _ in range(24):
            yield b"\1" * 65536

    one_line_error(client.post("/api/uploads", params={"kind": "audio", "filename": "big.wav"}, content=chunked()), 413)
    one_line_error(client.post("/api/uploads", params={"kind": "audio", "filename": "e.wav"}, content=b""), 400)
    one_line_error(client.post("/api/uploads", params={"kind": "model", "filename": "x"}, content=b"x"), 400)
    one_line_error(client.post("/api/uploads", params={"filename": "x"}, content=b"x"), 422)
    assert set(uploads.iterdir()) == before  # nothing refused is kept, no partial files

    r = upload(client, media["video"], "video", name="../../My Talk.mp4")
    assert r.status_code == 200, r.text
    up = r.json()
    assert up["has_video"] and up["has_audio"] and up["width"] == 64 and up["filename"] == "My Talk.mp4"
    assert "path" not in up
    stored = sorted(p.name for p in set(uploads.iterdir()) - before)
    assert stored == sorted([f"{up['id']}.json", f"{up['id']}.mp4"])
    assert re.fullmatch(r"[0-9a-f]{32}", up["id"])
    assert [u["id"] for u in client.get("/api/uploads", params={"kind": "video"}).json()["uploads"]] == [up["id"]]
    assert upload(client, media["video"], "audio").json()["has_audio"]  # a video with sound is audio too

    csv = media["tone"].parent / "au.csv"
    csv.write_text("frame, timestamp, AU45_r\n1, 0.0, 0.5\n2, 0.04, 0.1\n")
    assert upload(client, csv, "au_csv").status_code == 200
    one_line_error(upload(client, media["tone"], "au_csv"), 400)  # binary, not a csv
    bad_csv = media["tone"].parent / "bad.csv"
    bad_csv.write_text("a,b\n1,2\n")
    assert "AU45_r" in one_line_error(upload(client, bad_csv, "au_csv"), 400)


# ------------------------------------------------------------------------------------------------ names and ids
def test_bad_names_ids_and_requests_are_one_line_errors(client, media):
    audio = upload(client, media["tone"], "audio").json()["id"]
    for name in ("../tiny", "..", "a/b", "a\\b", "/etc", ".hidden"):
        assert "invalid name" in one_line_error(client.post("/api/generate", json={"model": name, "audio": audio}), 400)
        one_line_error(client.post("/api/train", json={"dataset": name}), 400)
        one_line_error(client.post("/api/train", json={"dataset": "tiny", "name": name}), 400)
        one_line_error(client.post("/api/chat", json={"model": name, "audio": audio, "mode": "echo"}), 400)
    assert "no trained model 'ghost'" in one_line_error(
        client.post("/api/generate", json={"model": "ghost", "audio": audio}), 404)
    assert "iteration 99" in one_line_error(
        client.post("/api/generate", json={"model": "tiny", "audio": audio, "iteration": 99}), 400)
    one_line_error(client.post("/api/train", json={"dataset": "ghost"}), 404)
    one_line_error(client.post("/api/train", json={"dataset": "tiny", "config": "../../etc/passwd"}), 400)
    one_line_error(client.post("/api/train", json={"dataset": "tiny", "config": "nope.json"}), 404)
    one_line_error(client.post("/api/train", json={"dataset": "tiny", "device": "GPU7"}), 400)
    one_line_error(client.post("/api/train", json={"dataset": "tiny", "iterations": -3}), 400)
    one_line_error(client.post("/api/train", json={"video": audio}), 400)  # an audio upload is not a video
    one_line_error(client.post("/api/train", json={}), 400)
    one_line_error(client.post("/api/generate", json={"model": "tiny", "audio": "../" + "0" * 29}), 400)
    one_line_error(client.post("/api/generate", json={"model": "tiny", "audio": "f" * 32}), 404)
    one_line_error(client.post("/api/generate", json={"model": "tiny", "audio": audio, "batch_size": 0}), 400)
    one_line_error(client.post("/api/generate", json={"model": "tiny", "audio": audio, "batch_size": "x"}), 400)
    one_line_error(client.post("/api/generate", json={"model": "tiny"}), 400)
    one_line_error(client.post("/api/generate", json={"model": "tiny", "audio": audio, "extra": 1}), 400)
    one_line_error(client.post("/api/generate", json={"model": ["tiny"], "audio": audio}), 400)
    one_line_error(client.post("/api/generate", content=b"{not json", headers={"content-type": "application/json"}),
                   400)
    one_line_error(client.post("/api/generate", content=b"[" * (2 << 20), headers={"content-type": "application/json"}),
                   413)
    one_line_error(client.get("/api/jobs/..%2F..%2Fetc"), 404)
    one_line_error(client.get("/api/jobs/0123456789abcdef"), 404)
    one_line_error(client.post("/api/jobs/0123456789abcdef/cancel"), 404)
    assert client.get("/static/videos/..%2F..%2Fuploads").status_code == 404
    assert client.get("/api/status").status_code == 200  # still serving


# ------------------------------------------------------------------------------------------------ generation
def test_generate_renders_a_playable_video_and_loads_the_model_once(client, media):
    loads = client.app.state.cache.loads
    audio = upload(client, media["tone"], "audio").json()["id"]
    first = client.post("/api/generate", json={"model": "tiny", "audio": audio, "batch_size": 8}).json()
    second = client.post("/api/generate", json={"model": "tiny", "audio": audio, "batch_size": 16}).json()
    assert first["state"] == "queued" and first["params"]["iteration"] == 3
    jobs = [wait(client, j["id"]) for j in (first, second)]
    for job in jobs:
        assert job["state"] == "done", job["error"]
        assert job["progress"]["stage"] == "render" and job["progress"]["iteration"] == 25
        r = client.get(job["result"]["video"])
        assert r.status_code == 200 and r.headers["content-type"] == "video/mp4"
    path = Path(client.app.state.settings.videos_dir) / Path(jobs[0]["result"]["video"]).name
    info = probe(path)
    assert info.video.width == 48 and info.audio is not None and info.duration > 0.9
    assert jobs[0]["result"]["frames"] == 25
    assert client.app.state.cache.loads - loads <= 1  # loaded once (or reused from an earlier test)
    listed = [j["id"] for j in client.get("/api/jobs", params={"kind": "generate"}).json()["jobs"]]
    assert listed[:2] == [second["id"], first["id"]]


# ------------------------------------------------------------------------------------------------ training
def test_training_jobs_progress_dedupe_queue_cancel(client, ws):
    body = {"dataset": "tiny", "name": "trained", "device": "CPU", "config": "tiny.json", "iterations": 8}
    answers = [None, None]

    def submit(i):
        answers[i] = client.post("/api/train", json=body)

    threads = [threading.Thread(target=submit, args=(i,)) for i in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert [a.status_code for a in answers] == [200, 200], [a.text for a in answers]
    a, b = (x.json() for x in answers)
    assert a["id"] == b["id"] and sorted([a["deduplicated"], b["deduplicated"]]) == [False, True]
    queued = client.post("/api/train", json={**body, "name": "second", "iterations": 40}).json()
    assert queued["deduplicated"] is False and queued["lane"] == a["lane"] == "train:cpu"
    first = wait(client, a["id"])
    assert first["state"] == "done", first["error"]
    assert first["result"]["model"] == "trained" and first["result"]["iteration"] == 8
    assert first["progress"]["stage"] in ("coarse", "fine", "evaluate") and first["progress"]["total"] == 12
    assert any("training trained on cpu" in line for line in first["log"])
    assert any("gaussiantalker" in line for line in first["log"])  # library log records of the job's thread
    running = wait(client, queued["id"], states=("running", "done", "failed"))
    assert running["started"] >= first["finished"]  # one training job per device at a time
    cancelled = client.post(f"/api/jobs/{queued['id']}/cancel").json()
    assert cancelled["cancel_requested"] is True
    second = wait(client, queued["id"])
    assert second["state"] == "cancelled" and second["error"] == "cancelled by the user"
    assert [j["id"] for j in client.get("/api/jobs", params={"kind": "train"}).json()["jobs"]].count(a["id"]) == 1
    models = {m["name"]: m["iterations"] for m in client.get("/api/models").json()["models"]}
    assert models["trained"] == [8]
    assert len([ln for ln in (ws / "output" / "trained" / "train_log.jsonl").read_text().splitlines()
                if '"evaluate"' in ln or "psnr" in ln]) >= 1
    record = json.loads((ws / "webapp" / "jobs" / f"{a['id']}.json").read_text())
    assert record["state"] == "done" and record["result"]["model"] == "trained"


def test_training_request_chooses_the_preprocessing_backends(client, media, monkeypatch):
    """``landmarks`` / ``audio_features`` of a training request reach gaussiantalker.train as ``backends``
    (the command line's --landmarks / --audio_features); bad values and a dataset with them are refused."""
    import types

    from gaussiantalker import api

    seen = {}

    def fake_train(source, **kw):
        seen.update(kw)
        return types.SimpleNamespace(name=kw["name"], iteration=1, metrics={})

    monkeypatch.setattr(api, "train", fake_train)  # gaussiantalker.train(...) calls it
    video = upload(client, media["video"], "video").json()["id"]
    r = client.post("/api/train", json={"video": video, "name": "backends", "device": "CPU",
                                        "landmarks": "dlib", "audio_features": "deepspeech"})
    assert r.status_code == 200, r.text
    job = wait(client, r.json()["id"])
    assert job["state"] == "done", job["error"]
    assert seen["backends"] == {"landmarks": "dlib", "audio": "deepspeech"}
    assert job["params"]["backends"] == {"landmarks": "dlib", "audio": "deepspeech"}
    for body, message in (({"video": video, "landmarks": "openface"}, "landmarks must be one of"),
                          ({"video": video, "audio_features": "wav2vec"}, "audio_features must be one of"),
                          ({"dataset": "tiny", "landmarks": "dlib"}, "go with a video upload")):
        r = client.post("/api/train", json={"device": "CPU", "name": "refused", **body})
        assert r.status_code == 400 and message in r.json()["error"], r.text


def test_cancel_queued_and_restart_marks_interrupted(ws, tmp_path):
    from examples.webapp.backend.jobs import Job, JobManager

    jobs_dir = tmp_path / "jobs"
    jobs_dir.mkdir()
    stale = Job(id="00000000000000aa", kind="train", lane="train:cpu", state="running", created=1.0, started=2.0)
    (jobs_dir / f"{stale.id}.json").write_text(json.dumps(stale.to_dict()))
    manager = JobManager(jobs_dir)
    try:
        again = manager.get(stale.id)
        assert again.state == "interrupted" and "server stopped" in again.error
        assert json.loads((jobs_dir / f"{stale.id}.json").read_text())["state"] == "interrupted"
        gate = threading.Event()
        blocker, _ = manager.submit("train", "lane", {}, lambda ctx: gate.wait(30) and {})
        waiting, _ = manager.submit("train", "lane", {}, lambda ctx: {"ran": True})
        assert manager.get(waiting.id).state == "queued"
        assert manager.cancel(waiting.id).state == "cancelled"
        gate.set()
        assert manager.wait(blocker.id).state == "done"
        time.sleep(0.1)
        assert manager.get(waiting.id).state == "cancelled" and "ran" not in manager.get(waiting.id).result
    finally:
        manager.shutdown()


# ------------------------------------------------------------------------------------------------ chat stages
class _ChatCompletions(BaseHTTPRequestHandler):
    """A tiny OpenAI-compatible chat completions endpoint: answers from the last user message."""

    seen: list = []
    fail = False

    def do_POST(self):  # noqa: N802 - http.server's naming
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        type(self).seen.append({"path": self.path, "auth": self.headers.get("Authorization"), "body": body})
        if self.path != "/v1/chat/completions" or type(self).fail:
            self.send_response(500)
            self.end_headers()
            self.wfile.write(b'{"error": "boom"}')
            return
        last = [m for m in body["messages"] if m["role"] == "user"][-1]["content"]
        answer = {"id": "x", "object": "chat.completion", "model": body["model"],
                  "choices": [{"index": 0, "finish_reason": "stop",
                               "message": {"role": "assistant", "content": f"you said {last}"}}]}
        data = json.dumps(answer).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def log_message(self, *args):
        pass


@pytest.fixture()
def llm_server():
    _ChatCompletions.seen, _ChatCompletions.fail = [], False
    server = ThreadingHTTPServer(("127.0.0.1", 0), _ChatCompletions)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}/v1"
    server.shutdown()
    server.server_close()


def test_openai_compatible_llm_over_real_http(llm_server):
    llm = OpenAIChatLLM(base_url=llm_server + "/", model="tiny-llm", api_key="sekret", system_prompt="Be brief.")
    assert llm.reply([{"role": "user", "content": "hello there"}]) == "you said hello there"
    seen = _ChatCompletions.seen[-1]
    assert seen["path"] == "/v1/chat/completions" and seen["auth"] == "Bearer sekret"
    assert seen["body"]["model"] == "tiny-llm"
    assert seen["body"]["messages"] == [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "hello there"}]
    _ChatCompletions.fail = True
    with pytest.raises(StageError, match="HTTP 500"):
        llm.reply([{"role": "user", "content": "x"}])
    with pytest.raises(StageError, match="cannot reach"):
        OpenAIChatLLM(base_url="http://127.0.0.1:9", model="m", timeout=5).reply([{"role": "user", "content": "x"}])
    assert EchoLLM().reply([{"role": "user", "content": "a"}, {"role": "assistant", "content": "b"}]) == "a"


def _tone_tts(text: str, out_wav: Path) -> Path:
    """A Python-callable TTS plugged in by dotted path: a tone as long as the text."""
    from gaussiantalker.audio import write_wav

    import numpy as np

    t = np.arange(int(16000 * min(0.05 * len(text), 2.0))) / 16000
    write_wav(out_wav, 0.3 * np.sin(2 * np.pi * 200 * t).astype(np.float32))
    return Path(out_wav)


def test_stage_factory_names_dotted_paths_and_commands(tmp_path):
    assert make_stage("llm", {"backend": "echo"}).name == "echo"
    tts = make_stage("tts", {"backend": "test_webapp_api:_tone_tts"})
    assert tts.speak("hello", tmp_path / "a.wav").is_file()
    assert probe(tmp_path / "a.wav").audio.sample_rate == 16000
    with pytest.raises(StageError, match="unknown backend"):
        make_stage("asr", {"backend": "whisper"})
    with pytest.raises(StageError, match="cannot import"):
        make_stage("tts", {"backend": "no_such_module:speak"})
    with pytest.raises(StageError, match="bad options"):
        make_stage("llm", {"backend": "openai", "base_url": "http://127.0.0.1:9", "model": "m", "colour": 1})
    with pytest.raises(StageError, match=r"\{out\}"):
        CommandTTS("espeak-ng {text}")
    if H.espeak_available():
        cmd = make_stage("tts", {"command": "espeak-ng -v en-us -w {out} {text}"})
        assert probe(cmd.speak("testing one two", tmp_path / "b.wav")).audio is not None
    with pytest.raises(StageError, match="not found"):
        CommandTTS("no-such-tts-binary -o {out}").speak("x", tmp_path / "c.wav")


def test_chat_turn_asr_llm_tts_video_over_http(ws, media, llm_server):
    if "speech" not in media:
        pytest.skip("espeak-ng is not installed (apt-get install espeak-ng): no speech to recognise")
    settings = Settings(workspace=ws, device="cpu", chat={"llm": {"base_url": llm_server, "model": "tiny-llm"},
                                                          "tts": {"backend": "test_webapp_api:_tone_tts"}})
    with TestClient(create_app(settings), base_url=H.BASE_URL) as c:
        st = c.get("/api/status").json()["chat"]
        assert st["llm_configured"] and st["modes"] == ["llm", "echo"] and st["llm_model"] == "tiny-llm"
        audio = upload(c, media["speech"], "audio").json()["id"]
        job = wait(c, c.post("/api/chat", json={"model": "tiny", "audio": audio, "mode": "llm", "history": [
            {"role": "user", "content": "earlier"}, {"role": "assistant", "content": "reply"}]}).json()["id"])
        assert job["state"] == "done", job["error"]
        r = job["result"]
        assert r["llm"] == "openai" and r["transcript"] and r["reply"] == f"you said {r['transcript']}"
        assert [m["content"] for m in _ChatCompletions.seen[-1]["body"]["messages"]] == ["earlier", "reply",
                                                                                          r["transcript"]]
        assert len(r["segments"]) >= 2 and r["video"].endswith("/reply.mp4")
        t = r["timings"]
        assert 0 < t["since_request_first_frame"] <= t["since_request_first_segment"] <= t["since_request_video"]
        video = Path(settings.videos_dir) / job["id"] / "reply.mp4"
        info = probe(video)
        assert info.video is not None and info.audio is not None and info.duration > 0
        for seg in r["segments"]:
            assert c.get(seg).status_code == 200
        # a tone has no words: the turn fails with one line naming the stage; the server goes on
        tone = upload(c, media["tone"], "audio").json()["id"]
        failed = wait(c, c.post("/api/chat", json={"model": "tiny", "audio": tone, "mode": "echo"}).json()["id"])
        assert failed["state"] == "failed" and failed["error"].startswith("ASR:")
        _ChatCompletions.fail = True
        failed = wait(c, c.post("/api/chat", json={"model": "tiny", "audio": audio, "mode": "llm"}).json()["id"])
        assert failed["state"] == "failed" and failed["error"].startswith("LLM:") and "HTTP 500" in failed["error"]
        assert one_line_error(c.post("/api/chat", json={"model": "tiny", "audio": audio, "mode": "poetry"}), 400)


def test_chat_without_llm_offers_echo_only(client, media):
    audio = upload(client, media["tone"], "audio").json()["id"]
    msg = one_line_error(client.post("/api/chat", json={"model": "tiny", "audio": audio, "mode": "llm"}), 400)
    assert "no LLM is configured" in msg and "echo" in msg
