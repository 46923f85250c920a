"""Runs a few masked training steps, min-max and Nash-MTL, on however many devices XLA_FLAGS
gives.

Run as a script by tests/test_trainer.py, once with one CPU device and once with eight
(``--xla_force_host_platform_device_count``), to check that data parallelism changes nothing
but the speed. Prints one JSON line.
"""
import json
import sys

import jax
import numpy as np
import optax

from experiments import synthetic
from mmcompress import saddle_point, sparsity, weighting
from mmcompress.models import create_model
from mmcompress.problems.digits import DigitsProblem
from mmcompress.problems.digits import data as digits
from mmcompress.train import parallel, run_axis
from mmcompress.train.step import init_variables, make_train_step


def gradient_level_losses(problem, model, sparse, mesh, batch_size, name):
  """The task losses and logged weights of a few steps of gradient-level weighting `name`
  (per-task gradients of the sharded batch, aggregated inside the masks)."""
  w = weighting.create(name)
  inner = optax.chain(w.aggregate(problem.num_tasks, 0), optax.sgd(0.1, momentum=0.9))
  tx = saddle_point(sparsity.static_sparse(inner, sparse.masks), w.tx)
  state = synthetic.replicated_state(sparsity.apply_masks(sparse.params, sparse.masks),
                                     sparse.model_state, w, tx, problem.num_tasks, mesh, 1)
  train_step = make_train_step(problem, model, w, tx, mesh)
  losses = []
  for i in range(4):
    batch = parallel.shard_batch(problem.train_batch(0, 0, i, batch_size), mesh)
    state, task_losses = train_step(state, batch)
    losses.append(np.asarray(task_losses).tolist())
  weights = weighting.current_weights(w, state.task_params, state.task_state, state.opt_state)
  return {"losses": losses, "task_weights": np.asarray(weights).tolist()}


def seed_axis_losses(problem, model, mesh, batch_size, seed_sharded, seeds=8, steps=3):
  """The (steps, seeds, K) task losses of min-max on the seed axis, each seed's batch split
  over the devices or the seeds themselves split over them."""
  assert not seed_sharded or run_axis.can_shard(seeds, mesh)
  w = weighting.minmax(0.5, gamma=0.5)
  tx = saddle_point(optax.sgd(0.1, momentum=0.9), w.tx)
  states = run_axis.stack([
      synthetic.replicated_state(*init_variables(model, problem, seed), w, tx,
                                 problem.num_tasks, mesh, seed) for seed in range(seeds)])
  states = jax.device_put(states, run_axis.state_sharding(mesh, seed_sharded))
  seeds_step = run_axis.make_runs_train_step(problem, model, w, tx, mesh,
                                             sharded=seed_sharded, num_runs=seeds)
  alive = np.ones(seeds, bool)
  losses = []
  for i in range(steps):
    batches = run_axis.stacked_batches(problem, range(seeds), 0, i, batch_size)
    batches = jax.device_put(batches, run_axis.batch_sharding(mesh, problem.batch_axis,
                                                               seed_sharded))
    states, alive, task_losses = seeds_step(states, alive, batches)
    losses.append(np.asarray(task_losses).tolist())
  return losses


def main(batch_size: int) -> dict:
  mesh = parallel.data_mesh()
  parallel.check_batch_size(batch_size, mesh)
  data = digits.load_multidigits("classify", seed=0)
  problem = DigitsProblem(data)
  model = create_model("mlp", data.num_outputs, hidden=(64, 64))
  sparse = synthetic.masked_minmax_step(problem, model, sparsity_level=0.9, learning_rate=0.1,
                                        minmax=weighting.minmax(0.5, gamma=0.5), mesh=mesh,
                                        seed=0, state_seed=1)
  train_step, state = sparse.step, sparse.state
  losses = []
  for i in range(6):
    batch = parallel.shard_batch(problem.train_batch(0, 0, i, batch_size), mesh)
    state, task_losses = train_step(state, batch)
    losses.append(np.asarray(task_losses).tolist())
  kernel = np.asarray(state.params["trunk"]["Dense_0"]["kernel"])
  nash = gradient_level_losses(problem, model, sparse, mesh, batch_size, "nash_mtl")
  seeds = {mode: seed_axis_losses(problem, model, mesh, batch_size, mode == "seed_sharded")
           for mode in ("batch_split", "seed_sharded")}
  return {"devices": jax.device_count(), "losses": losses, "nash_mtl": nash,
          "seed_axis": seeds,
          "task_weights": np.asarray(state.task_params).tolist(),
          "kernel_sum": float(np.abs(kernel).sum()),
          "kernel_zeros": int((kernel == 0).sum()),
          "batch_sharding": str(batch["images"].sharding.spec)}


if __name__ == "__main__":
  print(json.dumps(main(int(sys.argv[1]))))
