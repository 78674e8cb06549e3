"""Keep the native libraries' log chatter off the terminal (for the command line).

TensorFlow, MediaPipe and TensorFlow Lite write to file descriptor 2 from C++, around Python's
``logging``: oneDNN and CPU-feature notices, "Created TensorFlow Lite XNNPACK delegate for CPU", absl's
"All log messages before absl::InitializeLog() ..." and ``W0000 ... file.cc:114] ...`` lines. None of it
helps a user, and it buries a one-line error. :func:`quiet_native_logs` (used by ``gaussiantalker`` unless
``--verbose``):

* sets ``TF_CPP_MIN_LOG_LEVEL=3`` and ``GLOG_minloglevel=2`` unless the user set them (they work only
  before those libraries load, so the command line enters this first);
* routes descriptor 2 through a filter that drops the lines those libraries print at INFO / WARNING level
  (:data:`CHATTER`) and passes every other line on (errors from native code, a subprocess's messages);
* keeps Python's own ``sys.stderr`` (log messages, progress bars, the error line) on the real stderr,
  unfiltered and unbuffered as before.

The library never does this by itself: an application that embeds it owns its process's stderr.
"""

from __future__ import annotations

import io
import os
import re
import sys
import threading
from contextlib import contextmanager
from typing import Iterator

__all__ = ["CHATTER", "NATIVE_LOG_ENV", "is_chatter", "quiet_native_logs"]

#: Environment defaults that lower the native libraries' own log levels (read when they load).
NATIVE_LOG_ENV = {"TF_CPP_MIN_LOG_LEVEL": "3", "GLOG_minloglevel": "2"}

#: Lines of native log chatter (INFO / WARNING of TensorFlow, TF Lite, absl / glog).
CHATTER = re.compile(
    r"""^(?:
        INFO:\ Created\ TensorFlow\ Lite\ .*                              # TF Lite delegates
      | INFO:\ Initialized\ TensorFlow\ Lite\ .*
      | WARNING:\ All\ log\ messages\ before\ absl::InitializeLog\(\).*  # absl, once per process
      | [IW]\d{4}\ [\d:.]+\s+\d+\ [\w./+-]+:\d+\]\ .*                     # absl / glog: I/W, file:line]
      | \d{4}-\d\d-\d\d\ [\d:.]+:\ [IW]\ [\w./+-]+:\d+\]\ .*              # TensorFlow's C++ logging: I/W
      | To\ enable\ the\ following\ instructions:.*rebuild\ TensorFlow.*  # 2nd line of cpu_feature_guard
    )$""",
    re.VERBOSE,
)


def is_chatter(line: str) -> bool:
    """True for one line (without its newline) of native INFO / WARNING log output."""
    return bool(CHATTER.match(line.rstrip("\r")))


def _pump(read_fd: int, write_fd: int) -> None:
    """Copy lines from ``read_fd`` to ``write_fd`` until EOF, dropping chatter lines."""
    pending = b""
    with os.fdopen(read_fd, "rb", buffering=0) as src:
        while True:
            chunk = src.read(65536)
            if not chunk:
                break
            pending += chunk
            *lines, pending = pending.split(b"\n")
            out = b"".join(ln + b"\n" for ln in lines if not is_chatter(ln.decode("utf-8", "replace")))
            if out:
                os.write(write_fd, out)
    if pending and not is_chatter(pending.decode("utf-8", "replace")):
        os.write(write_fd, pending)


@contextmanager
def quiet_native_logs(enabled: bool = True) -> Iterator[None]:
    """Within the block, native log chatter on descriptor 2 is dropped (see the module docstring).

    Does nothing when ``enabled`` is False, or when descriptor 2 cannot be redirected.
    """
    if not enabled:
        yield
        return
    for key, value in NATIVE_LOG_ENV.items():
        os.environ.setdefault(key, value)
    try:
        sys.stderr.flush()
        real = os.dup(2)
        read_fd, write_fd = os.pipe()
    except (OSError, ValueError):
        yield
        return
    python_on_fd2 = _writes_to_fd2(sys.stderr)
    old_stderr = sys.stderr
    if python_on_fd2:  # Python's own messages bypass the filter, unchanged
        sys.stderr = open(real, "w", buffering=1, encoding=getattr(old_stderr, "encoding", None) or "utf-8",
                          errors="backslashreplace", closefd=False)
    os.dup2(write_fd, 2)
    os.close(write_fd)
    pump = threading.Thread(target=_pump, args=(read_fd, real), name="native-log-filter", daemon=True)
    pump.start()
    try:
        yield
    finally:
        if python_on_fd2:
            sys.stderr.flush()
            sys.stderr = old_stderr
        os.dup2(real, 2)  # the pipe loses its last writer (unless a child still holds it): the pump ends
        pump.join(timeout=2.0)
        if not pump.is_alive():
            os.close(real)


def _writes_to_fd2(stream) -> bool:
    try:
        return stream.fileno() == 2
    except (AttributeError, OSError, ValueError, io.UnsupportedOperation):
        return False
