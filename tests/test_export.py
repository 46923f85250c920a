"""Tests of mmcompress.export: exact round trips, what is stored, sizes, and broken files."""
from __future__ import annotations

import json
import math
import os
import zipfile

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax.core import FrozenDict

from mmcompress import export
from mmcompress.sparsity import apply_masks


def _exact_mask(shape, sparsity, seed):
  """A random mask with exactly floor(sparsity * n + 0.5) False entries."""
  n = int(np.prod(shape))
  pruned = int(math.floor(sparsity * n + 0.5))
  flat = np.ones(n, bool)
  flat[np.random.default_rng(seed).permutation(n)[:pruned]] = False
  return flat.reshape(shape)


def _model(seed=0):
  rng = np.random.default_rng(seed)
  params = {
      "trunk": {
          "Dense_0": {"kernel": rng.normal(size=(64, 48)).astype(np.float32),
                      "bias": rng.normal(size=(48,)).astype(np.float32)},
          "Conv_0": {"kernel": jnp.asarray(rng.normal(size=(3, 3, 8, 16)), jnp.bfloat16)},
          "counts": rng.integers(1, 100, size=(40, 10)).astype(np.int32),
      },
      "head_a": {"kernel": rng.normal(size=(48, 5)).astype(np.float32)},
  }
  masks = {
      "trunk": {
          "Dense_0": {"kernel": _exact_mask((64, 48), 0.975, seed + 1),
                      "bias": np.ones((48,), bool)},
          "Conv_0": {"kernel": _exact_mask((3, 3, 8, 16), 0.975, seed + 2)},
          "counts": _exact_mask((40, 10), 0.975, seed + 3),
      },
      "head_a": {"kernel": np.ones((48, 5), bool)},
  }
  return params, masks


def _leaves(tree):
  return {jax.tree_util.keystr(path): leaf
          for path, leaf in jax.tree_util.tree_leaves_with_path(tree)}


def _assert_bitwise_equal(actual, expected):
  actual, expected = _leaves(actual), _leaves(expected)
  assert actual.keys() == expected.keys()
  for name, want in expected.items():
    got, want = actual[name], np.asarray(want)
    assert isinstance(got, np.ndarray), name
    assert got.dtype == want.dtype and got.shape == want.shape, name
    assert np.array_equal(got, want), name
    bits = f"u{want.dtype.itemsize}"
    assert np.array_equal(got.view(bits), want.view(bits)), name


def _manifest(path):
  with np.load(path, allow_pickle=False) as npz:
    return json.loads(npz["manifest.json"].tobytes().decode("utf-8")), sorted(npz.files)


def test_round_trip_is_bitwise_apply_masks(tmp_path):
  params, masks = _model()
  # A kept negative zero must come back with its sign bit.
  kept = np.flatnonzero(masks["trunk"]["Dense_0"]["kernel"])[0]
  params["trunk"]["Dense_0"]["kernel"].reshape(-1)[kept] = -0.0
  path = tmp_path / "model.npz"
  export.save(path, params, masks)
  loaded = export.load(path)
  assert set(loaded) == {"trunk", "head_a"} and isinstance(loaded["trunk"]["Dense_0"], dict)
  _assert_bitwise_equal(loaded, apply_masks(params, masks))
  assert np.signbit(loaded["trunk"]["Dense_0"]["kernel"].reshape(-1)[kept])
  assert loaded["trunk"]["Conv_0"]["kernel"].dtype == jnp.bfloat16
  storage = {e["path"]: e["storage"] for e in _manifest(path)[0]["leaves"]}
  assert storage == {"head_a/kernel": "dense", "trunk/Conv_0/kernel": "sparse",
                     "trunk/Dense_0/bias": "dense", "trunk/Dense_0/kernel": "sparse",
                     "trunk/counts": "sparse"}


def test_stores_only_kept_nonzero_entries(tmp_path):
  params = {"layer": {"kernel": np.arange(1.0, 13.0, dtype=np.float32).reshape(3, 4)}}
  params["layer"]["kernel"][2, 3] = 0.0  # kept by the mask but zero: not stored
  mask = np.zeros((3, 4), bool)
  mask[0, 1] = mask[1, 2] = mask[2, 0] = mask[2, 3] = True
  path = tmp_path / "m.npz"
  export.save(path, params, {"layer": {"kernel": mask}})
  with np.load(path, allow_pickle=False) as npz:
    np.testing.assert_array_equal(npz["0.indices"], [1, 6, 8])
    assert npz["0.indices"].dtype == np.uint16
    np.testing.assert_array_equal(npz["0.values"], np.float32([2.0, 7.0, 9.0]))
  expected = np.zeros((3, 4), np.float32)
  expected[0, 1], expected[1, 2], expected[2, 0] = 2.0, 7.0, 9.0
  np.testing.assert_array_equal(export.load(path)["layer"]["kernel"], expected)


def test_prunable_part_is_over_15x_smaller_at_97_5_percent(tmp_path):
  rng = np.random.default_rng(0)
  params = {"a": {"kernel": rng.normal(size=(256, 256)).astype(np.float32)},
            "b": {"kernel": rng.normal(size=(64, 256)).astype(np.float32),
                  "bias": np.ones((256,), np.float32)}}
  masks = {"a": {"kernel": _exact_mask((256, 256), 0.975, 1)},
           "b": {"kernel": _exact_mask((64, 256), 0.975, 2), "bias": np.ones((256,), bool)}}
  path = tmp_path / "m.npz"
  sizes = export.save(path, params, masks)
  # 65536 entries keep 1638 (uint32 indices, as 65536 is not < 65536): 8 bytes each;
  # 16384 entries keep 410 (uint16 indices): 6 bytes each.
  assert sizes["prunable_dense_bytes"] == 4 * (65536 + 16384)
  assert sizes["prunable_file_bytes"] == 1638 * 8 + 410 * 6
  assert sizes["dense_bytes"] == 4 * (65536 + 16384 + 256)
  assert sizes["prunable_ratio"] == pytest.approx(327680 / 15564)
  assert sizes["prunable_ratio"] >= 15
  assert sizes["file_bytes"] == os.path.getsize(path)
  # The file is the sparse arrays, the dense bias and a few kB of zip headers and manifest.
  assert sizes["prunable_file_bytes"] + 1024 < sizes["file_bytes"] < \
      sizes["prunable_file_bytes"] + 1024 + 4096
  with np.load(path) as npz:
    assert npz["0.indices"].dtype == np.uint32 and npz["2.indices"].dtype == np.uint16


def test_manifest_documents_paths_shapes_and_arrays(tmp_path):
  params, masks = _model()
  path = tmp_path / "model.npz"
  export.save(path, params, masks)
  manifest, files = _manifest(path)
  assert manifest["format"] == "mmcompress.export" and manifest["version"] == 1
  leaves = manifest["leaves"]
  assert [e["path"] for e in leaves] == ["head_a/kernel", "trunk/Conv_0/kernel",
                                         "trunk/Dense_0/bias", "trunk/Dense_0/kernel",
                                         "trunk/counts"]
  assert [e["shape"] for e in leaves] == [[48, 5], [3, 3, 8, 16], [48], [64, 48], [40, 10]]
  assert [e["dtype"] for e in leaves] == ["float32", "bfloat16", "float32", "float32", "int32"]
  assert leaves[1]["stored_as"] == "uint16" and "stored_as" not in leaves[3]
  assert leaves[3]["nnz"] == 64 * 48 - math.floor(0.975 * 64 * 48 + 0.5)
  assert leaves[3]["index_dtype"] == "uint16"
  assert files == sorted(["manifest.json", "0.dense", "1.indices", "1.values", "2.dense",
                          "3.indices", "3.values", "4.indices", "4.values"])
  assert export.read_manifest(path) == manifest


def test_include_chooses_sparse_leaves(tmp_path):
  params, masks = _model()
  masks["trunk"]["Dense_0"]["bias"] = np.arange(48) % 2 == 0  # pruned, but not included
  rank2 = lambda path, leaf: np.ndim(leaf) >= 2
  path = tmp_path / "model.npz"
  sizes = export.save(path, params, masks, include=rank2)
  storage = {e["path"]: e["storage"] for e in _manifest(path)[0]["leaves"]}
  assert storage["trunk/Dense_0/bias"] == "dense" and storage["head_a/kernel"] == "sparse"
  assert sizes["prunable_dense_bytes"] == 4 * (48 * 5 + 3 * 3 * 8 * 16 + 64 * 48 + 400)
  _assert_bitwise_equal(export.load(path), apply_masks(params, masks))


def test_load_like_returns_the_template_structure(tmp_path):
  params, masks = _model()
  path = tmp_path / "model.npz"
  export.save(path, FrozenDict(params), FrozenDict(masks))
  loaded = export.load(path, like=FrozenDict(params))
  assert isinstance(loaded, FrozenDict)
  assert jax.tree.structure(loaded) == jax.tree.structure(FrozenDict(params))
  _assert_bitwise_equal(loaded, apply_masks(params, masks))
  with pytest.raises(ValueError, match="head_b"):
    export.load(path, like={**params, "head_b": {"kernel": np.zeros(3)}})
  wrong = jax.tree.map(lambda x: x, params)
  wrong["head_a"]["kernel"] = np.zeros((5, 48))
  with pytest.raises(ValueError, match="head_a/kernel"):
    export.load(path, like=wrong)


def test_mask_mismatch_names_the_leaf(tmp_path):
  params, masks = _model()
  del masks["trunk"]["Dense_0"]["bias"]
  with pytest.raises(ValueError, match="trunk/Dense_0/bias"):
    export.save(tmp_path / "m.npz", params, masks)
  params, masks = _model()
  masks["trunk"]["counts"] = masks["trunk"]["counts"].T
  with pytest.raises(ValueError, match=r"trunk/counts.*shape"):
    export.save(tmp_path / "m.npz", params, masks)
  params, masks = _model()
  masks["head_a"]["kernel"] = masks["head_a"]["kernel"].astype(np.float32)
  with pytest.raises(ValueError, match=r"head_a/kernel.*astype\(bool\)"):
    export.save(tmp_path / "m.npz", params, masks)
  params, masks = _model()
  masks["head_a"]["extra"] = np.ones(3, bool)
  with pytest.raises(ValueError, match="head_a/extra"):
    export.save(tmp_path / "m.npz", params, masks)
  with pytest.raises(ValueError, match="'/'"):
    export.save(tmp_path / "m.npz", {"a/b": np.ones(2)}, None)
  assert not list(tmp_path.iterdir())


def test_unwritable_path_is_a_clear_error(tmp_path):
  params, masks = _model()
  (tmp_path / "file").write_text("x")
  with pytest.raises(ValueError, match="does not exist"):
    export.save(tmp_path / "missing" / "m.npz", params, masks)
  with pytest.raises(ValueError, match="does not exist"):
    export.save(tmp_path / "file" / "m.npz", params, masks)
  with pytest.raises(ValueError, match="is a directory"):
    export.save(tmp_path, params, masks)


def test_failed_write_leaves_the_old_file_intact(tmp_path, monkeypatch):
  params, masks = _model()
  path = tmp_path / "model.npz"
  export.save(path, params, masks)
  before = path.read_bytes()

  def crash(f, **arrays):
    f.write(b"PK\x03\x04 half a file")
    raise RuntimeError("disk full")

  monkeypatch.setattr(np, "savez", crash)
  with pytest.raises(RuntimeError, match="disk full"):
    export.save(path, jax.tree.map(lambda x: x * 2, params), masks)
  assert path.read_bytes() == before
  assert sorted(p.name for p in tmp_path.iterdir()) == ["model.npz"]


def test_corrupted_files_raise_clear_errors(tmp_path):
  params, masks = _model()
  path = tmp_path / "model.npz"
  export.save(path, params, masks)
  data = path.read_bytes()

  truncated = tmp_path / "truncated.npz"
  truncated.write_bytes(data[: len(data) // 2])
  with pytest.raises(ValueError, match="not a valid mmcompress export"):
    export.load(truncated)

  flipped = bytearray(data)
  with zipfile.ZipFile(path) as archive:
    info = archive.getinfo("3.values.npy")
  flipped[info.header_offset + 30 + len(info.filename) + 200] ^= 0xFF
  corrupt = tmp_path / "corrupt.npz"
  corrupt.write_bytes(bytes(flipped))
  with pytest.raises(ValueError, match="CRC"):
    export.load(corrupt)

  no_manifest = tmp_path / "plain.npz"
  np.savez(no_manifest, x=np.ones(3))
  with pytest.raises(ValueError, match="manifest.json"):
    export.load(no_manifest)

  manifest, _ = _manifest(path)
  with np.load(path) as npz:
    arrays = {k: npz[k] for k in npz.files}
  newer = tmp_path / "newer.npz"
  np.savez(newer, **{**arrays, "manifest.json": np.frombuffer(
      json.dumps({**manifest, "version": 99}).encode(), np.uint8)})
  with pytest.raises(ValueError, match="version 99"):
    export.load(newer)

  lying = tmp_path / "lying.npz"
  np.savez(lying, **{**arrays, "3.indices": arrays["3.indices"][::-1]})
  with pytest.raises(ValueError, match="trunk/Dense_0/kernel"):
    export.load(lying)

  with pytest.raises(FileNotFoundError):
    export.load(tmp_path / "nothing.npz")
