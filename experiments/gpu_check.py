"""Checks the paper's two models on an accelerator before a long run, and times them.

  python -m experiments.gpu_check                 # full size: VGG16 on CIFAR-100 (20 tasks ×
                                                  # 32 images, 32×32), MTAN on NYUv2 (288×384)
  python -m experiments.gpu_check --small         # reduced size, for a CPU smoke test

For each model it builds the same problem class the experiment uses, on synthetic data of the
real shapes (no data set needed), masks the shared weights at 97.5 %, and runs the jitted,
donated, data-parallel min-max step: it checks that every task loss stays finite and that the
pruned weights are exactly zero with exactly the masked count, then prints ms/step (median of
the timed steps after one compiling step), compile time and peak device memory (from the
device's `memory_stats()`, where the backend reports it). Exits non-zero if a check fails.
Numbers depend on the machine; none are recorded here until someone runs it on one.
"""
import statistics
import tempfile
import time

import jax
import numpy as np
from absl import flags

from experiments import launch, synthetic
from mmcompress import _checks, sparsity, weighting
from mmcompress.models import create_model
from mmcompress.problems.cifar100 import Cifar100Problem
from mmcompress.train import parallel

_SMALL = flags.DEFINE_bool("small", False, "Reduced widths and resolution (CPU smoke test).")
_STEPS = flags.DEFINE_integer("steps", 10, "Timed steps per model.")
_SPARSITY = 0.975


def _cifar(small: bool, workdir: str):
  del workdir
  rng = np.random.default_rng(0)  # train, val and test drawn in turn from one stream
  batch = 2 if small else 32
  problem = Cifar100Problem(*(synthetic.cifar100_split(per_class, rng)
                              for per_class in (2 * batch // 5 + 2, 1, 1)))
  model = create_model("vgg16", problem.num_outputs, width=0.125 if small else 1.0)
  return problem, model, batch


def _nyuv2(small: bool, workdir: str):
  height, width = (64, 96) if small else (288, 384)
  problem = synthetic.nyuv2_problem(f"{workdir}/nyuv2", 4, 2, height=height, width=width,
                                    val_fraction=0.25)
  filters = (8, 16, 16, 32, 32) if small else (64, 128, 256, 512, 512)
  return problem, create_model("mtan", problem.num_outputs, filters=filters), 2


def check_model(name, problem, model, batch_size, steps):
  """Runs `steps` timed min-max masked steps; returns the measurements and check results."""
  mesh = parallel.data_mesh()
  parallel.check_batch_size(batch_size, mesh)
  sparse = synthetic.masked_minmax_step(problem, model, sparsity_level=_SPARSITY,
                                        learning_rate=0.01,
                                        minmax=weighting.minmax(0.02, gamma=5.0), mesh=mesh)
  train_step, state, masks = sparse.step, sparse.state, sparse.masks
  batches = [parallel.shard_batch(problem.train_batch(0, 0, i, batch_size), mesh,
                                  problem.batch_axis) for i in range(2)]
  started = time.perf_counter()
  state, losses = train_step(state, batches[0])
  jax.block_until_ready(losses)
  compile_s = time.perf_counter() - started
  times, finite = [], bool(np.all(np.isfinite(np.asarray(losses))))
  for i in range(steps):
    started = time.perf_counter()
    state, losses = train_step(state, batches[i % 2])
    jax.block_until_ready(losses)
    times.append(time.perf_counter() - started)
    finite &= bool(np.all(np.isfinite(np.asarray(losses))))
  stats = sparsity.summary(jax.device_get(state.params), jax.device_get(masks))
  pruned_zero = all(bool(np.all(np.asarray(p)[~np.asarray(m)] == 0))
                    for p, m in zip(jax.tree.leaves(state.params), jax.tree.leaves(masks)))
  memory = jax.local_devices()[0].memory_stats() or {}
  return {"model": name, "device": jax.devices()[0].device_kind, "devices": jax.device_count(),
          "ms_per_step": 1e3 * statistics.median(times), "compile_s": compile_s,
          "peak_bytes": memory.get("peak_bytes_in_use"), "losses_finite": finite,
          "pruned_weights_zero": pruned_zero, "sparsity": stats["sparsity"]}


def main(argv):
  del argv
  _checks.positive_int(_STEPS.value, "--steps")
  failed = False
  with tempfile.TemporaryDirectory() as workdir:
    for name, build in (("vgg16/cifar100", _cifar), ("mtan/nyuv2", _nyuv2)):
      problem, model, batch_size = build(_SMALL.value, workdir)
      r = check_model(name, problem, model, batch_size, _STEPS.value)
      peak = f"{r['peak_bytes'] / 2**20:.0f} MiB" if r["peak_bytes"] else "not reported"
      ok = r["losses_finite"] and r["pruned_weights_zero"] and abs(r["sparsity"] - _SPARSITY) < 1e-3
      failed |= not ok
      print(f"{name:15s} on {r['devices']}× {r['device']}: {r['ms_per_step']:.1f} ms/step, "
            f"compile {r['compile_s']:.1f} s, peak memory {peak}, sparsity "
            f"{r['sparsity']:.4f}, losses finite: {r['losses_finite']}, pruned weights zero: "
            f"{r['pruned_weights_zero']} -> {'OK' if ok else 'FAILED'}", flush=True)
  if failed:
    raise SystemExit(1)


if __name__ == "__main__":
  launch.run_main(main)
