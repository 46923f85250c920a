"""Puts each wiring bug of the wiring issue into a scratch copy of the tree, one at a time, and
says which test of tests/test_wiring.py caught it (not collected by pytest: run it by hand).

  python tests/wiring_mutations.py [pytest arguments, default: tests/test_wiring.py]

Each bug is one text replacement in one file; the script refuses to run a bug whose text is no
longer found exactly once (the code moved: update the replacement). A bug that no test catches
prints the tail of pytest's output and makes the exit status 1.
"""
import os
import pathlib
import shutil
import subprocess
import sys
import tempfile

REPO = pathlib.Path(__file__).resolve().parents[1]

# (what the bug does, file, text, replacement)
BUGS = (
    ("model selection scores epochs on the test split", "mmcompress/train/loop.py",
     'state.params, state.model_state, "val",', 'state.params, state.model_state, "test",'),
    ("the result's metrics and val_metrics swapped", "mmcompress/comparison.py",
     'for split in ("test", "val"))', 'for split in ("val", "test"))'),
    ("the epoch's task losses replaced by their mean over tasks", "mmcompress/train/loop.py",
     'train_loss = carry["loss_sum"] / ctx.steps_per_epoch',
     'train_loss = jnp.full_like(carry["loss_sum"], jnp.mean(carry["loss_sum"]))'
     ' / ctx.steps_per_epoch'),
    ("the digits task loss divided by the batch size", "mmcompress/problems/digits/problem.py",
     'return jax.vmap(base.masked_mean, in_axes=(1, 1))(per_example, batch["task_mask"]), '
     'model_state',
     'return jnp.sum(per_example * batch["task_mask"], 0) / per_example.shape[0], model_state'),
    ("the reweighted-l1 refresh period read in steps", "mmcompress/train/stages.py",
     "every = rw.refresh_every_epochs * steps_per_epoch if", "every = rw.refresh_every_epochs if"),
    ("selection keeps the worst validation epoch", "mmcompress/train/loop.py",
     "score < self.best_score)", "score > self.best_score)"),
    ("the paired difference taken against the wrong seed", "mmcompress/report.py",
     "diffs = [float(a) - float(b) for a, b in zip(first, second)]",
     "diffs = [float(a) - float(b) for a, b in zip(first, list(second)[1:] + list(second)[:1])]"),
    ("the DST mask-update period read in steps", "mmcompress/train/stages.py",
     "update_every=dyn.update_every_epochs * steps_per_epoch",
     "update_every=dyn.update_every_epochs"),
    ("min-max every=epoch ascends every step", "mmcompress/weighting/minmax.py",
     'every=steps_per_epoch if every == "epoch" else 1', "every=1"),
    ("the step schedule's boundary read in steps", "mmcompress/train/stages.py",
     "every * steps_per_epoch, factor", "every, factor"),
)


def caught_by(scratch: pathlib.Path, bug: tuple[str, str, str, str],
              tests: list[str]) -> str | None:
  """The first test that fails with `bug` in a fresh copy of the tree, or None."""
  _, path, text, replacement = bug
  if scratch.exists():
    shutil.rmtree(scratch)
  shutil.copytree(REPO, scratch, ignore=shutil.ignore_patterns(".git", "__pycache__", "build",
                                                               "*.egg-info"))
  target = scratch / path
  source = target.read_text()
  if source.count(text) != 1:
    raise SystemExit(f"{path}: the text of bug {bug[0]!r} is found {source.count(text)} "
                     "times, not once; update its replacement.")
  target.write_text(source.replace(text, replacement))
  run = subprocess.run(
      [sys.executable, "-m", "pytest", "-p", "no:cacheprovider", "-q", "-x", *tests],
      cwd=scratch, env=dict(os.environ, PYTHONPATH=str(scratch)), capture_output=True,
      text=True, check=False)
  failed = [line[len("FAILED "):] for line in run.stdout.splitlines()
            if line.startswith("FAILED ")]
  if not failed:
    print(run.stdout[-1500:])
  return failed[0].split(" - ")[0] if failed else None


def main(tests: list[str]) -> int:
  missed = 0
  with tempfile.TemporaryDirectory() as folder:
    for bug in BUGS:
      test = caught_by(pathlib.Path(folder) / "tree", bug, tests)
      missed += test is None
      print(f"{bug[0]}: {'caught by ' + test if test else 'NOT CAUGHT'}", flush=True)
  return 1 if missed else 0


if __name__ == "__main__":
  sys.exit(main(sys.argv[1:] or ["tests/test_wiring.py"]))
