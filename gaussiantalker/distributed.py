"""Data-parallel training and sharded rendering on ``torch.distributed`` (launched by ``torchrun``).

One process per device ("rank"). The launcher (``torchrun``, or :func:`launch` for ``--gpu GPU0,GPU1``) sets
``RANK`` / ``WORLD_SIZE`` / ``LOCAL_RANK`` / ``MASTER_ADDR`` / ``MASTER_PORT``; :func:`init` joins the process
group (NCCL on CUDA, gloo on the CPU) with a timeout, so that a rank that dies or hangs ends the others with
a :class:`DistributedError` instead of a hang. :class:`Comm` is the little the trainer and the renderer need:
a bucketed all-reduce (one call for all gradients of a step), max, broadcast, gather, barriers, and a hash
check that every rank still holds the same parameters. With one process every method is a no-op, so the
single-process path does not change. See ``docs/distributed.md``.
"""

from __future__ import annotations

import contextlib
import datetime
import hashlib
import logging
import os
import uuid
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any, Callable, Optional, Union

import torch

log = logging.getLogger(__name__)

#: Environment variable: seconds a collective may wait for the other ranks before the run stops.
TIMEOUT_ENV = "GAUSSIANTALKER_DIST_TIMEOUT"
DEFAULT_TIMEOUT = 600.0
_RESUME_HINT = "run the same command again: training resumes from the newest checkpoint"


class DistributedError(RuntimeError):
    """A collective failed (another rank died, stopped or stopped answering) or the ranks diverged."""


@dataclass(frozen=True)
class RankInfo:
    """Where this process stands in the launch (from the launcher's environment variables)."""

    rank: int = 0
    world: int = 1
    local_rank: int = 0
    local_world: int = 1


def rank_info() -> RankInfo:
    """This process's rank from ``RANK`` / ``WORLD_SIZE`` / ``LOCAL_RANK`` / ``LOCAL_WORLD_SIZE`` (0 of 1 when
    unset: not launched by torchrun)."""
    env = os.environ
    world = int(env.get("WORLD_SIZE", "1"))
    local_world = int(env.get("LOCAL_WORLD_SIZE", str(world)))
    return RankInfo(int(env.get("RANK", "0")), world, int(env.get("LOCAL_RANK", "0")), local_world)


def launched() -> bool:
    """Whether this process is one of several ranks (``WORLD_SIZE`` > 1)."""
    return rank_info().world > 1


# ------------------------------------------------------------------------------------------ device lists


def parse_devices(spec: Any) -> Optional[list[str]]:
    """The device list of ``spec``: ``"GPU0,GPU1"`` / ``["GPU0", "GPU1"]`` -> one entry per rank; ``"CPU,CPU"``
    -> two CPU ranks. None for a single device (``"GPU0"``, ``"CPU"``, ``"auto"``, a ``torch.device``).

    Raises ValueError for an empty entry, a mix of CPU and GPUs, or a GPU named twice (two ranks cannot share
    one GPU under NCCL).
    """
    if isinstance(spec, (list, tuple)):
        items = [str(x).strip() for x in spec]
    elif isinstance(spec, str) and "," in spec:
        items = [x.strip() for x in spec.split(",")]
    else:
        return None
    if not items or any(not x for x in items):
        raise ValueError(f"device list {spec!r} has an empty entry: write e.g. GPU0,GPU1 or CPU,CPU")
    from .devices import resolve_device

    devices = [resolve_device(x) for x in items]  # ValueError for an unknown spelling or a missing GPU
    kinds = {d.type for d in devices}
    if len(kinds) > 1:
        raise ValueError(f"device list {spec!r} mixes the CPU and GPUs: every rank must use the same kind")
    gpus = [str(d) for d in devices if d.type == "cuda"]
    if len(set(gpus)) != len(gpus):
        raise ValueError(f"device list {spec!r} names a GPU twice: one rank per GPU")
    if len(items) == 1:
        return None
    return items


def rank_device(spec: Any, info: Optional[RankInfo] = None) -> str:
    """The device of this rank under a launcher: entry ``LOCAL_RANK`` of a device list; ``auto`` -> GPU
    ``LOCAL_RANK`` (or the CPU without CUDA); ``CPU`` -> the CPU. A single GPU named for several local ranks
    is a ValueError (they cannot share it)."""
    info = info or rank_info()
    devices = parse_devices(spec)
    if devices is not None:
        if len(devices) != info.local_world:
            raise ValueError(f"{len(devices)} devices given ({','.join(devices)}) for {info.local_world} processes "
                             f"on this node: give one per process (or none: GPU <LOCAL_RANK>)")
        return devices[info.local_rank]
    text = "auto" if spec is None else str(spec).strip().lower()
    if text == "auto":
        return f"cuda:{info.local_rank}" if torch.cuda.is_available() else "cpu"
    if text == "cpu":
        return "cpu"
    if info.local_world > 1:
        raise ValueError(f"device {spec!r} given to {info.local_world} processes on this node: they cannot share "
                         f"one GPU; leave --gpu out (rank r uses GPU r) or give a list, e.g. GPU0,GPU1")
    return str(spec)


def this_rank_device(spec: Any) -> Any:
    """:func:`rank_device` for a spec that still names every rank's device (``auto``, None, a list); a single
    device is taken as this rank's own (already chosen by the caller)."""
    if launched() and (spec is None or parse_devices(spec) is not None or str(spec).strip().lower() == "auto"):
        return rank_device(spec)
    return spec


# ------------------------------------------------------------------------------------------ splitting work


def batch_part(batch: int, rank: int, world: int) -> tuple[int, int]:
    """Rows ``[lo, hi)`` of a global batch of ``batch`` that rank ``rank`` of ``world`` takes: contiguous
    blocks, the first ``batch % world`` ranks one row more (a rank may get none when ``batch < world``)."""
    base, extra = divmod(int(batch), int(world))
    lo = rank * base + min(rank, extra)
    return lo, lo + base + (1 if rank < extra else 0)


def shard(items: Sequence[Any], rank: int, world: int) -> list[Any]:
    """Items ``rank, rank + world, ...`` (round robin: files of similar length end up spread evenly)."""
    return list(items[rank::world])


# ------------------------------------------------------------------------------------------ the communicator


class Comm:
    """Collectives over the default process group; with ``world == 1`` every method is a no-op.

    Every failure of a collective becomes a :class:`DistributedError` naming this rank, the operation and what
    to do. ``bytes_reduced`` counts the payload of :meth:`all_reduce_` (for the benchmark).
    """

    def __init__(self, rank: int = 0, world: int = 1, device: Union[str, torch.device] = "cpu") -> None:
        self.rank, self.world, self.device = int(rank), int(world), torch.device(device)
        self.bytes_reduced = 0
        self.calls = 0

    @property
    def single(self) -> bool:
        return self.world == 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    def __repr__(self) -> str:
        return f"Comm(rank={self.rank}, world={self.world}, device={self.device})"

    @contextlib.contextmanager
    def _collective(self, what: str) -> Iterator[None]:
        try:
            yield
        except DistributedError:
            raise
        except RuntimeError as exc:  # DistBackendError / DistNetworkError are RuntimeErrors
            raise DistributedError(
                f"rank {self.rank} of {self.world}: {what} failed: another rank died, stopped or stopped answering "
                f"({str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__}); this rank stops "
                f"too; {_RESUME_HINT}") from exc

    def barrier(self, what: str = "barrier") -> None:
        if self.single:
            return
        import torch.distributed as dist

        with self._collective(what):
            if self.device.type == "cuda":
                dist.barrier(device_ids=[self.device.index])
            else:
                dist.barrier()

    def all_reduce_(self, tensors: Sequence[torch.Tensor], op: str = "sum", what: str = "all-reduce") -> None:
        """Reduce ``tensors`` (same dtype and device) across ranks in place, as ONE collective on a flat buffer."""
        if self.single or not tensors:
            return
        import torch.distributed as dist

        flat = torch.cat([t.reshape(-1) for t in tensors])
        with self._collective(what):
            dist.all_reduce(flat, op=dist.ReduceOp.SUM if op == "sum" else dist.ReduceOp.MAX)
        self.bytes_reduced += flat.numel() * flat.element_size()
        self.calls += 1
        offset = 0
        for t in tensors:
            n = t.numel()
            t.copy_(flat[offset:offset + n].view_as(t))
            offset += n

    def reduce_gradients(self, params: Sequence[torch.Tensor], extras: Sequence[torch.Tensor] = (),
                         what: str = "gradient all-reduce") -> None:
        """Sum the gradients of ``params`` (and the tensors ``extras``, in place) over the ranks in one call.

        A parameter without a gradient counts as zeros; afterwards its gradient is None only when it had none on
        every rank (Adam must skip it exactly as in a single-process run, where it would have been None)."""
        if self.single:
            return
        ref = next((p for p in params), None)
        dtype = ref.dtype if ref is not None else torch.float32
        device = ref.device if ref is not None else self.device
        has = torch.tensor([0.0 if p.grad is None else 1.0 for p in params], dtype=dtype, device=device)
        pieces = [p.grad.reshape(-1) if p.grad is not None else torch.zeros(p.numel(), dtype=dtype, device=device)
                  for p in params]
        flat = torch.cat([*pieces, has, *[e.reshape(-1).to(dtype) for e in extras]])
        self.all_reduce_([flat], what=what)
        offset = 0
        for p in params:
            n = p.numel()
            p.grad = flat[offset:offset + n].view_as(p).clone()
            offset += n
        flags = flat[offset:offset + len(params)].tolist()
        offset += len(params)
        for p, flag in zip(params, flags):
            if flag == 0.0:
                p.grad = None
        for e in extras:
            n = e.numel()
            e.copy_(flat[offset:offset + n].view_as(e))
            offset += n

    def max_(self, tensor: torch.Tensor, what: str = "max all-reduce") -> torch.Tensor:
        self.all_reduce_([tensor], op="max", what=what)
        return tensor

    def broadcast_(self, tensors: Sequence[torch.Tensor], what: str = "broadcast") -> None:
        """Copy rank 0's values of ``tensors`` to every rank (grouped by dtype, one call per dtype)."""
        if self.single:
            return
        import torch.distributed as dist

        by_dtype: dict[torch.dtype, list[torch.Tensor]] = {}
        for t in tensors:
            by_dtype.setdefault(t.dtype, []).append(t)
        for group in by_dtype.values():
            flat = torch.cat([t.detach().reshape(-1) for t in group])
            with self._collective(what):
                dist.broadcast(flat, src=0)
            offset = 0
            with torch.no_grad():
                for t in group:
                    n = t.numel()
                    t.copy_(flat[offset:offset + n].view_as(t))
                    offset += n

    def gather_objects(self, obj: Any, what: str = "gather") -> list[Any]:
        """Every rank's ``obj`` (picklable), in rank order, on every rank."""
        if self.single:
            return [obj]
        import torch.distributed as dist

        out: list[Any] = [None] * self.world
        with self._collective(what):
            dist.all_gather_object(out, obj)
        return out

    def check_identical(self, tensors: dict[str, torch.Tensor], where: str) -> str:
        """Raise :class:`DistributedError` (on every rank) unless every rank holds bit-identical ``tensors``.

        Cheap: one 64-bit hash of the bytes (and shapes) of the tensors per rank, gathered. Returns the hash."""
        digest = tensor_hash(tensors)
        if self.single:
            return digest
        hashes = self.gather_objects(digest, what=f"parameter hash check at {where}")
        if len(set(hashes)) > 1:
            listing = ", ".join(f"rank {r}: {h}" for r, h in enumerate(hashes))
            raise DistributedError(f"the ranks diverged at {where}: their parameters differ ({listing}). Every rank "
                                   f"must hold identical Gaussians; this is a bug (or a faulty device) — please "
                                   f"report it with the log of each rank")
        return digest


def tensor_hash(tensors: dict[str, torch.Tensor]) -> str:
    """A 16-hex-digit hash of the names, shapes, dtypes and bytes of ``tensors`` (in key order)."""
    h = hashlib.blake2b(digest_size=8)
    for name in sorted(tensors):
        t = tensors[name].detach()
        h.update(f"{name}:{tuple(t.shape)}:{t.dtype};".encode())
        h.update(t.contiguous().cpu().reshape(-1).view(torch.uint8).numpy().tobytes())
    return h.hexdigest()


SINGLE = Comm()


def timeout_seconds() -> float:
    """The collective timeout: ``$GAUSSIANTALKER_DIST_TIMEOUT`` seconds, default 600."""
    text = os.environ.get(TIMEOUT_ENV)
    if not text:
        return DEFAULT_TIMEOUT
    try:
        value = float(text)
    except ValueError:
        raise ValueError(f"{TIMEOUT_ENV}={text!r} is not a number of seconds") from None
    if value <= 0:
        raise ValueError(f"{TIMEOUT_ENV} must be positive, got {value}")
    return value


def init(device: Union[str, torch.device]) -> Comm:
    """Join the process group of this launch (idempotent) and return its :class:`Comm`; :data:`SINGLE` when not
    launched as one of several ranks. NCCL for a CUDA device, gloo for the CPU; the timeout from
    :func:`timeout_seconds`."""
    info = rank_info()
    device = torch.device(device)
    if info.world <= 1:
        return SINGLE
    import torch.distributed as dist

    if not dist.is_available():
        raise DistributedError("this torch build has no torch.distributed")
    if not dist.is_initialized():
        backend = "nccl" if device.type == "cuda" else "gloo"
        if device.type == "cuda":
            torch.cuda.set_device(device)
        timeout = datetime.timedelta(seconds=timeout_seconds())
        try:
            dist.init_process_group(backend=backend, timeout=timeout,
                                    device_id=device if device.type == "cuda" else None)
        except RuntimeError as exc:
            raise DistributedError(f"rank {info.rank} of {info.world}: cannot join the process group ({exc})") from exc
        log.info("rank %d of %d joined the %s process group on %s (timeout %.0f s)", info.rank, info.world,
                 backend, device, timeout.total_seconds())
    return Comm(dist.get_rank(), dist.get_world_size(), device)


def on_main_first(fn: Callable[[], Any], device: Union[str, torch.device], what: str) -> Any:
    """Run ``fn()`` on rank 0 while the other ranks wait, then hand every rank its (picklable) result.

    For long one-process work before training (preprocessing a video): the wait uses a gloo group of its own
    with a 24-hour timeout instead of the collective timeout. If rank 0 fails, it stops with its error and the
    others with a :class:`DistributedError`."""
    comm = init(device)
    if comm.single:
        return fn()
    import torch.distributed as dist

    with comm._collective(f"waiting for rank 0's {what}"):
        group = dist.new_group(backend="gloo", timeout=datetime.timedelta(hours=24))
    box = [fn() if comm.is_main else None]
    if not comm.is_main:
        log.info("rank %d: waiting for rank 0's %s", comm.rank, what)
    with comm._collective(f"waiting for rank 0's {what}"):
        dist.broadcast_object_list(box, src=0, group=group)
    return box[0]


def shutdown() -> None:
    """Leave the process group (when one is initialised)."""
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


# ------------------------------------------------------------------------------------------ the launcher


def _threads_for(devices: Sequence[str]) -> Optional[int]:
    """CPU threads per rank for CPU ranks (the cores shared out), None for GPUs or when OMP_NUM_THREADS is set."""
    if os.environ.get("OMP_NUM_THREADS") or any(d.strip().lower() != "cpu" for d in devices):
        return None
    return max(1, (os.cpu_count() or 1) // len(devices))


def _worker(fn: Callable[..., Any], devices: list[str], threads: Optional[int], args: tuple,
            kwargs: dict[str, Any]) -> Any:
    """Runs in each launched process: pick this rank's device, then call ``fn(*args, device=..., **kwargs)``."""
    if threads is not None:
        torch.set_num_threads(threads)
    info = rank_info()
    logging.basicConfig(level=logging.INFO, format=f"[rank {info.rank}] %(levelname)s %(name)s: %(message)s")
    return fn(*args, device=devices[info.local_rank], **kwargs)


def launch(fn: Callable[..., Any], devices: Sequence[str], *args: Any, **kwargs: Any) -> dict[int, Any]:
    """Run ``fn(*args, device=devices[rank], **kwargs)`` in one new process per device on this machine, through
    torch's elastic launcher (``torch.distributed.launcher.api.elastic_launch``, what ``torchrun --standalone``
    uses), and return ``{rank: return value}``.

    ``fn`` must be importable by name (a module-level function) and its arguments picklable. CPU ranks share
    the cores (``torch.set_num_threads(cores // ranks)``) unless ``OMP_NUM_THREADS`` is set.

    Raises:
        DistributedError: a rank failed; the message names it and carries its error.
    """
    from torch.distributed.elastic.multiprocessing.errors import ChildFailedError
    from torch.distributed.launcher.api import LaunchConfig, elastic_launch

    devices = [str(d) for d in devices]
    config = LaunchConfig(min_nodes=1, max_nodes=1, nproc_per_node=len(devices), run_id=str(uuid.uuid4()),
                          rdzv_backend="c10d", rdzv_endpoint="localhost:0", max_restarts=0, monitor_interval=0.5,
                          start_method="spawn")
    log.info("launching %d ranks on %s", len(devices), ", ".join(devices))
    try:
        results = elastic_launch(config, _worker)(fn, devices, _threads_for(devices), args, kwargs)
    except ChildFailedError as exc:
        raise DistributedError(_failure_message(exc)) from exc
    return dict(results)


def _failure_message(exc: Any) -> str:
    lines, killed = [], False
    for rank, failure in sorted(exc.failures.items()):
        message = failure.message
        if isinstance(message, dict):  # the error file's content: {"message": ..., "extraInfo": {...}}
            message = message.get("message", message)
        text = str(message or "").strip().splitlines()
        reason = text[-1] if text else f"exit code {failure.exitcode}"
        if failure.exitcode is not None and failure.exitcode < 0:
            import signal

            killed = True
            try:
                reason = f"killed by {signal.Signals(-failure.exitcode).name}"
            except ValueError:
                reason = f"killed by signal {-failure.exitcode}"
        lines.append(f"rank {rank} (pid {failure.pid}): {reason}")
    then = _RESUME_HINT if killed else "run again once the error is fixed (training resumes from the newest checkpoint)"
    return f"distributed run failed: {'; '.join(lines)}. The other ranks were stopped; {then}"


__all__ = ["DEFAULT_TIMEOUT", "SINGLE", "TIMEOUT_ENV", "Comm", "DistributedError", "RankInfo", "batch_part", "init",
           "launch", "launched", "on_main_first", "parse_devices", "rank_device", "rank_info", "shard", "this_rank_device", "shutdown", "tensor_hash",
           "timeout_seconds"]
