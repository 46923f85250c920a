"""The scenes renderer against geometry computed here independently, and its cached data set.

Every expected value is derived in this file from the camera model alone (a pinhole with
square pixels, rays through pixel centres, camera axes x right / y down / z forward, world y
up), not from the renderer's helpers.
"""
import logging
import math
import os

import numpy as np
import pytest

from mmcompress.problems.nyuv2 import data as nyuv2
from mmcompress.problems.scenes import data, render

H, W = 24, 32
FOV = math.radians(60.0)


def camera_rays(height=H, width=W, fov=FOV):
  """Camera-frame directions (H, W, 3), z = 1, through the pixel centres."""
  f = (width / 2) / math.tan(fov / 2)
  x = (np.arange(width) + 0.5 - width / 2) / f
  y = (np.arange(height) + 0.5 - height / 2) / f
  return np.stack(np.broadcast_arrays(x[None, :], y[:, None], 1.0), axis=-1)


def floor(label=render.FLOOR):
  return render.Quad((0.0, 0.0, 0.0), (1.0, 0.0, 0.0), (0.0, 0.0, 1.0), math.inf, math.inf,
                     label)


def draw(camera, shapes, height=H, width=W):
  return render.render(render.Scene(camera, tuple(shapes)), height, width)


def test_depth_of_a_floor_seen_from_a_tilted_camera_is_the_analytic_distance():
  height, pitch = 1.3, 0.3
  out = draw(render.Camera((0.2, height, -1.0), pitch=pitch, fov=FOV), [floor()])
  y = camera_rays()[..., 1]
  # World y of a camera ray (x, y, 1) is -y cos(pitch) - sin(pitch); the floor is height below.
  drop = y * math.cos(pitch) + math.sin(pitch)
  hits = drop > 0
  assert hits.sum() > H * W / 2 and (~hits).sum() > 0
  np.testing.assert_allclose(out["depth"][..., 0][hits], (height / drop)[hits], rtol=1e-6)
  # The floor's normal is world up; the camera's down axis is (0, -cos, -sin)(pitch) and its
  # forward axis (0, -sin, cos)(pitch) in world, so up is (0, -cos(pitch), -sin(pitch)).
  np.testing.assert_allclose(out["normal"][hits], np.broadcast_to(
      [0.0, -math.cos(pitch), -math.sin(pitch)], (hits.sum(), 3)), atol=1e-6)
  assert np.all(out["label"][hits] == render.FLOOR)


def test_depth_of_a_wall_facing_the_camera_is_its_distance_everywhere():
  wall = render.Quad((0.0, 0.0, 4.5), (1.0, 0.0, 0.0), (0.0, 1.0, 0.0), 50.0, 50.0,
                     render.WALL)
  out = draw(render.Camera((0.0, 1.0, 0.0)), [wall])
  np.testing.assert_allclose(out["depth"], 4.5, rtol=1e-7)
  np.testing.assert_allclose(out["normal"], np.broadcast_to([0.0, 0.0, -1.0], (H, W, 3)))
  assert np.all(out["label"] == render.WALL)


def test_a_turned_camera_sees_the_wall_at_the_analytic_depth():
  yaw = 0.4
  wall = render.Quad((0.0, 0.0, 3.0), (1.0, 0.0, 0.0), (0.0, 1.0, 0.0), 50.0, 50.0,
                     render.WALL)
  out = draw(render.Camera((0.0, 0.0, 0.0), yaw=yaw), [wall])
  x = camera_rays()[..., 0]
  # World z of a camera ray (x, y, 1) under a turn by yaw: cos(yaw) - x sin(yaw).
  np.testing.assert_allclose(out["depth"][..., 0], 3.0 / (math.cos(yaw) - x * math.sin(yaw)),
                             rtol=1e-6)


def sphere_scene(centre=(0.3, 0.4, 3.0), radius=0.7):
  """A sphere seen by a camera at the origin looking along world +z (camera y = -world y)."""
  sphere = render.Sphere(centre, radius, render.SPHERE)
  centre_camera = np.array([centre[0], -centre[1], centre[2]])
  return draw(render.Camera((0.0, 0.0, 0.0)), [sphere]), centre_camera, radius


def test_sphere_normals_point_from_its_centre():
  out, centre, radius = sphere_scene()
  hit = out["label"] == render.SPHERE
  assert hit.sum() > 50
  points = out["depth"] * camera_rays()  # depth is the z coordinate, and the rays have z = 1
  expected = (points - centre) / radius
  np.testing.assert_allclose(out["normal"][hit], expected[hit], atol=2e-5)
  np.testing.assert_allclose(np.linalg.norm(points[hit] - centre, axis=-1), radius, rtol=1e-5)


def test_labels_are_the_sphere_exactly_inside_its_silhouette_and_invalid_outside():
  out, centre, radius = sphere_scene()
  rays = camera_rays()
  unit = rays / np.linalg.norm(rays, axis=-1, keepdims=True)
  along = unit @ centre
  distance = np.sqrt(centre @ centre - along ** 2)  # from the centre to each pixel's ray
  inside, outside = distance < radius - 1e-9, distance > radius + 1e-9
  assert inside.sum() > 50 and inside.sum() + outside.sum() == H * W
  assert np.all(out["label"][inside] == render.SPHERE)
  assert np.all(out["label"][outside] == render.IGNORE_LABEL)


def test_the_nearest_shape_is_the_one_labelled():
  box = render.Box((0.0, 0.0, 2.0), (0.4, 0.4, 0.4), 0.3, render.BOX)
  behind = render.Sphere((0.0, 0.0, 4.0), 1.5, render.SPHERE)
  cylinder = render.Cylinder((-3.0, -2.0, 6.0), 0.5, 10.0, render.CYLINDER)
  for shapes in ([box, behind, cylinder], [cylinder, behind, box]):
    out = draw(render.Camera((0.0, 0.0, 0.0)), shapes)
    centre = out["label"][H // 2 - 1:H // 2 + 1, W // 2 - 1:W // 2 + 1]
    assert np.all(centre == render.BOX)
    assert {render.BOX, render.SPHERE, render.CYLINDER} <= set(np.unique(out["label"]))
    # The box's face turned towards the camera: its depth at the centre pixel, where the ray
    # is nearly the optical axis, is the box's distance minus its half size over cos(0.3).
    assert abs(out["depth"][H // 2, W // 2, 0] - (2.0 - 0.4 / math.cos(0.3))) < 0.05


def test_a_turned_box_is_hit_on_its_surface_with_that_face_s_normal():
  yaw, centre, half = 0.5, np.array([0.2, -0.3, 3.0]), np.array([0.6, 0.4, 0.5])
  box = render.Box(tuple(centre), tuple(half), yaw, render.BOX)
  out = draw(render.Camera((0.0, 0.0, 0.0)), [box])
  hit = out["label"] == render.BOX
  assert hit.sum() > 50
  flip = np.array([1.0, -1.0, 1.0])  # camera (x, y, z) = world (x, -y, z) for this camera
  points = (out["depth"] * camera_rays())[hit] * flip - centre
  # The box's axes in world: its x and z turned by yaw about the vertical.
  axes = np.array([[math.cos(yaw), 0.0, -math.sin(yaw)], [0.0, 1.0, 0.0],
                   [math.sin(yaw), 0.0, math.cos(yaw)]])
  local = points @ axes.T / half  # in [-1, 1] inside, ±1 on a face
  face = np.abs(local).argmax(axis=-1)
  np.testing.assert_allclose(np.abs(local).max(axis=-1), 1.0, atol=1e-5)
  outward = axes[face] * np.sign(np.take_along_axis(local, face[:, None], -1))
  np.testing.assert_allclose(out["normal"][hit] * flip, outward, atol=1e-6)
  assert len(np.unique(face)) == 2  # the front and one side face (x and z), not the top


def test_cylinder_side_and_cap_normals():
  # A camera above an upright cylinder, looking straight down: the cap fills the centre.
  cylinder = render.Cylinder((0.0, 0.0, 0.0), 1.0, 1.0, render.CYLINDER)
  out = draw(render.Camera((0.0, 3.0, 0.0), pitch=math.pi / 2), [cylinder])
  top = out["label"] == render.CYLINDER
  np.testing.assert_allclose(out["depth"][top], 2.0, rtol=1e-6)
  np.testing.assert_allclose(out["normal"][top], np.broadcast_to([0.0, 0.0, -1.0],
                                                                 (top.sum(), 3)), atol=1e-6)
  # Seen from the side at the cylinder's mid-height, the side normal is horizontal and points
  # from the axis: camera-frame (x − 0, 0, z − 4) / r at the hit point.
  out = draw(render.Camera((0.0, 0.5, -4.0)), [cylinder])
  side = out["label"] == render.CYLINDER
  points = out["depth"] * camera_rays()
  expected = (points - [0.0, 0.0, 4.0]) * [1.0, 0.0, 1.0]
  np.testing.assert_allclose(out["normal"][side], expected[side], atol=2e-5)


def test_invalid_pixels_are_exactly_the_rays_that_hit_nothing():
  pitch = 0.1
  out = draw(render.Camera((0.0, 1.5, 0.0), pitch=pitch), [floor()])
  y = camera_rays()[..., 1]
  sky = y * math.cos(pitch) + math.sin(pitch) <= 0  # rays that never go down
  assert 0 < sky.sum() < H * W
  np.testing.assert_array_equal(out["label"] == nyuv2.IGNORE_LABEL, sky)
  np.testing.assert_array_equal(out["depth"][..., 0] == 0.0, sky)
  np.testing.assert_array_equal(np.all(out["normal"] == 0.0, axis=-1), sky)
  nothing = draw(render.Camera((0.0, 1.5, 0.0), pitch=-0.5), [])
  assert np.all(nothing["label"] == nyuv2.IGNORE_LABEL) and not np.any(nothing["depth"])


def test_random_examples_have_nyuv2_layout_dtypes_and_values(tmp_path):
  example = render.random_example(np.random.default_rng(3), H, W)
  assert {k: (v.shape, v.dtype) for k, v in example.items()} == {
      "image": ((H, W, 3), np.float32), "label": ((H, W), np.int32),
      "depth": ((H, W, 1), np.float32), "normal": ((H, W, 3), np.float32)}
  assert render.NUM_CLASSES <= nyuv2.NUM_CLASSES and render.IGNORE_LABEL == nyuv2.IGNORE_LABEL
  # Written in NYUv2's file layout, the example passes NYUv2's own value checks.
  for kind, array in example.items():
    (tmp_path / "val" / kind).mkdir(parents=True)
    np.save(tmp_path / "val" / kind / "0.npy", array)
  assert nyuv2.check_layout(tmp_path, ("val",), height=H, width=W) == {"val": 1}


def test_same_seed_same_arrays_other_seed_different():
  a = data.generate("train", 3, seed=5, height=H, width=W)
  b = data.generate("train", 3, seed=5, height=H, width=W)
  for kind in data.MAPS:
    np.testing.assert_array_equal(a[kind], b[kind])
  other = data.generate("train", 3, seed=6, height=H, width=W)
  test = data.generate("test", 3, seed=5, height=H, width=W)
  for c in (other, test):
    assert not np.array_equal(a["image"], c["image"])
    assert not np.array_equal(a["depth"], c["depth"])
  first = data.generate("train", 1, seed=5, height=H, width=W)
  np.testing.assert_array_equal(first["label"], a["label"][:1])


def test_load_scenes_caches_and_reuses(tmp_path, monkeypatch):
  sizes = dict(num_train=3, num_val=2, num_test=2, height=H, width=W, seed=1)
  first = data.load_scenes(tmp_path, **sizes)
  assert {split: len(maps["label"]) for split, maps in first.items()} == {
      "train": 3, "val": 2, "test": 2}
  files = sorted(tmp_path.rglob("*.npy"))
  assert len(files) == 12 and not list(tmp_path.rglob("*.tmp"))
  mtimes = [f.stat().st_mtime_ns for f in files]

  def fail(*args, **kwargs):
    raise AssertionError("the cache was not reused")

  monkeypatch.setattr(data, "generate", fail)
  second = data.load_scenes(tmp_path, **sizes)
  assert [f.stat().st_mtime_ns for f in files] == mtimes
  for split in data.SPLITS:
    for kind in data.MAPS:
      np.testing.assert_array_equal(first[split][kind], second[split][kind])


def test_a_truncated_or_foreign_cache_file_is_regenerated(tmp_path, caplog):
  sizes = dict(num_train=2, num_val=1, num_test=1, height=H, width=W, seed=2)
  first = data.load_scenes(tmp_path, **sizes)
  folder = data.split_dir(tmp_path, "train", 2, seed=2, height=H, width=W)
  depth = folder / "depth.npy"
  depth.write_bytes(depth.read_bytes()[:200])  # truncated
  np.save(folder / "label.npy", np.zeros((2, H, W), np.float64))  # wrong dtype
  (folder / "normal.npy").unlink()
  for broken in (lambda: None, lambda: (folder / "image.npy").write_bytes(b"not numpy")):
    broken()
    with caplog.at_level(logging.WARNING):
      again = data.load_scenes(tmp_path, **sizes)
    assert "regenerating" in caplog.text
    caplog.clear()
    for kind in data.MAPS:
      np.testing.assert_array_equal(again["train"][kind], first["train"][kind])
      loaded = np.load(folder / f"{kind}.npy")
      assert loaded.dtype == data.DTYPES[kind]


def test_bad_arguments_and_unwritable_cache_are_refused(tmp_path):
  with pytest.raises(ValueError, match="num_train"):
    data.load_scenes(tmp_path, num_train=0)
  with pytest.raises(ValueError, match="split"):
    data.generate("training", 1)
  blocker = tmp_path / "file"
  blocker.write_text("")
  with pytest.raises(ValueError, match="cache"):
    data.load_scenes(blocker, num_train=1, num_val=1, num_test=1, height=4, width=4)
  assert os.path.isfile(blocker)


def test_default_cache_dir_follows_xdg(monkeypatch, tmp_path):
  monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
  assert data.default_cache_dir() == tmp_path / "mmcompress" / "scenes"
