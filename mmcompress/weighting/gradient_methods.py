"""The gradient-level weightings built on `mmcompress.aggregators`, one factory each.

Each is `gradient.gram_weighting`: the trainer takes the K gradients of the (scaled) task
losses (`gradient.per_task_grads`), and `gradient.aggregate` combines them with the method's weights of
their Gram matrix. The mathematics, the conventions and where they differ from LibMTL,
TorchJD and the authors' code are in each aggregator's docstring; the combined direction is
used as it is (no ×K factor, no clipping), except that Nash-MTL's and FairGrad's, whose size
does not shrink with the gradients, are clipped to norm ``max_norm`` (1, as their authors'
trainers; ``config.nash_mtl.max_norm``, ``config.fairgrad.max_norm``, 0 for none). The
trainer's ``optimizer.clip_norm`` clips every method alike when it is set.

Every factory takes ``task_scales`` (fixed per-task loss scales, as every weighting) and
``shared`` (which parameter leaves the tasks share; default: all but the ``head`` layers).
"""
from __future__ import annotations

from typing import Any

from jax.typing import ArrayLike

from mmcompress import _checks, aggregators
from mmcompress.weighting import base
from mmcompress.weighting.gradient import SharedFn, gram_weighting

__all__ = ["aligned_mtl", "cagrad", "fairgrad", "imtl_g", "mgda", "nash_mtl", "pcgrad",
           "upgrad"]


def _keyless(weights: Any, *args: Any) -> Any:
  """``(gram, key) -> weights(gram, *args)``: an aggregator that draws nothing at random."""
  return lambda gram, key: weights(gram, *args)


def mgda(*, task_scales: ArrayLike | None = None,
         shared: SharedFn | None = None) -> base.TaskWeighting:
  """MGDA (Désidéri 2012; Sener & Koltun, NeurIPS 2018): the min-norm point of the convex
  hull of the task gradients (`aggregators.mgda`)."""
  return gram_weighting("mgda", _keyless(aggregators.mgda_weights),
                        task_scales=task_scales, shared=shared,
                        degree=aggregators.DEGREES["mgda"])


def pcgrad(*, task_scales: ArrayLike | None = None,
           shared: SharedFn | None = None) -> base.TaskWeighting:
  """PCGrad (Yu et al., NeurIPS 2020): conflicting gradients projected onto each other's
  normal planes in a random order drawn every step (`aggregators.pcgrad`)."""
  return gram_weighting("pcgrad", aggregators.pcgrad_weights, task_scales=task_scales,
                        shared=shared, degree=aggregators.DEGREES["pcgrad"])


def cagrad(c: float = 0.4, *, task_scales: ArrayLike | None = None,
           shared: SharedFn | None = None) -> base.TaskWeighting:
  """CAGrad (Liu et al., NeurIPS 2021) with conflict-aversion radius `c`
  (`aggregators.cagrad`; the authors' NYUv2 setting c = 0.4)."""
  c = _checks.non_negative(c, "cagrad.c")
  return gram_weighting("cagrad", _keyless(aggregators.cagrad_weights, c),
                        task_scales=task_scales, shared=shared,
                        degree=aggregators.DEGREES["cagrad"])


def imtl_g(*, task_scales: ArrayLike | None = None,
           shared: SharedFn | None = None) -> base.TaskWeighting:
  """IMTL-G (Liu et al., ICLR 2021), the gradient part: equal projections of the combined
  gradient onto every unit task gradient (`aggregators.imtl_g`)."""
  return gram_weighting("imtl_g", _keyless(aggregators.imtl_g_weights),
                        task_scales=task_scales, shared=shared,
                        degree=aggregators.DEGREES["imtl_g"])


def nash_mtl(max_norm: float | None = 1.0, *, task_scales: ArrayLike | None = None,
             shared: SharedFn | None = None) -> base.TaskWeighting:
  """Nash-MTL (Navon et al., ICML 2022): the Nash bargaining solution, (G Gᵀ) α = 1/α,
  solved every step (`aggregators.nash_mtl`).

  Its direction has norm about √K whatever the size of the gradients (α scales as 1/|g|),
  so, as the authors' trainer, the combined direction is clipped to `max_norm` (default 1;
  None: not clipped).
  """
  return gram_weighting("nash_mtl", _keyless(aggregators.nash_mtl_weights),
                        task_scales=task_scales, shared=shared, max_norm=max_norm,
                        degree=aggregators.DEGREES["nash_mtl"])


def aligned_mtl(*, task_scales: ArrayLike | None = None,
                shared: SharedFn | None = None) -> base.TaskWeighting:
  """Aligned-MTL (Senushkin et al., CVPR 2023): the task gradients made orthogonal with equal
  norms by the Gram matrix's eigendecomposition (`aggregators.aligned_mtl`)."""
  return gram_weighting("aligned_mtl", _keyless(aggregators.aligned_mtl_weights),
                        task_scales=task_scales, shared=shared,
                        degree=aggregators.DEGREES["aligned_mtl"])


def upgrad(*, task_scales: ArrayLike | None = None,
           shared: SharedFn | None = None) -> base.TaskWeighting:
  """UPGrad (Quinton & Rey, 2024): every task gradient projected onto the dual cone of all of
  them, averaged (`aggregators.upgrad`)."""
  return gram_weighting("upgrad", _keyless(aggregators.upgrad_weights),
                        task_scales=task_scales, shared=shared,
                        degree=aggregators.DEGREES["upgrad"])


def fairgrad(alpha: float = 1.0, max_norm: float | None = 1.0, *,
             task_scales: ArrayLike | None = None,
             shared: SharedFn | None = None) -> base.TaskWeighting:
  """FairGrad (Ban & Ji, ICML 2024) with fairness exponent `alpha`
  (`aggregators.fairgrad`; α = 1 is Nash-MTL's solution).

  Its direction's norm scales as |g|^((1−α)/(1+α)) (constant at α = 1, growing as the
  gradients shrink for α > 1), so, as the authors' trainer, the combined direction is
  clipped to `max_norm` (default 1; None: not clipped).
  """
  alpha = _checks.positive(alpha, "fairgrad.alpha")
  return gram_weighting("fairgrad",
                        _keyless(aggregators.fairgrad_weights, alpha),
                        task_scales=task_scales, shared=shared, max_norm=max_norm,
                        degree=aggregators.fairgrad_degree(alpha))
