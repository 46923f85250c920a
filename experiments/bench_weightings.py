"""What each task weighting costs: its training step against the equal step, on one model.

  python -m experiments.bench_weightings [--models=mlp,cnn] [--methods=equal,mgda,...]
      [--full] [--steps=N --rounds=R --warmup=W] [--batch_size=B] [--json_out=w.json]

(the flags but --methods are `experiments.benchmark`'s; --models defaults to mlp,cnn here,
VGG16 needing an accelerator for 15 methods)

Every registered weighting (`mmcompress.weighting.WEIGHTINGS`, loss- and gradient-level) is
built with its published defaults (`weighting.create(name)`) into the step the trainer runs at
40x: ``saddle_point(static_sparse(chain([aggregator,] sgd(lr, momentum=0.9)), masks),
weighting.tx)`` with ``masks = magnitude_masks(params, 0.975)``, by
`mmcompress.train.step.make_train_step` (jitted, donated, data-parallel). All start from the
same pruned parameters and are fed the same batch, the first the trainer would draw, on the
problem of `experiments.benchmark` (the MLP and the CNN on MultiDigits 'classify', 4 tasks;
VGG16 on CIFAR-100 as 20 tasks, on an accelerator).

Method (as `experiments.benchmark`): each step is called once (its compile time), then
`--warmup` untimed steps, then `--rounds` interleaved rounds of `--steps` steps of every
method in turn, so that drift in the machine's speed hits all alike. Reported per model and
method: the median ms/step, its ratio to the equal step's, the lowest and highest ratio of
single rounds, the compile time, and the memory of the compiled step (XLA's arguments +
temporaries, `memory_analysis`) with its ratio to the equal step's: the per-method peak
memory, since a process-wide high-water mark cannot tell methods apart in one process.

Per model, two more lines: the time of the prune stage's Taylor scoring for task-aware masks
(`mmcompress.train.scoring.calibration_scores` on 8 calibration batches, as the base config)
against one training epoch of the equal step; and ``per-task gradients (K=4): X.XX x one
gradient``, the K per-task gradients of `mmcompress.weighting.per_task_grads` (its default
mode, and each mode) against one gradient of the summed losses, jitted, on one batch.

A loss-level method adds a few scalar operations to the equal step. A gradient-level method
differentiates K task objectives instead of one (a vmapped VJP: K backward passes through the
shared network), computes the K x K Gram matrix of the per-task gradients, solves for the
task weights (an iterative solver for MGDA, UPGrad, Nash-MTL, FairGrad, CAGrad) and combines
the K gradients; DB-MTL also keeps a moving average of all K gradients (K x the shared
parameters in its state). No number is quoted here: they depend on the machine.
"""
from __future__ import annotations

import json
import statistics
import sys
import time
from collections.abc import Sequence
from typing import Any

import jax
import numpy as np
from absl import flags

from experiments import benchmark, launch, synthetic
from mmcompress import _checks, sparsity, weighting
from mmcompress.models import create_model
from mmcompress.train import parallel, scoring
from mmcompress.train.step import make_train_step

BASELINE = "equal"
CALIBRATION_BATCHES = 8  # the base config's prune.calibration_batches


def _family(name: str) -> str:
  return "gradient" if weighting.create(name).aggregate is not None else "loss"


def build(model_name: str, setup: benchmark.Setup, methods: Sequence[str], batch_size: int,
          mesh: jax.sharding.Mesh, seed: int = 0) -> benchmark.Bench:
  """Every method's 40x training step on one model, ready to time (see the module docstring)."""
  problem = benchmark.make_problem(setup, batch_size, seed)
  model = create_model(model_name, benchmark.num_outputs(problem), **setup.model_options)
  params, model_state = synthetic.step.init_variables(model, problem, seed)
  masks = sparsity.magnitude_masks(params, benchmark.SPARSITY)
  pruned = sparsity.apply_masks(params, masks)
  steps, states = {}, {}
  for name in methods:
    w = weighting.create(name)
    tx = synthetic.masked_tx(w, masks, benchmark.LEARNING_RATE, problem.num_tasks, seed)
    states[name] = synthetic.replicated_state(pruned, model_state, w, tx, problem.num_tasks,
                                              mesh, seed)
    steps[name] = make_train_step(problem, model, w, tx, mesh)
  batch = parallel.shard_batch(problem.train_batch(seed, 0, 0, batch_size), mesh,
                               problem.batch_axis)
  num_params = sum(int(np.size(p)) for p in jax.tree.leaves(params))
  return benchmark.Bench(problem, steps, states, batch, num_params)


def _model(bench: benchmark.Bench, model_name: str, setup: benchmark.Setup, seed: int
           ) -> tuple[Any, Any, Any]:
  """The model of `bench`'s problem and its fresh (dense) parameters and other collections."""
  model = create_model(model_name, benchmark.num_outputs(bench.problem), **setup.model_options)
  return (model, *synthetic.step.init_variables(model, bench.problem, seed))


def calibration_seconds(bench: benchmark.Bench, model_name: str, setup: benchmark.Setup,
                        batch_size: int, mesh: jax.sharding.Mesh, seed: int = 0
                        ) -> tuple[float, float]:
  """(first, compiled): wall seconds of the prune stage's Taylor scoring
  (`scoring.calibration_scores`) on `CALIBRATION_BATCHES` training batches, the first call
  (compilation included: once per experiment) and the median of three compiled calls."""
  problem = bench.problem
  model, params, model_state = _model(bench, model_name, setup, seed)
  batches = [problem.train_batch(seed, 2, step, batch_size)
             for step in range(CALIBRATION_BATCHES)]
  step = scoring.make_scoring_step(problem, model, mesh)
  times = []
  for _ in range(4):
    start = time.perf_counter()
    jax.block_until_ready(scoring.calibration_scores(step, params, model_state, batches, mesh,
                                                     problem.batch_axis, seed))
    times.append(time.perf_counter() - start)
  return times[0], statistics.median(times[1:])


def gradient_seconds(bench: benchmark.Bench, model_name: str, setup: benchmark.Setup,
                     batch_size: int, steps: int, rounds: int, seed: int = 0
                     ) -> dict[str, float]:
  """Median seconds of one jitted call: one gradient of the summed task losses (``one``), and
  the K per-task gradients of `mmcompress.weighting.per_task_grads` in each of its ways
  (``unrolled``, ``vmap``; ``auto`` is the one of them it picks, `weighting.grad_mode`, not
  timed again), on the model's parameters and one training batch, timed in `rounds`
  interleaved rounds of `steps` calls each."""
  problem = bench.problem
  model, params, model_state = _model(bench, model_name, setup, seed)
  batch = problem.train_batch(seed, 0, 0, batch_size)
  rng = jax.random.key(seed)

  def losses(p):
    return problem.task_losses(model, p, model_state, batch, rng)[0]

  calls = {"one": jax.jit(jax.grad(lambda p: losses(p).sum()))}
  for mode in ("unrolled", "vmap"):
    calls[mode] = jax.jit(lambda p, m=mode: weighting.per_task_grads(losses, p, mode=m)[1])
  for call in calls.values():
    jax.block_until_ready(call(params))  # compiled before any timing
  times = {name: [] for name in calls}
  for _ in range(rounds):
    for name, call in calls.items():
      start = time.perf_counter()
      for _ in range(steps):
        out = call(params)
      jax.block_until_ready(out)
      times[name].append((time.perf_counter() - start) / steps)
  out = {name: statistics.median(t) for name, t in times.items()}
  out["auto"] = out[weighting.grad_mode("auto", problem.num_tasks)]
  return out


def benchmark_model(model_name: str, setup: benchmark.Setup, methods: Sequence[str], *,
                    batch_size: int | None = None, steps: int | None = None,
                    rounds: int | None = None, warmup: int | None = None) -> dict[str, Any]:
  """Times every method's step on one model; returns plain Python values (per method:
  ``ms_per_step``, ``ratio``, ``pair_ratios``, ``compile_s``, ``step_bytes``,
  ``memory_ratio``, ``losses_finite``, ``recompiled``, ``family``)."""
  batch_size = setup.batch_size if batch_size is None else batch_size
  steps = setup.steps if steps is None else steps
  rounds = setup.rounds if rounds is None else rounds
  warmup = setup.warmup if warmup is None else warmup
  mesh = parallel.data_mesh()
  bench = build(model_name, setup, methods, batch_size, mesh)
  timing = benchmark.time_steps(bench, steps, rounds, warmup)
  memory = benchmark.step_memory(bench)
  median = {m: statistics.median(t) for m, t in timing["times"].items()}
  base_bytes = memory["step_bytes"][BASELINE]
  per_method = {}
  for m in methods:
    step_bytes = memory["step_bytes"][m]
    per_method[m] = {
        "family": _family(m),
        "ms_per_step": median[m],
        "ratio": median[m] / median[BASELINE],
        "pair_ratios": [a / b for a, b in zip(timing["times"][m], timing["times"][BASELINE])],
        "compile_s": timing["compile_s"][m],
        "step_bytes": step_bytes,
        "memory_ratio": (step_bytes / base_bytes if step_bytes and base_bytes else None),
        "losses_finite": timing["losses_finite"][m],
        "recompiled": memory["recompiled"][m],
    }
  scoring_first_s, scoring_s = calibration_seconds(bench, model_name, setup, batch_size, mesh)
  gradients = gradient_seconds(bench, model_name, setup, batch_size, steps, rounds)
  epoch_steps = bench.problem.steps_per_epoch(batch_size)
  return {"model": model_name, "description": setup.description,
          "calibration_batches": CALIBRATION_BATCHES, "scoring_s": scoring_s,
          "scoring_first_s": scoring_first_s,
          "epoch_steps": epoch_steps,
          "scoring_epochs": scoring_s / (epoch_steps * median[BASELINE] / 1e3),
          "num_params": bench.num_params, "batch_size": batch_size,
          "gradient_s": gradients,
          "per_task_gradient_ratio": gradients["auto"] / gradients["one"],
          "num_tasks": bench.problem.num_tasks, "platform": jax.default_backend(),
          "devices": mesh.devices.size, "steps": steps, "rounds": rounds, "warmup": warmup,
          "methods": per_method, "peak_memory_bytes": memory["peak_memory_bytes"],
          "peak_memory_source": memory["peak_memory_source"]}


def format_table(result: dict[str, Any]) -> str:
  """One model's methods as a fixed-width table, fastest family first as registered."""
  header = ("method", "family", "ms/step", "x equal", "rounds x", "compile s", "step MiB",
            "x equal mem")
  rows = [header]
  for name, r in result["methods"].items():
    low, high = min(r["pair_ratios"]), max(r["pair_ratios"])
    flags_ = ("" if r["losses_finite"] else " NaN") + (" RECOMPILED" if r["recompiled"] else "")
    rows.append((name + flags_, r["family"], f"{r['ms_per_step']:.3f}", f"{r['ratio']:.2f}",
                 f"{low:.2f}..{high:.2f}", f"{r['compile_s']:.2f}", benchmark.mib(r["step_bytes"]),
                 "?" if r["memory_ratio"] is None else f"{r['memory_ratio']:.2f}"))
  widths = [max(len(row[i]) for row in rows) for i in range(len(header))]
  lines = ["  ".join(cell.rjust(w) for cell, w in zip(row, widths)) for row in rows]
  lines.insert(1, "  ".join("-" * w for w in widths))
  return "\n".join(lines)


def check_arguments(models: Sequence[str], methods: Sequence[str],
                    setups: dict[str, benchmark.Setup], batch_size: int | None,
                    steps: int | None, rounds: int | None, warmup: int | None,
                    json_out: str | None) -> None:
  """`benchmark.check_arguments`, the methods and the output file: a `UserError` before
  any compute."""
  launch.check_output_file(json_out, "json_out")
  for m in methods:
    _checks.one_of(m, tuple(weighting.WEIGHTINGS), "--methods entry")
  benchmark.check_arguments(models, setups, batch_size, steps, rounds, warmup)


def run(models: Sequence[str], methods: Sequence[str], *, setups: dict[str, benchmark.Setup],
        batch_size: int | None = None, steps: int | None = None, rounds: int | None = None,
        warmup: int | None = None, json_out: str | None = None,
        out: Any = sys.stdout, header: str = "") -> list[dict[str, Any]]:
  """Benchmarks `methods` on every model of `models`; prints a table per model (after
  `header`, the sizes line, once every argument is checked)."""
  check_arguments(models, methods, setups, batch_size, steps, rounds, warmup, json_out)
  if header:
    print(header, file=out, flush=True)
  methods = [BASELINE] + [m for m in methods if m != BASELINE]
  results = []
  for name in models:
    print(f"{name}: {setups[name].description}, {len(methods)} methods ...", file=out,
          flush=True)
    result = benchmark_model(name, setups[name], methods, batch_size=batch_size, steps=steps,
                             rounds=rounds, warmup=warmup)
    results.append(result)
    print(f"\n{name} ({result['num_params']} parameters, batch {result['batch_size']}, "
          f"{result['num_tasks']} tasks, {result['devices']} x {jax.devices()[0].device_kind}, "
          f"jax {jax.__version__}, {result['rounds']} rounds of {result['steps']} steps):",
          file=out)
    print(format_table(result), file=out)
    print(f"Taylor scoring for task-aware pruning ({result['calibration_batches']} calibration "
          f"batches, K per-task gradients each): {result['scoring_s']:.3f} s compiled, "
          f"{result['scoring_epochs']:.2f} x one training epoch of the equal step "
          f"({result['epoch_steps']} steps); the first call, compilation included (once per "
          f"experiment): {result['scoring_first_s']:.2f} s.", file=out)
    g = result["gradient_s"]
    print(f"per-task gradients (K={result['num_tasks']}): "
          f"{result['per_task_gradient_ratio']:.2f} x one gradient ({g['auto'] * 1e3:.2f} ms "
          f"against {g['one'] * 1e3:.2f} ms; unrolled {g['unrolled'] * 1e3:.2f} ms, vmap "
          f"{g['vmap'] * 1e3:.2f} ms; the default mode, auto, picks "
          f"{weighting.grad_mode('auto', result['num_tasks'])})", file=out, flush=True)
  print("x equal: median ms/step over the equal step's; rounds x: the lowest and highest of "
        "single rounds; step MiB: XLA arguments + temporaries of the compiled step.", file=out)
  if json_out:
    with open(json_out, "w") as f:
      json.dump(results, f, indent=1, sort_keys=True)
  return results


# The sizes and output flags are `experiments.benchmark`'s (defined when it is imported):
# --models, --full, --batch_size, --steps, --rounds, --warmup, --json_out.
_METHODS = flags.DEFINE_list("methods", None,
                             "Weightings to time (default: every registered one); equal is "
                             "always timed, as the baseline.")
FLAGS = flags.FLAGS


def main(argv: Sequence[str]) -> None:
  del argv
  setups, _ = benchmark.platform_setups(jax.default_backend(), full=FLAGS.full)
  models = [m for m in FLAGS.models if m != "vgg16"] if not FLAGS["models"].present else (
      FLAGS.models)
  methods = _METHODS.value or list(weighting.WEIGHTINGS)
  which = "full" if setups is benchmark.SETUPS else "small, for a CPU; --full for the full ones"
  header = f"Sizes ({which}): " + ", ".join(
      f"{m} batch {setups[m].batch_size} x {setups[m].steps} steps x {setups[m].rounds} rounds"
      for m in models if m in setups) + "."
  run(models, methods, setups=setups,
      batch_size=FLAGS.batch_size, steps=FLAGS.steps, rounds=FLAGS.rounds,
      warmup=FLAGS.warmup, json_out=FLAGS.json_out, header=header)


if __name__ == "__main__":
  launch.run_main(main)
