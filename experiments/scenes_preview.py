"""Draws a few rendered scenes with their three targets (docs/scenes.png).

  python -m experiments.scenes_preview [--out=docs/scenes.png] [--count=4] [--seed=0]

One row per scene, drawn as `mmcompress.problems.scenes.data.generate` renders it (no cache):
the image; the labels (one colour per class, invalid pixels black); the depth (brighter is
nearer, invalid pixels black); the normals as RGB = (n + 1) / 2 (invalid pixels black).
"""
from __future__ import annotations

import os

import numpy as np

from experiments import launch
from mmcompress import _files
from mmcompress.problems.scenes import data, render


def draw(arrays: dict[str, np.ndarray], path: str | os.PathLike) -> str:
  """Draws every scene of `arrays` (a split as `data.generate` returns it) as a PNG."""
  from matplotlib import colormaps  # pylint: disable=g-import-not-at-top
  from matplotlib.backends.backend_agg import FigureCanvasAgg  # pylint: disable=g-import-not-at-top
  from matplotlib.figure import Figure  # pylint: disable=g-import-not-at-top
  from matplotlib.patches import Patch  # pylint: disable=g-import-not-at-top
  count = len(arrays["label"])
  figure = Figure(figsize=(8.0, 1.6 * count + 0.6), dpi=120, layout="constrained")
  FigureCanvasAgg(figure)
  axes = figure.subplots(count, 4, squeeze=False)
  palette = colormaps["tab10"](np.arange(render.NUM_CLASSES))[:, :3]
  for row in range(count):
    label = arrays["label"][row]
    valid = label != render.IGNORE_LABEL
    depth = arrays["depth"][row, ..., 0]
    inverse = np.where(valid, 1.0 / np.where(valid, depth, 1.0), 0.0)
    normal = arrays["normal"][row]
    panels = (arrays["image"][row],
              np.where(valid[..., None], palette[np.maximum(label, 0)], 0.0),
              colormaps["viridis"](inverse / inverse.max())[..., :3] * valid[..., None],
              np.where(valid[..., None], (normal + 1.0) / 2.0, 0.0))
    for column, (panel, title) in enumerate(zip(panels, ("image", "labels", "depth",
                                                         "normals"))):
      ax = axes[row, column]
      ax.imshow(np.clip(panel, 0.0, 1.0), interpolation="nearest")
      ax.set_xticks([])
      ax.set_yticks([])
      if row == 0:
        ax.set_title(title, fontsize=9)
  figure.legend(handles=[Patch(color=palette[i], label=name)
                         for i, name in enumerate(render.CLASSES)],
                loc="outside lower center", ncols=render.NUM_CLASSES, fontsize=7, frameon=False)
  path = os.fspath(path)
  _files.write_atomically(path, lambda f: figure.savefig(f, format="png", bbox_inches="tight"))
  return path


PROGRAM = "experiments.scenes_preview"


def main(argv: list[str] | None = None) -> None:
  parser = launch.ArgumentParser(prog=PROGRAM, description=__doc__.splitlines()[0])
  parser.add_argument("--out", default=os.path.join("docs", "scenes.png"))
  parser.add_argument("--count", type=int, default=4)
  parser.add_argument("--seed", type=int, default=0)
  args = parser.parse_args(argv)
  if args.count < 1:
    parser.error(f"--count must be >= 1 (the scenes to draw), got {args.count}.")
  if args.seed < 0:
    parser.error(f"--seed must be >= 0, got {args.seed}.")
  launch.check_output_file(args.out, "out")
  print(draw(data.generate("train", args.count, seed=args.seed), args.out))


if __name__ == "__main__":
  launch.run_argparse_main(main, PROGRAM)
