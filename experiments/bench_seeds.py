"""What the seed axis buys: the digits comparison with its seeds one after another or together.

  python -m experiments.benchmark --seeds [--num_seeds=10] [--json_out=seeds.json]

Runs, in one process, each in a fresh temporary workdir and quiet:

* the default digits comparison (`experiments/configs/digits.py`) with 1 seed, the seeds one
  after another (``config.chunk_runs=1``: an axis of one run at a time), and with
  `num_seeds` seeds on the run axis;
  it prints ``seed axis: 10 seeds / 1 seed wall-time ratio X.XX`` (the goal: at most 2.5);
* the default comparison as configured (3 seeds) both ways, and for each the share of its
  wall time that its training steps take: ``default run: training steps are XX % of the wall
  time``. The steps' time is their count (every stage of every run, from the config) times
  the median time of one step measured here on the same model and batch (the dense
  equal-weighted step, or that step on the seed axis for the seeds together): an estimate, as
  the methods' steps (min-max's ascent, the reweighting, the masks) cost a little more than
  that step; what is not steps is compilation, evaluation, checkpoints, data and Python.

The wall times depend on the machine and whatever else runs on it; the README gives measured
ones with the machine they ran on.
"""
from __future__ import annotations

import json
import statistics
import sys
import tempfile
import time
from collections.abc import Sequence
from typing import Any

import jax
import numpy as np
import optax

from experiments.configs import digits as digits_config
from mmcompress import saddle_point, weighting
from mmcompress.app import comparison, plan as app_plan, progress
from mmcompress.models import create_model
from mmcompress.problems.digits import DigitsProblem
from mmcompress.problems.digits import data as digits
from mmcompress.train import clock as clock_lib, parallel, run_axis, step as step_lib

GOAL_RATIO = 2.5  # ten seeds for at most two and a half times the price of one


def config_for(seeds: Sequence[int], together: bool):
  """The default digits config with these seeds, together or one after another, quiet."""
  config = digits_config.get_config()
  with config.unlocked():
    config.seeds = tuple(seeds)
    config.chunk_runs = 0 if together else 1
    config.quiet = True
  return config


def timed_split(config) -> tuple[float, dict[str, float]]:
  """Wall seconds of one whole comparison in a fresh temporary workdir, and where they went
  (`mmcompress.train.clock.Clock.split`)."""
  with tempfile.TemporaryDirectory() as workdir, clock_lib.Clock() as clock:
    comparison.run(config, workdir, print_report=False, clock=clock)
  return clock.wall, clock.split()


def timed_run(config) -> float:
  """Wall seconds of one whole comparison in a fresh temporary workdir."""
  return timed_split(config)[0]


def step_calls(config, steps_per_epoch: int) -> int:
  """How many training steps one seed's share of the comparison takes: its dense
  pretraining and every method's training stages (`mmcompress.app.progress.planned_epochs`)."""
  plan = progress.planned_epochs(app_plan.comparison(config))
  seed = f"seed{config.seeds[0]}/"
  return sum(sum(s.values()) for run, s in plan.items() if run.startswith(seed)) * steps_per_epoch


def step_seconds(config, num_seeds: int | None, steps: int = 50, rounds: int = 5) -> float:
  """The median seconds of one dense equal-weighted step of the config's model and batch,
  for one seed (`num_seeds` None) or `num_seeds` on the seed axis."""
  problem = DigitsProblem(digits.load_multidigits(config.task_sets[0], seed=config.data_seed))
  model = create_model(config.model, problem.num_outputs, **config.model_kwargs.to_dict())
  mesh = parallel.data_mesh()
  equal = weighting.equal()
  tx = saddle_point(optax.sgd(0.01, momentum=0.9), equal.tx)
  params, model_state = step_lib.init_variables(model, problem, 0)

  def fresh():
    return step_lib.create_train_state(params, model_state, equal, tx, problem.num_tasks,
                                       jax.random.key(0))

  batch = problem.train_batch(0, 0, 0, config.batch_size)
  if num_seeds is None:
    step = step_lib.make_train_step(problem, model, equal, tx, mesh)
    state, batch = fresh(), parallel.shard_batch(batch, mesh, problem.batch_axis)
    call = lambda s: step(s, batch)[0]
  else:
    step = run_axis.make_runs_train_step(problem, model, equal, tx, mesh, num_runs=num_seeds)
    state = run_axis.stack([fresh() for _ in range(num_seeds)])
    batch = jax.device_put(jax.tree.map(lambda x: np.stack([x] * num_seeds), batch),
                           run_axis.batch_sharding(mesh, problem.batch_axis, False))
    alive = np.ones(num_seeds, bool)
    call = lambda s: step(s, alive, batch)[0]
  state = jax.block_until_ready(call(state))  # compiled
  times = []
  for _ in range(rounds):
    start = time.perf_counter()
    for _ in range(steps):
      state = call(state)
    jax.block_until_ready(state)
    times.append((time.perf_counter() - start) / steps)
  return statistics.median(times)


def run(num_seeds: int = 10, out: Any = sys.stdout, json_out: str | None = None) -> dict:
  """Times the runs of the module docstring, prints the lines, returns the numbers."""
  default = config_for(digits_config.get_config().seeds, False)
  problem = DigitsProblem(digits.load_multidigits(default.task_sets[0], seed=default.data_seed))
  calls = step_calls(default, problem.steps_per_epoch(default.batch_size))
  print(f"timing the default digits comparison: 1 seed, {num_seeds} seeds together, "
        f"{len(default.seeds)} seeds both ways ...", file=out, flush=True)
  walls = {"1 seed": timed_run(config_for((0,), False)),
           f"{num_seeds} seeds together": timed_run(config_for(range(num_seeds), True)),
           "default, one after another": timed_run(default),
           "default, together": timed_run(config_for(default.seeds, True))}
  seeds = len(default.seeds)
  step_s = {"one after another": step_seconds(default, None),
            "together": step_seconds(default, seeds)}
  shares = {"one after another": calls * seeds * step_s["one after another"]
                                 / walls["default, one after another"],
            "together": calls * step_s["together"] / walls["default, together"]}
  ratio = walls[f"{num_seeds} seeds together"] / walls["1 seed"]
  for name, seconds in walls.items():
    print(f"  {name}: {seconds:.1f} s", file=out)
  print(f"  one step: {1e3 * step_s['one after another']:.3f} ms for one seed, "
        f"{1e3 * step_s['together']:.3f} ms for {seeds} seeds together; {calls} steps a seed",
        file=out)
  print(f"seed axis: {num_seeds} seeds / 1 seed wall-time ratio {ratio:.2f} "
        f"(goal <= {GOAL_RATIO})", file=out)
  for name, share in shares.items():
    print(f"default run ({name}): training steps are {100 * share:.0f} % of the wall time",
          file=out)
  print(f"{jax.device_count()} x {jax.devices()[0].device_kind} ({jax.default_backend()}), "
        f"jax {jax.__version__}", file=out, flush=True)
  result = {"wall_s": walls, "step_s": step_s, "steps_per_seed": calls, "ratio": ratio,
            "steps_share": shares, "num_seeds": num_seeds}
  if json_out:
    with open(json_out, "w") as f:
      json.dump(result, f, indent=1, sort_keys=True)
  return result
