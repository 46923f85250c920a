"""Tests of CIFAR-100 as 20 tasks: the label table, loading, splits and the batches."""
from __future__ import annotations

import collections

import numpy as np
import pytest
import tensorflow_datasets as tfds

from mmcompress.problems.cifar100 import data as cifar100

K = cifar100.NUM_TASKS
NUM_MOCK = 300


def _coded_images(n: int) -> np.ndarray:
  """uint8 images whose pixel (0, 0) spells out their row: channel 0 low byte, 1 high byte."""
  images = np.zeros((n, 32, 32, 3), np.uint8)
  rows = np.arange(n)
  images[:, 0, 0, 0] = rows % 256
  images[:, 0, 0, 1] = rows // 256
  images[:, 5:, 3:, 2] = 200  # Something asymmetric to see flips and shifts.
  return images


def _decode_rows(normalised: np.ndarray) -> np.ndarray:
  """Inverts `normalize` on pixel (0, 0) of un-augmented images to recover their rows."""
  pixel = normalised[..., 0, 0, :] * np.float32(cifar100.STD) + np.float32(cifar100.MEAN)
  pixel = np.rint(pixel * 255).astype(np.int64)
  return pixel[..., 0] + 256 * pixel[..., 1]


def _balanced_fine(per_class: int) -> np.ndarray:
  """Every fine class `per_class` times, in a fixed shuffled order."""
  return np.random.default_rng(0).permutation(np.repeat(np.arange(100), per_class)).astype(
      np.int32)


# --- The table -------------------------------------------------------------------------------


def test_table_has_20_coarse_classes_of_5_fine_classes_each():
  assert len(cifar100.FINE_TO_COARSE) == 100
  assert len(cifar100.FINE_NAMES) == 100 and len(set(cifar100.FINE_NAMES)) == 100
  assert len(cifar100.COARSE_NAMES) == 20 and len(set(cifar100.COARSE_NAMES)) == 20
  counts = collections.Counter(cifar100.FINE_TO_COARSE)
  assert sorted(counts) == list(range(20))
  assert set(counts.values()) == {5}
  assert len(cifar100.TASK_CLASSES) == 20
  assert sorted(f for classes in cifar100.TASK_CLASSES for f in classes) == list(range(100))
  for k, classes in enumerate(cifar100.TASK_CLASSES):
    assert len(classes) == 5 and list(classes) == sorted(classes)
    assert all(cifar100.FINE_TO_COARSE[f] == k for f in classes)


@pytest.mark.parametrize("fine, fine_name, coarse, coarse_name", [
    (0, "apple", 4, "fruit_and_vegetables"),
    (1, "aquarium_fish", 1, "fish"),
    (19, "cattle", 11, "large_omnivores_and_herbivores"),
    (30, "dolphin", 0, "aquatic_mammals"),
    (41, "lawn_mower", 19, "vehicles_2"),
    (47, "maple_tree", 17, "trees"),
    (58, "pickup_truck", 18, "vehicles_1"),
    (71, "sea", 10, "large_natural_outdoor_scenes"),
    (98, "woman", 14, "people"),
    (99, "worm", 13, "non-insect_invertebrates"),
])
def test_known_entries_of_the_table(fine, fine_name, coarse, coarse_name):
  assert cifar100.FINE_NAMES[fine] == fine_name
  assert cifar100.FINE_TO_COARSE[fine] == coarse
  assert cifar100.COARSE_NAMES[coarse] == coarse_name


# The superclass list of the CIFAR-100 description (Krizhevsky 2009), written by name.
SUPERCLASSES = {
    "aquatic_mammals": {"beaver", "dolphin", "otter", "seal", "whale"},
    "fish": {"aquarium_fish", "flatfish", "ray", "shark", "trout"},
    "flowers": {"orchid", "poppy", "rose", "sunflower", "tulip"},
    "food_containers": {"bottle", "bowl", "can", "cup", "plate"},
    "fruit_and_vegetables": {"apple", "mushroom", "orange", "pear", "sweet_pepper"},
    "household_electrical_devices": {"clock", "keyboard", "lamp", "telephone", "television"},
    "household_furniture": {"bed", "chair", "couch", "table", "wardrobe"},
    "insects": {"bee", "beetle", "butterfly", "caterpillar", "cockroach"},
    "large_carnivores": {"bear", "leopard", "lion", "tiger", "wolf"},
    "large_man-made_outdoor_things": {"bridge", "castle", "house", "road", "skyscraper"},
    "large_natural_outdoor_scenes": {"cloud", "forest", "mountain", "plain", "sea"},
    "large_omnivores_and_herbivores": {"camel", "cattle", "chimpanzee", "elephant",
                                       "kangaroo"},
    "medium_mammals": {"fox", "porcupine", "possum", "raccoon", "skunk"},
    "non-insect_invertebrates": {"crab", "lobster", "snail", "spider", "worm"},
    "people": {"baby", "boy", "girl", "man", "woman"},
    "reptiles": {"crocodile", "dinosaur", "lizard", "snake", "turtle"},
    "small_mammals": {"hamster", "mouse", "rabbit", "shrew", "squirrel"},
    "trees": {"maple_tree", "oak_tree", "palm_tree", "pine_tree", "willow_tree"},
    "vehicles_1": {"bicycle", "bus", "motorcycle", "pickup_truck", "train"},
    "vehicles_2": {"lawn_mower", "rocket", "streetcar", "tank", "tractor"},
}


def test_table_matches_the_superclass_list_by_name():
  # Label ids are alphabetical in both vocabularies.
  assert list(cifar100.COARSE_NAMES) == sorted(SUPERCLASSES)
  assert list(cifar100.FINE_NAMES) == sorted(set().union(*SUPERCLASSES.values()))
  for k, classes in enumerate(cifar100.TASK_CLASSES):
    assert {cifar100.FINE_NAMES[f] for f in classes} == SUPERCLASSES[cifar100.COARSE_NAMES[k]]
  assert cifar100.TASK_CLASSES[4] == (0, 51, 53, 57, 83)  # apple mushroom orange pear pepper
  assert cifar100.TASK_CLASSES[10] == (23, 33, 49, 60, 71)  # cloud forest mountain plain sea


def test_fine_to_task_label_by_hand_and_brute_force():
  # Coarse 10 holds 23 cloud, 33 forest, 49 mountain, 60 plain, 71 sea: sea is label 4.
  # Coarse 11 holds 15 camel, 19 cattle, 21 chimpanzee, 31 elephant, 38 kangaroo.
  task, label = cifar100.fine_to_task_label([71, 0, 83, 19, 23])
  np.testing.assert_array_equal(task, [10, 4, 4, 11, 10])
  np.testing.assert_array_equal(label, [4, 0, 4, 1, 0])
  assert task.dtype == np.int32 and label.dtype == np.int32

  task, label = cifar100.fine_to_task_label(np.arange(100).reshape(10, 10))
  assert task.shape == label.shape == (10, 10)
  for fine in range(100):
    coarse = cifar100.FINE_TO_COARSE[fine]
    assert task.flat[fine] == coarse
    assert label.flat[fine] == cifar100.TASK_CLASSES[coarse].index(fine)


@pytest.mark.parametrize("bad", [[100], [-1], [1.5]])
def test_fine_to_task_label_rejects_bad_labels(bad):
  with pytest.raises(ValueError, match="fine"):
    cifar100.fine_to_task_label(bad)


# --- Loading ---------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def mock_train():
  """(images, fine, labels and coarse labels as read straight from the mocked source)."""
  with tfds.testing.mock_data(num_examples=NUM_MOCK,
                              policy=tfds.testing.MockPolicy.USE_CODE):
    images, fine = cifar100.load_split("train", chunk_size=64)
    source = cifar100.open_source("train")
    direct = [(int(source[i]["label"]), int(source[i]["coarse_label"]))
              for i in range(len(source))]
    direct_image = np.asarray(source[NUM_MOCK - 1]["image"])
    with pytest.raises(ValueError) as from_source:
      cifar100.check_coarse_labels(source)
    with pytest.raises(ValueError) as from_load:
      cifar100.load_split("train", check_coarse=True)
  return dict(images=images, fine=fine, direct=direct, direct_image=direct_image,
              from_source=str(from_source.value), from_load=str(from_load.value))


def test_load_split_under_mock_data_gives_arrays_in_source_order(mock_train):
  images, fine = mock_train["images"], mock_train["fine"]
  assert images.shape == (NUM_MOCK, 32, 32, 3) and images.dtype == np.uint8
  assert fine.shape == (NUM_MOCK,) and fine.dtype == np.int32
  np.testing.assert_array_equal(fine, [label for label, _ in mock_train["direct"]])
  np.testing.assert_array_equal(images[-1], mock_train["direct_image"])
  assert fine.min() >= 0 and fine.max() < 100


def test_loaded_labels_give_20_tasks_of_5_classes(mock_train):
  data = cifar100.eval_arrays(mock_train["images"], mock_train["fine"])
  np.testing.assert_array_equal(
      data["task"], np.asarray(cifar100.FINE_TO_COARSE)[mock_train["fine"]])
  assert set(np.unique(data["task"])) <= set(range(20))
  for k in range(K):
    members = mock_train["fine"][data["task"] == k]
    assert set(members) <= set(cifar100.TASK_CLASSES[k])
    assert set(data["label"][data["task"] == k]) <= set(range(5))
  # The documented mapping, by hand: fine 71 (sea) is task 10, label 4.
  rows = np.flatnonzero(mock_train["fine"] == 71)
  assert rows.size, "the mock data should hold a sea image"
  assert set(data["task"][rows]) == {10} and set(data["label"][rows]) == {4}


def test_check_coarse_labels_rejects_the_inconsistent_mock_data(mock_train):
  first = next(i for i, (fine, coarse) in enumerate(mock_train["direct"])
               if cifar100.FINE_TO_COARSE[fine] != coarse)
  fine, coarse = mock_train["direct"][first]
  for message in (mock_train["from_source"], mock_train["from_load"]):
    assert f"example {first} has fine label {fine}" in message
    assert f"coarse_label {coarse}" in message
    assert f"maps fine {fine} to coarse {cifar100.FINE_TO_COARSE[fine]}" in message


def test_check_coarse_labels_on_a_consistent_hand_built_source():
  pairs = [(0, 4), (71, 10), (19, 11), (99, 13), (1, 1), (30, 0)]
  source = [{"label": np.int64(f), "coarse_label": np.int64(c)} for f, c in pairs]
  assert cifar100.check_coarse_labels(source) == len(pairs)
  everything = [{"label": f, "coarse_label": c} for f, c in enumerate(cifar100.FINE_TO_COARSE)]
  assert cifar100.check_coarse_labels(everything, chunk_size=7) == 100

  source[3] = {"label": 99, "coarse_label": 7}  # worm is not an insect
  with pytest.raises(ValueError, match=r"example 3 has fine label 99 \(worm\) and "
                     r"coarse_label 7 \(insects\).*coarse 13 \(non-insect_invertebrates\)"):
    cifar100.check_coarse_labels(source)
  assert cifar100.check_coarse_labels(source, num_examples=3) == 3


class _BatchedSource:
  """An in-memory data source with a working __getitems__ that counts its calls."""

  def __init__(self, fine, coarse):
    self.fine, self.coarse = list(fine), list(coarse)
    self.batched_calls = 0

  def __len__(self):
    return len(self.fine)

  def __getitem__(self, i):
    raise AssertionError("expected batched reads")

  def __getitems__(self, keys):
    self.batched_calls += 1
    return [{"image": np.full((32, 32, 3), i, np.uint8), "label": self.fine[i],
             "coarse_label": self.coarse[i]} for i in keys]


def test_load_split_reads_in_chunks_and_checks_consistent_labels(monkeypatch):
  fine = [f % 100 for f in range(130)]
  source = _BatchedSource(fine, [cifar100.FINE_TO_COARSE[f] for f in fine])
  monkeypatch.setattr(cifar100, "open_source", lambda split, data_dir=None: source)
  images, loaded = cifar100.load_split("train", check_coarse=True, chunk_size=50)
  assert source.batched_calls == 3
  np.testing.assert_array_equal(loaded, np.arange(130) % 100)
  np.testing.assert_array_equal(images[:, 0, 0, 0], np.arange(130))

  source.coarse[103] = 0  # fine 3 is a bear, not an aquatic mammal
  with pytest.raises(ValueError, match=r"example 103 has fine label 3 \(bear\)"):
    cifar100.load_split("train", check_coarse=True, chunk_size=50)
  cifar100.load_split("train", chunk_size=50)  # no check asked, no error


def test_missing_data_set_says_how_to_prepare_it(tmp_path):
  with pytest.raises(FileNotFoundError) as error:
    cifar100.load_split("train", data_dir=tmp_path / "empty")
  message = str(error.value)
  assert "tfds build cifar100" in message and "array_record" in message
  assert "download_and_prepare" in message and str(tmp_path / "empty") in message


def test_unknown_split_is_refused_before_any_io():
  with pytest.raises(ValueError, match="'train' or 'test'"):
    cifar100.open_source("validation")


# --- Splits ----------------------------------------------------------------------------------


def test_make_splits_is_disjoint_stratified_and_deterministic():
  fine = _balanced_fine(20)
  images = _coded_images(fine.size)
  train, val = cifar100.make_splits(images, fine, val_fraction=0.1, seed=3)
  assert train.index.size + val.index.size == fine.size
  assert not np.intersect1d(train.index, val.index).size
  np.testing.assert_array_equal(np.sort(np.concatenate([train.index, val.index])),
                                np.arange(fine.size))
  for split in (train, val):
    assert np.all(np.diff(split.index) > 0)
    np.testing.assert_array_equal(split.fine, fine[split.index])
    np.testing.assert_array_equal(split.images, images[split.index])
    assert split.images.dtype == np.uint8 and split.fine.dtype == np.int32
  np.testing.assert_array_equal(np.bincount(val.fine, minlength=100), 2)  # round(0.1 * 20)
  np.testing.assert_array_equal(np.bincount(train.fine, minlength=100), 18)

  again, _ = cifar100.make_splits(images, fine, val_fraction=0.1, seed=3)
  other, _ = cifar100.make_splits(images, fine, val_fraction=0.1, seed=4)
  np.testing.assert_array_equal(again.index, train.index)
  assert not np.array_equal(other.index, train.index)


@pytest.mark.parametrize("fraction", [0.0, 1.0, -0.1, True, "0.1"])
def test_make_splits_rejects_bad_fractions(fraction):
  fine = _balanced_fine(2)
  with pytest.raises(ValueError, match="val_fraction"):
    cifar100.make_splits(_coded_images(fine.size), fine, val_fraction=fraction)


# --- Normalisation and augmentation ----------------------------------------------------------


def test_normalize_uses_the_cifar100_statistics():
  assert cifar100.MEAN == (0.5071, 0.4867, 0.4408)
  assert cifar100.STD == (0.2675, 0.2565, 0.2761)
  images = np.zeros((2, 32, 32, 3), np.uint8)
  images[1] = 255
  images[0, 0, 0] = (128, 64, 32)
  out = cifar100.normalize(images)
  assert out.dtype == np.float32 and out.shape == images.shape
  np.testing.assert_allclose(out[0, 1, 1], [-0.5071 / 0.2675, -0.4867 / 0.2565,
                                            -0.4408 / 0.2761], rtol=1e-6)
  np.testing.assert_allclose(out[1, 7, 9], [(1 - 0.5071) / 0.2675, (1 - 0.4867) / 0.2565,
                                            (1 - 0.4408) / 0.2761], rtol=1e-6)
  np.testing.assert_allclose(out[0, 0, 0], [(128 / 255 - 0.5071) / 0.2675,
                                            (64 / 255 - 0.4867) / 0.2565,
                                            (32 / 255 - 0.4408) / 0.2761], rtol=1e-5)
  with pytest.raises(ValueError, match="uint8"):
    cifar100.normalize(out)


def test_random_crop_shifts_in_zero_padding():
  images = np.random.default_rng(0).integers(1, 256, (3, 32, 32, 3), dtype=np.uint8)
  out = cifar100.random_crop(images, np.array([[4, 4], [0, 0], [8, 6]]))
  assert out.shape == images.shape and out.dtype == np.uint8
  np.testing.assert_array_equal(out[0], images[0])  # no shift: the padding is cut away
  # Offset (0, 0): four rows and columns of padding on top and left, then the image.
  assert not out[1, :4].any() and not out[1, :, :4].any()
  np.testing.assert_array_equal(out[1, 4:, 4:], images[1, :28, :28])
  # Offset (8, 6): the window starts 4 rows below and 2 columns right of the image corner.
  np.testing.assert_array_equal(out[2, :28, :30], images[2, 4:, 2:])
  assert not out[2, 28:].any() and not out[2, :, 30:].any()
  with pytest.raises(ValueError, match="offsets"):
    cifar100.random_crop(images, np.array([[4, 4], [0, 9], [0, 0]]))


def test_horizontal_flip_mirrors_only_the_flagged_images():
  images = _coded_images(3)
  out = cifar100.horizontal_flip(images, [True, False, True])
  np.testing.assert_array_equal(out[0], images[0, :, ::-1])
  np.testing.assert_array_equal(out[1], images[1])
  np.testing.assert_array_equal(out[2], images[2, :, ::-1])
  assert out[0, 0, 31, 0] == images[0, 0, 0, 0]


def test_augment_follows_its_documented_draws():
  images = np.random.default_rng(1).integers(1, 256, (400, 32, 32, 3), dtype=np.uint8)
  out = cifar100.augment(images, np.random.default_rng(7))
  assert out.shape == images.shape and out.dtype == np.uint8
  np.testing.assert_array_equal(out, cifar100.augment(images, np.random.default_rng(7)))

  # The documented draws, replayed: each image's window cut by hand from a zero-padded copy
  # at its (row, column) offset, then mirrored where its flip was drawn.
  draws = np.random.default_rng(7)
  offsets = draws.integers(0, 9, size=(400, 2))
  flips = draws.random(400) < 0.5
  assert np.any(offsets[:, 0] != offsets[:, 1]) and flips.any() and not flips.all()
  padded = np.pad(images, ((0, 0), (4, 4), (4, 4), (0, 0)))
  for i, ((row, col), flip) in enumerate(zip(offsets, flips)):
    window = padded[i, row:row + 32, col:col + 32]
    np.testing.assert_array_equal(out[i], window[:, ::-1] if flip else window)


def test_every_augmented_image_is_one_of_the_162_crops_and_flips():
  images = np.random.default_rng(2).integers(1, 256, (24, 32, 32, 3), dtype=np.uint8)
  out = cifar100.augment(images, np.random.default_rng(0))
  padded = np.pad(images, ((0, 0), (4, 4), (4, 4), (0, 0)))
  seen_flip = set()
  for i in range(images.shape[0]):
    matches = [(dy, dx, flip) for dy in range(9) for dx in range(9) for flip in (False, True)
               if np.array_equal(out[i], (lambda w: w[:, ::-1] if flip else w)(
                   padded[i, dy:dy + 32, dx:dx + 32]))]
    assert matches, f"image {i} is not a crop of its padded original"
    seen_flip.add(matches[0][2])
  assert seen_flip == {False, True}


# --- Task batches ----------------------------------------------------------------------------


@pytest.fixture(scope="module")
def train_set():
  fine = _balanced_fine(12)  # 60 examples per task
  return _coded_images(fine.size), fine


def test_task_index_partitions_rows_by_task_and_counts_epochs():
  fine = np.concatenate([np.arange(100), [71, 71, 23, 0]])  # task 10 has 8, task 4 has 6
  index = cifar100.TaskIndex.from_fine(fine)
  assert len(index.members) == K and sum(index.sizes) == fine.size
  np.testing.assert_array_equal(np.sort(np.concatenate(index.members)), np.arange(fine.size))
  for k, rows in enumerate(index.members):
    assert set(fine[rows]) == set(cifar100.TASK_CLASSES[k])
  assert index.sizes[10] == 8 and index.sizes[4] == 6 and min(index.sizes) == 5
  assert index.steps_per_epoch(2) == 2  # min_k floor(n_k / 2) = floor(5 / 2)
  assert index.steps_per_epoch(5) == 1
  with pytest.raises(ValueError, match="smallest task"):
    index.steps_per_epoch(6)
  with pytest.raises(ValueError, match=r"task 14 \(people\) has no examples"):
    cifar100.TaskIndex.from_fine(np.setdiff1d(np.arange(100), cifar100.TASK_CLASSES[14]))


def test_task_batch_has_the_documented_shapes_and_labels(train_set):
  images, fine = train_set
  index = cifar100.TaskIndex.from_fine(fine)
  batch = cifar100.task_batch(images, fine, index, seed=0, stage_index=0, step=3,
                              batch_per_task=8, augment=False)
  assert batch["images"].shape == (K, 8, 32, 32, 3) and batch["images"].dtype == np.float32
  assert batch["labels"].shape == (K, 8) and batch["labels"].dtype == np.int32
  rows = _decode_rows(batch["images"])
  for k in range(K):
    assert set(fine[rows[k]]) <= set(cifar100.TASK_CLASSES[k])
    np.testing.assert_array_equal(
        batch["labels"][k], [cifar100.TASK_CLASSES[k].index(f) for f in fine[rows[k]]])
  assert batch["labels"].min() >= 0 and batch["labels"].max() <= 4


def test_task_batch_is_a_pure_function_of_seed_stage_and_step(train_set):
  images, fine = train_set
  index = cifar100.TaskIndex.from_fine(fine)
  draw = lambda **kw: cifar100.task_batch(images, fine, index, batch_per_task=8,
                                          **{"seed": 1, "stage_index": 2, "step": 5, **kw})
  first, replay = draw(), draw()
  for key in ("images", "labels"):
    np.testing.assert_array_equal(first[key], replay[key])
  for change in ({"step": 6}, {"stage_index": 1}, {"seed": 2}):
    assert not np.array_equal(draw(**change)["images"], first["images"]), change
  # The augmentation has its own stream: it changes the pixels, not the examples drawn.
  plain = draw(augment=False)
  np.testing.assert_array_equal(plain["labels"], first["labels"])
  assert not np.array_equal(plain["images"], first["images"])


def test_task_batch_draws_without_replacement_within_an_epoch(train_set):
  images, fine = train_set
  index = cifar100.TaskIndex.from_fine(fine)
  steps = index.steps_per_epoch(8)
  assert steps == 7  # floor(60 / 8)
  epochs = []
  for epoch in range(2):
    rows = np.stack([_decode_rows(cifar100.task_batch(
        images, fine, index, seed=0, stage_index=0, step=epoch * steps + j, batch_per_task=8,
        augment=False)["images"]) for j in range(steps)], axis=1).reshape(K, -1)
    for k in range(K):
      assert np.unique(rows[k]).size == steps * 8
      assert set(rows[k]) <= set(index.members[k])
    epochs.append(rows)
  assert not np.array_equal(epochs[0], epochs[1])  # a new permutation every epoch


def test_task_batch_on_mock_data(mock_train):
  images, fine = mock_train["images"], mock_train["fine"]
  index = cifar100.TaskIndex.from_fine(fine)
  batch = cifar100.task_batch(images, fine, index, seed=0, stage_index=0, step=0,
                              batch_per_task=4)
  assert batch["images"].shape == (K, 4, 32, 32, 3)
  assert batch["labels"].min() >= 0 and batch["labels"].max() <= 4


def test_eval_arrays_gives_every_example_once_in_order(train_set):
  images, fine = train_set
  data = cifar100.eval_arrays(images, fine)
  assert data["images"].shape == images.shape and data["images"].dtype == np.float32
  np.testing.assert_array_equal(data["images"], cifar100.normalize(images))
  np.testing.assert_array_equal(_decode_rows(data["images"]), np.arange(fine.size))
  task, label = cifar100.fine_to_task_label(fine)
  np.testing.assert_array_equal(data["task"], task)
  np.testing.assert_array_equal(data["label"], label)
  assert data["task"].dtype == np.int32 and data["label"].dtype == np.int32
