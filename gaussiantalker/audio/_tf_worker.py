"""Worker process that serves one DeepSpeech graph: ``python -m gaussiantalker.audio._tf_worker GRAPH``.

Started by :class:`gaussiantalker.audio._tf_graph.WorkerGraph` when TensorFlow cannot safely run in the
caller's process. Protocol on the pipes: the worker writes ``READY`` (or ``ERROR {json}``) once the graph
is loaded; then for every ``.npy`` array ``[T, 494]`` read from stdin it writes ``OK`` and the ``.npy``
logits ``[T, 29]`` (or ``ERROR {json}``). It exits when stdin closes.
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

from gaussiantalker.audio._tf_graph import DeepSpeechGraphError, InProcessGraph, recv_array, send_array


def serve(graph_path: str) -> int:
    # Keep the protocol channel private: anything printed (by Python or TensorFlow's C++) goes to stderr.
    proto = os.fdopen(os.dup(sys.stdout.fileno()), "wb")
    os.dup2(sys.stderr.fileno(), sys.stdout.fileno())
    inp = sys.stdin.buffer

    def error(exc: BaseException) -> None:
        message = json.dumps({"type": type(exc).__name__, "message": str(exc)})
        proto.write(b"ERROR " + message.encode("utf-8") + b"\n")
        proto.flush()

    try:
        # This process never imports torchvision, so TensorFlow needs no protection here.
        runner = InProcessGraph(Path(graph_path), protect_torchvision=False)
    except (DeepSpeechGraphError, ImportError, OSError) as exc:
        error(exc)
        return 3
    proto.write(b"READY\n")
    proto.flush()
    while inp.peek(1):  # empty: the parent closed the pipe
        x = recv_array(inp)
        try:
            out = runner(x)
        except DeepSpeechGraphError as exc:
            error(exc)
            continue
        proto.write(b"OK\n")
        send_array(proto, out)
    return 0


if __name__ == "__main__":
    if len(sys.argv) != 2:
        sys.stderr.write("usage: python -m gaussiantalker.audio._tf_worker GRAPH.pb\n")
        sys.exit(2)
    sys.exit(serve(sys.argv[1]))
