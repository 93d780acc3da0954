"""Multi-process training with ``torchrun``: process-group set-up and a few helpers.

``torchrun --nproc_per_node N -m dwf_lab train ...`` starts N processes with
RANK / WORLD_SIZE / LOCAL_RANK (and MASTER_ADDR / MASTER_PORT) in their
environment. :func:`init_from_env` (called by :class:`dwf_lab.core.runtime.Runtime`)
joins them into one process group: NCCL on CUDA (process ``LOCAL_RANK`` drives GPU
``LOCAL_RANK``), gloo on CPU. Without those variables, or with WORLD_SIZE=1,
nothing is initialised and every helper answers as for a single process, so
the same code runs with and without ``torchrun``.

What the training loop does with them (:func:`dwf_lab.training.loop.train_stage`):
data parallel: every rank takes its slice of each global batch
(``iterate_batches(..., rank, world_size)``), so the global batch order and
augmentation are those of a single process; attacks run per rank on the plain
module; the update runs through ``DistributedDataParallel`` (gradients
averaged); checkpoints and logs are written by rank 0 only, followed by a
barrier; the non-finite-loss check is all-reduced.
"""
import atexit
import datetime
import os

import torch
import torch.distributed as dist
from torch._utils import _flatten_dense_tensors, _unflatten_dense_tensors

# Long enough for rank 0 to write a checkpoint or evaluate while others wait at a barrier.
TIMEOUT = datetime.timedelta(hours=2)


def env_world_size() -> int:
    return int(os.environ.get("WORLD_SIZE", "1"))


def local_rank() -> int:
    return int(os.environ.get("LOCAL_RANK", "0"))


def initialized() -> bool:
    return dist.is_available() and dist.is_initialized()


def world() -> int:
    """Number of processes (1 without torchrun)."""
    return dist.get_world_size() if initialized() else 1


def rank() -> int:
    return dist.get_rank() if initialized() else 0


def is_main() -> bool:
    """True on rank 0 (and in a single process): the one that writes files and logs."""
    return rank() == 0


def init_from_env(device: torch.device) -> torch.device:
    """Join the process group torchrun describes (if any); returns this rank's device.

    ``device`` is the resolved training device: a CUDA device becomes
    ``cuda:LOCAL_RANK`` under torchrun (NCCL backend); CPU uses gloo.
    """
    if env_world_size() <= 1 or not dist.is_available():
        return device
    cuda = device.type == "cuda"
    if cuda:
        device = torch.device("cuda", local_rank())
        torch.cuda.set_device(device)
    if not dist.is_initialized():
        backend = "nccl" if cuda else "gloo"
        kw = {"device_id": device} if cuda else {}
        try:
            dist.init_process_group(backend=backend, timeout=TIMEOUT, **kw)
        except TypeError:   # older torch: no device_id
            dist.init_process_group(backend=backend, timeout=TIMEOUT)
        atexit.register(shutdown)
    return device


def shutdown() -> None:
    if initialized():
        try:
            dist.destroy_process_group()
        except Exception:  # at interpreter exit, never mask the real error
            pass


def barrier() -> None:
    if world() > 1:
        if dist.get_backend() == "nccl":
            dist.barrier(device_ids=[torch.cuda.current_device()])
        else:
            dist.barrier()


def all_reduce_sum_(t: torch.Tensor) -> torch.Tensor:
    """In place: the sum of ``t`` over ranks (no-op in a single process)."""
    if world() > 1:
        dist.all_reduce(t, op=dist.ReduceOp.SUM)
    return t


def first_bad_step(bad_step: torch.Tensor) -> int:
    """The earliest non-finite step over all ranks, -1 if none (``bad_step`` is -1 or a step)."""
    if world() <= 1:
        return int(bad_step)
    big = torch.iinfo(torch.long).max
    v = torch.where(bad_step >= 0, bad_step, torch.full_like(bad_step, big))
    dist.all_reduce(v, op=dist.ReduceOp.MIN)
    b = int(v)
    return -1 if b == big else b


def _coalesced(tensors, fn) -> None:
    """Apply a collective ``fn`` to tensors flattened into one buffer per dtype, then copy back."""
    by_dtype: dict = {}
    for t in tensors:
        by_dtype.setdefault(t.dtype, []).append(t)
    for group in by_dtype.values():
        flat = _flatten_dense_tensors(group)
        fn(flat)
        for t, v in zip(group, _unflatten_dense_tensors(flat, group)):
            t.copy_(v)


def average_gradients_(params) -> None:
    """All-reduce and average the ``.grad`` of params that have one (the path without DDP)."""
    n = world()
    if n <= 1:
        return
    grads = [p.grad for p in params if p.grad is not None]

    def reduce(flat):
        dist.all_reduce(flat, op=dist.ReduceOp.SUM)
        flat.div_(n)
    with torch.no_grad():
        _coalesced(grads, reduce)


def broadcast_buffers_(module: torch.nn.Module, src: int = 0) -> None:
    """Copy rank ``src``'s buffers (BatchNorm statistics) to every rank, as DDP does."""
    if world() > 1:
        with torch.no_grad():
            _coalesced(list(module.buffers()), lambda flat: dist.broadcast(flat, src))
