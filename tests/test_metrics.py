"""Tests of mmcompress.metrics against hand-computed values."""
from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from mmcompress import metrics


@pytest.mark.parametrize("metric, dense, higher, expected", [
    (0.9, 1.0, True, 0.9),       # accuracy dropped by a tenth
    (0.96, 0.96, True, 1.0),
    (1.1, 1.0, True, 1.1),       # better than dense
    (0.5, 0.4, False, 0.8),      # MAE up from 0.4 to 0.5
    (0.4, 0.4, False, 1.0),
    (0.2, 0.4, False, 2.0),      # error halved
])
def test_retention_hand_values(metric, dense, higher, expected):
  assert metrics.retention(metric, dense, higher) == pytest.approx(expected, rel=1e-12)


def test_retention_rejects_bad_input():
  with pytest.raises(ValueError, match="dense_metric"):
    metrics.retention(0.5, 0.0, True)
  with pytest.raises(ValueError, match="metric=0.0"):
    metrics.retention(0.0, 0.3, False)
  with pytest.raises(ValueError, match="higher_is_better"):
    metrics.retention(0.5, 0.6, "yes")
  with pytest.raises(ValueError, match="finite"):
    metrics.retention(float("nan"), 0.6, True)
  assert metrics.retention(0.5, 0.6, np.bool_(True)) == pytest.approx(0.5 / 0.6)


def test_delta_m_hand_values():
  dense = {"cls": 0.8, "depth": 0.5}
  higher = {"cls": True, "depth": False}
  # cls: (0.72 - 0.8) / 0.8 = -0.10; depth: -(0.625 - 0.5) / 0.5 = -0.25; mean -17.5 %.
  assert metrics.delta_m({"cls": 0.72, "depth": 0.625}, dense, higher) == pytest.approx(-17.5)
  # Better on both: +0.05 and +0.2 -> +12.5 %.
  assert metrics.delta_m({"cls": 0.84, "depth": 0.4}, dense, higher) == pytest.approx(12.5)
  assert metrics.delta_m(dense, dense, higher) == 0.0
  # Three tasks: +0.1, -0.2, 0 -> 100 * (-0.1) / 3.
  assert metrics.delta_m({"a": 1.1, "b": 1.2, "c": 2.0}, {"a": 1.0, "b": 1.0, "c": 2.0},
                         {"a": True, "b": False, "c": True}) == pytest.approx(-10 / 3)


def test_delta_m_rejects_mismatched_tasks():
  with pytest.raises(ValueError, match="metrics"):
    metrics.delta_m({"a": 1.0}, {"a": 1.0, "b": 1.0}, {"a": True, "b": True})
  with pytest.raises(ValueError, match="higher_is_better"):
    metrics.delta_m({"a": 1.0}, {"a": 1.0}, {"b": True})
  with pytest.raises(ValueError, match="divides"):
    metrics.delta_m({"a": 1.0}, {"a": 0.0}, {"a": True})


def test_classification_accuracy_hand_values():
  logits = jnp.array([[2.0, 1.0, 0.0],    # predicts 0
                      [0.0, 3.0, 3.0],    # tie: predicts the lower class, 1
                      [0.0, 0.0, 1.0],    # predicts 2
                      [5.0, 0.0, 0.0],    # predicts 0
                      [0.0, 1.0, 0.0]])   # predicts 1
  labels = jnp.array([0, 2, 2, 1, 1])
  mask = jnp.array([True, True, True, True, False])
  correct, count = jax.jit(metrics.classification_accuracy)(logits, labels, mask)
  assert (int(correct), int(count)) == (2, 4)
  assert correct.dtype == jnp.int32 and count.dtype == jnp.int32
  correct, count = metrics.classification_accuracy(logits, labels, None)
  assert (int(correct), int(count)) == (3, 5)
  # A per-image mask over per-pixel labels.
  pixels = jnp.stack([logits, logits])           # (2, 5, 3)
  correct, count = metrics.classification_accuracy(pixels, jnp.stack([labels, labels]),
                                                   jnp.array([True, False]))
  assert (int(correct), int(count)) == (3, 5)


def test_batches_with_padding_accumulate_to_the_whole_split():
  rng = np.random.default_rng(0)
  logits = rng.normal(size=(23, 4)).astype(np.float32)
  labels = rng.integers(0, 4, size=23)
  pred = rng.normal(size=(23, 2)).astype(np.float32)
  target = rng.normal(size=(23, 2)).astype(np.float32)
  step = jax.jit(lambda lo, la, p, t, m: (metrics.classification_accuracy(lo, la, m),
                                          metrics.regression_errors(p, t, m)))
  correct = count = n = 0
  abs_sum = sq_sum = 0.0
  for start in range(0, 23, 8):   # the last batch has 7 real examples and 1 padding row
    idx = np.arange(start, start + 8)
    real = idx < 23
    idx = np.where(real, idx, 0)
    (c, k), (a, s, m) = step(logits[idx], labels[idx], pred[idx], target[idx], real)
    correct, count = correct + int(c), count + int(k)
    abs_sum, sq_sum, n = abs_sum + float(a), sq_sum + float(s), n + int(m)
  assert step._cache_size() == 1
  assert count == 23 and correct == int(np.sum(logits.argmax(-1) == labels))
  assert n == 46
  np.testing.assert_allclose(abs_sum, np.abs(pred - target).sum(), rtol=1e-5)
  np.testing.assert_allclose(sq_sum, np.square(pred - target).sum(), rtol=1e-5)


def test_regression_errors_hand_values():
  pred = jnp.array([1.0, 0.0, 3.0, 7.0])
  target = jnp.array([0.0, 2.0, jnp.nan, 4.0])   # the NaN is masked out and must not leak
  mask = jnp.array([1, 1, 0, 1])
  abs_sum, sq_sum, count = jax.jit(metrics.regression_errors)(pred, target, mask)
  assert float(abs_sum) == 6.0 and float(sq_sum) == 14.0 and int(count) == 3
  # Per-example mask over (B, D) targets counts all D entries of a kept example.
  pred2 = jnp.array([[1.0, 2.0], [0.0, 0.0], [5.0, 5.0]])
  target2 = jnp.array([[0.0, 0.0], [9.0, 9.0], [4.0, 7.0]])
  abs_sum, sq_sum, count = metrics.regression_errors(pred2, target2, jnp.array([1, 0, 1]))
  assert float(abs_sum) == 1 + 2 + 1 + 2 and float(sq_sum) == 1 + 4 + 1 + 4
  assert int(count) == 4
  abs_sum, _, count = metrics.regression_errors(jnp.arange(3), jnp.zeros(3, jnp.int32), None)
  assert float(abs_sum) == 3.0 and int(count) == 3 and abs_sum.dtype == jnp.float32


def test_batch_metrics_reject_mismatched_shapes():
  with pytest.raises(ValueError, match="logits"):
    metrics.classification_accuracy(jnp.zeros((4, 3)), jnp.zeros((5,), jnp.int32), None)
  with pytest.raises(ValueError, match="integers"):
    metrics.classification_accuracy(jnp.zeros((4, 3)), jnp.zeros((4,)), None)
  with pytest.raises(ValueError, match="mask"):
    metrics.classification_accuracy(jnp.zeros((4, 3)), jnp.zeros((4,), jnp.int32),
                                    jnp.ones((3,)))
  with pytest.raises(ValueError, match="same shape"):
    metrics.regression_errors(jnp.zeros((4, 2)), jnp.zeros((4,)), None)
