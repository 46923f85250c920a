"""Checks the paper's two models on an accelerator before a long run, and times them.

  python -m experiments.gpu_check                 # full size: VGG16 on CIFAR-100 (20 tasks ×
                                                  # 32 images, 32×32), MTAN on NYUv2 (288×384)
  python -m experiments.gpu_check --all           # and the weightings' costs, a scenes study
                                                  # and the run axis's grid benchmark
  python -m experiments.gpu_check --all --small   # reduced sizes, for a CPU smoke test
  (--steps=N: the timed steps of each model's step, 10 by default; --out_dir=FOLDER with --all)

For each model it builds the same problem class the experiment uses, on synthetic data of the
real shapes (no data set needed), masks the shared weights at 97.5 %, and runs the jitted,
donated, data-parallel step under min-max (and, with ``--all``, under equal and UPGrad too):
it checks that every task loss stays finite and that the pruned weights are exactly zero with
exactly the masked count, then prints ms/step (median of the timed steps after one compiling
step), compile time and peak device memory (from the device's `memory_stats()`, where the
backend reports it). Exits non-zero if a check fails.

``--all`` adds, into one JSON and one Markdown table in ``--out_dir`` (``gpu_check.json``,
``gpu_check.md``):

* the weightings' cost table (`experiments.bench_weightings`) at the platform's sizes (the
  full ones on an accelerator: the MLP, the CNN and VGG16; ``--small``: the CPU sizes);
* the scenes study (`mmcompress.app.study`, the ``scenes_gpu`` preset: more and larger scenes,
  a wider MTAN, longer retraining; ``--small``: ``scenes_quick``) in ``--out_dir/scenes``, and
  whether every method's compressed model beats the trivial predictor (the training maps'
  constant, `mmcompress.problems.scenes.trivial_metrics`) on every task;
* at full size, the run axis's grid benchmark (`experiments.bench_grid`: 10 variants × 5
  seeds against 1 × 5 of the digits comparison), whose ratio a 2-core CPU cannot bring under
  its goal (docs/running.md).

Numbers depend on the machine; none are recorded in the repository until someone runs it on a
GPU (docs/benchmarks.md says which were).
"""
from __future__ import annotations

import json
import os
import statistics
import tempfile
import time
from collections.abc import Callable, Sequence
from typing import Any

import jax
import numpy as np
from absl import flags

from experiments import bench_grid, bench_weightings, benchmark, launch, synthetic
from experiments.configs import study as study_config
from mmcompress import _checks, _files, errors, problems, sparsity, weighting
from mmcompress.app import study
from mmcompress.models import create_model
from mmcompress.problems import scenes
from mmcompress.problems.scenes import problem as scenes_problem
from mmcompress.problems.cifar100 import Cifar100Problem
from mmcompress.problems.digits import DigitsProblem
from mmcompress.problems.digits import data as digits_data
from mmcompress.train import parallel

_SMALL = flags.DEFINE_bool("small", False, "Reduced widths and resolution (CPU smoke test).")
_ALL = flags.DEFINE_bool("all", False, "Also the steps under equal and UPGrad, the weightings' "
                         "cost table and the scenes study; writes --out_dir.")
_OUT = flags.DEFINE_string("out_dir", "gpu_check", "Folder for gpu_check.json, gpu_check.md and "
                           "the scenes study (with --all).")
_SPARSITY = 0.975
# The weightings of the model steps: min-max alone by default, these three with --all.
STEP_METHODS = ("equal", "minmax", "upgrad")


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


def _digits(small: bool, workdir: str):
  del small, workdir
  problem = DigitsProblem(digits_data.load_multidigits("classify"))
  return problem, create_model("mlp", problem.num_outputs), 64


# The paper's two models, checked by default; and the digits MLP (``step_models`` of
# `run_all`), a step check that compiles in seconds, for smoke runs.
MODELS = {"vgg16/cifar100": _cifar, "mtan/nyuv2": _nyuv2}
EXTRA_MODELS = {"mlp/digits": _digits}


def _weighting(name: str) -> weighting.TaskWeighting:
  """The step's weighting: min-max at the paper's ascent rate and γ, else the published
  defaults (`weighting.create`)."""
  return weighting.minmax(0.02, gamma=5.0) if name == "minmax" else weighting.create(name)


def check_model(name, problem, model, batch_size, steps, method: str = "minmax"):
  """Runs `steps` timed masked steps under `method`; returns the measurements and checks."""
  mesh = parallel.data_mesh()
  parallel.check_batch_size(batch_size, mesh)
  sparse = synthetic.masked_step(problem, model, sparsity_level=_SPARSITY, learning_rate=0.01,
                                 task_weighting=_weighting(method), mesh=mesh)
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
  ok = finite and pruned_zero and abs(stats["sparsity"] - _SPARSITY) < 1e-3
  return {"model": name, "method": method, "device": jax.devices()[0].device_kind,
          "devices": jax.device_count(), "ms_per_step": 1e3 * statistics.median(times),
          "compile_s": compile_s, "peak_bytes": memory.get("peak_bytes_in_use"),
          "losses_finite": finite, "pruned_weights_zero": pruned_zero,
          "sparsity": stats["sparsity"], "ok": ok}


def step_line(r: dict[str, Any]) -> str:
  peak = f"{r['peak_bytes'] / 2**20:.0f} MiB" if r["peak_bytes"] else "not reported"
  return (f"{r['model']:15s} {r['method']:7s} on {r['devices']}× {r['device']}: "
          f"{r['ms_per_step']:.1f} ms/step, compile {r['compile_s']:.1f} s, peak memory {peak}, "
          f"sparsity {r['sparsity']:.4f}, losses finite: {r['losses_finite']}, pruned weights "
          f"zero: {r['pruned_weights_zero']} -> {'OK' if r['ok'] else 'FAILED'}")


def model_steps(small: bool, steps: int, methods: Sequence[str], workdir: str,
                models: Sequence[str] = tuple(MODELS)) -> list[dict[str, Any]]:
  """`check_model` for every model of `models` under every method, printing a line each."""
  results = []
  for name in models:
    problem, model, batch_size = {**MODELS, **EXTRA_MODELS}[name](small, workdir)
    for method in methods:
      results.append(check_model(name, problem, model, batch_size, steps, method))
      print(step_line(results[-1]), flush=True)
  return results


def beats_trivial(config: Any, report: dict[str, Any]) -> dict[str, Any]:
  """Each task's trivial-predictor metric (the constant of the training maps, on the test
  split, by the problem's own metric code: `scenes.problem.trivial_metrics`) and, per method
  and the dense model, whether its mean test metric beats it on every task."""
  problem = problems.get("scenes").from_config(config)
  splits = scenes.load_scenes(config.data_dir or None, num_train=config.num_train,
                              num_val=config.num_val, num_test=config.num_test,
                              height=config.height, width=config.width, seed=config.data_seed)
  trivial_all = scenes_problem.trivial_metrics(
      problem, scenes_problem.trivial_predictions(splits["train"]),
      batch_size=config.eval_batch_size)
  trivial = {t: trivial_all[problem.metric_names[t]] for t in problem.task_names}

  def better(value, task):
    if value is None:
      return False
    return value > trivial[task] if problem.higher_is_better[task] else value < trivial[task]

  rows = {"dense": report["dense"]["metrics"],
          **{m: s["metrics"] for m, s in report["methods"].items()}}
  return {"metric_names": dict(problem.metric_names), "trivial": trivial,
          "metrics": rows,
          "beats_trivial": {m: all(better(v.get(t), t) for t in trivial)
                            for m, v in rows.items()}}


def scenes_study(preset: str, workdir: str,
                 adjust: Callable[[Any], None] | None = None) -> dict[str, Any]:
  """The scenes study of `preset` (``scenes_quick`` or ``scenes_gpu``) in `workdir`; its
  wall time, leaderboard order and `beats_trivial`. `adjust` may change the config first."""
  config = study_config.get_config(preset)
  with config.unlocked():
    config.quiet = True
    if adjust:
      adjust(config)
  started = time.perf_counter()
  board = study.run(config, workdir, print_report=False)
  wall = time.perf_counter() - started
  (setting,) = study.settings(config)  # scenes has no task sets: one sparsity, one setting
  assert board["order"]["settings"] == [setting.name]
  with open(os.path.join(workdir, setting.name, "report.json")) as f:
    report = json.load(f)
  return {"preset": preset, "workdir": workdir, "setting": setting.name, "wall_s": wall,
          "seeds": report["seeds"],
          **beats_trivial(study.setting_config(config, setting), report)}


def markdown(result: dict[str, Any]) -> str:
  """The whole check as Markdown: the steps, the weightings' costs, the scenes study."""
  lines = [f"# gpu_check on {result['device']} (jax {result['jax']}, "
           f"{'small' if result['small'] else 'full'} sizes)", "",
           "## Masked steps (97.5 %)", "",
           "| model | method | ms/step | compile s | peak MiB | checks |",
           "|---|---|---:|---:|---:|---|"]
  for r in result["steps"]:
    peak = f"{r['peak_bytes'] / 2**20:.0f}" if r["peak_bytes"] else "—"
    lines.append(f"| {r['model']} | {r['method']} | {r['ms_per_step']:.1f} | "
                 f"{r['compile_s']:.1f} | {peak} | {'OK' if r['ok'] else 'FAILED'} |")
  for table in result["weightings"]:
    lines += ["", f"## Weightings' cost: {table['model']} (batch {table['batch_size']})", "",
              "```", bench_weightings.format_table(table), "```",
              f"per-task gradients (K={table['num_tasks']}): "
              f"{table['per_task_gradient_ratio']:.2f} x one gradient"]
  s = result["scenes"]
  tasks = list(s["trivial"])
  lines += ["", f"## Scenes study `{s['preset']}` ({len(s['seeds'])} seed(s), "
            f"{s['wall_s'] / 60:.1f} min)", "",
            "| model | " + " | ".join(f"{t} ({s['metric_names'][t]})" for t in tasks)
            + " | beats trivial on every task |",
            "|---|" + "---:|" * len(tasks) + "---|"]
  rows = {**s["metrics"], "trivial predictor": s["trivial"]}
  for name, values in rows.items():
    cells = " | ".join("—" if values.get(t) is None else f"{values[t]:.3f}" for t in tasks)
    verdict = s["beats_trivial"].get(name)
    lines.append(f"| {name} | {cells} | {'' if verdict is None else verdict} |")
  grid = result.get("grid")
  if grid:
    lines += ["", f"## Grid on the run axis (`experiments.benchmark --grid`, "
              f"{grid['num_seeds']} seeds)", "",
              f"1 variant: {grid['wall_s']['one']:.1f} s, {grid['variants']} variants: "
              f"{grid['wall_s']['grid']:.1f} s, wall-time ratio {grid['ratio']:.2f} "
              f"(goal <= {bench_grid.GOAL_RATIO:g})"]
  return "\n".join(lines) + "\n"


def run_all(small: bool, steps: int, out: str, *, step_methods: Sequence[str] = STEP_METHODS,
            step_models: Sequence[str] = tuple(MODELS),
            weighting_models: Sequence[str] | None = None,
            weighting_methods: Sequence[str] | None = None,
            weighting_setups: dict[str, benchmark.Setup] | None = None,
            adjust_scenes: Callable[[Any], None] | None = None,
            grid_seeds: int | None = None) -> dict[str, Any]:
  """The whole check (``--all``); writes ``out/gpu_check.json`` and ``out/gpu_check.md``.

  The keywords narrow it (the tests' CPU smoke run): the models and methods of the steps, the
  weightings' models (default: every model of the platform's sizes, VGG16 only on an
  accelerator or full sizes), methods (default: every registered one) and sizes (default: the
  platform's, `benchmark.platform_setups`), a change to the scenes study's config, and the
  seeds of the grid benchmark (`experiments.bench_grid`: by default `bench_grid.NUM_SEEDS`
  at full size, where the run axis's ratio is to be measured on a device with parallel
  width, and none with `small`, where it takes minutes of CPU).
  """
  os.makedirs(out, exist_ok=True)
  with tempfile.TemporaryDirectory() as workdir:
    step_results = model_steps(small, steps, step_methods, workdir, step_models)
  setups = weighting_setups or benchmark.platform_setups(
      "cpu" if small else jax.default_backend())[0]
  models = weighting_models or [m for m in setups if m != "vgg16" or setups is benchmark.SETUPS]
  tables = bench_weightings.run(models, weighting_methods or list(weighting.WEIGHTINGS),
                                setups=setups)
  scenes_result = scenes_study("scenes_quick" if small else "scenes_gpu",
                               os.path.join(out, "scenes"), adjust_scenes)
  grid_seeds = (0 if small else bench_grid.NUM_SEEDS) if grid_seeds is None else grid_seeds
  grid = bench_grid.run(grid_seeds) if grid_seeds else None
  result = {"device": jax.devices()[0].device_kind, "devices": jax.device_count(),
            "jax": jax.__version__, "small": small, "steps": step_results,
            "weightings": tables, "scenes": scenes_result, "grid": grid,
            "ok": all(r["ok"] for r in step_results)}
  _files.write_json_atomically(os.path.join(out, "gpu_check.json"), result)
  text = markdown(result)
  _files.write_atomically(os.path.join(out, "gpu_check.md"),
                          lambda f: f.write(text.encode("utf-8")))
  print(text, flush=True)
  return result


def check_out(out: str) -> None:
  """Raises a `UserError` unless `out` is a writable folder or can be made one in a writable
  folder (before any compute)."""
  if os.path.exists(out) and not os.path.isdir(out):
    raise errors.UserError(f"--out_dir={out} is a file: name a folder for gpu_check's results.")
  _checks.writable_folder(out if os.path.isdir(out) else os.path.dirname(os.path.abspath(out)),
                          f"--out_dir={out} goes in")


# --steps is `experiments.benchmark`'s flag (defined when it is imported), here the timed
# steps of each model's step (default STEPS); its other flags do not apply.
STEPS = 10
FLAGS = flags.FLAGS


def main(argv):
  del argv
  steps = STEPS if FLAGS.steps is None else FLAGS.steps
  _checks.positive_int(steps, "--steps")
  if _ALL.value:
    check_out(_OUT.value)
    ok = run_all(_SMALL.value, steps, _OUT.value)["ok"]
  else:
    with tempfile.TemporaryDirectory() as workdir:
      ok = all(r["ok"] for r in model_steps(_SMALL.value, steps, ("minmax",), workdir))
  if not ok:
    raise SystemExit(1)


if __name__ == "__main__":
  launch.run_main(main)
