"""PCGrad: project each task gradient off the task gradients it conflicts with, then sum.

Reference:
  Yu, Kumar, Gupta, Levine, Hausman & Finn, "Gradient Surgery for Multi-Task Learning",
  NeurIPS 2020.
"""
from __future__ import annotations

import jax
import jax.numpy as jnp
from jax.typing import ArrayLike

from mmcompress.aggregators import _solvers

__all__ = ["pcgrad", "pcgrad_weights"]


def _project_one(gram: jax.Array, order: jax.Array, i: jax.Array) -> jax.Array:
  """The coefficients, in the rows, of row `i` projected in `order` (skipping `i` itself)."""
  num_tasks = gram.shape[0]

  def step(coefficients, j):
    dot = _solvers.dot(gram[j], coefficients)  # (current projected g_i) . g_j
    conflict = (j != i) & (dot < 0.0) & (gram[j, j] > 0.0)
    shift = jnp.where(conflict, dot / jnp.where(conflict, gram[j, j], 1.0), 0.0)
    return coefficients.at[j].add(-shift), None

  start = jnp.zeros((num_tasks,), gram.dtype).at[i].set(1.0)
  coefficients, _ = jax.lax.scan(step, start, order)
  return coefficients


def pcgrad_weights(gram: ArrayLike, key: jax.Array) -> jax.Array:
  """PCGrad's weights: the coefficients, in the rows of G, of the sum of the projected rows.

  One order, ``jax.random.permutation(key, K)``, serves every task. Row i starts as g_i and
  meets the other rows j (j = i skipped) in that order; when its current projected version
  conflicts with the *original* g_j (dot product < 0), it loses its component along g_j:
  g_i <- g_i - (g_i.g_j / |g_j|^2) g_j. The K projected rows are summed, not averaged.

  In the coefficients: row i's own coefficient stays 1 and each projection raises the
  coefficient of g_j by -g_i.g_j / |g_j|^2 > 0, so every weight is >= 1, and the weights are
  all exactly 1 (d is the plain sum) when no two rows conflict.

  The public implementations differ: the authors' code and LibMTL shuffle the tasks anew for
  every row and do not skip j = i, the popular PyTorch port averages the projected rows
  instead of summing them, and TorchJD draws a permutation per row (skipping j = i, as here).
  A single permutation for all rows makes the result a function of `key` alone.

  Degenerate inputs: a zero row conflicts with nothing and is never projected against (its
  weight does not matter, d gets nothing from it); two opposite rows g and -g project each
  other to zero (weights 2 and 2, d = 0); G = 0 gives weights 1 and d = 0.

  Args:
    gram: the (K, K) Gram matrix G @ G.T of the K task gradients.
    key: a `jax.random` key; its permutation of the K tasks is the projection order.

  Returns:
    The (K,) weights alpha, with d = alpha @ G.

  >>> G = jnp.array([[1.0, 0.0], [-1.0, 1.0]])
  >>> pcgrad_weights(G @ G.T, jax.random.key(0))
  Array([2. , 1.5], dtype=float32)
  """
  gram = _solvers.check_gram(gram)
  num_tasks = gram.shape[0]
  order = jax.random.permutation(key, num_tasks)
  per_row = jax.vmap(lambda i: _project_one(gram, order, i))(jnp.arange(num_tasks))
  return per_row.sum(axis=0)


def pcgrad(G: ArrayLike, key: jax.Array) -> jax.Array:
  """PCGrad's direction: the sum of the projected task gradients (see `pcgrad_weights`).

  Args:
    G: the (K, n) task gradients, one per row.
    key: a `jax.random` key; its permutation of the K tasks is the projection order.

  Returns:
    The (n,) direction d (the step goes along -d).

  >>> pcgrad(jnp.array([[1.0, 0.0], [-1.0, 1.0]]), jax.random.key(0))
  Array([0.5, 1.5], dtype=float32)
  """
  return _solvers.direction(G, lambda gram: pcgrad_weights(gram, key))
