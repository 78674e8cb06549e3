"""Running the frozen DeepSpeech graph with TensorFlow, without crashing torch users.

Measured facts this module is built around (DESIGN.md, "Dependency facts"):

* ``import tensorflow`` followed by ``import torchvision`` segfaults (TF 2.19/2.21, torchvision 0.29);
  the other order works. So when we are the first to import TensorFlow, torchvision is imported before.
* TensorFlow claims all GPU memory as soon as it initialises a visible GPU. So GPUs are hidden from it
  before any op runs, and sessions are created with no GPU device.
* When the caller imported TensorFlow before us, and not after torchvision, importing torchvision
  anywhere later would kill the process; when the caller's TensorFlow can see a GPU, running our
  session would claim it, and hiding it would change the caller's own TensorFlow setup. In both cases
  the graph runs in a worker process (``python -m gaussiantalker.audio._tf_worker``), fed through
  pipes, and this is logged.

Importing this module imports neither TensorFlow nor anything else heavy.
"""

from __future__ import annotations

import importlib.util
import io
import json
import logging
import os
import subprocess
import sys
import tempfile
import threading
import weakref
from pathlib import Path
from typing import Callable, Dict, Tuple

import numpy as np

log = logging.getLogger(__name__)

INPUT_TENSOR = "deepspeech/input_node:0"
LENGTHS_TENSOR = "deepspeech/input_lengths:0"
LOGITS_TENSOR = "deepspeech/logits:0"
IMPORT_PREFIX = "deepspeech"

INSTALL_HINT = "install TensorFlow with `pip install gaussiantalker[deepspeech]` (tensorflow-cpu, protobuf<5)"


class DeepSpeechGraphError(ValueError):
    """The DeepSpeech graph file is wrong: bad checksum, not a GraphDef, or missing tensors."""


_STATE = {"imported_here": False}
_LOCK = threading.Lock()


# --------------------------------------------------------------------------------------------------
# where to run


def placement() -> Tuple[str, str]:
    """``("in_process", why)`` or ``("worker", why)`` for running a graph now."""
    if sys.modules.get("tensorflow") is None or _STATE["imported_here"]:
        return "in_process", "TensorFlow is imported by gaussiantalker, after torchvision, with GPUs hidden"
    if "torchvision" not in sys.modules and importlib.util.find_spec("torchvision") is not None:
        return "worker", (
            "tensorflow was imported before gaussiantalker and before torchvision; importing torchvision "
            "after tensorflow segfaults, so TensorFlow is kept out of this process's way"
        )
    # The caller imported both (since this process is alive, torchvision came first), or there is no
    # torchvision to crash. Their TensorFlow setup is theirs and is not changed here; if it can see a
    # GPU, our session would claim it, so then the graph runs elsewhere.
    tf = sys.modules["tensorflow"]
    if tf.config.list_physical_devices("GPU"):
        return "worker", "tensorflow was imported by the caller and can see a GPU, which it would claim"
    return "in_process", "TensorFlow was imported by the caller (torchvision safe) and sees no GPU"


def import_tensorflow(protect_torchvision: bool = True):
    """Import TensorFlow the safe way (torchvision first, GPUs hidden) and return the module.

    ``protect_torchvision=False`` is for the worker process, which never imports torchvision."""
    with _LOCK:
        fresh = sys.modules.get("tensorflow") is None
        if fresh and protect_torchvision:
            from .._import_order import before_tensorflow

            before_tensorflow()  # torchvision (and aiortc's pylibsrtp): after tensorflow they segfault
        if fresh:
            # Quiet TensorFlow's C++ start-up banner unless the user chose a level.
            os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
        try:
            import tensorflow as tf
        except ImportError as exc:
            raise ImportError(f"DeepSpeech features need TensorFlow: {INSTALL_HINT}") from exc
        if fresh:
            _STATE["imported_here"] = True
            tf.config.set_visible_devices([], "GPU")
        return tf


# --------------------------------------------------------------------------------------------------
# in-process runner


class InProcessGraph:
    """A loaded graph and session in this process; call it with ``[T, 494]`` inputs."""

    def __init__(self, path: Path, protect_torchvision: bool = True):
        tf = import_tensorflow(protect_torchvision)
        self.path = Path(path)
        from google.protobuf.message import DecodeError  # protobuf comes with TensorFlow

        graph_def = tf.compat.v1.GraphDef()
        try:
            graph_def.ParseFromString(self.path.read_bytes())
        except DecodeError as exc:
            raise DeepSpeechGraphError(f"{self.path} is not a frozen TensorFlow graph (GraphDef): {exc}") from exc
        self._graph = tf.Graph()
        with self._graph.as_default():
            try:
                tf.compat.v1.import_graph_def(graph_def, name=IMPORT_PREFIX)
            except (ValueError, tf.errors.OpError) as exc:
                raise DeepSpeechGraphError(f"{self.path}: TensorFlow cannot import this graph: {exc}") from exc
        missing = []
        tensors = {}
        for name in (INPUT_TENSOR, LENGTHS_TENSOR, LOGITS_TENSOR):
            try:
                tensors[name] = self._graph.get_tensor_by_name(name)
            except KeyError:
                missing.append(name)
        if missing:
            ops = [op.name for op in self._graph.get_operations()][:8]
            raise DeepSpeechGraphError(
                f"{self.path} is not a DeepSpeech v0.1.0 graph: tensors {missing} not found "
                f"(imported under '{IMPORT_PREFIX}/'; first ops: {ops})"
            )
        self._input, self._lengths, self._logits = (tensors[n] for n in (INPUT_TENSOR, LENGTHS_TENSOR, LOGITS_TENSOR))
        config = tf.compat.v1.ConfigProto(device_count={"GPU": 0})
        self._session = tf.compat.v1.Session(graph=self._graph, config=config)
        self._errors = tf.errors

    def __call__(self, x: np.ndarray) -> np.ndarray:
        """``[T, 494]`` -> logits ``[T, 29]`` float32."""
        x = np.asarray(x, dtype=np.float32)
        feed = {self._input: x[None], self._lengths: [x.shape[0]]}
        try:
            out = self._session.run(self._logits, feed_dict=feed)
        except self._errors.OpError as exc:
            raise DeepSpeechGraphError(f"{self.path}: running the graph failed: {exc.message}") from exc
        out = np.asarray(out, dtype=np.float32)
        # DeepSpeech 0.1.0 is time-major: [T, 1, 29].
        if out.ndim != 3 or out.shape[0] != x.shape[0] or out.shape[1] != 1:
            raise DeepSpeechGraphError(
                f"{self.path}: logits have shape {tuple(out.shape)}, expected [{x.shape[0]}, 1, C]"
            )
        return out[:, 0, :]

    def close(self) -> None:
        self._session.close()


# --------------------------------------------------------------------------------------------------
# worker-process runner


def _package_root() -> str:
    return str(Path(__file__).resolve().parents[2])


def _shutdown(proc: subprocess.Popen, err_file) -> None:
    if proc.poll() is None:
        try:
            proc.stdin.close()
            proc.wait(timeout=10)
        except (OSError, subprocess.TimeoutExpired):
            proc.kill()
            proc.wait()
    err_file.close()


class WorkerGraph:
    """The same interface as :class:`InProcessGraph`, served by a child Python process."""

    def __init__(self, path: Path):
        self.path = Path(path)
        env = dict(os.environ)
        env["CUDA_VISIBLE_DEVICES"] = ""  # the worker only runs TensorFlow: give it no GPU at all
        env.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
        env["PYTHONPATH"] = os.pathsep.join(p for p in (_package_root(), env.get("PYTHONPATH", "")) if p)
        # stderr goes to a file: a pipe nobody drains could fill up and stall the child.
        self._err = tempfile.TemporaryFile()
        self._proc = subprocess.Popen(
            [sys.executable, "-m", "gaussiantalker.audio._tf_worker", str(self.path)],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=self._err,
            env=env,
        )
        self._finalizer = weakref.finalize(self, _shutdown, self._proc, self._err)
        try:
            self._expect(b"READY")
        except BaseException:
            self.close()
            raise

    def _expect(self, word: bytes) -> bytes:
        line = self._proc.stdout.readline()
        if line.startswith(word):
            return line
        if line.startswith(b"ERROR "):
            info = json.loads(line[6:].decode("utf-8"))
            cls = {"DeepSpeechGraphError": DeepSpeechGraphError, "ImportError": ImportError}.get(
                info.get("type"), RuntimeError
            )
            raise cls(info.get("message", "DeepSpeech worker failed"))
        self._err.seek(0)
        tail = self._err.read().decode("utf-8", errors="replace").strip().splitlines()[-8:]
        self.close()
        raise RuntimeError(f"DeepSpeech worker process for {self.path} failed: {' | '.join(tail) or 'no output'}")

    def __call__(self, x: np.ndarray) -> np.ndarray:
        try:
            send_array(self._proc.stdin, np.asarray(x, dtype=np.float32))
        except BrokenPipeError:
            pass  # the worker has died; _expect reports what it wrote to stderr
        self._expect(b"OK")
        return recv_array(self._proc.stdout)

    def close(self) -> None:
        self._finalizer()


def send_array(fp, array: np.ndarray) -> None:
    """Write a byte-count line and the ``.npy`` bytes (numpy's own writer needs a seekable file)."""
    buf = io.BytesIO()
    np.save(buf, array, allow_pickle=False)
    payload = buf.getvalue()
    fp.write(str(len(payload)).encode("ascii") + b"\n" + payload)
    fp.flush()


def recv_array(fp) -> np.ndarray:
    """Read what :func:`send_array` wrote."""
    size = int(fp.readline().strip())
    payload = fp.read(size)
    if len(payload) != size:
        raise EOFError(f"pipe closed after {len(payload)} of {size} bytes")
    return np.load(io.BytesIO(payload), allow_pickle=False)


_RUNNERS: Dict[str, Callable[[np.ndarray], np.ndarray]] = {}


def open_graph(path: Path) -> Callable[[np.ndarray], np.ndarray]:
    """A cached runner for ``path`` (in this process, or in a worker when that is the safe choice)."""
    key = str(Path(path).resolve())
    runner = _RUNNERS.get(key)
    if runner is None:
        where, why = placement()
        if where == "in_process":
            runner = InProcessGraph(Path(path))
            log.info("DeepSpeech graph %s runs in this process (%s)", path, why)
        else:
            log.warning("DeepSpeech graph %s runs in a worker process: %s", path, why)
            runner = WorkerGraph(Path(path))
        _RUNNERS[key] = runner
    return runner
