"""A small Python client of the web app's live sessions (aiortc), used by the tests and ``benchmarks/live.py``
and an example for other clients: it sends an SDP offer to ``POST /api/live/offer``, records every decoded
video and audio frame with its media timestamp and arrival time, calls ``/say``, and feeds a microphone
track from a numpy buffer that can be switched from silence to a recording at any moment.

    async with LiveClient("http://127.0.0.1:8000", "obama") as c:
        await c.wait_video(50)
        await c.say(text="Hello!")
"""

from __future__ import annotations

import asyncio
import json
import time
import urllib.error
import urllib.request
from fractions import Fraction
from typing import List, Optional, Tuple

import numpy as np

RATE = 48000
FRAME = 960  # 20 ms


def http(method: str, url: str, body=None, ctype: str = "application/json") -> Tuple[int, dict]:
    """``(status, JSON answer)``; the body is JSON-encoded unless it is bytes."""
    data = body if isinstance(body, (bytes, type(None))) else json.dumps(body).encode()
    req = urllib.request.Request(url, data=data, method=method, headers={"Content-Type": ctype} if data else {})
    try:
        with urllib.request.urlopen(req, timeout=120) as resp:
            return resp.status, json.loads(resp.read() or b"null")
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read() or b"null")


def make_mic_track():
    from aiortc import MediaStreamTrack

    class Mic(MediaStreamTrack):
        """48 kHz mono: silence, or the samples given to :meth:`play` (then silence again)."""

        kind = "audio"

        def __init__(self) -> None:
            super().__init__()
            self.m = 0
            self.start: Optional[float] = None
            self.buf = np.zeros(0, np.float32)
            self.onset: Optional[float] = None  # wall time the first non-silent frame was handed to aiortc

        def play(self, samples_48k: np.ndarray) -> None:
            self.buf = np.asarray(samples_48k, np.float32)
            self.onset = None

        async def recv(self):
            import av

            if self.start is None:
                self.start = time.perf_counter()
            delay = self.start + self.m * FRAME / RATE - time.perf_counter()
            if delay > 0:
                await asyncio.sleep(delay)
            chunk, self.buf = self.buf[:FRAME], self.buf[FRAME:]
            x = np.zeros(FRAME, np.float32)
            x[:chunk.shape[0]] = chunk
            if self.onset is None and np.abs(x).max() > 0.05:
                self.onset = time.perf_counter()
            pcm = (np.clip(x, -1, 1) * 32767).astype(np.int16).reshape(1, -1)
            frame = av.AudioFrame.from_ndarray(pcm, format="s16", layout="mono")
            frame.sample_rate, frame.pts, frame.time_base = RATE, self.m * FRAME, Fraction(1, RATE)
            self.m += 1
            return frame

    return Mic()


class LiveClient:
    """``async with LiveClient(base, model) as c``: a connected session; ``c.video`` / ``c.audio`` fill up."""

    def __init__(self, base: str, model: str, mic: bool = True, keep_images: int = 400) -> None:
        self.base, self.model, self.keep_images = base, model, keep_images
        self.mic = make_mic_track() if mic else None
        self.video: List[tuple] = []  # (pts, arrival, image [H, W, 3] uint8 or None)
        self.audio: List[tuple] = []  # (pts, arrival, samples [n] float32 mono at 48 kHz)
        self.session: Optional[str] = None
        self.pc = None
        self._tasks: List[asyncio.Task] = []

    async def __aenter__(self) -> "LiveClient":
        from aiortc import RTCPeerConnection, RTCSessionDescription

        self.pc = pc = RTCPeerConnection()
        pc.addTransceiver("video", direction="recvonly")
        if self.mic is not None:
            pc.addTrack(self.mic)
        else:
            pc.addTransceiver("audio", direction="recvonly")

        @pc.on("track")
        def on_track(track) -> None:
            self._tasks.append(asyncio.ensure_future(self._read(track)))

        await pc.setLocalDescription(await pc.createOffer())
        status, answer = await asyncio.to_thread(
            http, "POST", f"{self.base}/api/live/offer",
            {"sdp": pc.localDescription.sdp, "type": "offer", "model": self.model})
        if status != 200:
            await pc.close()
            raise RuntimeError(f"offer refused: {status} {answer}")
        self.session = answer["session"]
        await pc.setRemoteDescription(RTCSessionDescription(sdp=answer["sdp"], type=answer["type"]))
        return self

    async def _read(self, track) -> None:
        from aiortc.mediastreams import MediaStreamError

        while True:
            try:
                frame = await track.recv()
            except MediaStreamError:
                return
            now = time.perf_counter()
            if track.kind == "video":
                img = frame.to_ndarray(format="rgb24") if len(self.video) < self.keep_images else None
                self.video.append((frame.pts, now, img))
            else:
                x = frame.to_ndarray().astype(np.float32) / 32768.0  # [channels, n] or [1, n*channels]
                ch = len(frame.layout.channels)
                x = x.reshape(-1, ch).mean(axis=1) if x.shape[0] == 1 else x.mean(axis=0)
                self.audio.append((frame.pts, now, x))

    async def wait_video(self, count: int, timeout: float = 60.0) -> None:
        end = time.monotonic() + timeout
        while len(self.video) < count:
            if time.monotonic() > end:
                raise TimeoutError(f"{len(self.video)} video frames after {timeout} s (wanted {count})")
            await asyncio.sleep(0.05)

    async def say(self, text: Optional[str] = None, wav: Optional[bytes] = None) -> Tuple[int, dict]:
        url = f"{self.base}/api/live/{self.session}/say"
        if text is not None:
            return await asyncio.to_thread(http, "POST", url, {"text": text})
        return await asyncio.to_thread(http, "POST", url, wav, "audio/wav")

    async def state(self) -> dict:
        return (await asyncio.to_thread(http, "GET", f"{self.base}/api/live/{self.session}"))[1]

    async def __aexit__(self, *exc) -> None:
        if self.session is not None:
            await asyncio.to_thread(http, "DELETE", f"{self.base}/api/live/{self.session}")
        for t in self._tasks:
            t.cancel()
        await self.pc.close()


def audio_onsets(audio: List[tuple], threshold: float = 0.01) -> List[int]:
    """Media timestamps (48 kHz samples) where received sound starts after at least 0.2 s of silence."""
    out, quiet = [], 10 ** 9
    for pts, _, x in audio:
        loud = np.flatnonzero(np.abs(x) > threshold)
        if loud.size:
            if quiet >= int(0.2 * RATE):
                out.append(int(pts + loud[0]))
            quiet = x.shape[0] - 1 - int(loud[-1])
        else:
            quiet += x.shape[0]
    return out
