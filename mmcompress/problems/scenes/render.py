"""A small NumPy ray caster: random rooms with boxes, spheres and cylinders, and exact targets.

A scene is a pinhole `Camera` and a tuple of shapes in a world frame whose y axis points up
(the floor is the plane y = 0). `trace` casts one ray through the centre of every pixel,
all pixels at once, and keeps each ray's first hit; `render` turns the hits into the four
maps of NYUv2's layout (see `mmcompress.problems.nyuv2.data`):

=======  ===========  =======================================================================
map      shape        values
=======  ===========  =======================================================================
image    (H, W, 3)    float32 RGB in [0, 1]: the hit's colour under one directional light
                      (Lambertian) plus ambient light, with Gaussian colour noise
label    (H, W)       int32 class of the shape hit (`CLASSES`), `IGNORE_LABEL` (−1) = no hit
depth    (H, W, 1)    float32 distance of the hit along the camera's optical axis (the z
                      coordinate in the camera frame, as NYUv2's depth), 0 = no hit
normal   (H, W, 3)    float32 unit normal of the surface hit, in camera coordinates (x right
                      in the image, y down, z forward along the optical axis), facing the
                      camera; all-zero = no hit
=======  ===========  =======================================================================

The targets are exact for the geometry (up to float32 rounding): a ray is
``origin + t · R d`` with ``d = ((u − W/2)/f, (v − H/2)/f, 1)`` for the pixel centre (u, v),
f = (W/2) / tan(fov/2) and R the camera's rotation (columns: right, down and forward in
world coordinates), so the parameter t of the first hit *is* its depth. There is no ceiling:
rays that leave the room above its walls (or through a missing side wall) hit nothing and are
invalid, as the pixels without a measurement are in NYUv2. Shapes may overlap; each ray
still takes the nearest surface. No shadows are cast.

`random_scene` draws a room (floor, back wall, side walls of random height, each side wall
present with probability 0.85), a rug on the floor, a picture on the back wall, 2–5 objects
(boxes turned about the vertical axis, spheres and upright cylinders, all standing on the
floor), per-object colours around a class colour, a light and a camera pose; everything is
drawn from the `numpy.random.Generator` it is given, so a seed fixes the scene.
"""
from __future__ import annotations

import math
from typing import NamedTuple

import numpy as np

__all__ = ["Box", "Camera", "camera_rotation", "CLASS_COLOURS", "CLASSES", "Cylinder",
           "focal_length", "Hits", "IGNORE_LABEL", "NUM_CLASSES", "pixel_directions", "Quad",
           "random_example", "random_scene", "render", "Scene", "SKY_COLOUR", "Sphere", "trace"]

CLASSES = ("floor", "wall", "rug", "picture", "box", "sphere", "cylinder")
NUM_CLASSES = len(CLASSES)
IGNORE_LABEL = -1
FLOOR, WALL, RUG, PICTURE, BOX, SPHERE, CYLINDER = range(NUM_CLASSES)

# The colour each class's objects are drawn around (then jittered per object).
CLASS_COLOURS = np.array([
    [0.55, 0.45, 0.35],  # floor: wood
    [0.80, 0.78, 0.72],  # wall: off-white
    [0.60, 0.20, 0.25],  # rug: dark red
    [0.25, 0.40, 0.65],  # picture: blue
    [0.70, 0.55, 0.25],  # box: ochre
    [0.30, 0.65, 0.35],  # sphere: green
    [0.55, 0.35, 0.65],  # cylinder: purple
])
SKY_COLOUR = np.array([0.70, 0.82, 0.95])
_EPS = 1e-9  # hits closer than this (along t) are ignored


class Camera(NamedTuple):
  """A pinhole camera: where it is, where it looks, and its horizontal field of view.

  Attributes:
    position: (x, y, z) of the optical centre in world coordinates (y up).
    yaw: the turn about the vertical axis in radians; 0 looks along +z, positive towards +x.
    pitch: the tilt in radians; positive looks down.
    fov: the horizontal field of view in radians (the vertical one follows from the image's
      aspect ratio: square pixels).
  """
  position: tuple[float, float, float]
  yaw: float = 0.0
  pitch: float = 0.0
  fov: float = math.radians(60.0)


class Quad(NamedTuple):
  """A flat rectangle (two-sided): centre + a·u + b·v for |a| ≤ half_u, |b| ≤ half_v.

  `u` and `v` are orthogonal unit vectors; a half size may be ``inf`` (an unbounded plane).
  """
  centre: tuple[float, float, float]
  u: tuple[float, float, float]
  v: tuple[float, float, float]
  half_u: float
  half_v: float
  label: int
  colour: tuple[float, float, float] = (0.5, 0.5, 0.5)


class Box(NamedTuple):
  """A box with the given half sizes along its own axes, turned by `yaw` about the vertical."""
  centre: tuple[float, float, float]
  half_size: tuple[float, float, float]
  yaw: float
  label: int
  colour: tuple[float, float, float] = (0.5, 0.5, 0.5)


class Sphere(NamedTuple):
  """A sphere of `radius` about `centre`."""
  centre: tuple[float, float, float]
  radius: float
  label: int
  colour: tuple[float, float, float] = (0.5, 0.5, 0.5)


class Cylinder(NamedTuple):
  """An upright closed cylinder: its base disc's centre, radius and height (along +y)."""
  base: tuple[float, float, float]
  radius: float
  height: float
  label: int
  colour: tuple[float, float, float] = (0.5, 0.5, 0.5)


class Scene(NamedTuple):
  """What `render` draws: a camera, the shapes, and the light.

  Attributes:
    camera: the `Camera`.
    shapes: a tuple of `Quad`, `Box`, `Sphere` and `Cylinder`.
    light: the unit direction towards the (directional) light, in world coordinates.
    ambient: the fraction of a colour lit regardless of the surface's orientation.
  """
  camera: Camera
  shapes: tuple
  light: tuple[float, float, float] = (0.0, 1.0, 0.0)
  ambient: float = 0.35


def camera_rotation(camera: Camera) -> np.ndarray:
  """The 3×3 matrix R whose columns are the camera's right, down and forward axes (world)."""
  cy, sy = math.cos(camera.yaw), math.sin(camera.yaw)
  cp, sp = math.cos(camera.pitch), math.sin(camera.pitch)
  forward = np.array([sy * cp, -sp, cy * cp])
  right = np.array([cy, 0.0, -sy])
  down = np.array([-sy * sp, -cp, -cy * sp])
  return np.stack([right, down, forward], axis=1)


def focal_length(width: int, fov: float) -> float:
  """The focal length in pixels of a `width`-pixel image with horizontal field of view `fov`."""
  return (width / 2.0) / math.tan(fov / 2.0)


def pixel_directions(height: int, width: int, fov: float) -> np.ndarray:
  """Camera-frame ray directions through the pixel centres, (H·W, 3), z component 1."""
  f = focal_length(width, fov)
  v, u = np.meshgrid(np.arange(height) + 0.5, np.arange(width) + 0.5, indexing="ij")
  x = (u.ravel() - width / 2.0) / f
  y = (v.ravel() - height / 2.0) / f
  return np.stack([x, y, np.ones_like(x)], axis=-1)


def _no_hit(count: int) -> tuple[np.ndarray, np.ndarray]:
  return np.full(count, np.inf), np.zeros((count, 3))


def _hit_quad(quad: Quad, origin: np.ndarray, rays: np.ndarray):
  centre, u, v = (np.asarray(a, np.float64) for a in (quad.centre, quad.u, quad.v))
  normal = np.cross(u, v)
  denom = rays @ normal
  with np.errstate(divide="ignore", invalid="ignore"):
    t = ((centre - origin) @ normal) / denom
  offset = origin + t[:, None] * rays - centre
  inside = ((np.abs(offset @ u) <= quad.half_u) & (np.abs(offset @ v) <= quad.half_v)
            & (t > _EPS) & (denom != 0))
  t = np.where(inside, t, np.inf)
  # Two-sided: the normal is the one facing the ray.
  normals = np.where((denom > 0)[:, None], -normal, normal)
  return t, normals


def _hit_box(box: Box, origin: np.ndarray, rays: np.ndarray):
  c, s = math.cos(box.yaw), math.sin(box.yaw)
  axes = np.array([[c, 0.0, -s], [0.0, 1.0, 0.0], [s, 0.0, c]])  # rows: the box's x, y, z
  local_origin = axes @ (origin - np.asarray(box.centre, np.float64))
  local_rays = axes @ rays.T  # (3, P)
  local_rays = np.where(np.abs(local_rays) < 1e-300, 1e-300, local_rays)
  half = np.asarray(box.half_size, np.float64)[:, None]
  t1 = (-half - local_origin[:, None]) / local_rays
  t2 = (half - local_origin[:, None]) / local_rays
  near, far = np.minimum(t1, t2), np.maximum(t1, t2)
  enter, leave = near.max(axis=0), far.min(axis=0)
  t = np.where((enter <= leave) & (enter > _EPS), enter, np.inf)
  axis = near.argmax(axis=0)
  sign = -np.sign(np.take_along_axis(local_rays, axis[None], axis=0)[0])
  normals = axes[axis] * sign[:, None]  # the entered face's outward normal, in world
  return t, normals


def _hit_sphere(sphere: Sphere, origin: np.ndarray, rays: np.ndarray):
  centre = np.asarray(sphere.centre, np.float64)
  to_origin = origin - centre
  a = np.einsum("pi,pi->p", rays, rays)
  b = rays @ to_origin
  c = to_origin @ to_origin - sphere.radius ** 2
  disc = b * b - a * c
  with np.errstate(invalid="ignore"):
    t = (-b - np.sqrt(disc)) / a
  t = np.where((disc >= 0) & (t > _EPS), t, np.inf)
  points = origin + np.where(np.isfinite(t), t, 0.0)[:, None] * rays
  return t, (points - centre) / sphere.radius


def _hit_cylinder(cylinder: Cylinder, origin: np.ndarray, rays: np.ndarray):
  base = np.asarray(cylinder.base, np.float64)
  o = origin - base
  bottom, top, r = 0.0, cylinder.height, cylinder.radius
  # The side: the circle x² + z² = r² in the horizontal plane, between the caps.
  a = rays[:, 0] ** 2 + rays[:, 2] ** 2
  b = rays[:, 0] * o[0] + rays[:, 2] * o[2]
  c = o[0] ** 2 + o[2] ** 2 - r * r
  disc = b * b - a * c
  with np.errstate(divide="ignore", invalid="ignore"):
    t_side = (-b - np.sqrt(disc)) / a
    y_side = o[1] + t_side * rays[:, 1]
    t_side = np.where((disc >= 0) & (a > 0) & (t_side > _EPS) & (y_side >= bottom)
                      & (y_side <= top), t_side, np.inf)
    caps = []
    for height in (bottom, top):
      t_cap = (height - o[1]) / rays[:, 1]
      x = o[0] + t_cap * rays[:, 0]
      z = o[2] + t_cap * rays[:, 2]
      caps.append(np.where((x * x + z * z <= r * r) & (t_cap > _EPS), t_cap, np.inf))
  t = np.minimum(t_side, np.minimum(*caps))
  side_point = o + np.where(np.isfinite(t_side), t_side, 0.0)[:, None] * rays
  side_normal = side_point * np.array([1.0, 0.0, 1.0]) / r
  cap_normal = np.where((caps[0] < caps[1])[:, None], [0.0, -1.0, 0.0], [0.0, 1.0, 0.0])
  normals = np.where((t_side <= np.minimum(*caps))[:, None], side_normal, cap_normal)
  return t, normals


_HIT = {Quad: _hit_quad, Box: _hit_box, Sphere: _hit_sphere, Cylinder: _hit_cylinder}


class Hits(NamedTuple):
  """The first hit of every pixel's ray, flattened over pixels (P = H·W).

  Attributes:
    depth: (P,) the ray parameter t of the hit = its depth; ``inf`` where nothing is hit.
    normal: (P, 3) the unit normal facing the camera, in world coordinates; 0 where no hit.
    label: (P,) the class of the shape hit; `IGNORE_LABEL` where no hit.
    colour: (P, 3) the colour of the shape hit; `SKY_COLOUR` where no hit.
  """
  depth: np.ndarray
  normal: np.ndarray
  label: np.ndarray
  colour: np.ndarray


def trace(scene: Scene, height: int, width: int) -> Hits:
  """Casts every pixel's ray through `scene` and keeps its first hit (see `Hits`)."""
  camera = scene.camera
  rays = pixel_directions(height, width, camera.fov) @ camera_rotation(camera).T
  origin = np.asarray(camera.position, np.float64)
  count = rays.shape[0]
  depth, normal = _no_hit(count)
  label = np.full(count, IGNORE_LABEL, np.int32)
  colour = np.broadcast_to(SKY_COLOUR, (count, 3))
  for shape in scene.shapes:
    t, shape_normal = _HIT[type(shape)](shape, origin, rays)
    nearer = t < depth
    depth = np.where(nearer, t, depth)
    normal = np.where(nearer[:, None], shape_normal, normal)
    label = np.where(nearer, np.int32(shape.label), label)
    colour = np.where(nearer[:, None], np.asarray(shape.colour, np.float64), colour)
  return Hits(depth, normal, label, colour)


def render(scene: Scene, height: int = 48, width: int = 64, *,
           rng: np.random.Generator | None = None, noise: float = 0.02) -> dict[str, np.ndarray]:
  """The image and the three targets of `scene`, in NYUv2's layout (see the module docstring).

  Args:
    scene: the `Scene`.
    height: the image height H in pixels.
    width: the image width W in pixels.
    rng: the generator of the colour noise; None for no noise.
    noise: the standard deviation of the Gaussian noise added to every colour channel.

  Returns:
    ``{image, label, depth, normal}``: (H, W, 3) float32, (H, W) int32, (H, W, 1) float32 and
    (H, W, 3) float32.
  """
  hits = trace(scene, height, width)
  valid = np.isfinite(hits.depth)
  rotation = camera_rotation(scene.camera)
  light = np.asarray(scene.light, np.float64)
  lambert = np.clip(hits.normal @ light, 0.0, None)
  shade = np.where(valid, scene.ambient + (1.0 - scene.ambient) * lambert, 1.0)
  image = hits.colour * shade[:, None]
  if rng is not None:
    image = image + rng.normal(0.0, noise, image.shape)
  normal = hits.normal @ rotation  # Rᵀ n for every pixel: camera coordinates
  return {
      "image": np.clip(image, 0.0, 1.0).reshape(height, width, 3).astype(np.float32),
      "label": hits.label.reshape(height, width).astype(np.int32),
      "depth": np.where(valid, hits.depth, 0.0).reshape(height, width, 1).astype(np.float32),
      "normal": np.where(valid[:, None], normal, 0.0).reshape(height, width, 3).astype(
          np.float32),
  }


def _jitter(rng: np.random.Generator, label: int, spread: float = 0.12) -> tuple:
  colour = CLASS_COLOURS[label] + rng.uniform(-spread, spread, 3)
  return tuple(np.clip(colour, 0.05, 0.95).tolist())


def _random_object(rng: np.random.Generator, x: float, z: float):
  kind = int(rng.integers(3))
  if kind == 0:
    half = (rng.uniform(0.2, 0.6), rng.uniform(0.15, 0.6), rng.uniform(0.2, 0.6))
    return Box((x, half[1], z), half, rng.uniform(0.0, math.pi), BOX, _jitter(rng, BOX))
  if kind == 1:
    radius = rng.uniform(0.2, 0.5)
    return Sphere((x, radius, z), radius, SPHERE, _jitter(rng, SPHERE))
  return Cylinder((x, 0.0, z), rng.uniform(0.15, 0.4), rng.uniform(0.4, 1.5), CYLINDER,
                  _jitter(rng, CYLINDER))


def random_scene(rng: np.random.Generator) -> Scene:
  """A random room with a rug, a picture and 2–5 objects, lit and seen from a random pose.

  The room spans x in [−a, a] (a in [2, 3] m) and z up to its back wall at D in [4, 6.5] m;
  walls are 1.8–2.8 m high; the camera stands at z = 0, 1–1.6 m above the floor, turned by up
  to ±0.25 rad and looking down by 0.05–0.4 rad, with a 60° horizontal field of view.

  Args:
    rng: the generator every choice is drawn from.

  Returns:
    The `Scene`.
  """
  half_width = rng.uniform(2.0, 3.0)
  back = rng.uniform(4.0, 6.5)
  wall_height = rng.uniform(1.8, 2.8)
  near = -2.0
  x_axis, y_axis, z_axis = (1.0, 0.0, 0.0), (0.0, 1.0, 0.0), (0.0, 0.0, 1.0)
  shapes = [
      Quad((0.0, 0.0, (near + back) / 2), x_axis, z_axis, half_width, (back - near) / 2,
           FLOOR, _jitter(rng, FLOOR)),
      Quad((0.0, wall_height / 2, back), x_axis, y_axis, half_width, wall_height / 2, WALL,
           _jitter(rng, WALL, 0.08)),
  ]
  for side in (-1.0, 1.0):
    if rng.random() < 0.85:
      shapes.append(Quad((side * half_width, wall_height / 2, (near + back) / 2), z_axis, y_axis,
                         (back - near) / 2, wall_height / 2, WALL, _jitter(rng, WALL, 0.08)))
  # A rug just above the floor and a picture just in front of the back wall (no z-fighting).
  rug_x, rug_z = rng.uniform(-half_width + 1.0, half_width - 1.0), rng.uniform(1.5, back - 1.0)
  shapes.append(Quad((rug_x, 0.002, rug_z), x_axis, z_axis, rng.uniform(0.4, 1.0),
                     rng.uniform(0.3, 0.8), RUG, _jitter(rng, RUG)))
  picture_height = rng.uniform(0.2, 0.45)
  shapes.append(Quad((rng.uniform(-half_width + 0.8, half_width - 0.8),
                      rng.uniform(0.9, wall_height - picture_height - 0.05), back - 0.002),
                     x_axis, y_axis, rng.uniform(0.25, 0.7), picture_height, PICTURE,
                     _jitter(rng, PICTURE)))
  for _ in range(int(rng.integers(2, 6))):
    x = rng.uniform(-half_width + 0.5, half_width - 0.5)
    z = rng.uniform(1.5, back - 0.5)
    shapes.append(_random_object(rng, x, z))
  camera = Camera((rng.uniform(-0.5, 0.5), rng.uniform(1.0, 1.6), 0.0),
                  yaw=rng.uniform(-0.25, 0.25), pitch=rng.uniform(0.05, 0.4))
  light = np.array([rng.uniform(-0.6, 0.6), 1.0, rng.uniform(-0.8, 0.2)])
  light = tuple((light / np.linalg.norm(light)).tolist())
  return Scene(camera, tuple(shapes), light, float(rng.uniform(0.25, 0.45)))


def random_example(rng: np.random.Generator, height: int = 48,
                   width: int = 64) -> dict[str, np.ndarray]:
  """`render` of a `random_scene`, both drawn from `rng` (the scene first, then the noise)."""
  return render(random_scene(rng), height, width, rng=rng)
