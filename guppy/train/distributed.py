"""Several processes, one run: the torch.distributed side of `guppy-train` under torchrun.

    torchrun --standalone --nproc_per_node=2 -m guppy.train.trainer --preset demo

torchrun starts one process per device and tells each its RANK, LOCAL_RANK and WORLD_SIZE in
the environment; `process_group` joins them (gloo for CPU tensors, nccl for CUDA tensors) and
`wrap` puts the model in DistributedDataParallel. Rank 0 is the only process that reads or
writes the run folder: what the others need from it (the run's name, a checkpoint to resume
from) they receive through `share`. A user error is reported once, by rank 0; the other ranks
exit quietly with the same status (`run_quietly`). Without torchrun every helper here is a
no-op and guppy runs as one process.

The process group is process-wide state (torch keeps it); this module is the one place that
creates, reads and destroys it.
"""

from __future__ import annotations

import contextlib
import os
import signal
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
import torch.distributed as dist

BACKENDS = ("auto", "gloo", "nccl")


@dataclass(frozen=True)
class Ranks:
    """Where this process stands among the processes of one training run."""

    rank: int = 0  # 0 .. world_size-1; rank 0 writes the run folder
    local_rank: int = 0  # index on this machine: the GPU this process drives
    world_size: int = 1
    backend: str = ""  # what --dist-backend resolved to: gloo or nccl ("" for one process)

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    def shard(self, idx):
        """This rank's share of a global batch: every world_size-th chat, so each share has chats
        of every length the (length-sorted) batch holds and the ranks finish together."""
        return idx[self.rank::self.world_size]


SINGLE = Ranks()
_backend = ""  # set by process_group: the resolved --dist-backend


class PeerFailed(Exception):
    """Another rank stopped with an error; rank 0 reports it, this rank just exits."""


def env_ranks() -> Ranks:
    """Rank, local rank and world size from torchrun's environment; SINGLE without torchrun."""
    if "WORLD_SIZE" not in os.environ or "RANK" not in os.environ:
        return SINGLE
    try:
        rank, world = int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"])
        local = int(os.environ.get("LOCAL_RANK", rank))
    except ValueError:
        raise ValueError("RANK, LOCAL_RANK and WORLD_SIZE must be integers (torchrun sets them)") from None
    if not 0 <= rank < world:
        raise ValueError(f"RANK {rank} is outside WORLD_SIZE {world}")
    return Ranks(rank, local, world) if world > 1 else SINGLE


def is_main_process() -> bool:
    """Rank 0 by torchrun's RANK, or not under torchrun at all; readable before any group exists."""
    return os.environ.get("RANK", "0").strip() in ("0", "")


def current() -> Ranks:
    """This process's place in the running process group; SINGLE when there is none."""
    if not (dist.is_available() and dist.is_initialized()):
        return SINGLE
    env = env_ranks()
    return Ranks(dist.get_rank(), env.local_rank, dist.get_world_size(), _backend)


def _resolve_backend(name: str) -> str:
    """The init_process_group spec for --dist-backend `name`."""
    if name not in BACKENDS:
        raise ValueError(f"--dist-backend: {name!r} is not one of {', '.join(BACKENDS)}")
    cuda = torch.cuda.is_available() and dist.is_nccl_available()
    if name == "nccl" and not cuda:
        raise ValueError("--dist-backend nccl needs CUDA devices and this machine has none; "
                         "use gloo (or auto, which picks gloo here)")
    if name == "gloo" or not cuda:
        return "gloo"
    return "cpu:gloo,cuda:nccl"  # CUDA tensors (gradients) over nccl; small CPU messages over gloo


@contextlib.contextmanager
def process_group(backend: str = "auto"):
    """Join torchrun's process group for the duration of the block (nothing without torchrun)."""
    global _backend
    ranks = env_ranks()  # validated even without torchrun, so a bad flag fails the same everywhere
    spec = _resolve_backend(backend)
    if ranks.world_size == 1:
        yield SINGLE
        return
    if not dist.is_available():
        raise ValueError("this torch build has no torch.distributed; run without torchrun")
    dist.init_process_group(spec)
    _backend = "gloo" if spec == "gloo" else "nccl"
    try:
        yield current()
        # leave together: rank 0 still writes the last checkpoint and eval while the others are done,
        # and a peer that exits (closing its sockets) under a busy gloo group can abort it
        dist.barrier()
    finally:
        _backend = ""
        dist.destroy_process_group()


def rank_device(device: torch.device, ranks: Ranks) -> torch.device:
    """The device this rank trains on: under torchrun `cuda` means the GPU numbered LOCAL_RANK."""
    if device.type != "cuda":
        if ranks.backend == "nccl":
            raise ValueError(f"--dist-backend nccl carries CUDA tensors, but this run trains on {device}; "
                             "use --dist-backend gloo, or --device cuda")
        return device
    if ranks.world_size == 1:
        return device
    if device.index is not None:
        raise ValueError(f"device: {device} puts every rank on one GPU; under torchrun use --device cuda "
                         "(rank i takes cuda:LOCAL_RANK)")
    if ranks.local_rank >= torch.cuda.device_count():
        raise ValueError(f"LOCAL_RANK {ranks.local_rank} but this machine has {torch.cuda.device_count()} CUDA "
                         "devices; start at most that many processes per node (--nproc_per_node)")
    torch.cuda.set_device(ranks.local_rank)
    return torch.device("cuda", ranks.local_rank)


def wrap(model: torch.nn.Module, device: torch.device) -> torch.nn.Module:
    """The model for the training step: DistributedDataParallel under torchrun (its backward
    all-reduces the gradients, averaged over ranks), else the model itself."""
    if current().world_size == 1:
        return model
    from torch.nn.parallel import DistributedDataParallel

    return DistributedDataParallel(model, device_ids=[device.index] if device.type == "cuda" else None)


def no_sync(model: torch.nn.Module, skip: bool):
    """Accumulate gradients locally (no all-reduce) when `skip`: all micro-batches but the last."""
    return model.no_sync() if skip and hasattr(model, "no_sync") else contextlib.nullcontext()


def all_sum(*values: float) -> list[float]:
    """Sum scalars over all ranks (float64, every rank gets the totals)."""
    if current().world_size == 1:
        return list(values)
    t = torch.tensor(values, dtype=torch.float64)
    dist.all_reduce(t)
    return t.tolist()


# ---- rank 0 acts, the others hear of it --------------------------------------------------------


def _broadcast(obj):
    box = [obj]
    dist.broadcast_object_list(box, src=0)
    return box[0]


def share(fn: Callable[[], Any]) -> Any:
    """Run `fn` on rank 0 only and hand its result to every rank (tensors travel on the CPU).
    If it fails there, rank 0 raises the error and every other rank raises PeerFailed."""
    if current().world_size == 1:
        return fn()
    if current().is_main:
        try:
            result = _to_cpu(fn())
        except BaseException:
            _broadcast(PeerFailed())
            raise
        return _broadcast(result)
    result = _broadcast(None)
    if isinstance(result, PeerFailed):
        raise result
    return result


def main_first(fn: Callable[[], Any]) -> Any:
    """Run `fn` on local rank 0 of every machine, then on the other ranks (so they find what it
    cached there). A user error on any rank stops them all; rank 0 reports it."""
    ranks = current()
    if ranks.world_size == 1:
        return fn()
    result, failure = None, None
    for turn in (True, False):
        if (ranks.local_rank == 0) == turn:
            try:
                result = fn()
            except (ValueError, OSError) as e:
                failure = e
        errors = [None] * ranks.world_size
        dist.all_gather_object(errors, None if failure is None else str(failure))
        failed = [(r, e) for r, e in enumerate(errors) if e is not None]
        if failed and ranks.is_main:
            raise failure or ValueError(f"rank {failed[0][0]}: {failed[0][1]}")
        if failed:
            raise PeerFailed()
    return result


def _to_cpu(obj):
    if torch.is_tensor(obj):
        return obj.detach().cpu()
    if isinstance(obj, dict):
        return {k: _to_cpu(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return type(obj)(_to_cpu(v) for v in obj)
    return obj


# ---- stopping together ---------------------------------------------------------------------------


class DeferredInterrupts:
    """Under torchrun, Ctrl-C (torchrun passes SIGINT on) and SIGTERM set a flag instead of raising
    mid-collective; the training loop sums the flag over ranks each step, so every rank stops after
    the same step and none waits forever on one that left."""

    def __init__(self, active: bool):
        self.requested = False
        self._saved = {}
        if active:
            for sig in (signal.SIGINT, signal.SIGTERM):
                self._saved[sig] = signal.signal(sig, self._request)

    def _request(self, signum, frame):
        self.requested = True

    def restore(self) -> None:
        for sig, handler in self._saved.items():
            signal.signal(sig, handler)
        self._saved = {}


def defer_interrupts() -> DeferredInterrupts:
    return DeferredInterrupts(active=current().world_size > 1)


def run_quietly(body: Callable[[], int | None]) -> int:
    """A command body on a rank other than 0: user errors are rank 0's to report (every rank finds
    the same ones, or hears of them through `share`/`main_first`), so this rank only exits."""
    try:
        return body() or 0
    except (ValueError, OSError, PeerFailed):
        return 1
    except KeyboardInterrupt:
        return 130
