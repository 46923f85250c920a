"""Draws the per-task training loss curves of a finished scenes run (docs/scenes_losses.png).

  python -m experiments.scenes_curves --workdir=runs/scenes [--out=docs/scenes_losses.png]

One panel per task: the mean training loss of every epoch (the trainer's per-epoch record,
kept beside each stage's last checkpoint on the run axis as
``axis/<run>/<stage>/<step>/record/metadata``, one entry per run), for every
seed: the dense pretraining, then each method's reweight and retrain stages after it (prune
trains no epoch). The validation loss of the dense pretraining is drawn dashed.
"""
from __future__ import annotations

import json
import os
import pathlib

from experiments import launch
from mmcompress import _files

_STAGES = {"dense": ("pretrain",), "equal": ("reweight", "retrain"),
           "minmax": ("reweight", "retrain")}


def stage_record(run_dir: pathlib.Path, stage: str) -> dict | None:
  """The record of `stage`'s last checkpoint in `run_dir`, or None if it has none."""
  steps = [int(p.name) for p in (run_dir / stage).glob("*") if p.name.isdigit()]
  if not steps:
    return None
  return json.loads((run_dir / stage / str(max(steps)) / "record" / "metadata").read_text())


def _runs(stage_dir: pathlib.Path) -> list[dict]:
  """The per-run records of a stage on the run axis, chunks (``chunk<k>``) in order."""
  chunks = sorted(stage_dir.glob("chunk*"), key=lambda p: int(p.name[len("chunk"):]))
  records = [stage_record(c.parent, c.name) for c in chunks] or [
      stage_record(stage_dir.parent, stage_dir.name)]
  return [run for r in records if r for run in r["runs"]]


def _seed_records(workdir: pathlib.Path) -> dict:
  """``{(seed name, run): [stage records]}`` from ``axis/<run>/<stage>``: one record per
  seed of the config, in order (one variant; every seed of these runs is live)."""
  out = {}
  seeds = json.loads((workdir / "config.json").read_text())["seeds"]
  for run, stages in _STAGES.items():
    per_stage = [_runs(workdir / "axis" / run / s) for s in stages]
    for i, seed in enumerate(seeds):
      out[f"seed{seed}", run] = [runs[i] for runs in per_stage if runs]
  return out


def curves(workdir: str | os.PathLike) -> dict:
  """``{(seed, run): {"train": [[K losses] per epoch], "val": [...]}}`` of a workdir."""
  out = {}
  for key, records in sorted(_seed_records(pathlib.Path(workdir)).items()):
    epochs = [e for r in records for e in r["epochs"]]
    if epochs:
      out[key] = {"train": [e["train_loss"] for e in epochs],
                  "val": [e["val_loss"] for e in epochs]}
  return out


def draw(workdir: str | os.PathLike, path: str | os.PathLike,
         task_names=("segmentation", "depth", "normal")) -> str:
  """Draws `curves(workdir)` as a PNG at `path`; returns the path."""
  from matplotlib.backends.backend_agg import FigureCanvasAgg  # pylint: disable=g-import-not-at-top
  from matplotlib.figure import Figure  # pylint: disable=g-import-not-at-top
  data = curves(workdir)
  figure = Figure(figsize=(10.0, 3.2), dpi=110, layout="constrained")
  FigureCanvasAgg(figure)
  axes = figure.subplots(1, len(task_names), squeeze=False)[0]
  colours = {"dense": "black", "equal": "tab:blue", "minmax": "tab:red"}
  for (seed, run), values in data.items():
    start = len(data[seed, "dense"]["train"]) if run != "dense" else 0
    for k, ax in enumerate(axes):
      epochs = range(start + 1, start + len(values["train"]) + 1)
      label = run if seed == "seed0" else None
      ax.plot(epochs, [v[k] for v in values["train"]], color=colours[run], lw=1, label=label)
      if run == "dense":
        ax.plot(epochs, [v[k] for v in values["val"]], color=colours[run], lw=1, ls="--",
                label="dense (val)" if seed == "seed0" else None)
  for ax, task in zip(axes, task_names):
    ax.set_title(f"{task} loss", fontsize=9)
    ax.set_xlabel("epoch (pretrain, then reweight + retrain)", fontsize=8)
    ax.tick_params(labelsize=7)
  axes[0].legend(fontsize=7, frameon=False)
  path = os.fspath(path)
  _files.write_atomically(path, lambda f: figure.savefig(f, format="png"))
  return path


PROGRAM = "experiments.scenes_curves"


def main(argv: list[str] | None = None) -> None:
  parser = launch.ArgumentParser(prog=PROGRAM, description=__doc__.splitlines()[0])
  parser.add_argument("--workdir", required=True)
  parser.add_argument("--out", default=os.path.join("docs", "scenes_losses.png"))
  args = parser.parse_args(argv)
  if not os.path.isfile(os.path.join(args.workdir, "config.json")):
    parser.error(f"--workdir {args.workdir} holds no run (no config.json): name the workdir "
                 "of a scenes run, e.g. runs/scenes.")
  try:
    with open(os.path.join(args.workdir, "config.json")) as f:
      recorded = json.load(f).get("problem")
  except (ValueError, AttributeError):
    recorded = None
  if recorded != "scenes":
    parser.error(f"--workdir {args.workdir} holds a run of problem {recorded!r}, not a scenes "
                 "run: its losses are not segmentation, depth and normals. Name the workdir "
                 "of a scenes run, e.g. runs/scenes.")
  if not os.path.isdir(os.path.join(args.workdir, "axis")):
    parser.error(f"--workdir {args.workdir} holds no training records yet (no axis/ folder): "
                 "run or resume it first.")
  launch.check_output_file(args.out, "out")
  print(draw(args.workdir, args.out))


if __name__ == "__main__":
  launch.run_argparse_main(main, PROGRAM)
