"""Runs a few min-max masked training steps on however many devices XLA_FLAGS gives.

Run as a script by tests/test_trainer.py, once with one CPU device and once with eight
(``--xla_force_host_platform_device_count``), to check that data parallelism changes nothing
but the speed. Prints one JSON line.
"""
import json
import sys

import jax
import jax.numpy as jnp
import numpy as np
import optax

from mmcompress import saddle_point, sparsity, weighting
from mmcompress.problems.digits import data as digits
from mmcompress.models import create_model
from mmcompress.problems.digits import DigitsProblem
from mmcompress.train import parallel, step


def main(batch_size: int) -> dict:
  mesh = parallel.data_mesh()
  parallel.check_batch_size(batch_size, mesh)
  data = digits.load_multidigits("classify", seed=0)
  problem = DigitsProblem(data)
  model = create_model("mlp", data.num_outputs, hidden=(64, 64))
  variables = model.init(jax.random.key(0), jnp.zeros((1, 8, 8, 1)), train=False)
  params = variables["params"]
  masks = sparsity.magnitude_masks(params, 0.9)
  params = sparsity.apply_masks(params, masks)
  minmax = weighting.minmax(0.5, gamma=0.5)
  tx = saddle_point(sparsity.static_sparse(optax.sgd(0.1, momentum=0.9), masks), minmax.tx)
  state = step.create_train_state(params, {}, minmax, tx, data.num_tasks, jax.random.key(1))
  state = parallel.replicate(state, mesh)
  train_step = step.make_train_step(problem, model, minmax, tx, mesh)
  losses = []
  for i in range(6):
    batch = parallel.shard_batch(problem.train_batch(0, 0, i, batch_size), mesh)
    state, task_losses = train_step(state, batch)
    losses.append(np.asarray(task_losses).tolist())
  kernel = np.asarray(state.params["trunk"]["Dense_0"]["kernel"])
  return {"devices": jax.device_count(), "losses": losses,
          "task_weights": np.asarray(state.task_params).tolist(),
          "kernel_sum": float(np.abs(kernel).sum()),
          "kernel_zeros": int((kernel == 0).sum()),
          "batch_sharding": str(batch["images"].sharding.spec)}


if __name__ == "__main__":
  print(json.dumps(main(int(sys.argv[1]))))
