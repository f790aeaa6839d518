"""Gradual pruning with the cubic schedule of Zhu & Gupta 2017 ("To prune, or not to prune:
exploring the efficacy of pruning for model compression", the AGP schedule).

    s_t = s_f + (s_i - s_f) * (1 - (t - t0) / (n * dt))**3,   t in {t0, t0 + dt, ..., t0 + n dt}

Masks are recomputed (by magnitude) at each pruning step and stay fixed in between, so the
network recovers from each pruning step while training.
"""

from __future__ import annotations

from collections.abc import Iterable

import torch
import torch.nn as nn

from .masks import (
    check_sparsity,
    magnitude_prune_,
    select_layers,
    set_mask_,
    unified_mask,
)


def agp_sparsity(step: int, initial_sparsity: float, final_sparsity: float, start_step: int,
                 end_step: int) -> float:
    """Sparsity of the cubic AGP schedule at ``step``.

    Returns ``initial_sparsity`` for ``step <= start_step``, ``final_sparsity`` for ``step >= end_step``
    and ``s_f + (s_i - s_f) * (1 - (step - start_step) / (end_step - start_step))**3`` between.

    Raises
    ------
    ValueError
        If the sparsities are not in [0, 1) or ``end_step <= start_step``.
    """
    s_i = check_sparsity(initial_sparsity, "initial_sparsity")
    s_f = check_sparsity(final_sparsity, "final_sparsity")
    if end_step <= start_step:
        raise ValueError(f"end_step ({end_step}) must be greater than start_step ({start_step})")
    if step <= start_step:
        return s_i
    if step >= end_step:
        return s_f
    frac = (step - start_step) / (end_step - start_step)
    return s_f + (s_i - s_f) * (1.0 - frac) ** 3


class GradualPruner:
    """Gradual magnitude pruning on the AGP schedule; call :meth:`step` after each optimizer step.

    Parameters
    ----------
    model : torch.nn.Module
        Masks (all ones) are attached to the selected layers at construction, so build the
        optimizer after the pruner (the trainable tensors then stay the same objects).
    final_sparsity : float in [0, 1)
    start_step, end_step : int
        Pruning steps are ``t = start_step + k * frequency`` up to ``end_step`` (always included).
        ``end_step`` must be > ``start_step`` >= 0.
    frequency : int
        Optimizer steps between pruning steps (``dt``), >= 1.
    initial_sparsity : float in [0, 1)
        ``s_i``, the sparsity applied at ``start_step``.
    scope : {"layer", "global"}
        Magnitude threshold per layer or over all selected layers.
    method : {"magnitude", "unified"}
        ``"unified"``: every output channel of a layer pruned to the same nnz (scope "layer").
    skip_first_conv, skip_classifier, layers
        Layer selection, see :func:`sparsecnn.prune.select_layers`.

    Attributes
    ----------
    t : int
        Calls of :meth:`step` so far (the schedule's step counter).
    current_sparsity : float
        The sparsity of the last pruning step (0 before the first).

    Raises
    ------
    ValueError
        For sparsities outside [0, 1), ``final_sparsity < initial_sparsity``, bad steps,
        frequency < 1, unknown scope/method or layer names.
    """

    def __init__(
        self,
        model: nn.Module,
        final_sparsity: float,
        start_step: int,
        end_step: int,
        frequency: int = 100,
        *,
        initial_sparsity: float = 0.0,
        scope: str = "layer",
        method: str = "magnitude",
        skip_first_conv: bool = False,
        skip_classifier: bool = False,
        layers: Iterable[str] | None = None,
    ):
        self.final_sparsity = check_sparsity(final_sparsity, "final_sparsity")
        self.initial_sparsity = check_sparsity(initial_sparsity, "initial_sparsity")
        if self.final_sparsity < self.initial_sparsity:
            raise ValueError(
                f"final_sparsity ({final_sparsity}) must be >= initial_sparsity ({initial_sparsity})"
            )
        for label, v in (("start_step", start_step), ("end_step", end_step), ("frequency", frequency)):
            if isinstance(v, bool) or not isinstance(v, int):
                raise ValueError(f"{label} must be an int, got {v!r}")
        if start_step < 0 or end_step <= start_step:
            raise ValueError(
                f"need 0 <= start_step < end_step, got start_step={start_step}, end_step={end_step}"
            )
        if frequency < 1:
            raise ValueError(f"frequency must be >= 1, got {frequency}")
        if scope not in ("layer", "global"):
            raise ValueError(f"scope must be 'layer' or 'global', got {scope!r}")
        if method not in ("magnitude", "unified"):
            raise ValueError(f"method must be 'magnitude' or 'unified', got {method!r}")
        if method == "unified" and scope != "layer":
            raise ValueError("method 'unified' prunes per layer; use scope='layer'")
        self.model = model
        self.start_step, self.end_step, self.frequency = start_step, end_step, frequency
        self.scope, self.method = scope, method
        self.layer_names = [
            n for n, _ in select_layers(model, layers, skip_first_conv=skip_first_conv,
                                        skip_classifier=skip_classifier)
        ]
        modules = dict(model.named_modules())
        for name in self.layer_names:  # all-ones masks now: parameters keep their identity
            module = modules[name]
            if not torch.nn.utils.parametrize.is_parametrized(module, "weight"):
                set_mask_(module, torch.ones_like(module.weight, dtype=torch.bool))
        self.t = 0
        self.current_sparsity = 0.0

    def sparsity_at(self, step: int) -> float:
        """Target sparsity of the schedule at optimizer step ``step``."""
        return agp_sparsity(step, self.initial_sparsity, self.final_sparsity, self.start_step,
                            self.end_step)

    def is_pruning_step(self, step: int) -> bool:
        """True if masks are recomputed at ``step``."""
        if step < self.start_step or step > self.end_step:
            return False
        return (step - self.start_step) % self.frequency == 0 or step == self.end_step

    def prune(self, sparsity: float) -> dict[str, torch.Tensor]:
        """Recompute the masks at ``sparsity`` now (one-shot), returning them."""
        self.current_sparsity = float(sparsity)
        if self.method == "unified":
            modules = dict(self.model.named_modules())
            return {n: set_mask_(modules[n], unified_mask(modules[n].weight, sparsity))
                    for n in self.layer_names}
        return magnitude_prune_(self.model, sparsity, scope=self.scope, layers=self.layer_names)

    def step(self) -> float | None:
        """Advance the schedule by one optimizer step; prune if it is a pruning step.

        Returns the sparsity applied, or None if the masks were left as they were.
        """
        t = self.t
        self.t += 1
        if self.is_pruning_step(t):
            s = self.sparsity_at(t)
            self.prune(s)
            return s
        return None

    def state_dict(self) -> dict:
        """Schedule position (the masks live in the model)."""
        return {"t": self.t, "current_sparsity": self.current_sparsity}

    def load_state_dict(self, state: dict) -> None:
        self.t = int(state["t"])
        self.current_sparsity = float(state["current_sparsity"])
