"""Uploads: streamed to disk under a size limit, checked by probing the content, stored under generated names.

An upload is the raw request body (``POST /api/uploads?kind=video&filename=talk.mp4``, body = the file's
bytes; the pages send the ``File`` object as the body). The limit is enforced twice: a ``Content-Length``
over it is refused before a byte is read, and the bytes are counted as they arrive (a body without a
length, or a lying one, is cut off at the limit). The stored file is then probed with ffmpeg
(:func:`gaussiantalker.media.probe`) restricted to local files and to the container formats of
:data:`UPLOAD_FORMATS` (so a playlist cannot make the server fetch URLs or read other files) — the file
name's extension is never trusted — and kept as
``<workspace>/webapp/uploads/<id><ext>`` with a ``<id>.json`` record (kind, original name for display,
size, sha256, duration, streams).

Kinds: ``video`` (a training video: needs a video and an audio stream), ``audio`` (speech for a render or
the chat: needs an audio stream; a video with sound is fine), ``au_csv`` (an OpenFace ``au.csv``: UTF-8
text whose header has an ``AU45_r`` column).
"""

from __future__ import annotations

import hashlib
import json
import logging
import re
import time
import uuid
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import AsyncIterator, Dict, List, Optional

from gaussiantalker.fileio import atomic_write

log = logging.getLogger(__name__)

KINDS = ("video", "audio", "au_csv")
_ID = re.compile(r"^[0-9a-f]{32}$")
# ffmpeg demuxer names -> the extension the stored copy gets (for people browsing the folder)
_EXT = {"wav": ".wav", "mp3": ".mp3", "flac": ".flac", "ogg": ".ogg", "matroska,webm": ".webm", "aac": ".aac",
        "mov,mp4,m4a,3gp,3g2,mj2": ".mp4", "avi": ".avi"}


#: ffmpeg demuxers an upload may be (``-format_whitelist``): plain media containers, no playlists.
UPLOAD_FORMATS = ("mov", "matroska", "webm", "wav", "mp3", "flac", "ogg", "aac", "avi")


class UploadError(ValueError):
    """An upload that is refused; ``status`` is the HTTP status to answer with."""

    def __init__(self, message: str, status: int = 400) -> None:
        super().__init__(message)
        self.status = status


@dataclass
class Upload:
    """The record of one stored upload."""

    id: str
    kind: str
    filename: str  # the client's file name, for display only (never used as a path)
    path: str  # the stored file
    size: int
    sha256: str
    created: float
    duration: Optional[float] = None
    has_video: bool = False
    has_audio: bool = False
    width: Optional[int] = None
    height: Optional[int] = None

    def public(self) -> Dict[str, object]:
        """The record without the server path."""
        d = asdict(self)
        d.pop("path")
        return d


def display_name(filename: str) -> str:
    """The client's file name reduced to something safe to show and to derive a model name from."""
    base = re.split(r"[\\/]", filename or "")[-1]
    base = re.sub(r"[^\w.\- ]", "_", base).strip()[:120]
    return base or "upload"


class UploadStore:
    """Stores, probes and finds uploads in one folder."""

    def __init__(self, folder: Path, max_bytes: int) -> None:
        self.dir = Path(folder)
        self.dir.mkdir(parents=True, exist_ok=True)
        self.max_bytes = int(max_bytes)
        #: Called after each stored upload (the app's retention sweep); errors are logged.
        self.on_stored = None

    def _limit_text(self) -> str:
        return f"{self.max_bytes / 2 ** 20:g} MiB"

    async def receive(self, kind: str, filename: str, body: AsyncIterator[bytes],
                      content_length: Optional[str]) -> Path:
        """Stream ``body`` to a temporary file, refusing it past the size limit. Returns the temporary path.

        Raises:
            UploadError: unknown kind (400), too large (413), empty (400).
        """
        if kind not in KINDS:
            raise UploadError(f"unknown upload kind {kind!r}: use one of {', '.join(KINDS)}")
        if content_length is not None:
            try:
                declared = int(content_length)
            except ValueError:
                raise UploadError(f"bad Content-Length {content_length!r}") from None
            if declared > self.max_bytes:
                raise UploadError(f"{display_name(filename)} is {declared / 2 ** 20:.1f} MiB: the limit is "
                                  f"{self._limit_text()}", status=413)
        tmp = self.dir / f".{uuid.uuid4().hex}.part"
        size = 0
        try:
            with open(tmp, "wb") as f:
                async for chunk in body:
                    size += len(chunk)
                    if size > self.max_bytes:
                        raise UploadError(f"{display_name(filename)} is larger than the limit of "
                                          f"{self._limit_text()}", status=413)
                    f.write(chunk)
        except BaseException:
            tmp.unlink(missing_ok=True)
            raise
        if size == 0:
            tmp.unlink(missing_ok=True)
            raise UploadError(f"{display_name(filename)} is empty")
        return tmp

    def store(self, kind: str, filename: str, tmp: Path) -> Upload:
        """Check the received file ``tmp`` for ``kind`` and keep it under a generated name (blocking: probes).

        Raises:
            UploadError: the content is not what ``kind`` needs (the temporary file is removed).
        """
        name = display_name(filename)
        try:
            info = self._check(kind, name, tmp)
            upload_id = uuid.uuid4().hex
            digest = _sha256(tmp)
            path = self.dir / f"{upload_id}{info.pop('ext')}"
            tmp.replace(path)
        finally:
            tmp.unlink(missing_ok=True)
        up = Upload(id=upload_id, kind=kind, filename=name, path=str(path), size=path.stat().st_size, sha256=digest,
                    created=time.time(), **info)
        text = json.dumps(asdict(up), indent=1)
        atomic_write(self.dir / f"{upload_id}.json", lambda p: p.write_text(text, encoding="utf-8"))
        log.info("stored upload %s (%s, %s, %d bytes)", upload_id, kind, name, up.size)
        if self.on_stored is not None:
            try:
                self.on_stored(up)
            except Exception:  # noqa: BLE001 - cleaning up must not fail the upload
                log.exception("after storing upload %s", upload_id)
        return up

    def _check(self, kind: str, name: str, tmp: Path) -> dict:
        if kind == "au_csv":
            _check_au_csv(name, tmp)
            return {"ext": ".csv"}
        from gaussiantalker.media import MediaError, probe

        try:
            info = probe(tmp, formats=UPLOAD_FORMATS)
        except MediaError as exc:
            log.info("probe of upload %s failed: %s", name, exc)
            raise UploadError(f"{name} is not an audio or video file that ffmpeg can read") from None
        video, audio = info.video, info.audio
        if kind == "video" and video is None:
            raise UploadError(f"{name} has no video stream: upload a video of the person talking")
        if kind == "video" and audio is None:
            raise UploadError(f"{name} has no audio stream: training needs the speech track")
        if kind == "audio" and audio is None:
            raise UploadError(f"{name} has no audio stream")
        if info.duration is not None and info.duration <= 0:
            raise UploadError(f"{name} has zero duration")
        return {"ext": _EXT.get(info.container, ".media"), "duration": info.duration, "has_video": video is not None,
                "has_audio": audio is not None, "width": video.width if video else None,
                "height": video.height if video else None}

    # ---------------------------------------------------------------------------------------- lookup
    def get(self, upload_id: str, kind: Optional[str] = None) -> Upload:
        """The upload with this id (of this kind). Raises UploadError (400 bad id, 404 unknown)."""
        if not isinstance(upload_id, str) or not _ID.match(upload_id):
            raise UploadError(f"invalid upload id {str(upload_id)[:40]!r}")
        record = self.dir / f"{upload_id}.json"
        if not record.is_file():
            raise UploadError(f"no upload {upload_id}", status=404)
        up = Upload(**json.loads(record.read_text(encoding="utf-8")))
        if kind is not None and up.kind != kind and not (kind == "audio" and up.has_audio):
            raise UploadError(f"upload {upload_id} is a {up.kind} upload, not {kind}")
        if not Path(up.path).is_file():
            raise UploadError(f"upload {upload_id} is gone from the server", status=404)
        return up

    def list(self, kind: Optional[str] = None) -> List[Upload]:
        """Stored uploads (of ``kind``), newest first."""
        out = []
        for record in self.dir.glob("*.json"):
            try:
                up = Upload(**json.loads(record.read_text(encoding="utf-8")))
            except (ValueError, TypeError):
                continue
            if (kind is None or up.kind == kind) and Path(up.path).is_file():
                out.append(up)
        return sorted(out, key=lambda u: u.created, reverse=True)


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def _check_au_csv(name: str, path: Path) -> None:
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError:
        raise UploadError(f"{name} is not a UTF-8 text (csv) file") from None
    lines = [ln for ln in text.splitlines() if ln.strip()]
    if not lines:
        raise UploadError(f"{name} is empty")
    header = [c.strip() for c in lines[0].split(",")]
    if "AU45_r" not in header:
        raise UploadError(f"{name} is not an OpenFace au.csv: no AU45_r column in its header")
    if len(lines) < 2:
        raise UploadError(f"{name} has a header but no rows")


__all__ = ["KINDS", "UPLOAD_FORMATS", "Upload", "UploadError", "UploadStore", "display_name"]
