"""Settings of the web application and the chat configuration file (JSON or TOML)."""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, Optional, Tuple, Union

PathLike = Union[str, os.PathLike]

TOKEN_ENV = "GT_WEBAPP_TOKEN"
HOSTS_ENV = "GT_WEBAPP_ALLOWED_HOSTS"
LLM_ENV = {"base_url": "GT_LLM_BASE_URL", "model": "GT_LLM_MODEL", "api_key": "GT_LLM_API_KEY"}


@dataclass
class Settings:
    """Where the app keeps its files and what it accepts.

    Everything the app writes lives under ``<workspace>/webapp/`` (uploads, job records, rendered videos,
    extra configs); models and datasets are the library's own ``<workspace>/output`` and ``/data``.
    """

    workspace: Path = Path("GaussianTalker")
    """The library's workspace folder (``data/``, ``output/``)."""
    max_upload_mb: float = 200.0
    """Largest accepted upload, in MiB; enforced while the body streams in."""
    device: str = "auto"
    """Device for video generation and the chat replies (``auto``, ``CPU``, ``GPU0``, ``cuda:1``)."""
    chat_config: Optional[Path] = None
    """A JSON or TOML file with ``asr`` / ``llm`` / ``tts`` tables (see :func:`load_chat_config`)."""
    chat: Dict[str, Any] = field(default_factory=dict)
    """Chat configuration given directly (merged over the file's; tests and embedding apps)."""
    first_segment_frames: int = 13
    """Frames in the first streamed reply segment (0.52 s at 25 fps): small, so it plays early."""
    segment_frames: int = 50
    """Frames in each later streamed reply segment (2 s at 25 fps)."""
    max_talkers: int = 2
    """Loaded models kept in memory (least recently used dropped first)."""
    max_live_sessions: int = 2
    """Live (WebRTC) sessions at once; the next offer is refused (503) until one closes."""
    live_loop_frames: int = 125
    """Listening head motion of a live session: ping-pong over the first this many tracked frames (5 s)."""
    allowed_hosts: Tuple[str, ...] = ()
    """Host names the server answers to besides 127.0.0.1 / localhost / ::1 (plus ``GT_WEBAPP_ALLOWED_HOSTS``,
    comma-separated); any other ``Host`` header (a rebound DNS name) is refused."""
    token: Optional[str] = None
    """A secret every request must carry (default ``GT_WEBAPP_TOKEN``); None: no token (loopback only)."""
    retention_days: float = 7.0
    """Uploads and rendered videos older than this are deleted (0: no age limit)."""
    storage_quota_mb: float = 10240.0
    """Uploads plus rendered videos are kept under this many MiB, the oldest deleted first (0: no quota)."""
    stale_part_hours: float = 1.0
    """Unfinished uploads (``.part`` files) untouched for this long are deleted."""

    def __post_init__(self) -> None:
        self.workspace = Path(self.workspace).expanduser().resolve()
        env_hosts = [h.strip() for h in os.environ.get(HOSTS_ENV, "").split(",") if h.strip()]
        self.allowed_hosts = tuple(dict.fromkeys([*self.allowed_hosts, *env_hosts]))
        if self.token is None:
            self.token = os.environ.get(TOKEN_ENV) or None
        if min(self.retention_days, self.storage_quota_mb, self.stale_part_hours) < 0:
            raise ValueError("retention_days, storage_quota_mb and stale_part_hours must not be negative")
        if self.max_upload_mb <= 0:
            raise ValueError(f"max_upload_mb must be positive, got {self.max_upload_mb}")
        if self.max_live_sessions < 0 or self.live_loop_frames < 1:
            raise ValueError("max_live_sessions must be >= 0 and live_loop_frames >= 1")
        if self.first_segment_frames <= 0 or self.segment_frames <= 0:
            raise ValueError("segment sizes must be positive frame counts")

    @property
    def max_upload_bytes(self) -> int:
        return int(self.max_upload_mb * 2 ** 20)

    @property
    def app_dir(self) -> Path:
        """``<workspace>/webapp``: everything this app writes."""
        return self.workspace / "webapp"

    @property
    def uploads_dir(self) -> Path:
        return self.app_dir / "uploads"

    @property
    def jobs_dir(self) -> Path:
        return self.app_dir / "jobs"

    @property
    def videos_dir(self) -> Path:
        """Served at ``/static/videos/``: generated videos and streamed reply segments."""
        return self.app_dir / "static" / "videos"

    @property
    def locks_dir(self) -> Path:
        """Lock files that keep two processes from training one model at once."""
        return self.app_dir / "locks"

    @property
    def configs_dir(self) -> Path:
        """Extra training configs (``*.py`` / ``*.json``) offered on the training page besides the presets."""
        return self.app_dir / "configs"

    def make_dirs(self) -> None:
        for d in (self.uploads_dir, self.jobs_dir, self.videos_dir, self.configs_dir, self.locks_dir):
            d.mkdir(parents=True, exist_ok=True)


def load_chat_config(path: Optional[PathLike] = None, overrides: Optional[Dict[str, Any]] = None,
                     environ: Optional[Dict[str, str]] = None) -> Dict[str, Dict[str, Any]]:
    """The chat pipeline's configuration: ``{"asr": {...}, "llm": {...}, "tts": {...}}``.

    Read from ``path`` (``.json``, or ``.toml`` on Python >= 3.11), then ``overrides`` merged table by table,
    then the LLM environment variables ``GT_LLM_BASE_URL``, ``GT_LLM_MODEL``, ``GT_LLM_API_KEY`` (they win).

    Raises:
        FileNotFoundError: ``path`` does not exist.
        ValueError: the file is not valid JSON/TOML or its tables are not objects.
    """
    cfg: Dict[str, Dict[str, Any]] = {"asr": {}, "llm": {}, "tts": {}}
    if path is not None:
        p = Path(path).expanduser()
        if not p.is_file():
            raise FileNotFoundError(f"chat config {p} does not exist")
        text = p.read_text(encoding="utf-8")
        try:
            if p.suffix.lower() == ".toml":
                import tomllib  # Python >= 3.11

                data = tomllib.loads(text)
            else:
                data = json.loads(text)
        except ImportError:
            raise ValueError(f"chat config {p}: TOML needs Python >= 3.11; use a .json file") from None
        except ValueError as exc:  # json.JSONDecodeError and tomllib.TOMLDecodeError are ValueErrors
            raise ValueError(f"chat config {p} is not valid {p.suffix.lstrip('.') or 'JSON'}: {exc}") from None
        _merge(cfg, data, str(p))
    if overrides:
        _merge(cfg, overrides, "overrides")
    env = os.environ if environ is None else environ
    for key, var in LLM_ENV.items():
        if env.get(var):
            cfg["llm"][key] = env[var]
    return cfg


def _merge(cfg: Dict[str, Dict[str, Any]], data: Any, origin: str) -> None:
    if not isinstance(data, dict):
        raise ValueError(f"chat config {origin}: expected a table/object with asr, llm, tts")
    for stage, table in data.items():
        if stage not in cfg:
            raise ValueError(f"chat config {origin}: unknown section {stage!r} (use asr, llm, tts)")
        if not isinstance(table, dict):
            raise ValueError(f"chat config {origin}: section {stage!r} must be a table/object")
        cfg[stage].update(table)


__all__ = ["HOSTS_ENV", "LLM_ENV", "TOKEN_ENV", "Settings", "load_chat_config"]
