"""A plain training loop (SGD with momentum, cosine learning rate per step) with optional gradual
pruning (AGP or evolutionary), knowledge distillation from a dense teacher, checkpoint/resume, a
rich progress bar, and torch.distributed (DDP) when a process group is initialised (see
:mod:`sparsecnn.prune.distributed`).
"""

from __future__ import annotations

import math
import os
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch.utils.data import DataLoader, Dataset

from .._atomic import atomic_path
from . import distributed as D
from .masks import _mask_param, apply_masks_, masks_of
from .schedule import GradualPruner


def make_loader(dataset: Dataset, batch_size: int = 128, *, shuffle: bool = True,
                seed: int = 0, drop_last: bool = False) -> DataLoader:
    """A single-process DataLoader with its own seeded generator (reproducible shuffling).

    Raises ValueError if ``batch_size`` < 1.
    """
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise ValueError(f"batch_size must be a positive int, got {batch_size!r}")
    gen = torch.Generator().manual_seed(int(seed))
    return DataLoader(dataset, batch_size=batch_size, shuffle=shuffle, generator=gen,
                      drop_last=drop_last, num_workers=0)


@torch.no_grad()
def evaluate(model: nn.Module, loader) -> float:
    """Top-1 accuracy of ``model`` on ``loader`` (batches of ``(x, y)``), a float in [0, 1].

    The model is put in eval mode and its previous mode restored afterwards.

    Raises ValueError if the loader yields no samples.
    """
    was_training = model.training
    model.eval()
    correct = total = 0
    try:
        for x, y in loader:
            correct += int((model(x).argmax(1) == y).sum())
            total += int(y.numel())
    finally:
        model.train(was_training)
    if total == 0:
        raise ValueError("evaluate: the loader yielded no samples")
    return correct / total


def distillation_loss(student_logits: torch.Tensor, teacher_logits: torch.Tensor,
                      labels: torch.Tensor, alpha: float, temperature: float) -> torch.Tensor:
    """``(1 - alpha) * CE(student, labels) + alpha * T^2 * KL(softmax(teacher/T) || softmax(student/T))``
    (Hinton et al. 2015, "Distilling the knowledge in a neural network")."""
    ce = F.cross_entropy(student_logits, labels)
    if alpha == 0.0:
        return ce
    t = temperature
    kd = F.kl_div(F.log_softmax(student_logits / t, dim=1), F.log_softmax(teacher_logits / t, dim=1),
                  reduction="batchmean", log_target=True) * (t * t)
    return (1.0 - alpha) * ce + alpha * kd


@dataclass
class TrainResult:
    """What :func:`train` did.

    Attributes
    ----------
    history : list of dict
        One row per finished epoch: ``epoch``, ``lr`` (at the epoch's end), ``loss`` (mean),
        ``train_acc`` (on the augmented batches), ``sparsity`` (pruner's current, or None),
        ``eval_acc`` (if ``eval_loader`` was given), ``seconds``.
    finished : bool
        False if ``time_budget_s`` stopped training early (resume with the same ``checkpoint``).
    epochs_done : int
    seconds : float
        Wall time of this call (s).
    """

    history: list[dict] = field(default_factory=list)
    finished: bool = True
    epochs_done: int = 0
    seconds: float = 0.0


def _atomic_save(obj, path: Path) -> None:
    with atomic_path(path) as tmp:
        torch.save(obj, tmp)


def train(
    model: nn.Module,
    loader,
    epochs: int,
    lr: float,
    *,
    momentum: float = 0.9,
    weight_decay: float = 5e-4,
    nesterov: bool = True,
    min_lr: float = 0.0,
    pruner: GradualPruner | None = None,
    teacher: nn.Module | None = None,
    kd_alpha: float = 0.0,
    kd_temperature: float = 4.0,
    augment: Callable[[torch.Tensor, torch.Generator], torch.Tensor] | None = None,
    eval_loader=None,
    seed: int = 0,
    checkpoint: str | os.PathLike | None = None,
    time_budget_s: float | None = None,
    progress: bool = True,
    description: str = "train",
    device: str | torch.device | None = None,
    sync_bn: str | bool = "auto",
) -> TrainResult:
    """Train ``model`` with SGD + momentum and a cosine learning rate (updated every step).

    Parameters
    ----------
    model : torch.nn.Module
        Trained in place (left in train mode).
    loader : iterable of (x, y)
        Training batches; a ``DataLoader`` with a ``generator`` (see :func:`make_loader`) is
        reseeded every epoch with ``seed + epoch`` so a resumed run repeats the same batches.
    epochs : int
        Epochs in all (>= 1); with ``checkpoint`` the count includes epochs already done.
    lr : float
        Peak learning rate (> 0); decays by cosine to ``min_lr`` over ``epochs * len(loader)``
        steps (Loshchilov & Hutter 2017, SGDR without restarts).
    momentum, weight_decay, nesterov
        SGD settings (weight decay acts on the trainable tensors, masked weights stay zero).
    pruner : GradualPruner or EvolutionaryPruner, optional
        Its ``step()`` is called after every optimizer step (and ``bind(optimizer, log=...,
        device=...)`` once before the first, if it has one). Build it before calling ``train``
        (it attaches the masks). Its ``end_step`` must fall within training.
    teacher : torch.nn.Module, optional
        Dense teacher for knowledge distillation (kept in eval mode, no gradients); used when
        ``kd_alpha > 0``.
    kd_alpha, kd_temperature : float
        Weight in [0, 1] of the distillation term, and its temperature (> 0).
    augment : callable ``(x, generator) -> x``, optional
        Batch augmentation, e.g. :func:`sparsecnn.data.random_crop_flip`.
    eval_loader : iterable, optional
        Evaluated (top-1) after each epoch.
    seed : int
        Seeds torch, the loader's generator and the augmentation: same seed, same result.
    checkpoint : path, optional
        Saved atomically after every epoch (model incl. masks, optimizer, schedule, history) and
        resumed from if it exists.
    time_budget_s : float, optional
        Stop after the epoch during which this many seconds passed (``finished=False``).
    progress : bool
        Show a rich progress bar with loss, accuracy and sparsity (rank 0 only).
    device : str or torch.device, optional
        Where to train (the model, teacher and batches are moved there; the model stays there).
        Default: the process group's device (``cuda:<local rank>`` with NCCL), else where the
        model is.
    sync_bn : {"auto", True, False}
        Under DDP, convert BatchNorm to SyncBatchNorm for training (``"auto"``: on CUDA only)
        and back afterwards.

    Distributed training
    --------------------
    When a ``torch.distributed`` process group with more than one process is initialised
    (``torchrun``; :func:`sparsecnn.prune.distributed.init_from_env`), the model is wrapped in
    DistributedDataParallel, ``loader``'s dataset is sharded with a DistributedSampler (per-rank
    batch = its batch size / world size, so the global batch and the step count stay those of
    one process), ``eval_loader`` is split among ranks and the counts summed, losses and
    accuracies in ``history`` are reduced over ranks, masks are re-applied after every step and
    checked identical on all ranks (``RuntimeError`` otherwise), the checkpoint is written by
    rank 0 only and read by rank 0 and broadcast, and the time budget stops every rank after
    the same epoch.

    Returns
    -------
    TrainResult

    Raises
    ------
    ValueError
        For non-positive epochs/lr, kd_alpha outside [0, 1], an empty loader, a pruner that ends
        after the last step, or a checkpoint that does not fit.
    """
    if isinstance(epochs, bool) or not isinstance(epochs, int) or epochs < 1:
        raise ValueError(f"epochs must be a positive int, got {epochs!r}")
    if not isinstance(lr, (int, float)) or not lr > 0 or math.isinf(lr):
        raise ValueError(f"lr must be a positive number, got {lr!r}")
    if not 0.0 <= kd_alpha <= 1.0:
        raise ValueError(f"kd_alpha must be in [0, 1], got {kd_alpha!r}")
    if kd_alpha > 0 and teacher is None:
        raise ValueError("kd_alpha > 0 needs a teacher model")
    if not kd_temperature > 0:
        raise ValueError(f"kd_temperature must be > 0, got {kd_temperature!r}")
    ctx = D.context()
    if ctx.active:
        loader = D.shard_train_loader(loader, seed=seed)
        if eval_loader is not None:
            eval_loader = D.shard_eval_loader(eval_loader)
    steps_per_epoch = len(loader)
    if steps_per_epoch == 0:
        raise ValueError("train: the loader yields no batches")
    total_steps = epochs * steps_per_epoch
    if pruner is not None and pruner.end_step >= total_steps:
        raise ValueError(
            f"pruner ends at step {pruner.end_step} but training has only {total_steps} steps "
            f"({epochs} epochs x {steps_per_epoch} batches)"
        )
    if device is None:
        device = ctx.device if ctx.active else next(model.parameters()).device
    device = torch.device(device)
    model.to(device)
    if teacher is not None:
        teacher.to(device)

    torch.manual_seed(seed)
    net, converted = D.wrap_ddp(model, ctx, sync_bn=sync_bn) if ctx.active else (model, False)
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.SGD(params, lr=lr, momentum=momentum, weight_decay=weight_decay,
                          nesterov=nesterov and momentum > 0)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=total_steps, eta_min=min_lr)
    show = progress and ctx.is_main
    bar = None
    if show:
        from rich.progress import (BarColumn, MofNCompleteColumn, Progress, TextColumn,
                                   TimeElapsedColumn, TimeRemainingColumn)

        bar = Progress(TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(),
                       TimeElapsedColumn(), TimeRemainingColumn(), TextColumn("{task.fields[info]}"),
                       transient=False)
    if pruner is not None and hasattr(pruner, "bind"):
        pruner.bind(opt, log=(bar.console.log if bar is not None else None), device=device)
    result = TrainResult()
    start_epoch = 0
    ckpt_path = Path(checkpoint) if checkpoint is not None else None
    state = None
    if ckpt_path is not None:
        if ctx.is_main and ckpt_path.exists():
            state = torch.load(ckpt_path, map_location="cpu", weights_only=False)
        state = D.broadcast_object(state)
    if state is not None:
        if state.get("total_steps") != total_steps:
            raise ValueError(
                f"checkpoint {ckpt_path} was made for {state.get('total_steps')} steps, this run "
                f"has {total_steps}; use a new checkpoint path"
            )
        if state.get("world_size", 1) != ctx.world_size:
            raise ValueError(
                f"checkpoint {ckpt_path} was made with {state.get('world_size', 1)} processes, "
                f"this run has {ctx.world_size}; resume with the same number"
            )
        apply_masks_(model, state["masks"])
        model.load_state_dict(state["model"])
        opt.load_state_dict(state["optimizer"])
        sched.load_state_dict(state["scheduler"])
        if pruner is not None:
            pruner.load_state_dict(state["pruner"])
        result.history = list(state["history"])
        start_epoch = int(state["epoch"])
    if teacher is not None:
        teacher.eval()
    masked = [(_mask_param(m), m) for m in model.modules() if _mask_param(m) is not None]

    t_start = time.perf_counter()
    if bar is not None:
        bar.start()
        task = bar.add_task(description, total=total_steps, completed=start_epoch * steps_per_epoch,
                            info="")
    try:
        for epoch in range(start_epoch, epochs):
            t_epoch = time.perf_counter()
            if isinstance(loader, DataLoader) and loader.generator is not None:
                loader.generator.manual_seed(seed * 100_003 + epoch)
            if D.is_sharded(loader):
                loader.sampler.set_epoch(epoch)
            aug_gen = torch.Generator().manual_seed(seed * 100_003 + epoch + 7919 + 104_729 * ctx.rank)
            model.train()
            loss_sum, correct, seen = 0.0, 0, 0
            for x, y in loader:
                if x.device != device:
                    x, y = x.to(device, non_blocking=True), y.to(device, non_blocking=True)
                if augment is not None:
                    x = augment(x, aug_gen)
                logits = net(x)
                if teacher is not None and kd_alpha > 0:
                    with torch.no_grad():
                        t_logits = teacher(x)
                    loss = distillation_loss(logits, t_logits, y, kd_alpha, kd_temperature)
                else:
                    loss = F.cross_entropy(logits, y)
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()
                sched.step()
                if pruner is not None:
                    pruner.step()
                if masked:
                    with torch.no_grad():  # re-apply: masked weights stay zero in storage
                        for p, m in masked:
                            m.parametrizations.weight.original.mul_(p.mask)
                    if ctx.active:
                        D.check_masks_identical(model)
                loss_sum += float(loss.detach()) * y.numel()
                correct += int((logits.argmax(1) == y).sum())
                seen += int(y.numel())
                if bar is not None:
                    sp = f" sparsity {pruner.current_sparsity:.3f}" if pruner is not None else ""
                    bar.update(task, advance=1, info=f"epoch {epoch + 1}/{epochs} loss "
                               f"{loss_sum / seen:.3f} acc {correct / seen:.3f}{sp}")
            loss_sum, correct, seen = D.all_reduce_sum(loss_sum, correct, seen)
            row = {
                "epoch": epoch + 1,
                "lr": opt.param_groups[0]["lr"],
                "loss": loss_sum / seen,
                "train_acc": correct / seen,
                "sparsity": pruner.current_sparsity if pruner is not None else None,
                "seconds": time.perf_counter() - t_epoch,
            }
            if eval_loader is not None:
                row["eval_acc"] = D.evaluate(model, eval_loader, device)
                if bar is not None:
                    bar.console.log(f"epoch {epoch + 1}: loss {row['loss']:.3f} train "
                                    f"{row['train_acc']:.4f} eval {row['eval_acc']:.4f}")
            result.history.append(row)
            result.epochs_done = epoch + 1
            if ckpt_path is not None and ctx.is_main:
                _atomic_save({
                    "epoch": epoch + 1,
                    "total_steps": total_steps,
                    "world_size": ctx.world_size,
                    "masks": masks_of(model),
                    "model": model.state_dict(),
                    "optimizer": opt.state_dict(),
                    "scheduler": sched.state_dict(),
                    "pruner": pruner.state_dict() if pruner is not None else None,
                    "history": result.history,
                }, ckpt_path)
            if time_budget_s is not None and epoch + 1 < epochs and D.any_rank(
                    time.perf_counter() - t_start >= time_budget_s):
                result.finished = False
                break
        else:
            result.epochs_done = epochs
        D.sync_buffers_(model)  # every rank ends with rank 0's BatchNorm statistics
    finally:
        if bar is not None:
            bar.stop()
        if converted:
            D.revert_sync_bn(model)
    result.seconds = time.perf_counter() - t_start
    return result
