"""What the min-max machinery costs: the dense equal-weight step against the min-max sparse one.

  python -m experiments.benchmark [--models=mlp,cnn,vgg16] [--full] [--steps=N --rounds=R
      --warmup=W] [--batch_size=B] [--nocontrol] [--json_out=bench.json]
  python -m experiments.benchmark --seeds [--num_seeds=10]   (the seed axis: bench_seeds.py)
  python -m experiments.benchmark --grid [--grid_seeds=5]    (a grid on the run axis: bench_grid.py)

For each model, the training steps are built with the library's own
`mmcompress.train.step.make_train_step` (jitted, donated, data-parallel over
`parallel.data_mesh()`) and `mmcompress.train.step.create_train_state` (the min-max one by
`experiments.synthetic.masked_minmax_step`), so what is timed is what the trainer runs:

* dense:  ``saddle_point(optax.sgd(lr, momentum=0.9), weighting.equal().tx)``, the `equal`
  objective, dense parameters;
* minmax: ``saddle_point(sparsity.static_sparse(optax.sgd(lr, momentum=0.9), masks),
  weighting.minmax(...).tx)``, the min-max objective ascending every step, parameters and
  masks from ``magnitude_masks(params, 0.975)`` (the masks live in the optimizer state);
* zeroed (the control, on by default, ``--nocontrol`` drops it): the dense step started from
  the pruned parameters, without masks.

All see the same model, the same batch and the same mesh, and each model trains on the
problem the trainer gives it, fed the first batch the trainer would draw: the MLP and the CNN
on MultiDigits 'classify' (`DigitsProblem`, real images), VGG16 on CIFAR-100 as 20 tasks
(`Cifar100Problem`: a batch per task, one vmapped pass per task through its own batch norm)
with random images in place of the data set (`experiments.synthetic.cifar100_problem`).
Between dense and minmax lies the min-max machinery (the weighted objective, the simplex
projection of the K task weights and its bookkeeping, the masking of gradient, inner params
and update, which XLA may fuse into the optimizer's own elementwise kernels, and the extra
leaves of the state that every call hands over) but also the parameter values: the matrix
products and convolutions stay dense, yet some kernels run at a speed that depends on the data
(on CPU, the gradient of max pooling is faster on inputs with many ties, which 97.5 % zeros
produce). minmax / zeroed removes that second difference and leaves the machinery.

The min-max weighting ascends every step (``every=1``), the most work it can add; the
CIFAR-100 config ascends once per epoch.

Method: each step is called once (the first call's wall time, tracing and compilation
included, is reported as its compile time), then `--warmup` untimed steps, then `--rounds`
interleaved rounds (dense, minmax, zeroed, dense, minmax, zeroed, ...) of `--steps` steps
each, every round ending in `jax.block_until_ready`. The control calls the dense step's own
jitted function (the same computation), so its first call finds it compiled. Reported per
model: the median over rounds of ms/step of each step, the ratio minmax / dense and the
overhead in %, the lowest and highest ratio of single rounds (a wide range means a noisy
machine), the overhead in process CPU time (on a CPU shared with other jobs it is disturbed
less than wall-clock time), minmax / zeroed, the compile times, the XLA memory footprint of
each compiled step (arguments + temporaries, from `memory_analysis`), and the peak memory: the
device's ``memory_stats()["peak_bytes_in_use"]`` where the backend reports it (GPU, TPU), else
the process's peak RSS from `resource.getrusage` (CPU). Both are high-water marks since the
process started, so with several models they include every model run before. A verdict per
model compares minmax / dense with the target "the min-max machinery costs at most 3 % over
the dense step".

Sizes: on a GPU or TPU the defaults are `SETUPS` (VGG16 at the paper's 32 images per task,
640 a step). On a CPU they are `CPU_SETUPS`, small enough that the whole run without flags
ends in under two minutes on 2 cores (VGG16 at one image per task, one step per round):
numbers to check that every step runs and to compare the steps roughly, not to quote;
``--full`` takes `SETUPS` on any platform, and ``--batch_size``, ``--steps``, ``--rounds``,
``--warmup`` override either. The run's first line says which sizes it took.

The numbers depend on the machine, the backend, the JAX version and whatever else runs on
the machine; none are quoted here. Steps that take well under a millisecond (the MLP on CPU)
are dominated by fixed costs per call (handing over each leaf of the state, launching each
small kernel), so the extra state leaves and small kernels of min-max weigh more there than
on a large model.
"""
from __future__ import annotations

import dataclasses
import json
import resource
import statistics
import sys
import time
from collections.abc import Callable, Sequence
from typing import Any

import flax.linen as nn
import jax
import numpy as np
import optax
from absl import flags
from absl import logging as absl_logging

from experiments import bench_grid, bench_seeds, launch, synthetic
from mmcompress import errors, saddle_point, sparsity, weighting
from mmcompress.models import create_model
from mmcompress.problems import Problem
from mmcompress.problems.digits import DigitsProblem
from mmcompress.problems.digits import data as digits
from mmcompress.train import parallel
from mmcompress.train.step import TrainState, make_train_step

TARGET_OVERHEAD = 0.03  # "min-max machinery costs at most 3 % over the dense step"
SPARSITY = 0.975        # 40x, the sparsity of the papers' headline results
LEARNING_RATE = 0.01
MINMAX_LEARNING_RATE = 0.02  # the reference ascent step 1/β, β = 50
MINMAX_GAMMA = 1.0           # any γ costs the same; every=1 below ascends every step


@dataclasses.dataclass(frozen=True)
class Setup:
  """The shape of one model's benchmark.

  Attributes:
    data: ``"digits"``: the trainer's MultiDigits 'classify' problem on its real images,
      ``batch_size`` images a step; ``"cifar100"``: the trainer's CIFAR-100 problem (20 tasks
      of 5 classes, task-major batches, task-conditional batch norm) on random images,
      ``batch_size`` images *per task* a step, as in ``experiments/configs/cifar100.py``.
    batch_size: the default batch (per task for ``"cifar100"``).
    steps: the default timed steps per round.
    rounds: the default rounds per step kind.
    warmup: the default untimed steps after the first call.
    model_options: keyword arguments of `create_model` (none: the model at its full size).
  """
  data: str
  batch_size: int
  steps: int
  rounds: int
  warmup: int
  model_options: dict[str, Any] = dataclasses.field(default_factory=dict)

  @property
  def description(self) -> str:
    if self.data == "digits":
      return "MultiDigits 'classify' (8x8x1 images, 4 tasks of 2/4/2/2 classes)"
    return ("CIFAR-100 as 20 tasks of 5 classes (random 32x32x3 images, batch per task, "
            "task-conditional batch norm)")


SETUPS = {
    "mlp": Setup("digits", batch_size=128, steps=200, rounds=9, warmup=20),
    "cnn": Setup("digits", batch_size=64, steps=100, rounds=9, warmup=10),
    # The paper's batch, 32 per task (640 images a step): sized for an accelerator. On a CPU
    # pass a small --batch_size, e.g. 2 (40 images a step).
    "vgg16": Setup("cifar100", batch_size=32, steps=2, rounds=3, warmup=1),
}

# The defaults on a CPU: the whole run of the three models in under two minutes on 2 cores.
# VGG16's three compilations take most of it; one image per task and one step a round time
# a 20-image step, once, in each of two rounds.
CPU_SETUPS = {
    "mlp": Setup("digits", batch_size=128, steps=100, rounds=5, warmup=10),
    "cnn": Setup("digits", batch_size=64, steps=40, rounds=5, warmup=5),
    "vgg16": Setup("cifar100", batch_size=1, steps=1, rounds=2, warmup=0),
}


def platform_setups(platform: str, full: bool = False) -> tuple[dict[str, Setup], str]:
  """The default sizes for `platform` (``jax.default_backend()``), and a line that says so.

  Args:
    platform: ``"cpu"``, ``"gpu"``, ``"tpu"``, ...
    full: the full sizes (`SETUPS`) whatever the platform.

  Returns:
    ``(setups, line)``: `CPU_SETUPS` on a CPU unless `full`, else `SETUPS`.
  """
  sizes = ", ".join(f"{name} batch {s.batch_size}{' per task' if s.data == 'cifar100' else ''}"
                    f" x {s.steps} steps x {s.rounds} rounds" for name, s in
                    (CPU_SETUPS if platform == "cpu" and not full else SETUPS).items())
  if platform == "cpu" and not full:
    return CPU_SETUPS, (f"Sizes: small, for a CPU ({sizes}); a rough comparison that ends in "
                        "under two minutes on 2 cores. --full for the full sizes.")
  why = "--full" if full and platform == "cpu" else f"on {platform}"
  return SETUPS, f"Sizes: full ({why}; {sizes})."


def make_problem(setup: Setup, batch_size: int, seed: int = 0) -> Problem:
  """The trainer's problem for `setup`, whose first training batch the steps are fed."""
  if setup.data == "digits":
    return DigitsProblem(digits.load_multidigits("classify", seed=seed))
  return synthetic.cifar100_problem(batch_size, seed)


def num_outputs(problem: Problem) -> tuple[int, ...]:
  """Classes per task head."""
  if isinstance(problem, DigitsProblem):
    return tuple(problem.data.num_outputs)
  return tuple(problem.num_outputs)


def build_steps(problem: Problem, model: nn.Module, mesh: jax.sharding.Mesh, *,
                control: bool = True, seed: int = 0
                ) -> dict[str, tuple[Callable, TrainState]]:
  """The jitted steps and their replicated starting states, from parameters of `seed`.

  Keys: ``"dense"`` and ``"minmax"`` (see the module docstring) and, with `control`,
  ``"zeroed"``: the dense equal-weight step started from the pruned parameters, without
  masks. It does what the dense step does on the values the min-max step sees, so
  minmax / zeroed is the cost of the machinery alone, free of any speed that depends on the
  values (on CPU, max-pool gradients run faster on inputs with many ties).
  """
  sparse = synthetic.masked_minmax_step(
      problem, model, sparsity_level=SPARSITY, learning_rate=LEARNING_RATE,
      minmax=weighting.minmax(MINMAX_LEARNING_RATE, gamma=MINMAX_GAMMA, every=1), mesh=mesh,
      seed=seed)
  equal = weighting.equal()
  dense_tx = saddle_point(optax.sgd(LEARNING_RATE, momentum=0.9), equal.tx)

  def dense_state(params):
    return synthetic.replicated_state(params, sparse.model_state, equal, dense_tx,
                                      problem.num_tasks, mesh, seed)

  # The control runs the dense step's own jitted function: one compilation for both.
  dense_step = make_train_step(problem, model, equal, dense_tx, mesh)
  steps = {"dense": (dense_step, dense_state(sparse.params)),
           "minmax": (sparse.step, sparse.state)}
  if control:
    steps["zeroed"] = (dense_step, dense_state(sparsity.apply_masks(sparse.params, sparse.masks)))
  return steps


def _run(step: Callable, state: TrainState, batch: dict, steps: int
         ) -> tuple[TrainState, jax.Array, float, float]:
  """`steps` calls of `step`, waited for; returns (state, last losses, wall s, CPU s)."""
  start, start_cpu = time.perf_counter(), time.process_time()
  losses = None
  for _ in range(steps):
    state, losses = step(state, batch)
  jax.block_until_ready((state, losses))
  return state, losses, time.perf_counter() - start, time.process_time() - start_cpu


def peak_memory() -> tuple[int, str]:
  """(bytes, source): the device's peak bytes in use where reported, else the peak RSS."""
  stats = jax.local_devices()[0].memory_stats()
  if stats and "peak_bytes_in_use" in stats:
    return int(stats["peak_bytes_in_use"]), "device peak_bytes_in_use"
  max_rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
  # Linux reports KiB, macOS bytes.
  return int(max_rss if sys.platform == "darwin" else max_rss * 1024), "process peak RSS"


def _step_footprint(step: Callable, state: TrainState, batch: dict) -> int | None:
  """Arguments + temporaries of the compiled step, in bytes (None if XLA does not say)."""
  analysis = step.lower(state, batch).compile().memory_analysis()
  if analysis is None:
    return None
  return int(analysis.argument_size_in_bytes + analysis.temp_size_in_bytes)


def _compiled_versions(step: Callable) -> int | None:
  size = getattr(step, "_cache_size", None)  # private, hence guarded
  return size() if callable(size) else None


def check_counts(steps: int | None, rounds: int | None, warmup: int | None) -> None:
  if any(v is not None and v < 1 for v in (steps, rounds)) or (warmup or 0) < 0:
    raise errors.UserError(f"need steps >= 1, rounds >= 1 and warmup >= 0, got steps={steps}, "
                           f"rounds={rounds}, warmup={warmup}.")


def check_arguments(models: Sequence[str], setups: dict[str, Setup], batch_size: int | None,
                    steps: int | None, rounds: int | None, warmup: int | None) -> None:
  """Raises a `UserError` for models not in `setups`, a batch size that is not a positive
  multiple of the devices, or counts out of range: every check before the first compute."""
  unknown = [m for m in models if m not in setups]
  if not models or unknown:
    raise errors.UserError(f"--models must name some of {sorted(setups)}, got {list(models)}.")
  if batch_size is not None and batch_size < 1:
    raise errors.UserError(f"--batch_size must be >= 1, got {batch_size}.")
  mesh = parallel.data_mesh()
  for name in models:
    parallel.check_batch_size(setups[name].batch_size if batch_size is None else batch_size,
                              mesh)
  check_counts(steps, rounds, warmup)


@dataclasses.dataclass
class Bench:
  """One model's steps, ready to time: the steps by kind, their current states, the batch.

  The steps donate their states: only `states`, advanced by `_time`, holds live buffers.
  """
  problem: Problem
  steps: dict[str, Callable]
  states: dict[str, TrainState]
  batch: dict
  num_params: int


def _build(name: str, setup: Setup, batch_size: int, mesh: jax.sharding.Mesh, control: bool,
           seed: int) -> Bench:
  """The problem, the model and its steps (`build_steps`), fed the trainer's first batch."""
  problem = make_problem(setup, batch_size, seed)
  model = create_model(name, num_outputs(problem), **setup.model_options)
  built = build_steps(problem, model, mesh, control=control, seed=seed)
  num_params = sum(int(np.size(p)) for p in jax.tree.leaves(built["dense"][1].params))
  # One batch for every step: the first the trainer would draw, split as the trainer splits it.
  batch = parallel.shard_batch(problem.train_batch(seed, 0, 0, batch_size), mesh,
                               problem.batch_axis)
  return Bench(problem, {kind: step for kind, (step, _) in built.items()},
                {kind: state for kind, (_, state) in built.items()}, batch, num_params)


def time_steps(bench: Bench, steps: int, rounds: int, warmup: int) -> dict[str, Any]:
  """Times `bench`'s steps as the module docstring says; advances ``bench.states``.

  Returns ``compile_s``, ``times`` and ``cpu_times`` (ms/step of every round) and
  ``losses_finite`` (of each kind's last round), each by step kind.
  """
  states, compile_s, finite = bench.states, {}, {}
  for kind, step in bench.steps.items():
    states[kind], _, compile_s[kind], _ = _run(step, states[kind], bench.batch, 1)
    states[kind], _, _, _ = _run(step, states[kind], bench.batch, warmup)
  # Interleaved, so that drift in the machine's speed (clocks, other load) hits all alike.
  times = {kind: [] for kind in bench.steps}
  cpu_times = {kind: [] for kind in bench.steps}
  for _ in range(rounds):
    for kind, step in bench.steps.items():
      states[kind], losses, seconds, cpu_seconds = _run(step, states[kind], bench.batch, steps)
      times[kind].append(1e3 * seconds / steps)
      cpu_times[kind].append(1e3 * cpu_seconds / steps)
      finite[kind] = bool(np.all(np.isfinite(np.asarray(losses))))
  return {"compile_s": compile_s, "times": times, "cpu_times": cpu_times,
          "losses_finite": finite}


def step_memory(bench: Bench) -> dict[str, Any]:
  """Whether a step recompiled, each compiled step's footprint, and the peak memory so far."""
  recompiled = {kind: (n > 1 if (n := _compiled_versions(step)) is not None else None)
                for kind, step in bench.steps.items()}
  # After the timed calls this lowering and compilation come from JAX's caches.
  step_bytes = {kind: _step_footprint(step, bench.states[kind], bench.batch)
                for kind, step in bench.steps.items()}
  peak, source = peak_memory()
  return {"recompiled": recompiled, "step_bytes": step_bytes, "peak_memory_bytes": peak,
          "peak_memory_source": source}


def _ratios(times: dict[str, list[float]], cpu_times: dict[str, list[float]]
            ) -> dict[str, Any]:
  """The medians and the minmax / dense (and minmax / zeroed) ratios of the round times."""
  median = {kind: statistics.median(t) for kind, t in times.items()}
  cpu_median = {kind: statistics.median(t) for kind, t in cpu_times.items()}
  result = {
      "ms_per_step": median,
      "rounds_ms": times,
      "ratio": median["minmax"] / median["dense"],
      "overhead": median["minmax"] / median["dense"] - 1.0,
      "pair_ratios": [m / d for d, m in zip(times["dense"], times["minmax"])],
      "cpu_ms_per_step": cpu_median,
      "cpu_rounds_ms": cpu_times,
      "cpu_overhead": cpu_median["minmax"] / cpu_median["dense"] - 1.0,
  }
  if "zeroed" in times:
    result["control_ratio"] = median["minmax"] / median["zeroed"]
    result["control_overhead"] = result["control_ratio"] - 1.0
    result["control_pair_ratios"] = [m / z for z, m in zip(times["zeroed"], times["minmax"])]
  return result


def benchmark_model(name: str, *, batch_size: int | None = None, steps: int | None = None,
                    rounds: int | None = None, warmup: int | None = None,
                    control: bool = True, setup: Setup | None = None,
                    seed: int = 0) -> dict[str, Any]:
  """Times the dense and the min-max sparse step of model `name`; see the module docstring.

  Args:
    name: one of `SETUPS` (``"mlp"``, ``"cnn"``, ``"vgg16"``).
    batch_size, steps, rounds, warmup: override the setup's defaults when not None.
    control: also time the ``"zeroed"`` control step (see `build_steps`).
    setup: the setup to use instead of ``SETUPS[name]``.
    seed: for the parameters and the batch.

  Returns:
    A dict of plain Python values. Per step kind (``"dense"``, ``"minmax"`` and maybe
    ``"zeroed"``): ``ms_per_step`` (median over rounds), ``rounds_ms`` (every round),
    ``compile_s`` (first call), ``step_bytes`` (XLA arguments + temporaries),
    ``losses_finite`` and ``recompiled``. Then ``ratio`` and ``overhead`` (minmax over dense,
    of the medians), ``pair_ratios`` (minmax / dense of each round), ``cpu_ms_per_step``,
    ``cpu_rounds_ms`` and ``cpu_overhead`` (the same in process CPU time), with the control also
    ``control_ratio``, ``control_overhead`` and ``control_pair_ratios`` (minmax over zeroed),
    and ``peak_memory_bytes`` with its ``peak_memory_source``.
  """
  setup = setup or SETUPS[name]
  batch_size = setup.batch_size if batch_size is None else batch_size
  steps = setup.steps if steps is None else steps
  rounds = setup.rounds if rounds is None else rounds
  warmup = setup.warmup if warmup is None else warmup
  mesh = parallel.data_mesh()
  parallel.check_batch_size(batch_size, mesh)
  check_counts(steps, rounds, warmup)
  bench = _build(name, setup, batch_size, mesh, control, seed)
  timing = time_steps(bench, steps, rounds, warmup)
  memory = step_memory(bench)
  problem = bench.problem
  return {
      "model": name,
      "description": setup.description,
      "num_params": bench.num_params,
      "batch_size": batch_size,
      "examples_per_step": batch_size * (problem.num_tasks if problem.batch_axis == 1 else 1),
      "devices": mesh.devices.size,
      "platform": jax.default_backend(),
      "steps": steps,
      "rounds": rounds,
      "warmup": warmup,
      **_ratios(timing["times"], timing["cpu_times"]),
      "compile_s": timing["compile_s"],
      **memory,
      "losses_finite": timing["losses_finite"],
  }


def mib(value: int | None) -> str:
  return "?" if value is None else f"{value / 2**20:.1f}"


def spread(ratios: Sequence[float]) -> str:
  return f"{100 * (min(ratios) - 1):+.1f}..{100 * (max(ratios) - 1):+.1f}"


def format_table(results: Sequence[dict[str, Any]]) -> str:
  """The results as a fixed-width table (control columns show "-" where it was not run)."""
  header = ("model", "batch", "dense ms", "minmax ms", "ratio", "overhead %", "rounds %",
            "CPU-time %", "zeroed ms", "vs zeroed %", "compile s d/m", "step MiB d/m",
            "peak MiB")
  rows = [header]
  for r in results:
    ms = r["ms_per_step"]
    has_control = "control_ratio" in r
    per_task = r["examples_per_step"] != r["batch_size"]
    batch = (f"{r['examples_per_step'] // r['batch_size']}x{r['batch_size']}" if per_task
             else str(r["batch_size"]))
    rows.append((
        r["model"], batch, f"{ms['dense']:.3f}", f"{ms['minmax']:.3f}",
        f"{r['ratio']:.3f}", f"{100 * r['overhead']:+.1f}", spread(r["pair_ratios"]),
        f"{100 * r['cpu_overhead']:+.1f}",
        f"{ms['zeroed']:.3f}" if has_control else "-",
        f"{100 * r['control_overhead']:+.1f}" if has_control else "-",
        f"{r['compile_s']['dense']:.2f} / {r['compile_s']['minmax']:.2f}",
        f"{mib(r['step_bytes']['dense'])} / {mib(r['step_bytes']['minmax'])}",
        mib(r["peak_memory_bytes"])))
  widths = [max(len(row[i]) for row in rows) for i in range(len(header))]
  lines = ["  ".join(cell.rjust(w) for cell, w in zip(row, widths)) for row in rows]
  lines.insert(1, "  ".join("-" * w for w in widths))
  sources = ", ".join(sorted({r["peak_memory_source"] for r in results}))
  lines += [
      "batch: images a step (tasks x batch per task for CIFAR-100); ms: median wall-clock "
      "ms/step over rounds;",
      "ratio, overhead: minmax / dense; rounds %: the lowest and highest minmax / dense of "
      "single rounds;",
      "CPU-time %: the overhead in process CPU time (less disturbed by other processes on a "
      "shared CPU; meaningless for work done on an accelerator);",
      "zeroed: the dense step from the pruned values, no masks; vs zeroed: minmax / zeroed, the "
      "machinery alone; compile: first call (trace, compile, one step);",
      f"step MiB: XLA arguments + temporaries of the compiled step; peak MiB: {sources}, the "
      "process's high-water mark so far (includes every earlier model)."]
  return "\n".join(lines)


def verdict(result: dict[str, Any], target: float = TARGET_OVERHEAD) -> str:
  """One line: the measured overhead against the target, whichever way it comes out."""
  meets = result["overhead"] <= target
  line = (f"{result['model']}: min-max + {100 * SPARSITY:g} % masks cost "
          f"{100 * result['overhead']:+.2f} % over the dense step (median of "
          f"{result['rounds']} rounds; single rounds {spread(result['pair_ratios'])} %) -> "
          f"{'meets' if meets else 'MISSES'} the target of at most {100 * target:g} %.")
  if "control_overhead" in result:
    line += (f" Against the dense step on the same pruned values: "
             f"{100 * result['control_overhead']:+.2f} % "
             f"(single rounds {spread(result['control_pair_ratios'])} %).")
  problems = [f"{kind} recompiled during timing" for kind, bad in result["recompiled"].items()
              if bad]
  problems += [f"{kind} losses not finite" for kind, ok in result["losses_finite"].items()
               if not ok]
  return line + (f" WARNING: {'; '.join(problems)}." if problems else "")


def run(models: Sequence[str], *, batch_size: int | None = None, steps: int | None = None,
        rounds: int | None = None, warmup: int | None = None, control: bool = True,
        json_out: str | None = None, out: Any = sys.stdout,
        setups: dict[str, Setup] | None = None, header: str = "") -> list[dict[str, Any]]:
  """Benchmarks every model of `models`, prints the table and verdicts, returns the results.

  `setups` gives each model's default sizes (`SETUPS` if None; see `platform_setups`); the
  other size arguments override them when not None. `header` (the sizes line) is printed
  once every argument is checked: a mistake is the only line.
  """
  setups = SETUPS if setups is None else setups
  check_arguments(models, setups, batch_size, steps, rounds, warmup)
  launch.check_output_file(json_out, "json_out")
  if header:
    print(header, file=out, flush=True)
  results = []
  for name in models:
    print(f"{name}: {setups[name].description} ...", file=out, flush=True)
    results.append(benchmark_model(name, batch_size=batch_size, steps=steps, rounds=rounds,
                                   warmup=warmup, control=control, setup=setups[name]))
  device = jax.devices()[0]
  print(f"\n{jax.device_count()} x {device.device_kind} ({jax.default_backend()}), "
        f"jax {jax.__version__}", file=out)
  print(format_table(results), file=out)
  for result in results:
    print(verdict(result), file=out)
  if json_out:
    with open(json_out, "w") as f:
      json.dump(results, f, indent=1, sort_keys=True)
  return results


_MODELS = flags.DEFINE_list("models", ["mlp", "cnn", "vgg16"],
                            f"Models to benchmark, from {list(SETUPS)}.")
_FULL = flags.DEFINE_bool("full", False,
                          "The full sizes on any platform (VGG16 at the paper's 32 images per "
                          "task); without it a CPU run takes small sizes.")
_BATCH_SIZE = flags.DEFINE_integer(
    "batch_size", None, "Global batch for every model, per task for vgg16 (CIFAR-100) "
    "(default: per model and platform).")
_STEPS = flags.DEFINE_integer("steps", None,
                              "Timed steps per round (default: per model and platform).")
_ROUNDS = flags.DEFINE_integer("rounds", None,
                               "Rounds per step kind (default: per model and platform).")
_WARMUP = flags.DEFINE_integer(
    "warmup", None, "Untimed steps after the first call (default: per model and platform).")
_CONTROL = flags.DEFINE_bool("control", True,
                             "Also time the dense step from the pruned values (--nocontrol: "
                             "only the two steps).")
_JSON_OUT = flags.DEFINE_string("json_out", None, "Also write the results to this JSON file.")
_SEEDS = flags.DEFINE_bool("seeds", False,
                           "Instead of the steps: the digits comparison with 1 seed and with "
                           "--num_seeds seeds on the seed axis (experiments/bench_seeds.py).")
_NUM_SEEDS = flags.DEFINE_integer("num_seeds", 10, "Seeds on the seed axis for --seeds.")
_GRID = flags.DEFINE_bool("grid", False,
                          "Instead of the steps: the digits comparison with 1 variant and with "
                          "a grid of 10 variants on the run axis (experiments/bench_grid.py).")
_GRID_SEEDS = flags.DEFINE_integer(
    "grid_seeds", bench_grid.NUM_SEEDS, "Seeds of each variant for --grid.")


def main(argv: Sequence[str]) -> None:
  del argv
  launch.check_output_file(_JSON_OUT.value, "json_out")
  if (_SEEDS.value or _GRID.value) and not flags.FLAGS["verbosity"].present:
    absl_logging.set_verbosity(absl_logging.WARNING)  # whole comparisons: orbax's INFO lines
  if _SEEDS.value:
    if _NUM_SEEDS.value < 1:
      raise errors.UserError(f"--num_seeds must be >= 1, got {_NUM_SEEDS.value}.")
    bench_seeds.run(_NUM_SEEDS.value, json_out=_JSON_OUT.value)
    return
  if _GRID.value:
    if _GRID_SEEDS.value < 1:
      raise errors.UserError(f"--grid_seeds must be >= 1, got {_GRID_SEEDS.value}.")
    bench_grid.run(_GRID_SEEDS.value, json_out=_JSON_OUT.value)
    return
  setups, sizing = platform_setups(jax.default_backend(), full=_FULL.value)
  run(_MODELS.value, batch_size=_BATCH_SIZE.value, steps=_STEPS.value, rounds=_ROUNDS.value,
      warmup=_WARMUP.value, control=_CONTROL.value, json_out=_JSON_OUT.value, setups=setups,
      header=sizing)


if __name__ == "__main__":
  launch.run_main(main)
