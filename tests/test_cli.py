"""The command line: a user's mistake is one line on stderr and exit status 2, before any
compute; any other error keeps its traceback."""
import json
import os
import subprocess

import pytest

from experiments import launch
from mmcompress import _checks, errors


@pytest.fixture(name="start_module")
def fixture_start_module(start_python):
  """Starts ``python -m module *args`` (as CI does: CI=true); returns its `wait`."""
  return lambda module, *args, cwd: start_python("-m", module, *args, cwd=cwd,
                                                 env={"CI": "true"})


def assert_one_line_user_error(done, *fragments):
  assert done.returncode == 2, done.stderr[-3000:]
  assert "Traceback" not in done.stderr, done.stderr[-3000:]
  lines = done.stderr.strip().splitlines()
  assert len(lines) == 1 and lines[0].startswith("experiments."), done.stderr
  for fragment in fragments:
    assert fragment in lines[0]


def test_a_missing_or_malformed_nyuv2_folder_is_one_line(tmp_path, start_module):
  missing = tmp_path / "nonexistent"
  data = tmp_path / "nyuv2"
  (data / "train" / "image").mkdir(parents=True)
  (data / "train" / "image" / "0.npy").write_bytes(b"junk")
  waits = [start_module("experiments.nyuv2", f"--config.data_dir={folder}",
                        f"--workdir={tmp_path / name}", cwd=tmp_path)
           for folder, name in ((missing, "w1"), (data, "w2"))]
  for wait, folder in zip(waits, (missing, data)):
    assert_one_line_user_error(wait(), str(folder))


def test_bad_nyuv2_settings_are_one_line_before_any_file_is_read(tmp_path, start_module):
  missing = tmp_path / "nonexistent"  # the settings are refused before the data is looked at
  cases = (("--config.normal_loss=l2", ("config.normal_loss", "l2")),
           ("--config.metric_averaging=batch", ("config.metric_averaging",)),
           ("--config.metric_averaging=mtan --config.eval_batch_size=3",
            ("eval_batch_size=3", "multiple of 2")))
  waits = [start_module("experiments.nyuv2", f"--config.data_dir={missing}", *flag.split(),
                        f"--workdir={tmp_path / 'w'}", cwd=tmp_path) for flag, _ in cases]
  # A config of another problem is refused by the entry point of this one.
  other_problem = start_module("experiments.nyuv2", "--config=cifar100",
                               f"--workdir={tmp_path / 'w'}", cwd=tmp_path)
  for wait, (_, fragments) in zip(waits, cases):
    assert_one_line_user_error(wait(), *fragments)
  assert_one_line_user_error(other_problem(), "config.problem is 'cifar100'",
                             "python -m experiments.cifar100")
  assert not (tmp_path / "w").exists()


def test_a_bad_flag_value_and_a_workdir_of_another_run_are_one_line(tmp_path, start_module):
  other = tmp_path / "b"
  other.mkdir()
  (other / "config.json").write_text(json.dumps({"sparsity": 0.5}))
  bad_flag = start_module("experiments.digits", "--config=digits:quick",
                          "--config.sparsity=1.5", f"--workdir={tmp_path / 'a'}", cwd=tmp_path)
  other_run = start_module("experiments.digits", "--config=digits:quick", f"--workdir={other}",
                           cwd=tmp_path)
  assert_one_line_user_error(bad_flag(), "config.sparsity", "1.5")
  assert not (tmp_path / "a").exists()  # refused before anything was written
  assert_one_line_user_error(other_run(), str(other), "different config")
  assert json.loads((other / "config.json").read_text()) == {"sparsity": 0.5}


# Every entry point's user errors: (module, arguments, fragments of the one line). In the
# arguments, {w} is a fresh workdir (it must be left as it was: absent), {file} an existing
# file, {empty} an empty folder, {run} a folder with a scenes run's config.json and nothing
# else, {corrupt} one whose config.json is not JSON.
ENTRY_POINT_ERRORS = (
    ("experiments.digits", "--config.model=nope --workdir={w}", ("config.model", "nope")),
    ("experiments.digits", "--config.task_scales=(1.0,2.0) --workdir={w}",
     ("config.task_scales has 2 entries", "4 tasks")),
    ("experiments.digits", "--workdir={file}", ("is a file",)),
    ("experiments.digits", "--workdir=", ("--workdir is empty",)),
    ("experiments.digits", "--config.seeds=(0,0) --workdir={w}", ("names a seed twice",)),
    ("experiments.digits", "--config=study:quick --workdir={w}", ("python -m experiments.study",)),
    ("experiments.digits", "--workdir={file}/sub", ("which is a file",)),
    ("experiments.digits", "--config=digits:nope --workdir={w}", ("--config=digits:nope",)),
    ("experiments.digits", "--workdir={corrupt}", ("is not a run's record",)),
    ("experiments.cifar100", "--workdir={w}", ("config.data_dir is empty",)),
    ("experiments.cifar100", "--config.data_dir={w}x --workdir={w}", ("does not exist",)),
    ("experiments.cifar100", "--config.data_dir={empty} --workdir={w}", ("is not prepared",)),
    ("experiments.scenes", "--config.data_dir={file}/cache --workdir={w}", ("scenes cache",)),
    ("experiments.scenes", "--config.seeds=() --workdir={w}", ("config.seeds is empty",)),
    ("experiments.scenes", "--config.sparsity=1.5 --workdir={w}", ("config.sparsity",)),
    ("experiments.study", "--config.study.task_sets=('nope',) --workdir={w}",
     ("config.study.task_sets entry",)),
    ("experiments.study", "--config.study.tuning_seeds=(0,) --workdir={w}", ("share [0]",)),
    ("experiments.study", "--config=digits:quick --workdir={w}", ("not a study's",)),
    # Another registered problem runs through the study's entry point (to its own checks).
    ("experiments.study", "--config=study:scenes_quick --config.study.sparsities=(1.5,) "
     "--workdir={w}", ("config.study.sparsities",)),
    ("experiments.study", "--config=study:quick --config.task_scales=(1.0,2.0) --workdir={w}",
     ("config.task_scales has 2 entries", "3 tasks")),
    ("experiments.benchmark", "--batch_size=0", ("--batch_size must be >= 1",)),
    ("experiments.benchmark", "--json_out=missing/x.json", ("goes in missing, which does not exist",)),
    ("experiments.benchmark", "--models=nope", ("--models must name some of",)),
    ("experiments.bench_weightings", "--steps=0", ("steps >= 1",)),
    ("experiments.bench_weightings", "--methods=nope", ("--methods entry",)),
    ("experiments.bench_weightings", "--json_out={empty}", ("is a folder",)),
    ("experiments.launch_local", "", ("no command",)),
    ("experiments.launch_local", "-- /no/such/command", ("no such command",)),
    ("experiments.launch_local", "--processes=0 -- python", ("--processes",)),
    ("experiments.gpu_check", "--steps=0", ("--steps",)),
    ("experiments.gpu_check", "--nope", ("nope",)),
    ("experiments.gpu_check", "extra", ("unexpected arguments",)),
    ("experiments.gpu_check", "--all --out_dir={file}", ("is a file",)),
    ("experiments.tune_minmax", "--gammas=abc --workdir={w}", ("--gammas entry",)),
    ("experiments.tune_minmax", "--every=never --workdir={w}", ("--every entry",)),
    ("experiments.tune_minmax", "--config.model=nope --workdir={w}", ("config.model",)),
    ("experiments.tune_minmax", "--workdir=", ("--workdir is empty",)),
    ("experiments.tune_minmax", "--config=study:quick --workdir={w}", ("python -m experiments.study",)),
    ("experiments.scenes_curves", "--workdir={w}", ("holds no run",)),
    ("experiments.scenes_curves", "--workdir={run}", ("no training records",)),
    ("experiments.scenes_curves", "--workdir={corrupt}", ("not a scenes run",)),
    ("experiments.scenes_curves", "", ("--workdir",)),
    ("experiments.results_page", "--leaderboard={w}/none.json --out={empty}/x.md",
     ("is not a file",)),
    ("experiments.results_page", "--leaderboard={corrupt}/config.json --out={empty}/x.md",
     ("is not a study's leaderboard",)),
    ("experiments.results_page", "--out={w}/x.md", ("--leaderboard",)),
    ("experiments.results_page", "--leaderboard={corrupt}/config.json --out={w}/x.md",
     ("goes in", "which does not exist")),
    ("experiments.scenes_preview", "--count=-1", ("--count must be >= 1",)),
    ("experiments.scenes_preview", "--seed=-1", ("--seed must be >= 0",)),
    ("experiments.scenes_preview", "--out=missing/x.png", ("does not exist",)),
)


# Runs ``python -m <module> <args>`` for each JSON case ``[module, [args...]]`` on the command
# line, each in a process of its own, forked from this one after it has imported the libraries
# every entry point imports (not the entry points themselves: each child runs its module as
# __main__, defining its flags afresh, and ends as an interpreter does, atexit handlers and
# threads included). Eight children at a time; one still running after TIMEOUT seconds is
# killed and reported as -9. Prints one JSON line: [[exit status, stderr], ...] in the cases'
# order; whatever the shared imports printed is at the start of every stderr, as it would be in
# a process of its own.
RUN_EACH_AS_MAIN = """
import json, os, runpy, shutil, signal, sys, tempfile, time
TIMEOUT, AT_ONCE = 120, 8
out = tempfile.mkdtemp()  # (no exit-time cleanup: the children would run it)
imports = os.path.join(out, "imports.err")
saved = os.dup(2)
os.dup2(os.open(imports, os.O_WRONLY | os.O_CREAT), 2)
import jax, flax, optax, numpy, ml_collections, absl.app, absl.flags, orbax.checkpoint
import mmcompress.app.study
sys.stderr.flush()
os.dup2(saved, 2)
with open(imports) as f:
  printed = f.read()
cases = [json.loads(a) for a in sys.argv[1:]]
os.environ["CI"] = "true"

def start(k):
  module, args = cases[k]
  pid = os.fork()
  if pid:
    return pid
  for fd, name in ((1, "out"), (2, "err")):
    os.dup2(os.open(os.path.join(out, f"{k}.{name}"), os.O_WRONLY | os.O_CREAT), fd)
  sys.argv = [module] + args
  runpy.run_module(module, run_name="__main__", alter_sys=True)
  sys.exit(0)  # (an exception from the module, SystemExit too, ends the child with it)

status, running, waiting = {}, {}, list(range(len(cases)))
while waiting or running:
  while waiting and len(running) < AT_ONCE:
    k = waiting.pop(0)
    running[start(k)] = (k, time.monotonic())
  time.sleep(0.05)
  for pid, (k, began) in list(running.items()):
    done, code = os.waitpid(pid, os.WNOHANG)
    if done:
      status[k] = os.waitstatus_to_exitcode(code)
    elif time.monotonic() - began > TIMEOUT:
      os.kill(pid, signal.SIGKILL)
      status[k] = os.waitstatus_to_exitcode(os.waitpid(pid, 0)[1])
    else:
      continue
    del running[pid]
results = []
for k in range(len(cases)):
  with open(os.path.join(out, f"{k}.err")) as f:
    results.append([status[k], printed + f.read()])
shutil.rmtree(out)
print(json.dumps(results))
"""


@pytest.mark.slow
def test_every_entry_point_answers_a_user_error_in_one_line_writing_nothing(tmp_path,
                                                                            run_python):
  # Run from outside the source tree, as a user of the installed package would.
  places = {"file": tmp_path / "a_file", "empty": tmp_path / "empty", "run": tmp_path / "run",
            "corrupt": tmp_path / "corrupt"}
  places["file"].write_text("not a folder")
  for name in ("empty", "run", "corrupt"):
    places[name].mkdir()
  (places["run"] / "config.json").write_text('{"problem": "scenes"}')
  (places["corrupt"] / "config.json").write_text("{not json")
  before = sorted(p.name for p in tmp_path.iterdir())
  cases = [json.dumps([module, args.format(w=tmp_path / f"w{i}", **places).split()])
           for i, (module, args, _) in enumerate(ENTRY_POINT_ERRORS)]
  ran = run_python("-c", RUN_EACH_AS_MAIN, *cases, cwd=tmp_path, timeout=600)
  assert ran.returncode == 0, ran.stderr[-3000:]
  outcomes = json.loads(ran.stdout.strip().splitlines()[-1])
  assert len(outcomes) == len(ENTRY_POINT_ERRORS)
  for (status, stderr), (module, args, fragments) in zip(outcomes, ENTRY_POINT_ERRORS):
    done = subprocess.CompletedProcess(module, status, "", stderr)
    assert_one_line_user_error(done, *fragments)
    assert stderr.startswith(module + ": error:"), (module, args, stderr)
  # Nothing written: no workdir, no output file, the files as they were.
  assert sorted(p.name for p in tmp_path.iterdir()) == before
  assert (places["corrupt"] / "config.json").read_text() == "{not json"
  assert not any(places["empty"].iterdir())


def test_a_user_error_exits_2_and_any_other_error_keeps_its_traceback(tmp_path, start_python):
  script = ("import sys\nfrom experiments import launch\nfrom mmcompress import errors\n"
            "def main(argv):\n"
            "  if sys.argv[0] == 'user':\n"
            "    raise errors.UserError('change\\nthis')\n"
            "  raise ValueError('a bug')\n"
            "launch.run_main(main)\n")
  cases = (("user", 2, "error: change this"), ("bug", 1, "Traceback"))
  waits = [start_python("-c", script.replace("sys.argv[0]", repr(kind)), cwd=tmp_path,
                        timeout=120) for kind, _, _ in cases]
  for wait, (_, status, wanted) in zip(waits, cases):
    done = wait()
    assert done.returncode == status, done.stderr
    assert wanted in done.stderr


@pytest.mark.parametrize("overrides, fragments", [
    ({"structure": "2:4"}, ("prunes exactly 1 - n/m = 0.5", "--config.sparsity=0.5")),
    ({"stages": ("pretrain",)}, ("trains no method", "--config.share_pretraining=False")),
    ({"seeds": (-1,)}, ("config.seeds", "-1")),
    ({"data_seed": -1}, ("config.data_seed",)),
    ({"batch_size": 5000}, ("--config.batch_size",)),
    ({"methods": ("equal", "famo"), "famo.min_losses": (0.1, 0.1)},
     ("famo.min_losses has 2 entries for 4 tasks",)),
    ({"model": "cnn"}, ("config.model_kwargs",)),
    ({"task_sets": ("classify", "mixed"), "task_scales": (1.0,) * 4},
     ("config.task_scales has 4 entries", "3 tasks"))])
def test_what_a_run_checks_before_it_trains_or_writes(tmp_path, tiny_config, overrides,
                                                      fragments):
  """The checks the entry points run (above: how a refusal reaches the user), in process:
  the plan's own (`validate`), those against the problem (`check_runnable`: the batch against
  the training split, the model's options, a weighting's per-task knobs), and a run over
  several task sets checking each before the first trains. Nothing is written."""
  from mmcompress.app import comparison  # pylint: disable=import-outside-toplevel
  config = tiny_config(**overrides)
  with pytest.raises(errors.UserError) as refused:
    comparison.run_digits(config, str(tmp_path / "w"), print_report=False)
  assert all(f in str(refused.value) for f in fragments), str(refused.value)
  assert not (tmp_path / "w").exists()


def test_config_values_resolve_to_the_shipped_files(tmp_path, monkeypatch):
  digits = os.path.join(launch.CONFIGS, "digits.py")
  assert os.path.isfile(digits)
  assert {"digits", "cifar100", "nyuv2"} <= set(launch.shipped_configs())
  monkeypatch.chdir(tmp_path)  # outside the source tree
  assert launch.resolve_config("digits") == digits
  assert launch.resolve_config("digits:quick") == digits + ":quick"
  assert launch.resolve_config("experiments/configs/digits.py:quick") == digits + ":quick"
  own = tmp_path / "mine.py"
  own.write_text("")
  assert launch.resolve_config(f"{own}:x") == f"{own}:x"
  for bad in ("nosuch", "nosuch.py", "other/digits.py", "base", ""):
    with pytest.raises(errors.UserError, match="no config file"):
      launch.resolve_config(bad)


def test_one_line_keeps_the_last_line_of_a_wrapped_config_error():
  wrapped = ValueError("flag --config=x.py:bogus: Error whilst parsing config file:\n\n"
                       "Traceback (most recent call last):\n  File ...\n"
                       "ValueError: unknown preset 'bogus': use 'quick'.")
  assert (launch.one_line(wrapped)
          == "flag --config=x.py:bogus: unknown preset 'bogus': use 'quick'.")
  assert launch.one_line(errors.UserError("a\n  b")) == "a b"


def test_as_user_error_marks_value_errors_only():
  with pytest.raises(errors.UserError, match="^bad$"):
    with _checks.as_user_error():
      raise ValueError("bad")
  with pytest.raises(KeyError):
    with _checks.as_user_error():
      raise KeyError("not a ValueError")
  assert issubclass(errors.MissingDataError, FileNotFoundError)
  assert issubclass(errors.MissingDataError, ValueError)


# The second checkpoint save of each process refused by the filesystem, as when the workdir
# turns read-only mid-run (a chmod cannot show it to root): a sitecustomize on the PYTHONPATH
# installs it before anything runs, in the study's spawned task-set processes too.
SITECUSTOMIZE = """
import errno
from mmcompress.train import checkpoint
save, calls = checkpoint.StageCheckpoints.save, []
def refusing(self, step, state, record):
  calls.append(step)
  if len(calls) == 2:
    raise PermissionError(errno.EACCES, "Permission denied", self.directory + "/x")
  return save(self, step, state, record)
checkpoint.StageCheckpoints.save = refusing
"""


def _refusing_environment(tmp_path):
  (tmp_path / "patch").mkdir()
  (tmp_path / "patch" / "sitecustomize.py").write_text(SITECUSTOMIZE)
  return {"CI": "true",
          "PYTHONPATH": os.pathsep.join([str(tmp_path / "patch"), os.environ["PYTHONPATH"]])}


@pytest.mark.slow
def test_a_write_refused_mid_run_is_one_line_and_keeps_what_was_saved(tmp_path, start_python):
  workdir = tmp_path / "w"
  done = start_python("-m", "experiments.digits", "--config=digits:quick",
                      "--config.methods=('equal',)", "--config.seeds=(0,)",
                      f"--workdir={workdir}", cwd=tmp_path, env=_refusing_environment(tmp_path))()
  assert_one_line_user_error(done, "could not write or read", "Permission denied",
                             "rerun the same command to resume")
  assert (workdir / "config.json").exists()
  assert any(p.name.isdigit() for p in workdir.rglob("*") if p.is_dir())  # the first save


@pytest.mark.slow
def test_a_write_refused_in_the_studys_task_set_processes_is_one_line(tmp_path, start_python):
  done = start_python(
      "-m", "experiments.study", "--config=study:untuned_quick", "--config.methods=('equal',)",
      "--config.model_kwargs.hidden=(32,)", "--config.study.sparsities=(0.975,)",
      f"--workdir={tmp_path / 'w'}", cwd=tmp_path, env=_refusing_environment(tmp_path))()
  # Each task set's process stopped by its own refusal, both named in one line.
  assert_one_line_user_error(done, "task set 'classify': could not write or read",
                             "task set 'mixed'", "rerun the same command to resume")
  assert (tmp_path / "w" / "config.json").exists()
