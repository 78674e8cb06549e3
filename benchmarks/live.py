"""Live sessions in real time: frame rate and stalls (listening and speaking), A/V offset, latency from a
``say`` call and from the end of a spoken sentence to the first speaking frame, and barge-in.

    python benchmarks/live.py --workspace WS --model NAME [--seconds 60] [--threads 1]
                              [--out benchmarks/results/live.json]

Everything goes through the web app as a user's browser would use it: the app runs in its own process
(``python -m examples.webapp``, torch threads from ``--threads``) and an aiortc client in this process
(``examples/webapp/live_client.py``) connects over WebRTC, receives and decodes the avatar's VP8 video and
Opus audio, calls ``/say`` and plays speech into its microphone track. Server-side counts come from
``GET /api/live/<session>``.

* **Frame interval**: between arrivals of decoded video frames at the client (what a player shows), over
  ``--seconds`` of listening, then ``--seconds`` of speaking (one long espeak-ng reply); fps = frames /
  time. The server also reports how many of the frames it sent were *fresh* (rendered in time) rather than
  the previous image again, which is what a stall looks like on this clock.
* **A/V offset**: (a) media timestamps: the received audio's speech onset (48 kHz pts) against the pts of the
  reply's first video frame (90 kHz); (b) arrival: for the same media time, video arrival minus audio
  arrival at the client, median over the speaking phase.
* **Latency**: ``say`` with text: TTS, audio windows, first speaking frame handed to the video track
  (server timings) and the client's say-call -> first loud audio frame received. A spoken sentence
  (espeak-ng) played into the microphone: end-of-speech detection (VAD quiet time), ASR (pocketsphinx,
  streaming), LLM (echo), TTS, first frame; ``total`` is from the end of the sentence to the first speaking
  frame.
* **Barge-in**: the client talks (a loud tone) into its microphone one second into a long reply: time from
  the moment its first loud frame is handed to aiortc to the arrival of the last loud reply audio frame.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

TEXT = ("Good morning. I am a talking head that lives in this web page. I listen while you speak, and when "
        "you stop, I answer you with my voice, and my lips move with the words. ")


def serve(workspace: Path, threads: int):
    """``python -m examples.webapp`` on a free port in a child process; returns (process, base URL)."""
    import socket
    import urllib.request

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    env = {**os.environ, "OMP_NUM_THREADS": str(threads), "PYTHONPATH": str(REPO)}
    for var in ("GT_LLM_BASE_URL", "GT_LLM_MODEL", "GT_LLM_API_KEY"):
        env.pop(var, None)
    proc = subprocess.Popen([sys.executable, "-m", "examples.webapp", "--workspace", str(workspace), "--port",
                             str(port), "--device", "cpu", "--log-level", "warning"], cwd=REPO, env=env)
    url = f"http://127.0.0.1:{port}"
    end = time.monotonic() + 120
    while time.monotonic() < end:
        try:
            urllib.request.urlopen(f"{url}/api/status", timeout=2).read()
            return proc, url
        except OSError:
            if proc.poll() is not None:
                raise RuntimeError("the web app did not start") from None
            time.sleep(0.3)
    proc.kill()
    raise RuntimeError("the web app did not answer within 120 s")


def intervals(arrivals) -> dict:
    t = np.asarray(arrivals, dtype=np.float64)
    d = np.diff(t) * 1000
    return {"frames": int(t.size), "seconds": round(float(t[-1] - t[0]), 2),
            "fps": round(float((t.size - 1) / (t[-1] - t[0])), 2), "interval_p50_ms": round(float(np.median(d)), 1),
            "interval_p95_ms": round(float(np.percentile(d, 95)), 1), "interval_max_ms": round(float(d.max()), 1),
            "stalls_over_100ms": int((d > 100).sum())}


def fresh_share(before: dict, after: dict) -> dict:
    """Frames the server handed to the video track between two states, and how many were rendered in time."""
    shown = after["stats"]["frames_shown"] - before["stats"]["frames_shown"]
    fresh = shown - (after["stats"]["frames_repeated"] - before["stats"]["frames_repeated"])
    return {"frames_sent": shown, "fresh": fresh, "fresh_fps": round(fresh / max(1e-9, shown / 25.0), 2)}


def espeak(text: str, path: Path) -> Path:
    subprocess.run(["espeak-ng", "-v", "en-us", "-w", str(path), text], check=True, capture_output=True)
    return path


async def run(args, url: str, tmp: Path) -> dict:
    from examples.webapp.live_client import LiveClient, audio_onsets
    from gaussiantalker.audio import load_audio
    from gaussiantalker.live import _resample

    out: dict = {}
    async with LiveClient(url, args.model, mic=True, keep_images=0) as c:
        t = time.perf_counter()
        await c.wait_video(5, timeout=120)
        while not (st := await c.state())["idle_loop"]["complete"]:  # the listening loop, once per model
            await asyncio.sleep(0.2)
        out["size"] = [st["width"], st["height"]]
        out["idle_loop"] = {"frames": st["idle_loop"]["cached"],
                            "fill_seconds_upper_bound": round(time.perf_counter() - t, 1)}
        print(f"idle loop cached: {out['idle_loop']}", flush=True)

        # listening
        await asyncio.sleep(1.0)
        i0, before = len(c.video), await c.state()
        await asyncio.sleep(args.seconds)
        listen = intervals([a for _, a, _ in c.video[i0:]])
        listen.update(fresh_share(before, await c.state()))
        out["listening"] = listen
        print(f"listening: {listen}", flush=True)

        # speaking: one long reply
        reps = max(1, int(args.seconds / 11) + 1)
        long_wav = espeak(TEXT * reps, tmp / "long.wav")
        status, turn = await c.say(wav=long_wav.read_bytes())
        start, frames = turn["start_frame"], turn["frames"]
        end = start + min(frames, int(args.seconds * 25))
        while (st := await c.state())["frame"] < start:
            await asyncio.sleep(0.02)
        before = st
        while (st := await c.state())["frame"] < end:
            await asyncio.sleep(0.05)
        sp_pts = [(p, a) for p, a, _ in c.video if start * 3600 <= p < end * 3600]
        speak = intervals([a for _, a in sp_pts])
        speak.update(fresh_share(before, st))
        speak["reply_seconds"] = round(frames / 25, 1)
        out["speaking"] = speak
        print(f"speaking: {speak}", flush=True)
        onset = [o for o in audio_onsets(c.audio) if o >= start * 1920 - 4800]
        x = load_audio(long_wav)
        lead = int(np.flatnonzero(np.abs(x) > 0.01)[0]) / 16000  # the TTS's own silence before the first sound
        av_pts_ms = 1000 * (onset[0] / 48000 - start / 25 - lead) if onset else None
        # arrival skew at equal media time (video pts/90k vs audio pts/48k)
        apts = np.array([p / 48000 for p, _, _ in c.audio])
        aarr = np.array([a for _, a, _ in c.audio])
        skew = [a - np.interp(p / 90000, apts, aarr) for p, a in sp_pts]
        out["av_offset"] = {"speech_onset_pts_ms": None if av_pts_ms is None else round(av_pts_ms, 1),
                            "arrival_video_minus_audio_ms_median": round(1000 * float(np.median(skew)), 1),
                            "arrival_video_minus_audio_ms_p95_abs": round(1000 * float(np.percentile(np.abs(skew), 95)), 1)}
        print(f"A/V: {out['av_offset']}", flush=True)
        c.mic.play(0.4 * np.sin(2 * np.pi * 300 * np.arange(24000) / 48000))  # stop the long reply (barge-in)
        while (await c.state())["speaking"]:
            await asyncio.sleep(0.2)

        # latency of say(text)
        says = []
        for k in range(args.trials):
            await asyncio.sleep(2.0)
            n_audio = len(c.audio)
            t0 = time.perf_counter()
            status, turn = await c.say(text=f"This is answer number {k + 1}.")
            while True:
                loud = [a for _, a, x in c.audio[n_audio:] if np.abs(x).max() > 0.01]
                if loud:
                    break
                await asyncio.sleep(0.01)
            st = (await c.state())["turns"][-1]
            says.append({**st["timings"], "client_say_to_first_sound": round(loud[0] - t0, 4)})
            while (await c.state())["speaking"]:
                await asyncio.sleep(0.1)
        out["say_latency"] = says
        print(f"say(text): {says}", flush=True)

        # latency from the end of a spoken sentence (microphone -> VAD -> ASR -> echo -> TTS -> avatar)
        question = _resample(load_audio(espeak("what is the weather like today", tmp / "q.wav")), 16000, 48000)
        mic_turns = []
        for k in range(args.trials):
            await asyncio.sleep(2.0)
            seen = len((await c.state())["turns"])
            c.mic.play(question)
            for _ in range(300):
                st = await c.state()
                if len(st["turns"]) > seen and st["turns"][-1]["timings"].get("first_frame") is not None:
                    break
                await asyncio.sleep(0.05)
            last = st["turns"][-1]
            mic_turns.append({"transcript": last.get("transcript"), **last.get("timings", {})})
            while (await c.state())["speaking"]:
                await asyncio.sleep(0.1)
        out["sentence_latency"] = mic_turns
        print(f"microphone turns: {mic_turns}", flush=True)

        # barge-in
        barge = []
        tone = 0.4 * np.sin(2 * np.pi * 300 * np.arange(int(0.6 * 48000)) / 48000)
        for k in range(args.trials):
            await asyncio.sleep(2.0)
            status, turn = await c.say(wav=espeak(TEXT, tmp / "reply.wav").read_bytes())
            start = turn["start_frame"]
            while not c.audio or c.audio[-1][0] < (start + 25) * 1920:
                await asyncio.sleep(0.01)
            c.mic.play(tone)
            await asyncio.sleep(1.5)
            loud = [(p, a) for p, a, x in c.audio if np.abs(x).max() > 0.01 and p >= start * 1920]
            st = (await c.state())["turns"]
            cut = next((t for t in reversed(st) if t.get("utterance") == turn["utterance"]), {})
            barge.append({"stopped_after_mic_onset_s": round(loud[-1][1] - c.mic.onset, 4),
                          "server_stop_after_interrupt_s": cut.get("timings", {}).get("stop_after_interrupt"),
                          "interrupted": cut.get("interrupted_at_frame") is not None})
            await asyncio.sleep(1.0)
        out["barge_in"] = barge
        print(f"barge-in: {barge}", flush=True)
        out["session_stats"] = (await c.state())["stats"]
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--workspace", type=Path, required=True, help="workspace with output/<model>")
    ap.add_argument("--model", required=True)
    ap.add_argument("--seconds", type=float, default=60.0, help="length of the listening and speaking phases")
    ap.add_argument("--trials", type=int, default=3)
    ap.add_argument("--threads", type=int, default=1, help="torch threads (1 on a shared 2-core machine)")
    ap.add_argument("--out", type=Path, default=REPO / "benchmarks" / "results" / "live.json")
    args = ap.parse_args()
    import torch

    load_before = os.getloadavg()
    with tempfile.TemporaryDirectory(prefix="gt_bench_live_") as d:
        tmp = Path(d)
        proc, url = serve(args.workspace, args.threads)
        try:
            res = asyncio.run(run(args, url, tmp))
        finally:
            proc.terminate()
            proc.wait(timeout=30)
    result = {"benchmark": "live", "model": args.model,
              "machine": {"platform": platform.platform(), "cpus": os.cpu_count(), "torch": torch.__version__,
                          "server_threads": args.threads, "loadavg_before": [round(x, 2) for x in load_before],
                          "loadavg_after": [round(x, 2) for x in os.getloadavg()]},
              **res, "time": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    print(f"\n{'phase':10s} {'fps':>6s} {'p50 ms':>7s} {'p95 ms':>7s} {'max ms':>7s} {'fresh fps':>9s}")
    for ph in ("listening", "speaking"):
        r = result[ph]
        print(f"{ph:10s} {r['fps']:6.2f} {r['interval_p50_ms']:7.1f} {r['interval_p95_ms']:7.1f} "
              f"{r['interval_max_ms']:7.1f} {r['fresh_fps']:9.2f}")
    print(f"A/V offset: {result['av_offset']}")
    print(f"load average before/after: {result['machine']['loadavg_before']} / {result['machine']['loadavg_after']}")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
