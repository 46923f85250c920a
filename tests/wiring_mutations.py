"""Puts each planted wiring bug into a scratch copy of the tree, one at a time, and says which
test caught it (not collected by pytest: run it by hand; `tests/test_mutation_anchors.py` runs
the fast part in the suite).

  python tests/wiring_mutations.py            # every bug, each against the tests named for it
  python tests/wiring_mutations.py NAME ...   # the bugs whose name contains one of NAME

Each bug is one text replacement in one file and names the tests that should catch it. A bug
whose text is no longer found exactly once (the code moved) is reported as a failure of this
script, never skipped: update its text. A bug that its tests do not catch prints the tail of
pytest's output. The exit status is 1 if any bug was not caught or its text is stale.
"""
from __future__ import annotations

import os
import pathlib
import shutil
import subprocess
import sys
import tempfile
from typing import NamedTuple

REPO = pathlib.Path(__file__).resolve().parents[1]


class Bug(NamedTuple):
  """What the bug does, where (file, the text it changes, what it writes instead), and the
  pytest arguments of the tests that should catch it."""
  name: str
  path: str
  text: str
  replacement: str
  tests: tuple[str, ...]


WIRING = ("tests/test_wiring.py",)
SELECTION = ("tests/test_wiring.py", "-k", "validation_selects")

BUGS = (
    Bug("model selection scores epochs on the test split", "mmcompress/train/loop.py",
        'state.params, state.model_state, "val",', 'state.params, state.model_state, "test",',
        SELECTION),
    Bug("the result's metrics and val_metrics swapped", "mmcompress/app/comparison.py",
        'for split in ("test", "val"))', 'for split in ("val", "test"))', SELECTION),
    Bug("the epoch's task losses replaced by their mean over tasks", "mmcompress/train/loop.py",
        "train_loss = loss_sum / steps_per_epoch",
        "train_loss = jnp.broadcast_to(jnp.mean(loss_sum, -1, keepdims=True), loss_sum.shape)"
        " / steps_per_epoch", WIRING),
    Bug("the digits task loss divided by the batch size", "mmcompress/problems/digits/problem.py",
        'return jax.vmap(base.masked_mean, in_axes=(1, 1))(per_example, batch["task_mask"]), '
        'model_state',
        'return jnp.sum(per_example * batch["task_mask"], 0) / per_example.shape[0], model_state',
        WIRING),
    Bug("the reweighted-l1 refresh period read in steps", "mmcompress/train/stages.py",
        "every = rw.refresh_every_epochs * steps_per_epoch if", "every = rw.refresh_every_epochs if",
        WIRING),
    Bug("selection keeps the worst validation epoch", "mmcompress/train/loop.py",
        "score < self.best_score)", "score > self.best_score)", WIRING),
    Bug("the paired difference taken against the wrong seed", "mmcompress/app/report.py",
        "diffs = [float(a) - float(b) for a, b in zip(first, second)]",
        "diffs = [float(a) - float(b) for a, b in zip(first, list(second)[1:] + list(second)[:1])]",
        WIRING),
    Bug("the DST mask-update period read in steps", "mmcompress/train/stages.py",
        "update_every=dyn.update_every_epochs * steps.per_epoch",
        "update_every=dyn.update_every_epochs", WIRING),
    Bug("min-max every=epoch ascends every step", "mmcompress/weighting/minmax.py",
        'return _checks.positive_int(steps_per_epoch, "steps_per_epoch")', "return 1", WIRING),
    Bug("the step schedule's boundary read in steps", "mmcompress/train/stages.py",
        "every * steps_per_epoch, factor", "every, factor", WIRING),
    # The second round (issue: four planted bugs survive the suite).
    Bug("the worst epoch wins: the selection score is minus the mean validation loss",
        "mmcompress/train/loop.py", 'return float(np.mean(val["loss"]))',
        'return -float(np.mean(val["loss"]))', SELECTION),
    Bug("task-aware masks ignored: the retrain masks recomputed by magnitude at the hand-over",
        "mmcompress/app/comparison.py",
        "        starts[p] = (sparsity.apply_masks(params, masks[p]), model_state)",
        "        masks[p] = sparsity.magnitude_masks(params, cfg.sparsity)\n"
        "        starts[p] = (sparsity.apply_masks(params, masks[p]), model_state)",
        ("tests/test_task_pruning.py", "-k", "taylor_minmax_run")),
    Bug("a gradient-level weighting sees one row K times: the task gradients summed first",
        "mmcompress/train/step.py", 'return ({"params": model_grads,',
        'return ({"params": jax.tree.map(lambda g: jnp.broadcast_to(g.sum(0), g.shape), '
        'model_grads),',
        ("tests/test_wiring.py", "-k", "aggregator_receives")),
    Bug("every seed sees the same data order", "mmcompress/problems/digits/problem.py",
        "order = base.epoch_order(seed, stage_index, epoch, split.num_examples)",
        "order = base.epoch_order(0, stage_index, epoch, split.num_examples)",
        ("tests/test_digits_data.py", "-k", "own_data_order")),
)


def stale(bug: Bug, root: pathlib.Path = REPO) -> str | None:
  """Why `bug` cannot be planted in the tree at `root` (its text is not found exactly once),
  or None."""
  count = (root / bug.path).read_text().count(bug.text)
  if count == 1:
    return None
  return (f"{bug.path}: the text of bug {bug.name!r} is found {count} times, not once; "
          "update it to where the code does this now.")


def caught_by(scratch: pathlib.Path, bug: Bug) -> str | None:
  """The first test of `bug.tests` that fails with `bug` planted in a fresh copy of the tree,
  or None (then pytest's output tail is printed)."""
  if scratch.exists():
    shutil.rmtree(scratch)
  shutil.copytree(REPO, scratch, ignore=shutil.ignore_patterns(".git", "__pycache__", "build",
                                                               "*.egg-info", ".venv"))
  target = scratch / bug.path
  target.write_text(target.read_text().replace(bug.text, bug.replacement))
  run = subprocess.run(
      [sys.executable, "-m", "pytest", "-p", "no:cacheprovider", "-q", "-x", *bug.tests],
      cwd=scratch, env=dict(os.environ, PYTHONPATH=str(scratch)), capture_output=True,
      text=True, check=False)
  failed = [line[len("FAILED "):] for line in run.stdout.splitlines()
            if line.startswith("FAILED ")]
  if not failed:
    print(run.stdout[-1500:])
  return failed[0].split(" - ")[0] if failed else None


def main(names: list[str]) -> int:
  bugs = [b for b in BUGS if not names or any(n in b.name for n in names)]
  if not bugs:
    print(f"no bug's name contains any of {names}")
    return 1
  failures = 0
  with tempfile.TemporaryDirectory() as folder:
    for bug in bugs:
      reason = stale(bug)
      if reason:
        failures += 1
        print(f"{bug.name}: STALE ({reason})", flush=True)
        continue
      test = caught_by(pathlib.Path(folder) / "tree", bug)
      failures += test is None
      print(f"{bug.name}: {'caught by ' + test if test else 'NOT CAUGHT'}", flush=True)
  print(f"{len(bugs) - failures} of {len(bugs)} caught")
  return 1 if failures else 0


if __name__ == "__main__":
  sys.exit(main(sys.argv[1:]))
