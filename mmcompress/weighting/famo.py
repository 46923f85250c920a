"""FAMO, fast adaptive multitask optimisation (Liu, Liu, Stone & Liu, NeurIPS 2023)."""
from __future__ import annotations

from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax
from jax.typing import ArrayLike

from mmcompress import _checks
from mmcompress.weighting import base

__all__ = ["famo", "FAMOState"]

_EPS = 1e-8  # added to L − ℓ inside the logarithms, as the reference


class FAMOState(NamedTuple):
  """FAMO's memory (losses scaled by the task scales).

  Attributes:
    logits: (K,) the task logits ξ; the task weights are z = softmax(ξ).
    adam: the optax state of ξ's Adam (with its weight decay).
    prev_losses: (K,) the last observed step's losses.
    has_prev: bool, whether a step has been observed (the first one only stores its losses).
  """
  logits: jax.Array
  adam: Any
  prev_losses: jax.Array
  has_prev: jax.Array


def _check_min_losses(min_losses: ArrayLike | None) -> np.ndarray | None:
  """`min_losses` as a float32 NumPy vector of finite numbers >= 0 (None stays None)."""
  if min_losses is None or len(min_losses) == 0:  # () in a config means none
    return None
  values = np.asarray(min_losses, np.float32)
  if values.ndim != 1 or not np.all(np.isfinite(values) & (values >= 0)):
    raise _checks.UserError(
        f"famo.min_losses must be a vector of finite numbers >= 0, got {min_losses!r}.")
  return values


def famo(w_lr: float = 0.025, gamma: float = 1e-3, *, min_losses: ArrayLike | None = None,
         task_scales: ArrayLike | None = None) -> base.TaskWeighting:
  """FAMO (Liu, Liu, Stone & Liu, NeurIPS 2023), without its extra forward pass.

  With task weights z = softmax(ξ) (ξ starts at 0) and D_k = c_k L_k − ℓ_k + ε (ℓ the
  minimum losses, ε = 1e-8), the objective is Σ_k z_k log D_k / c with c = Σ_k z_k / D_k
  held constant (stop gradient): the model's gradient is Σ_k (z_k / (c D_k)) ∇L_k, a convex
  combination of the task gradients (the coefficients sum to one, so it has the mean loss's
  scale; FAMO has no ``"reference"`` reduction). ξ is not trained by the objective's
  gradient: after a step, δ_k = log D_k(before) − log D_k(after) (how much each task's
  log-loss fell), and ξ takes one Adam step (learning rate `w_lr`, β = (0.9, 0.999),
  ε = 1e-8) on the gradient J_softmax(ξ)ᵀ δ + γ ξ, torch's Adam with ``weight_decay=γ`` (an
  L2 term added to the gradient, not AdamW's decoupled decay), as the reference. Tasks whose
  loss fell least gain weight.

  How ours differs from the reference (Cranial-XIX/FAMO, and LibMTL's ``FAMO``): the reference
  recomputes the losses on the same batch after the model's step (an extra forward pass per
  step), so its δ is the decrease that step made on that batch. Ours keeps one forward pass
  per step: `observe` receives each step's losses and takes δ between consecutive steps,
  log D(previous step's losses, on its batch) − log D(this step's, on this batch); the first
  `observe` only stores its losses, so ξ first moves after the second step. This δ measures
  the previous model step's decrease (one step later than the reference's) plus the
  difference between the two batches' losses: the same in expectation over the batches (for
  a model that changes little in a step), but every single δ carries the batch-to-batch
  noise, so ξ follows a noisier signal. Adam's normalisation bounds ξ's steps by about
  `w_lr` either way; noise that averages out in Adam's first moment makes them shorter.

  `weights` (for logging) is z = softmax(ξ), FAMO's weights on the log-losses (the weights
  on the losses themselves, z_k / (c D_k), also depend on the step's losses).

  Args:
    w_lr: Adam's learning rate for ξ (LibMTL's ``--FAMO_w_lr`` default 0.025, also the
      reference's).
    gamma: the weight decay γ >= 0 of ξ (LibMTL's ``--FAMO_w_gamma`` default 1e-3; the
      reference's own default is 0.01).
    min_losses: optional (K,) minimum losses ℓ_k >= 0 (in scaled units; default zeros).
    task_scales: optional fixed per-task loss scales c_k (inside the logarithms they matter
      only against ℓ and ε; kept for a uniform interface).
  """
  w_lr = _checks.positive(w_lr, "famo.w_lr")
  gamma = _checks.non_negative(gamma, "famo.gamma")
  floor = _check_min_losses(min_losses)
  scales = base.check_task_scales(task_scales)
  logits_tx = optax.chain(optax.add_decayed_weights(gamma), optax.adam(w_lr))

  def init(num_tasks: int) -> tuple[Any, Any]:
    _checks.positive_int(num_tasks, "num_tasks")
    if floor is not None and floor.shape != (num_tasks,):
      raise _checks.UserError(f"famo.min_losses has {floor.shape[0]} entries for {num_tasks} "
                              "tasks: pass one per task.")
    logits = jnp.zeros((num_tasks,), jnp.float32)
    return {}, FAMOState(logits=logits, adam=logits_tx.init(logits),
                         prev_losses=jnp.zeros((num_tasks,), jnp.float32),
                         has_prev=jnp.zeros([], bool))

  def gap(task_losses: jax.Array) -> jax.Array:
    """D = c L − ℓ + ε."""
    losses = base.scaled(task_losses, scales)
    return losses - (0.0 if floor is None else floor) + _EPS

  def objective(task_losses, task_params, state: FAMOState, key=None):
    del task_params, key
    z = jax.nn.softmax(state.logits)
    d = gap(task_losses)
    c = jax.lax.stop_gradient(jnp.sum(z / d))
    return jnp.sum(z * jnp.log(d)) / c

  def observe(state: FAMOState, task_losses: jax.Array) -> FAMOState:
    losses = jnp.asarray(task_losses, jnp.float32)
    delta = jnp.log(gap(state.prev_losses)) - jnp.log(gap(losses))
    _, softmax_vjp = jax.vjp(jax.nn.softmax, state.logits)
    grad, = softmax_vjp(delta)
    updates, adam = logits_tx.update(grad, state.adam, state.logits)
    logits = optax.apply_updates(state.logits, updates)

    def keep(new, old):  # the first observe only stores its losses
      return jnp.where(state.has_prev, new, old)

    return FAMOState(logits=keep(logits, state.logits),
                     adam=jax.tree.map(keep, adam, state.adam),
                     prev_losses=losses, has_prev=jnp.ones([], bool))

  def weights(task_params, state: FAMOState) -> jax.Array:
    del task_params
    return jax.nn.softmax(state.logits)

  return base.TaskWeighting("famo", init, objective, optax.set_to_zero(), base.no_epoch_memory,
                           weights, observe)
