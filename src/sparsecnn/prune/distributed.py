"""Fine-tuning on several processes with ``torch.distributed`` (DDP): the process group, sharded
loaders, reduced metrics, identical masks on every rank.

``sparsecnn optimize`` started by ``torchrun`` (``torchrun --nproc-per-node N -m sparsecnn
optimize ...``) finds ``WORLD_SIZE`` / ``RANK`` / ``LOCAL_RANK`` / ``MASTER_ADDR`` /
``MASTER_PORT`` in its environment; :func:`init_from_env` then joins the process group (``gloo``
on CPU, ``nccl`` when CUDA is available) and :func:`sparsecnn.prune.train` trains the model
wrapped in :class:`torch.nn.parallel.DistributedDataParallel`:

- each rank reads its own shard of the training set (:class:`~torch.utils.data.DistributedSampler`,
  reseeded every epoch); the *global* batch stays the recipe's (per-rank batch = batch / world),
  so learning rate and schedule need no change;
- gradients are averaged by DDP; BatchNorm buffers (and the mask buffers) are broadcast from
  rank 0 at every forward (DDP's ``broadcast_buffers``); on CUDA, BatchNorm is converted to
  :class:`~torch.nn.SyncBatchNorm` (PyTorch's SyncBatchNorm runs on GPUs only);
- the masks are recomputed on every rank from identical inputs (weights, reduced gradients,
  reduced validation accuracy, the same seeded random generator), re-applied after every
  optimizer step, and checked: :func:`check_masks_identical` compares a digest of every mask
  across ranks and raises ``RuntimeError`` if any rank differs;
- losses, accuracies and evaluations are sums reduced over ranks (:func:`evaluate` shards the
  evaluation set without padding, so every image counts exactly once);
- checkpoints and results are written by rank 0 only; a checkpoint is read by rank 0 and
  broadcast (the other ranks need not see the file).

Without a process group (or with ``WORLD_SIZE=1``) everything here is a no-op and training is the
plain single-process loop.
"""

from __future__ import annotations

import os
import sys
from dataclasses import dataclass
from typing import NoReturn

import torch
import torch.distributed as dist
import torch.nn as nn
from torch.utils.data import DataLoader, DistributedSampler, Subset


@dataclass(frozen=True)
class DistContext:
    """Where this process stands in the process group.

    Attributes
    ----------
    rank, world_size : int
        Global rank and number of processes (0 and 1 without a process group).
    local_rank, local_world_size : int
        Rank on this node and processes on this node (torchrun's ``LOCAL_RANK`` /
        ``LOCAL_WORLD_SIZE``).
    backend : str or None
        ``"gloo"`` or ``"nccl"``; None without a process group.
    device : torch.device
        ``cuda:<local_rank>`` with NCCL, else ``cpu``.
    """

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    local_world_size: int = 1
    backend: str | None = None
    device: torch.device = torch.device("cpu")

    @property
    def active(self) -> bool:
        """True when training runs on more than one process."""
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        """True on rank 0 (the one that writes checkpoints, results and progress)."""
        return self.rank == 0

    def as_dict(self) -> dict:
        return {"rank": self.rank, "world_size": self.world_size, "local_rank": self.local_rank,
                "local_world_size": self.local_world_size, "backend": self.backend,
                "device": str(self.device)}


def context() -> DistContext:
    """The current :class:`DistContext` (world size 1 when no process group is initialised)."""
    if not (dist.is_available() and dist.is_initialized()):
        return DistContext()
    backend = dist.get_backend()
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    local_world = int(os.environ.get("LOCAL_WORLD_SIZE", str(dist.get_world_size())))
    device = torch.device(f"cuda:{local_rank}") if backend == "nccl" else torch.device("cpu")
    return DistContext(rank=dist.get_rank(), world_size=dist.get_world_size(),
                       local_rank=local_rank, local_world_size=local_world, backend=backend,
                       device=device)


def init_from_env(backend: str = "auto") -> DistContext:
    """Join the process group described by torchrun's environment, if there is one.

    Parameters
    ----------
    backend : {"auto", "gloo", "nccl"}
        ``"auto"``: NCCL when CUDA is available, else gloo.

    Returns
    -------
    DistContext
        World size 1 (nothing initialised) when ``WORLD_SIZE`` is unset or 1.

    Raises
    ------
    ValueError
        For an unknown backend, or ``"nccl"`` without CUDA.
    """
    if backend not in ("auto", "gloo", "nccl"):
        raise ValueError(f"backend must be 'auto', 'gloo' or 'nccl', got {backend!r}")
    if dist.is_available() and dist.is_initialized():
        return context()
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return DistContext()
    if not dist.is_available():
        raise RuntimeError("WORLD_SIZE > 1 but this PyTorch build has no torch.distributed")
    cuda = torch.cuda.is_available()
    if backend == "auto":
        backend = "nccl" if cuda else "gloo"
    if backend == "nccl" and not cuda:
        raise ValueError("backend 'nccl' needs CUDA; use 'gloo' on CPU")
    if backend == "nccl":
        torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0")))
    dist.init_process_group(backend=backend)
    return context()


def cleanup() -> None:
    """Leave the process group (no-op without one), after a barrier, so no rank tears its
    connections down while another still uses them. The process goes on; a ``torchrun`` rank
    that used DDP should end with :func:`exit_process` (gloo can abort at interpreter exit)."""
    if dist.is_available() and dist.is_initialized():
        if dist.get_world_size() > 1:
            dist.barrier()
        dist.destroy_process_group()


def exit_process(code: int = 0) -> NoReturn:
    """Leave the process group (:func:`cleanup`), flush stdout / stderr and end this process
    with exit status ``code`` at once (``os._exit``: no interpreter finalization, no ``atexit``
    handlers). Does not return.

    For the end of a ``torchrun`` rank that used DDP, once its results are written. With
    PyTorch 2.13 and gloo, the process group outlives ``destroy_process_group`` after DDP used it
    (a C++ reference, not one from Python) and its worker threads keep running; one that drops
    its last finished collective while the interpreter finalizes must take the GIL, is ended by
    the interpreter, and the rank aborts ("terminate called without an active exception",
    SIGABRT; a core showed ``ProcessGroupGloo::runLoop`` -> ``~AsyncAllreduceWork`` ->
    ``decref_pyobject`` -> ``take_gil`` -> ``pthread_exit``; PyTorch's pull request #179291
    describes the same). It happened in about 1 of 10 two-rank runs on a loaded 2-core machine,
    after every result was written; ending here skips the finalization it races with.
    """
    cleanup()
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except (AttributeError, OSError, ValueError):  # closed or replaced streams
            pass
    os._exit(int(code))


def barrier() -> None:
    if context().active:
        dist.barrier()


# ------------------------------------------------------------------------------------------------
# collectives on plain values
# ------------------------------------------------------------------------------------------------
def _device_for_collectives() -> torch.device:
    return context().device


def all_reduce_sum(*values: float) -> tuple[float, ...]:
    """Sum each value over ranks (float64); the values themselves on one process."""
    ctx = context()
    if not ctx.active:
        return tuple(float(v) for v in values)
    t = torch.tensor([float(v) for v in values], dtype=torch.float64, device=ctx.device)
    dist.all_reduce(t, op=dist.ReduceOp.SUM)
    return tuple(float(v) for v in t.cpu())


def all_reduce_mean_(tensor: torch.Tensor) -> torch.Tensor:
    """Average ``tensor`` over ranks in place (no-op on one process); returns it."""
    ctx = context()
    if ctx.active:
        moved = tensor.to(ctx.device)
        dist.all_reduce(moved, op=dist.ReduceOp.SUM)
        moved.div_(ctx.world_size)
        if moved is not tensor:
            tensor.copy_(moved)
    return tensor


def any_rank(flag: bool) -> bool:
    """True if ``flag`` is true on any rank (every rank gets the same answer)."""
    ctx = context()
    if not ctx.active:
        return bool(flag)
    t = torch.tensor([1.0 if flag else 0.0], device=ctx.device)
    dist.all_reduce(t, op=dist.ReduceOp.MAX)
    return bool(t.item() > 0)


def broadcast_object(obj, src: int = 0):
    """Rank ``src``'s ``obj`` on every rank (pickled; the object itself on one process)."""
    ctx = context()
    if not ctx.active:
        return obj
    box = [obj if ctx.rank == src else None]
    dist.broadcast_object_list(box, src=src, device=ctx.device if ctx.backend == "nccl" else None)
    return box[0]


def gather_object(obj) -> list:
    """Every rank's ``obj``, in rank order, on every rank (``[obj]`` on one process)."""
    ctx = context()
    if not ctx.active:
        return [obj]
    out = [None] * ctx.world_size
    dist.all_gather_object(out, obj)
    return out


# ------------------------------------------------------------------------------------------------
# masks
# ------------------------------------------------------------------------------------------------
_HASH = 2654435761  # Knuth's multiplicative hash constant


def mask_digests(model: nn.Module) -> dict[str, tuple[int, int]]:
    """``{layer: (kept, hash)}`` for every masked layer: the number of kept weights and a
    position-sensitive hash of the kept positions (sum over kept flat indices ``i`` of
    ``(i + 1) * 2654435761 mod 2**32``, mod 2**61). Two masks with the same digest are equal
    with overwhelming probability."""
    from .masks import masks_of

    out = {}
    for name, mask in masks_of(model).items():
        idx = torch.nonzero(mask.reshape(-1).cpu(), as_tuple=True)[0].to(torch.int64)
        h = int(((idx + 1) * _HASH % (1 << 32)).sum()) % ((1 << 61) - 1)
        out[name] = (int(idx.numel()), h)
    return out


def check_masks_identical(model: nn.Module) -> None:
    """Raise ``RuntimeError`` unless every rank holds exactly the same masks (no-op on one
    process). One all-reduce (MIN and MAX) of the digests of :func:`mask_digests`."""
    ctx = context()
    if not ctx.active:
        return
    digests = mask_digests(model)
    flat = [v for name in sorted(digests) for v in digests[name]]
    t = torch.tensor(flat + [len(digests)], dtype=torch.int64, device=ctx.device)
    lo, hi = t.clone(), t.clone()
    dist.all_reduce(lo, op=dist.ReduceOp.MIN)
    dist.all_reduce(hi, op=dist.ReduceOp.MAX)
    if not torch.equal(lo, hi):
        names = sorted(digests)
        bad = [names[i // 2] for i in range(len(flat)) if int(lo[i]) != int(hi[i])]
        raise RuntimeError(f"masks differ between ranks (rank {ctx.rank}): layers "
                           f"{sorted(set(bad)) or 'count'}")


# ------------------------------------------------------------------------------------------------
# data
# ------------------------------------------------------------------------------------------------
def is_sharded(loader) -> bool:
    return isinstance(loader, DataLoader) and isinstance(loader.sampler, DistributedSampler)


def shard_train_loader(loader: DataLoader, *, seed: int = 0) -> DataLoader:
    """The training loader for this rank: the same dataset through a shuffling
    :class:`~torch.utils.data.DistributedSampler` (seeded ``seed``; call ``sampler.set_epoch``
    each epoch), per-rank batch ``max(1, batch_size // world_size)``. Returned unchanged on one
    process or if it is already sharded.

    Raises
    ------
    TypeError
        If ``loader`` is not a ``DataLoader`` with a ``batch_size`` (the dataset is needed).
    """
    ctx = context()
    if not ctx.active or is_sharded(loader):
        return loader
    if not isinstance(loader, DataLoader) or loader.batch_size is None:
        raise TypeError("distributed training needs a torch DataLoader with a batch_size "
                        f"(got {type(loader).__name__})")
    sampler = DistributedSampler(loader.dataset, num_replicas=ctx.world_size, rank=ctx.rank,
                                 shuffle=True, seed=seed, drop_last=False)
    return DataLoader(loader.dataset, batch_size=max(1, loader.batch_size // ctx.world_size),
                      sampler=sampler, drop_last=loader.drop_last, num_workers=0)


def shard_eval_loader(loader):
    """This rank's share of an evaluation loader: items ``rank, rank + world, ...`` of its
    dataset (no padding, so the reduced counts are exact). Unchanged on one process."""
    ctx = context()
    if not ctx.active or not isinstance(loader, DataLoader) or getattr(loader, "_sharded", False):
        return loader
    ds = loader.dataset
    part = Subset(ds, range(ctx.rank, len(ds), ctx.world_size))
    out = DataLoader(part, batch_size=loader.batch_size or 256, shuffle=False, num_workers=0)
    out._sharded = True
    return out


class DeviceLoader:
    """Wrap a loader so that its ``(x, y)`` batches arrive on ``device`` (for helpers that
    iterate a loader themselves, e.g. :func:`sparsecnn.prune.sensitivity_sweep`)."""

    def __init__(self, loader, device):
        self.loader, self.device = loader, torch.device(device)
        self.dataset = getattr(loader, "dataset", None)

    def __iter__(self):
        for x, y in self.loader:
            yield x.to(self.device, non_blocking=True), y.to(self.device, non_blocking=True)

    def __len__(self):
        return len(self.loader)


@torch.no_grad()
def sync_buffers_(model: nn.Module, src: int = 0) -> nn.Module:
    """Copy rank ``src``'s buffers (BatchNorm running statistics, masks) to every rank, in
    place. DDP does this at the start of every forward; after the last training step of an
    epoch the ranks' running statistics differ until then. No-op on one process."""
    ctx = context()
    if ctx.active:
        for buf in model.buffers():
            moved = buf.to(ctx.device)
            dist.broadcast(moved, src=src)
            if moved is not buf:
                buf.copy_(moved)
    return model


@torch.no_grad()
def evaluate(model: nn.Module, loader, device: torch.device | None = None) -> float:
    """Top-1 of ``model`` on ``loader``, the counts summed over ranks (pass a loader from
    :func:`shard_eval_loader` so that each rank sees its share). Under DDP the buffers are first
    synchronised from rank 0 (:func:`sync_buffers_`), so every rank evaluates the same model.
    The model's mode is restored.

    Raises ValueError if no rank saw a sample.
    """
    sync_buffers_(model)
    was_training = model.training
    model.eval()
    correct = total = 0
    try:
        for x, y in loader:
            if device is not None:
                x, y = x.to(device, non_blocking=True), y.to(device, non_blocking=True)
            correct += int((model(x).argmax(1) == y).sum())
            total += int(y.numel())
    finally:
        model.train(was_training)
    correct, total = all_reduce_sum(correct, total)
    if total == 0:
        raise ValueError("evaluate: the loader yielded no samples")
    return correct / total


# ------------------------------------------------------------------------------------------------
# the model
# ------------------------------------------------------------------------------------------------
def wrap_ddp(model: nn.Module, ctx: DistContext | None = None, *, sync_bn: str | bool = "auto"):
    """``model`` wrapped in DistributedDataParallel (``model`` itself on one process).

    Parameters
    ----------
    sync_bn : {"auto", True, False}
        Convert BatchNorm to SyncBatchNorm first (in place; undo with :func:`revert_sync_bn`).
        ``"auto"``: on CUDA only (PyTorch's SyncBatchNorm does not run on CPU). Without it each
        rank normalises with its own per-rank batch statistics and the running statistics are
        rank 0's (broadcast by DDP).

    Returns
    -------
    (wrapped, converted) : (nn.Module, bool)
    """
    ctx = ctx or context()
    if not ctx.active:
        return model, False
    from torch.nn.parallel import DistributedDataParallel as DDP

    use_sync = (ctx.device.type == "cuda") if sync_bn == "auto" else bool(sync_bn)
    if use_sync:
        _convert_sync_bn_(model)
    ids = [ctx.device.index] if ctx.device.type == "cuda" else None
    return DDP(model, device_ids=ids, broadcast_buffers=True), use_sync


def _convert_sync_bn_(model: nn.Module) -> None:
    for name, child in list(model.named_children()):
        if isinstance(child, nn.modules.batchnorm._BatchNorm) and not isinstance(child, nn.SyncBatchNorm):
            setattr(model, name, nn.SyncBatchNorm.convert_sync_batchnorm(child))
        else:
            _convert_sync_bn_(child)


def revert_sync_bn(model: nn.Module) -> nn.Module:
    """Replace every SyncBatchNorm of ``model`` by a BatchNorm2d holding the same parameters and
    buffers (in place; returns ``model``), so BatchNorm folding finds it again."""
    for name, child in list(model.named_children()):
        if isinstance(child, nn.SyncBatchNorm):
            bn = nn.BatchNorm2d(child.num_features, child.eps, child.momentum, child.affine,
                                child.track_running_stats)
            if child.affine:
                bn.weight, bn.bias = child.weight, child.bias
            if child.track_running_stats:
                bn.running_mean, bn.running_var = child.running_mean, child.running_var
                bn.num_batches_tracked = child.num_batches_tracked
            bn.train(child.training)
            setattr(model, name, bn)
        else:
            revert_sync_bn(child)
    return model
