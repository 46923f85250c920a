"""Chooses the min-max knobs of a digits config on the VALIDATION split (never on test).

  python -m experiments.tune_minmax --workdir=runs/tune [--config=...] \
      --gammas=0.5,1,2,5 --every=step,epoch

For each (γ, ascent frequency) it runs the min-max pipeline over the config's seeds (all
sharing one dense pretraining per seed, in one workdir per setting) and prints the mean and
min–max over seeds of the worst-task retention measured on the validation split
(compressed val metric / dense val metric, oriented). The config's docstring records what
this printed and which setting became the default.
"""
import json
import os

import numpy as np
from absl import flags, logging

from experiments import launch
from mmcompress import _checks, errors
from mmcompress.app import comparison
from mmcompress.problems import metrics

# The base config (its seeds, sparsity and stages are used) and where the runs go.
_CONFIG, _WORKDIR = launch.define_flags("digits")
_GAMMAS = flags.DEFINE_list("gammas", ["0.5", "1", "2", "5"], "γ values to try.")
_EVERY = flags.DEFINE_list("every", ["step", "epoch"], "Ascent frequencies to try.")


def _result(workdir: str, seed: int, run: str) -> dict:
  with open(os.path.join(workdir, f"seed{seed}", run, "result.json")) as f:
    return json.load(f)


def val_worst_retention(report: dict, workdir: str, method: str) -> list[float]:
  """Per seed: min over tasks of (method's val metric / dense val metric), oriented.

  A seed on which the method diverged counts as 0, as in the report's paired comparison.
  """
  failed = {d["seed"] for d in report["methods"][method].get("diverged", [])}
  values = []
  for seed in report["seeds"]:
    if seed in failed:
      values.append(0.0)
      continue
    dense, result = _result(workdir, seed, "dense"), _result(workdir, seed, method)
    values.append(min(
        metrics.retention(result["val_metrics"][t], dense["val_metrics"][t],
                          report["higher_is_better"][t]) for t in report["tasks"]))
  return values


def main(argv):
  if not flags.FLAGS["verbosity"].present:  # orbax reports every save at INFO
    logging.set_verbosity(logging.WARNING)
  del argv
  launch.check_entry(_CONFIG.value, _WORKDIR.value, "digits")
  gammas = [_checks.non_negative(g, "--gammas entry") for g in _GAMMAS.value]
  if not gammas or not _EVERY.value:
    raise errors.UserError("--gammas and --every need at least one value each.")
  runs = []
  for every in _EVERY.value:
    _checks.one_of(every, ("step", "epoch"), "--every entry")
    for gamma in gammas:
      config = _CONFIG.value.copy_and_resolve_references()
      with config.unlocked():
        config.methods = ("equal", "minmax")
        config.minmax.gamma = gamma
        config.minmax.every = every
        config.quiet = True
      workdir = os.path.join(_WORKDIR.value, f"gamma{gamma:g}_{every}")
      comparison.validate(config)  # every run checked before the first one's compute
      comparison.refuse_other_run(config, workdir)
      runs.append((gamma, every, config, workdir))
  rows = []
  for gamma, every, config, workdir in runs:
    report = comparison.run(config, workdir, print_report=False)
    equal = val_worst_retention(report, workdir, "equal")
    minmax = val_worst_retention(report, workdir, "minmax")
    diff = np.subtract(minmax, equal)
    rows.append((gamma, every, np.mean(minmax), np.mean(equal), diff))
  print("gamma  every  val worst-task retention: minmax  equal  paired diff mean [min, max]")
  for gamma, every, mm, eq, diff in rows:
    print(f"{gamma:5g}  {every:5s}  {mm:.4f}  {eq:.4f}  {diff.mean():+.4f} "
          f"[{diff.min():+.4f}, {diff.max():+.4f}]")


if __name__ == "__main__":
  launch.run_main(main)
