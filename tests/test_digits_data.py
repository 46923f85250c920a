"""Tests of MultiDigits: disjoint stratified splits, determinism, task targets and masks."""
from __future__ import annotations

import dataclasses
import importlib.util
import itertools
import re

import numpy as np
import pytest
from sklearn import datasets

from mmcompress.problems.digits import CLASSIFY_GROUPS, data as data_lib
from mmcompress.problems.digits import describe
from mmcompress.problems.digits import load_multidigits

NUM_IMAGES = 1797


@pytest.fixture(scope="module")
def raw():
  return datasets.load_digits()


@pytest.fixture(scope="module", params=["classify", "mixed"])
def data(request):
  return load_multidigits(request.param, seed=3)


def test_the_digits_read_from_scikit_learns_file_are_load_digits(raw, monkeypatch):
  images, digits = data_lib._bundled_digits()  # pylint: disable=protected-access
  np.testing.assert_array_equal(images, raw.images)
  np.testing.assert_array_equal(digits, raw.target)
  assert images.shape == (NUM_IMAGES, 8, 8) and images.dtype == raw.images.dtype
  # Where that file is not found, load_digits itself.
  monkeypatch.setattr(importlib.util, "find_spec", lambda name: None)
  images, digits = data_lib._bundled_digits()  # pylint: disable=protected-access
  np.testing.assert_array_equal(images, raw.images)
  np.testing.assert_array_equal(digits, raw.target)


def test_splits_are_disjoint_and_cover_every_image(data):
  indices = [data.train.index, data.val.index, data.test.index]
  assert sum(i.size for i in indices) == NUM_IMAGES
  assert np.unique(np.concatenate(indices)).size == NUM_IMAGES
  for a in range(3):
    for b in range(a + 1, 3):
      assert not np.intersect1d(indices[a], indices[b]).size


def test_split_arrays_match_their_source_images(data, raw):
  for split in (data.train, data.val, data.test):
    n = split.num_examples
    assert split.images.shape == (n, 8, 8, 1) and split.images.dtype == np.float32
    assert split.targets.shape == (n, data.num_tasks) and split.targets.dtype == np.float32
    assert split.task_mask.shape == (n, data.num_tasks) and split.task_mask.dtype == bool
    np.testing.assert_array_equal(split.images[..., 0],
                                  (raw.images[split.index] / 16).astype(np.float32))
    assert split.images.min() >= 0.0 and split.images.max() <= 1.0


def test_split_is_stratified_by_digit(raw):
  data = load_multidigits(seed=1, val_fraction=0.2, test_fraction=0.3)
  for digit in range(10):
    n = int(np.sum(raw.target == digit))
    assert np.sum(raw.target[data.test.index] == digit) == round(0.3 * n)
    assert np.sum(raw.target[data.val.index] == digit) == round(0.2 * n)


def test_same_seed_same_arrays_other_seed_other_split():
  first, again, other = (load_multidigits("mixed", seed=s) for s in (7, 7, 8))
  for name in ("train", "val", "test"):
    for a, b in zip(getattr(first, name), getattr(again, name)):
      np.testing.assert_array_equal(a, b)
  assert not np.array_equal(first.test.index, other.test.index)
  assert first.test.num_examples == other.test.num_examples


def test_classify_one_task_per_image_with_its_documented_group(raw):
  data = load_multidigits("classify", seed=0)
  assert data.task_names == ("g0_0_6", "g1_1_5_8_9", "g2_2_3", "g3_4_7")
  assert data.task_kinds == ("classification",) * 4
  assert data.num_outputs == tuple(len(g) for g in CLASSIFY_GROUPS)
  assert sorted(d for g in CLASSIFY_GROUPS for d in g) == list(range(10))
  for split in (data.train, data.val, data.test):
    np.testing.assert_array_equal(split.task_mask.sum(axis=1), 1)
    digits = raw.target[split.index]
    for k, group in enumerate(CLASSIFY_GROUPS):
      rows = split.task_mask[:, k]
      assert set(digits[rows]) == set(group)
      labels = split.targets[rows, k]
      assert labels.min() >= 0 and labels.max() <= data.num_outputs[k] - 1
      # Labels are the digit's position in its increasing group: 0..c-1 in digit order.
      np.testing.assert_array_equal(labels, [group.index(d) for d in digits[rows]])
      assert not split.targets[~rows, k].any()


def test_mixed_tasks_on_every_image(raw):
  data = load_multidigits("mixed", seed=0)
  assert data.task_names == ("digit", "parity", "ink")
  assert data.task_kinds == ("classification", "classification", "regression")
  assert data.num_outputs == (10, 2, 1)
  for split in (data.train, data.val, data.test):
    assert split.task_mask.all()
    digits = raw.target[split.index]
    np.testing.assert_array_equal(split.targets[:, 0], digits)
    np.testing.assert_array_equal(split.targets[:, 1], digits % 2)


def test_mixed_ink_is_standardised_on_train(raw):
  data = load_multidigits("mixed", seed=5)
  ink = data.train.targets[:, 2].astype(np.float64)
  assert abs(ink.mean()) < 1e-5 and abs(ink.std() - 1.0) < 1e-5
  # The same affine map of the mean intensity on every split.
  intensity = (raw.images / 16).mean(axis=(1, 2))
  mean, std = intensity[data.train.index].mean(), intensity[data.train.index].std()
  for split in (data.val, data.test):
    np.testing.assert_allclose(split.targets[:, 2], (intensity[split.index] - mean) / std,
                               rtol=1e-5, atol=1e-5)
  assert abs(data.test.targets[:, 2].mean()) < 0.5  # Same distribution, not trained on.


def test_describe_counts_per_task():
  data = load_multidigits("classify", seed=0)
  text = describe(data)
  lines = text.splitlines()
  assert len(lines) == 2 + data.num_tasks
  for k, name in enumerate(data.task_names):
    row = lines[2 + k].split()
    assert row[0] == name and row[1] == "classification"
    assert [int(c) for c in row[2:]] == [
        data.num_outputs[k],
        *(int(s.task_mask[:, k].sum()) for s in (data.train, data.val, data.test))]


@pytest.mark.parametrize("task_set", ["cifar", "", None])
def test_unknown_task_set_lists_the_known_ones(task_set):
  with pytest.raises(ValueError, match=r"\['classify', 'mixed', 'pairs'\] or a grouping"):
    load_multidigits(task_set)


@pytest.mark.parametrize("kwargs", [
    {"val_fraction": 0.0}, {"val_fraction": 0.5}, {"test_fraction": -0.1},
    {"test_fraction": 0.7}, {"test_fraction": "0.2"}, {"val_fraction": True},
])
def test_fraction_outside_open_interval_is_rejected(kwargs):
  with pytest.raises(ValueError, match=r"\(0, 0.5\)"):
    load_multidigits(**kwargs)


@pytest.mark.parametrize("seed", [-1, 1.5, "0"])
def test_bad_seed_is_rejected(seed):
  with pytest.raises(ValueError, match="seed"):
    load_multidigits(seed=seed)


def test_each_seed_draws_its_own_data_order_and_a_seed_always_the_same():
  """Paired seeds are independent samples: seed 0 and seed 1 of a run see other batches at
  the same stage and step (their runs on the axis too), a seed sees the same ones again,
  and every seed's epoch visits every training example once."""
  from mmcompress.problems.digits import DigitsProblem  # pylint: disable=import-outside-toplevel
  from mmcompress.train import run_axis  # pylint: disable=import-outside-toplevel
  data = load_multidigits("classify", seed=0)
  indexed = data.train._replace(images=np.arange(data.train.num_examples, dtype=np.float32)
                                .reshape(-1, 1, 1, 1) * np.ones((1, 8, 8, 1), np.float32))
  problem = DigitsProblem(dataclasses.replace(data, train=indexed))
  batch_size = 64
  spe = problem.steps_per_epoch(batch_size)

  def rows(seed, stage=0, step=0):
    return problem.train_batch(seed, stage, step, batch_size)["images"][:, 0, 0, 0].astype(int)

  assert not np.array_equal(rows(0), rows(1))
  assert np.array_equal(rows(1), rows(1))
  assert not np.array_equal(rows(1, stage=0), rows(1, stage=1))
  for seed in (0, 1):
    epoch = np.concatenate([rows(seed, step=s) for s in range(spe)])
    assert len(set(epoch.tolist())) == len(epoch) == spe * batch_size
  stacked = run_axis.stacked_batches(problem, (0, 1, 0), 0, 3, batch_size)["images"]
  assert np.array_equal(stacked[0], stacked[2]) and not np.array_equal(stacked[0], stacked[1])
  # The epoch's order is remembered, so it is read-only: no caller can change another's.
  from mmcompress.problems import base  # pylint: disable=import-outside-toplevel
  order = base.epoch_order(1, 0, 0, data.train.num_examples)
  assert np.array_equal(order, np.random.default_rng([1, 0, 0]).permutation(len(order)))
  with pytest.raises(ValueError, match="read-only"):
    order[0] = 0


def test_a_grouping_is_parsed_into_classify_style_tasks():
  from mmcompress.problems.digits import data  # pylint: disable=import-outside-toplevel
  assert data.parse_groups("groups:83/59/17/06/24") == ((3, 8), (5, 9), (1, 7), (0, 6), (2, 4))
  grouped = load_multidigits("groups:38/59/17", seed=0)
  assert grouped.task_names == ("g0_3_8", "g1_5_9", "g2_1_7")
  assert grouped.num_outputs == (2, 2, 2) and grouped.task_kinds == ("classification",) * 3
  raw = datasets.load_digits()
  for split in (grouped.train, grouped.val, grouped.test):
    digit = raw.target[split.index]
    # Only the named digits, each image in exactly its digit's task, labels in digit order.
    assert set(digit.tolist()) == {1, 3, 5, 7, 8, 9}
    assert split.task_mask.sum(axis=1).tolist() == [1] * split.num_examples
    for k, group in enumerate(((3, 8), (5, 9), (1, 7))):
      rows = split.task_mask[:, k]
      assert set(digit[rows].tolist()) == set(group)
      np.testing.assert_array_equal(split.targets[rows, k], [group.index(d) for d in digit[rows]])
  # The splits are classify's, restricted to the named digits.
  full = load_multidigits("classify", seed=0)
  for a, b in zip((grouped.train, grouped.val, grouped.test), (full.train, full.val, full.test)):
    np.testing.assert_array_equal(a.index, b.index[np.isin(raw.target[b.index], [1, 3, 5, 7, 8, 9])])


@pytest.mark.parametrize("spec, fragment", [
    ("groups:38/38", "digit 3 is in group '38' and in group '38'"),
    ("groups:38/85", "digit 8 is in group '38' and in group '85'"),
    ("groups:3/59", "group '3' holds one digit"),
    ("groups:33/59", "group '33' holds one digit"),
    ("groups:3a/59", "group '3a' is not a string of digits"),
    ("groups:38//59", "group '' is not a string of digits"),
    ("groups:3859", "has 1 group"),
    ("groups", "must be one of"),
    ("pairs-of-digits", "must be one of"),
])
def test_a_bad_grouping_is_refused_naming_what_to_change(spec, fragment):
  from mmcompress import errors  # pylint: disable=import-outside-toplevel
  with pytest.raises(errors.UserError, match=re.escape(fragment)):
    load_multidigits(spec)


def test_pairs_overlay_two_glyphs_from_pools_that_share_no_glyph():
  from mmcompress.problems.digits import data  # pylint: disable=import-outside-toplevel
  pairs = load_multidigits("pairs", seed=0)
  assert pairs.task_names == ("left", "right", "sum")
  assert pairs.task_kinds == ("classification", "classification", "regression")
  splits = (pairs.train, pairs.val, pairs.test)
  assert tuple(s.num_examples for s in splits) == data.PAIRS_SIZES
  pools = [set(s.index.ravel().tolist()) for s in splits]
  assert not (pools[0] & pools[1] or pools[0] & pools[2] or pools[1] & pools[2])
  raw = datasets.load_digits()
  glyphs = raw.images / 16.0
  train_sum = raw.target[pairs.train.index].sum(1)
  for split in splits:
    left, right = split.index[:, 0], split.index[:, 1]
    np.testing.assert_array_equal(split.targets[:, 0], raw.target[left])
    np.testing.assert_array_equal(split.targets[:, 1], raw.target[right])
    np.testing.assert_allclose(split.targets[:, 2], (raw.target[left] + raw.target[right]
                                                     - train_sum.mean()) / train_sum.std(),
                               rtol=1e-5, atol=1e-5)
    assert split.images.shape[1:] == (14, 14, 1) and split.task_mask.all()
  # Each canvas is its two glyphs overlaid (the brighter pixel kept), the left one at some
  # row 0-6 and column 0-2, the right one at some row 0-6 and column 4-6: found by trying
  # every placement.
  for i in range(8):
    canvas, (a, b) = pairs.test.images[i, :, :, 0], pairs.test.index[i]
    found = 0
    for r1, c1, r2, c2 in itertools.product(range(7), range(3), range(7), range(4, 7)):
      built = np.zeros((14, 14), np.float32)
      built[r1:r1 + 8, c1:c1 + 8] = glyphs[a]
      built[r2:r2 + 8, c2:c2 + 8] = np.maximum(built[r2:r2 + 8, c2:c2 + 8], glyphs[b])
      found += np.allclose(built, canvas, atol=1e-6)
    assert found >= 1, i
  assert np.isclose(np.mean((pairs.train.targets[:, 2])), 0, atol=1e-5)
  again = load_multidigits("pairs", seed=0)
  np.testing.assert_array_equal(again.test.images, pairs.test.images)
  assert not np.array_equal(load_multidigits("pairs", seed=1).test.index, pairs.test.index)
