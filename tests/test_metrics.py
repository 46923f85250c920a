"""Tests of mmcompress.problems.metrics against hand-computed values."""
from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from mmcompress.problems import metrics


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


# NYUv2-shaped metrics: 3 tasks with 2 / 2 / 5 metrics. The relative change of every metric
# (oriented: + is better) is written next to it.
NYU_HIGHER = {
    "segmentation": {"miou": True, "pixel_acc": True},
    "depth": {"abs_err": False, "rel_err": False},
    "normal": {"mean": False, "median": False, "11.25": True, "22.5": True, "30": True},
}
NYU_DENSE = {
    "segmentation": {"miou": 0.40, "pixel_acc": 0.60},
    "depth": {"abs_err": 0.50, "rel_err": 0.20},
    "normal": {"mean": 25.0, "median": 20.0, "11.25": 0.20, "22.5": 0.50, "30": 0.60},
}
NYU_COMPRESSED = {
    "segmentation": {"miou": 0.36,          # -10 %
                     "pixel_acc": 0.63},    # +5 %   -> task mean -2.5 %
    "depth": {"abs_err": 0.55,              # error +10 %: -10 %
              "rel_err": 0.19},             # error -5 %: +5 %   -> task mean -2.5 %
    "normal": {"mean": 27.5,                # error +10 %: -10 %
               "median": 20.0,              # 0
               "11.25": 0.18,               # -10 %
               "22.5": 0.45,                # -10 %
               "30": 0.66},                 # +10 %  -> task mean -20 % / 5 = -4 %
}


def test_delta_m_all_by_hand_on_nyuv2_metrics():
  # LibMTL: the mean over tasks of the mean over each task's metrics, in percent, + is better.
  assert metrics.delta_m_all(NYU_COMPRESSED, NYU_DENSE, NYU_HIGHER) == pytest.approx(
      100 * (-0.025 - 0.025 - 0.04) / 3)
  assert metrics.delta_m_all(NYU_COMPRESSED, NYU_DENSE, NYU_HIGHER) == pytest.approx(-3.0)
  # Not the flat mean over the nine metrics (-30 % / 9 = -3.33 %): tasks weigh the same.
  flat = [-0.10, 0.05, -0.10, 0.05, -0.10, 0.0, -0.10, -0.10, 0.10]
  assert metrics.delta_m_all(NYU_COMPRESSED, NYU_DENSE, NYU_HIGHER) != pytest.approx(
      100 * sum(flat) / 9)
  # The one-metric variant over mIoU, abs err and mean angle: -10 % on each.
  primary = {"segmentation": "miou", "depth": "abs_err", "normal": "mean"}
  assert metrics.delta_m({t: NYU_COMPRESSED[t][m] for t, m in primary.items()},
                         {t: NYU_DENSE[t][m] for t, m in primary.items()},
                         {t: NYU_HIGHER[t][m] for t, m in primary.items()}) == pytest.approx(-10)
  # Better than dense on every metric (scores x1.1, errors /1.1): positive; dense itself: 0.
  better = {t: {m: v * (1.1 if NYU_HIGHER[t][m] else 1 / 1.1) for m, v in d.items()}
            for t, d in NYU_DENSE.items()}
  error_gain = 1 - 1 / 1.1  # an error divided by 1.1 is 9.09 % lower
  assert metrics.delta_m_all(better, NYU_DENSE, NYU_HIGHER) == pytest.approx(
      100 * (0.1 + error_gain + (2 * error_gain + 3 * 0.1) / 5) / 3)
  assert metrics.delta_m_all(better, NYU_DENSE, NYU_HIGHER) > 0
  assert metrics.delta_m_all(NYU_DENSE, NYU_DENSE, NYU_HIGHER) == 0.0


def test_task_retention_by_hand_on_nyuv2_metrics():
  kept = {t: metrics.task_retention(NYU_COMPRESSED[t], NYU_DENSE[t], NYU_HIGHER[t])
          for t in NYU_DENSE}
  # Oriented ratios: compressed / dense when higher is better, dense / compressed otherwise.
  assert kept["segmentation"] == pytest.approx((0.36 / 0.40 + 0.63 / 0.60) / 2)   # 0.975
  assert kept["depth"] == pytest.approx((0.50 / 0.55 + 0.20 / 0.19) / 2)          # 0.9809
  assert kept["normal"] == pytest.approx(
      (25 / 27.5 + 1.0 + 0.18 / 0.20 + 0.45 / 0.50 + 0.66 / 0.60) / 5)            # 0.9618
  assert kept["segmentation"] == pytest.approx(0.975)
  assert min(kept, key=kept.get) == "normal"
  # One metric: the metric's own retention.
  assert metrics.task_retention({"mae": 0.5}, {"mae": 0.4}, {"mae": False}) == pytest.approx(0.8)


def test_delta_m_all_with_one_metric_per_task_is_delta_m():
  rng = np.random.default_rng(0)
  for _ in range(20):
    tasks = [f"t{k}" for k in range(int(rng.integers(1, 6)))]
    dense = {t: float(rng.uniform(0.1, 2)) for t in tasks}
    value = {t: float(rng.uniform(0.1, 2)) for t in tasks}
    higher = {t: bool(rng.integers(2)) for t in tasks}
    nest = lambda d: {t: {"m": v} for t, v in d.items()}
    assert metrics.delta_m_all(nest(value), nest(dense), nest(higher)) == pytest.approx(
        metrics.delta_m(value, dense, higher), rel=1e-12, abs=1e-12)
    for t in tasks:
      assert metrics.task_retention({"m": value[t]}, {"m": dense[t]}, {"m": higher[t]}) == (
          metrics.retention(value[t], dense[t], higher[t]))


def test_delta_m_all_and_task_retention_reject_mismatches():
  with pytest.raises(ValueError, match="tasks of dense"):
    metrics.delta_m_all({"segmentation": NYU_DENSE["segmentation"]}, NYU_DENSE, NYU_HIGHER)
  wrong = {**NYU_COMPRESSED, "depth": {"abs_err": 0.5}}
  with pytest.raises(ValueError, match=r"metrics\['depth'\].*rel_err"):
    metrics.delta_m_all(wrong, NYU_DENSE, NYU_HIGHER)
  zero = {**NYU_DENSE, "normal": {**NYU_DENSE["normal"], "median": 0.0}}
  with pytest.raises(ValueError, match=r"dense\['normal'\]\['median'\] is 0"):
    metrics.delta_m_all(NYU_COMPRESSED, zero, NYU_HIGHER)
  with pytest.raises(ValueError, match="higher_is_better"):
    metrics.task_retention({"a": 1.0}, {"a": 1.0}, {"b": True})
  with pytest.raises(ValueError, match="metric 'a'"):
    metrics.task_retention({"a": 0.0}, {"a": 1.0}, {"a": False})


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
