"""What the run axis buys for a grid: ten variants of every method for the price of how many?

  python -m experiments.benchmark --grid [--grid_seeds=5] [--json_out=grid.json]

Runs, in one process, each in a fresh temporary workdir and quiet, the digits comparison at
the study preset's budget (its epochs, γ, ``task_set`` ``classify``, 40x) with the loss-level
methods `METHODS` (equal, min-max, uncertainty, DWA: a stated subset, to keep the benchmark
within minutes on 2 cores), on 5 seeds:

* 1 variant (the config's own learning rate, no clip) × 5 seeds on the run axis;
* 10 variants (learning-rate scales 0.25, 0.5, 1, 2, 4 × clip none or 1) × 5 seeds.

Both share nothing but the process (the second also trains its dense references), and it
prints ``grid axis: 10 variants x 5 seeds / 1 variant x 5 seeds wall-time ratio X.XX``
(the goal: at most 4), each run's wall time split as the runs print it (compilation, training
steps, evaluation, checkpoints, the rest). The wall times depend on the machine and whatever
else runs on it.
"""
from __future__ import annotations

import json
import sys
from typing import Any

import jax

from experiments.bench_seeds import timed_split  # one whole comparison, in a fresh workdir
from experiments.configs import digits as digits_config
from mmcompress.train.clock import split_text

METHODS = ("equal", "minmax", "uncertainty", "dwa")
SCALES = (0.25, 0.5, 1.0, 2.0, 4.0)
CLIPS = (0.0, 1.0)
NUM_SEEDS = 5  # seeds of each variant, unless the caller says otherwise
GOAL_RATIO = 4.0  # ten variants for at most four times the price of one


def config_for(num_seeds: int, grid: bool):
  """The study preset at 40x on ``classify`` with `METHODS`, quiet, with or without the grid."""
  config = digits_config.get_config("study")
  with config.unlocked():
    config.task_sets = ("classify",)
    config.methods = METHODS
    config.seeds = tuple(range(num_seeds))
    config.quiet = True
    if grid:
      config.grid.learning_rate_scale = SCALES
      config.grid.clip_norm = CLIPS
  return config


def run(num_seeds: int = NUM_SEEDS, out: Any = sys.stdout, json_out: str | None = None,
        configs=config_for) -> dict:
  """Times the two runs of the module docstring, prints the lines, returns the numbers."""
  variants = len(SCALES) * len(CLIPS)
  print(f"timing the digits comparison (study budget, classify, 40x, {', '.join(METHODS)}): "
        f"1 variant and {variants} variants, {num_seeds} seeds each ...", file=out, flush=True)
  one, one_split = timed_split(configs(num_seeds, False))
  many, many_split = timed_split(configs(num_seeds, True))
  ratio = many / one
  print(f"  1 variant x {num_seeds} seeds: {one:.1f} s ({split_text(one_split)})", file=out)
  print(f"  {variants} variants x {num_seeds} seeds: {many:.1f} s ({split_text(many_split)})",
        file=out)
  print(f"grid axis: {variants} variants x {num_seeds} seeds / 1 variant x {num_seeds} seeds "
        f"wall-time ratio {ratio:.2f} (goal <= {GOAL_RATIO:g})", file=out)
  print(f"{jax.device_count()} x {jax.devices()[0].device_kind} ({jax.default_backend()}), "
        f"jax {jax.__version__}", file=out, flush=True)
  result = {"wall_s": {"one": one, "grid": many}, "ratio": ratio, "variants": variants,
            "split_s": {"one": one_split, "grid": many_split},
            "num_seeds": num_seeds, "methods": list(METHODS)}
  if json_out:
    with open(json_out, "w") as f:
      json.dump(result, f, indent=1, sort_keys=True)
  return result
