"""The web app on a desktop: cross-site requests, DNS rebinding, the optional token, restricted probing of
uploads, retention of uploads and videos, training jobs across restarts and across processes.

Only loopback addresses are used; "evil.example" appears only as a header value, never contacted.
"""

from __future__ import annotations

import http.client
import json
import os
import subprocess
import sys
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

EVIL = "http://evil.example"


@pytest.fixture(autouse=True)
def clean_env(monkeypatch):
    for var in ("GT_WEBAPP_TOKEN", "GT_WEBAPP_ALLOWED_HOSTS", "GT_LLM_BASE_URL", "GT_LLM_MODEL", "GT_LLM_API_KEY"):
        monkeypatch.delenv(var, raising=False)


@pytest.fixture(scope="module")
def ws(tmp_path_factory) -> Path:
    root = H.make_workspace(tmp_path_factory.mktemp("safety_ws"))
    H.write_tiny_config(root / "webapp" / "configs")
    return root


@pytest.fixture(scope="module")
def tone(tmp_path_factory) -> Path:
    return H.tone_wav(tmp_path_factory.mktemp("safety_media") / "tone.wav", 1.0)


@pytest.fixture()
def client(ws):
    with TestClient(create_app(Settings(workspace=ws, device="cpu")), base_url=H.BASE_URL) as c:
        yield c


def _error(r, status: int) -> str:
    assert r.status_code == status, (r.status_code, r.text)
    msg = r.json()["error"]
    assert msg and "\n" not in msg
    return msg


def _train_jobs(client, name: str) -> list:
    return [j for j in client.get("/api/jobs", params={"kind": "train"}).json()["jobs"] if j["params"]["name"] == name]


# ------------------------------------------------------------------------------------------------ requests
def test_cross_origin_requests_are_refused(client, tone):
    body = {"dataset": "tiny", "name": "evil", "config": "tiny.json", "iterations": 1}
    assert "cross-origin" in _error(client.post("/api/train", json=body, headers={"Origin": EVIL}), 403)
    assert _train_jobs(client, "evil") == []  # nothing was queued
    before = len(client.get("/api/uploads").json()["uploads"])
    r = client.post("/api/uploads", params={"kind": "audio", "filename": "x.wav"}, content=tone.read_bytes(),
                    headers={"Origin": EVIL})
    _error(r, 403)
    assert len(client.get("/api/uploads").json()["uploads"]) == before  # nothing stored
    _error(client.get("/api/status", headers={"Origin": "null"}), 403)
    # The app's own pages send their own origin: accepted.
    assert client.get("/api/status", headers={"Origin": H.BASE_URL}).status_code == 200
    own = client.post("/api/jobs/0123456789abcdef/cancel", headers={"Origin": H.BASE_URL})
    assert own.status_code == 404  # reached the endpoint


def test_json_endpoints_need_a_json_content_type(client, tone):
    body = json.dumps({"dataset": "tiny", "name": "plain", "config": "tiny.json", "iterations": 1})
    for ctype in ("text/plain", "text/plain;charset=UTF-8", "application/x-www-form-urlencoded"):
        assert "content type" in _error(client.post("/api/train", content=body, headers={"content-type": ctype}), 415)
    _error(client.post("/api/train", content=body), 415)  # no content type at all
    _error(client.post("/api/chat", content=body, headers={"content-type": "text/plain"}), 415)
    assert _train_jobs(client, "plain") == []
    # What a cross-site form can send is refused on every API endpoint, uploads and cancel included.
    _error(client.post("/api/uploads", params={"kind": "audio", "filename": "x.wav"}, content=tone.read_bytes(),
                       headers={"content-type": "multipart/form-data; boundary=x"}), 415)
    _error(client.post("/api/jobs/0123456789abcdef/cancel", content=b"a=b",
                       headers={"content-type": "application/x-www-form-urlencoded"}), 415)
    # The pages' requests pass: JSON bodies, and uploads with the file's own type.
    ok = client.post("/api/uploads", params={"kind": "audio", "filename": "t.wav"}, content=tone.read_bytes(),
                     headers={"content-type": "audio/wav"})
    assert ok.status_code == 200, ok.text


def test_other_host_names_are_refused_dns_rebinding(ws):
    app = create_app(Settings(workspace=ws, device="cpu"))
    with H.serve(app) as url:
        port = int(url.rsplit(":", 1)[1])

        def get(host: str, path: str = "/api/status") -> int:
            conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
            try:
                conn.request("GET", path, headers={"Host": host})
                resp = conn.getresponse()
                resp.read()
                return resp.status
            finally:
                conn.close()

        # A page of evil.example whose name now resolves to 127.0.0.1 sends "Host: evil.example:<port>".
        assert get(f"evil.example:{port}") == 400
        assert get(f"evil.example:{port}", "/model_training.html") == 400
        assert get(f"127.0.0.1.evil.example:{port}") == 400
        assert get(f"127.0.0.1:{port}") == 200
        assert get(f"localhost:{port}") == 200
    extra = create_app(Settings(workspace=ws, device="cpu", allowed_hosts=("studio.lan",)))
    with TestClient(extra, base_url="http://studio.lan:8000") as c:
        assert c.get("/api/status").status_code == 200


def test_token_is_required_when_configured(ws, monkeypatch):
    monkeypatch.setenv("GT_WEBAPP_TOKEN", "s3cret-token")
    app = create_app(Settings(workspace=ws, device="cpu"))
    with TestClient(app, base_url=H.BASE_URL) as c:
        assert "token" in _error(c.get("/api/status"), 401)
        _error(c.get("/model_training.html"), 401)
        _error(c.post("/api/train", json={"dataset": "tiny"}), 401)
        _error(c.get("/api/status", headers={"Authorization": "Bearer wrong"}), 401)
        _error(c.get("/api/status", params={"token": "s3cret-token"}), 401)  # not in API URLs (they get logged)
        assert c.get("/api/status", headers={"Authorization": "Bearer s3cret-token"}).status_code == 200
        assert c.get("/api/status", headers={"X-GT-Token": "s3cret-token"}).status_code == 200
        # Opening a page with ?token= sets an HttpOnly, SameSite=Strict cookie and drops the token from the URL.
        r = c.get("/model_training.html", params={"token": "s3cret-token"}, follow_redirects=False)
        assert r.status_code == 303 and r.headers["location"] == "/model_training.html"
        cookie = r.headers["set-cookie"]
        assert "gt_token=s3cret-token" in cookie and "HttpOnly" in cookie and "SameSite=Strict" in cookie
        assert c.get("/model_training.html").status_code == 200  # the client keeps the cookie
        assert _guard_redirect("//evil.example/x", "token=s3cret-token") == "/evil.example/x"  # never off-site
        assert c.get("/api/status").status_code == 200
        # A token does not replace the other checks.
        _error(c.post("/api/train", json={"dataset": "tiny"}, headers={"Origin": EVIL}), 403)


def _guard_redirect(path: str, query: str) -> str:
    """Where the guard redirects a page request carrying the right token (a raw ASGI call, any path)."""
    import asyncio

    from examples.webapp.backend.security import RequestGuard

    sent = []

    async def app(scope, receive, send):
        raise AssertionError("the guard should have answered")

    async def send(message):
        sent.append(message)

    async def receive():
        return {"type": "http.request", "body": b""}

    scope = {"type": "http", "method": "GET", "path": path, "query_string": query.encode(),
             "headers": [(b"host", b"127.0.0.1:8000")]}
    asyncio.run(RequestGuard(app, token="s3cret-token")(scope, receive, send))
    assert sent[0]["status"] == 303
    return dict(sent[0]["headers"])[b"location"].decode()


def test_bind_elsewhere_needs_a_token(ws, monkeypatch, capsys):
    import uvicorn

    from examples.webapp.__main__ import main

    served = []
    monkeypatch.setattr(uvicorn, "run", lambda app, **kw: served.append(kw))  # never bind anything in a test
    assert main(["--host", "0.0.0.0", "--workspace", str(ws)]) == 2
    assert "GT_WEBAPP_TOKEN" in capsys.readouterr().out and served == []
    monkeypatch.setenv("GT_WEBAPP_TOKEN", "s3cret-token")
    assert main(["--host", "192.0.2.7", "--workspace", str(ws)]) == 0  # with a token it would serve
    assert served and served[0]["host"] == "192.0.2.7"


# ------------------------------------------------------------------------------------------------ probing
class _Hits(BaseHTTPRequestHandler):
    hits: list = []

    def do_GET(self):  # noqa: N802 - http.server's naming
        type(self).hits.append(self.path)
        self.send_response(404)
        self.end_headers()

    def log_message(self, *args):
        pass


def test_playlists_cannot_make_the_probe_read_files_or_urls(client, tmp_path, tone):
    # A concat script naming another upload in the same folder (ffmpeg's "safe" mode allows relative names):
    # recent ffmpeg builds open it unless the format is restricted.
    other = client.post("/api/uploads", params={"kind": "audio", "filename": "mine.wav"}, content=tone.read_bytes())
    stored = f"{other.json()['id']}.wav"
    secret = tmp_path / "secret.ts"
    H.ffmpeg("-f", "lavfi", "-i", "sine=frequency=220:sample_rate=16000:duration=1", "-f", "mpegts", str(secret))
    _Hits.hits = []
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Hits)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        port = server.server_address[1]
        local = f"#EXTM3U\n#EXT-X-TARGETDURATION:1\n#EXTINF:1.0,\nfile://{secret}\n#EXT-X-ENDLIST\n"
        remote = f"#EXTM3U\n#EXT-X-TARGETDURATION:1\n#EXTINF:1.0,\nhttp://127.0.0.1:{port}/seg.ts\n#EXT-X-ENDLIST\n"
        concat = f"ffconcat version 1.0\nfile '{stored}'\n"
        # HLS playlists (older ffmpeg builds, e.g. Debian 12's 5.1, open them whatever the file's name).
        for text in (concat, local, remote):
            r = client.post("/api/uploads", params={"kind": "audio", "filename": "talk.wav"}, content=text.encode())
            assert "not an audio or video file" in _error(r, 400)
        assert _Hits.hits == []  # the server fetched nothing
    finally:
        server.shutdown()
        server.server_close()


def test_probe_allow_list_keeps_the_normal_formats(tmp_path):
    from examples.webapp.backend.uploads import UPLOAD_FORMATS
    from gaussiantalker.media import probe

    video = H.video_with_audio(tmp_path / "v.mp4")
    mkv = tmp_path / "v.mkv"
    H.ffmpeg("-i", str(video), "-c", "copy", str(mkv))
    mp3 = tmp_path / "a.mp3"
    H.ffmpeg("-f", "lavfi", "-i", "sine=duration=0.5", str(mp3))
    for f in (video, mkv, mp3, H.tone_wav(tmp_path / "a.wav", 0.5)):
        assert probe(f, formats=UPLOAD_FORMATS).audio is not None, f


# ------------------------------------------------------------------------------------------------ retention
def _fake_upload(folder: Path, uid: str, size: int, mtime: float) -> None:
    data, record = folder / f"{uid}.wav", folder / f"{uid}.json"
    data.write_bytes(b"\0" * size)
    record.write_text(json.dumps({"id": uid}))
    for p in (data, record):
        os.utime(p, (mtime, mtime))


def test_retention_deletes_the_oldest_past_the_quota_and_old_or_stale_files(tmp_path):
    from examples.webapp.backend.retention import Retention

    up, vids = tmp_path / "uploads", tmp_path / "videos"
    up.mkdir()
    vids.mkdir()
    now = 1_000_000_000.0
    kib = 1024
    ids = [f"{i:032x}" for i in range(1, 6)]
    for k, uid in enumerate(ids):  # 100 KiB each, one minute apart: ids[0] oldest
        _fake_upload(up, uid, 100 * kib, now - 600 + 60 * k)
    video = vids / "00000000000000a1.mp4"
    video.write_bytes(b"\0" * 100 * kib)
    os.utime(video, (now - 330, now - 330))  # newer than every upload
    segs = vids / "00000000000000b2"
    segs.mkdir()
    for j in range(2):
        (segs / f"seg_{j}.mp4").write_bytes(b"\0" * 50 * kib)
        os.utime(segs / f"seg_{j}.mp4", (now - 30, now - 30))
    os.utime(segs, (now - 30, now - 30))
    stale, fresh = up / f".{'e' * 32}.part", up / f".{'f' * 32}.part"
    stale.write_bytes(b"\0" * 10)
    fresh.write_bytes(b"\0" * 10)
    os.utime(stale, (now - 7200, now - 7200))
    os.utime(fresh, (now - 5, now - 5))
    render_left = vids / ".00000000000000a9.x1y2.mp4"  # a render's temporary file left by a crash
    render_left.write_bytes(b"\0" * 10)
    os.utime(render_left, (now - 7200, now - 7200))
    busy = {ids[0]}  # the oldest upload is the input of a queued job
    r = Retention(up, vids, retention_days=7, quota_mb=520 * kib / 2 ** 20, stale_part_hours=1.0,
                  in_use=lambda: busy)
    removed = r.sweep(now=now)
    # Total was 5 x 100 + 100 + 100 KiB (+ records): the oldest unused go first until it fits in 520 KiB.
    gone = [(it.kind, it.key) for it in removed]
    assert ("part", stale.name) in gone and ("part", fresh.name) not in gone
    assert [k for kind, k in gone if kind == "upload"] == [ids[1], ids[2]]
    assert (up / f"{ids[0]}.wav").exists()  # in use: kept although oldest
    assert not (up / f"{ids[1]}.wav").exists() and not (up / f"{ids[1]}.json").exists()
    assert all((up / f"{uid}.wav").exists() for uid in ids[3:]) and video.exists() and segs.is_dir()
    assert fresh.exists() and not stale.exists() and not render_left.exists()
    assert sum(it.size for it in r.items()) <= 520 * kib
    # By age: a week later everything unused is older than the retention period.
    later = r.sweep(now=now + 8 * 86400)
    assert {it.key for it in later} >= {ids[3], ids[4], "00000000000000a1", "00000000000000b2"}
    assert (up / f"{ids[0]}.wav").exists() and not video.exists() and not segs.exists()


def test_retention_runs_after_uploads(ws, tone):
    # A quota a little over two tone uploads (32 KB + record each): the third upload pushes out the first.
    settings = Settings(workspace=ws, device="cpu", storage_quota_mb=0.07)
    with TestClient(create_app(settings), base_url=H.BASE_URL) as c:
        first, second, third = (c.post("/api/uploads", params={"kind": "audio", "filename": f"{n}.wav"},
                                       content=tone.read_bytes()).json()["id"] for n in ("a", "b", "c"))
        listed = [u["id"] for u in c.get("/api/uploads").json()["uploads"]]
        assert listed == [third, second]
        assert not list(settings.uploads_dir.glob(f"{first}*"))


# ------------------------------------------------------------------------------------------------ restarts
def _wait(client, job_id: str, states, timeout: float = 180.0) -> dict:
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        job = client.get(f"/api/jobs/{job_id}").json()
        if job["state"] in states:
            return job
        time.sleep(0.05)
    raise AssertionError(f"job {job_id} still {job['state']}: {job}")


def test_restart_resumes_training_from_its_checkpoint(ws):
    body = {"dataset": "tiny", "name": "restarted", "device": "CPU", "config": "tiny.json", "iterations": 200}
    settings = Settings(workspace=ws, device="cpu")
    with TestClient(create_app(settings), base_url=H.BASE_URL) as c:
        job = c.post("/api/train", json=body).json()
        assert "resume" not in job  # server paths stay on the server
        _wait(c, job["id"], ("running",))
        end = time.monotonic() + 120
        while c.get(f"/api/jobs/{job['id']}").json()["progress"].get("stage") != "fine":
            assert time.monotonic() < end
            time.sleep(0.05)
        c.post(f"/api/jobs/{job['id']}/cancel")  # stops at the next progress report, after a checkpoint
        assert _wait(c, job["id"], ("cancelled", "done", "failed"))["state"] == "cancelled"
    ckpts = sorted((ws / "output" / "restarted" / "checkpoints").glob("chkpnt_*.pth"))
    assert ckpts, "no checkpoint to resume from"
    stopped_at = int(ckpts[-1].stem.split("_")[1])
    # What a crash leaves: the record still says running (the process died before it could write more).
    record_path = settings.jobs_dir / f"{job['id']}.json"
    record = json.loads(record_path.read_text())
    record.update(state="running", finished=None, error=None, cancel_requested=False)
    record_path.write_text(json.dumps(record))
    with TestClient(create_app(settings), base_url=H.BASE_URL) as c:
        again = _wait(c, job["id"], ("done", "failed", "interrupted", "cancelled"))
        assert again["state"] == "done", again["error"]
        assert again["result"]["model"] == "restarted" and again["result"]["iteration"] == 200
        assert any("queued again" in line for line in again["log"])
        assert any(f"chkpnt_{stopped_at}.pth" in line and "resuming" in line for line in again["log"]), again["log"]


def test_restart_without_resume_information_stays_interrupted(ws, tmp_path):
    settings = Settings(workspace=ws, device="cpu")
    rec = {"id": "00000000000000cc", "kind": "train", "lane": "train:cpu", "state": "queued", "created": 1.0,
           "params": {"name": "old"}}
    (settings.jobs_dir / f"{rec['id']}.json").write_text(json.dumps(rec))
    with TestClient(create_app(settings), base_url=H.BASE_URL) as c:
        job = c.get(f"/api/jobs/{rec['id']}").json()
        assert job["state"] == "interrupted" and "cannot resume" in job["error"]


def test_one_training_job_per_model_across_processes(ws):
    settings = Settings(workspace=ws, device="cpu")
    lock = settings.locks_dir / "train-locked.lock"
    lock.parent.mkdir(parents=True, exist_ok=True)
    holder = subprocess.Popen(
        [sys.executable, "-c", "import fcntl, sys; f = open(sys.argv[1], 'a+'); fcntl.flock(f, fcntl.LOCK_EX); "
         "print('locked', flush=True); sys.stdin.read()", str(lock)],
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "locked"
        body = {"dataset": "tiny", "name": "locked", "device": "CPU", "config": "tiny.json", "iterations": 2}
        with TestClient(create_app(settings), base_url=H.BASE_URL) as c:
            job = c.post("/api/train", json=body).json()
            waiting = _wait(c, job["id"], ("running",))
            time.sleep(2.0)
            waiting = c.get(f"/api/jobs/{job['id']}").json()
            assert waiting["state"] == "running" and waiting["progress"].get("stage") == "waiting", waiting
            assert not (ws / "output" / "locked" / "checkpoints").exists()  # it has not started training
            holder.stdin.close()  # the other process finishes
            holder.wait(timeout=10)
            done = _wait(c, job["id"], ("done", "failed", "cancelled"))
            assert done["state"] == "done", done["error"]
            assert any("waiting: model locked" in line for line in done["log"])
    finally:
        if holder.poll() is None:
            holder.kill()
            holder.wait()
