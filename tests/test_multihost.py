"""Multi-host for real: the digits pipeline as 2 processes × 2 CPU devices that meet through
`jax.distributed` (started by `experiments.launch_local`), against 1 process × 4 devices,
killed with SIGKILL and resumed, and refusing a bad config on every process.

The runs are the quick preset made smaller (`SMALL`) to keep the file short: one method
(min-max), 2 + 1 + 1 epochs of 8 steps, a 32-unit MLP, a checkpoint every 8 steps, on a run
axis of 2 seeds × a grid of 2 variants (learning-rate scales 0.5 and 1). Measured
on two cores that other jobs were also using: 109 s, about 105 CPU-seconds. Every launch runs under a time limit and is ended with its
whole process group if it passes it, so a hang fails the test instead of blocking CI.
"""
import json
import os
import random
import re
import signal
import subprocess
import sys
import time

import pytest

from experiments import launch_local
from mmcompress.train import parallel

pytestmark = pytest.mark.slow  # every test launches training processes

SMALL = ["--config=digits:quick", '--config.methods=("minmax",)',
         "--config.epochs.pretrain=2", "--config.epochs.reweight=1", "--config.epochs.retrain=1",
         "--config.model_kwargs.hidden=(32,)", "--config.batch_size=128",
         "--config.checkpoint_every_steps=8", "--config.seeds=(0,1)",
         "--config.grid.learning_rate_scale=(0.5,1.0)"]
VARIANTS = ("lr0.5-clip0", "lr1-clip0")
# 2 × 2 against 1 × 4: the same mesh of 4 devices and the same programs, but the all-reduce of
# the per-device partial sums goes through gloo across processes and through XLA's own
# in-process collective on one, which add them in another order: float32 rounding, measured at
# most 1.2e-7 on the task weights. Task metrics (counts of right answers) are compared exactly.
RELATIVE_TOLERANCE = 1e-5
ABSOLUTE_TOLERANCE = 1e-6
RUN_LIMIT_S = 300


def environment(**extra):
  # Run outside the source tree (cwd=workdir.parent): `python -m` would import the copy in
  # the current folder. tests/conftest.py points PYTHONPATH at the copy under test.
  return dict(os.environ, CI="true", JAX_PLATFORMS="cpu", **extra)


def digits(workdir, *flags):
  return [sys.executable, "-m", "experiments.digits", f"--workdir={workdir}", *SMALL, *flags]


def launched(command, grace_s=10):
  """`command` as 2 processes × 2 devices."""
  return [sys.executable, "-m", "experiments.launch_local", "--processes=2",
          "--devices_per_process=2", f"--grace_s={grace_s}", "--", *command]


def start(command, cwd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, **env):
  # A process group of its own: the launcher and its processes end together on a timeout.
  return subprocess.Popen(command, cwd=cwd, env=environment(**env), stdout=stdout,
                          stderr=stderr, text=True, start_new_session=True)


def finish(process, timeout=RUN_LIMIT_S):
  """Waits for `process`; on `timeout` kills its whole process group and fails."""
  try:
    stdout, stderr = process.communicate(timeout=timeout)
  except subprocess.TimeoutExpired:
    os.killpg(process.pid, signal.SIGKILL)
    process.communicate()
    pytest.fail(f"{process.args} ran past {timeout} s")
  return subprocess.CompletedProcess(process.args, process.returncode, stdout, stderr)


def one_device_count(count):
  flags = os.environ.get("XLA_FLAGS", "")
  return {"XLA_FLAGS": f"{flags} --xla_force_host_platform_device_count={count}".strip()}


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
  """The uninterrupted 2 × 2 run and the 1 × 4 run (side by side): their workdirs, and what
  the 2 × 2 run printed."""
  two, one = tmp_path_factory.mktemp("two_by_two"), tmp_path_factory.mktemp("one_by_four")
  runs = [start(launched(digits(two)), two.parent),
          start(digits(one), one.parent, **one_device_count(4))]
  done = [finish(run) for run in runs]
  for each in done:
    assert each.returncode == 0, each.stderr[-3000:]
  return two, one, done[0].stdout


def read_report(workdir):
  """Each variant's report.json."""
  return {v: json.loads((workdir / "variants" / v / "report.json").read_text())
          for v in VARIANTS}


def assert_close(a, b, path="report"):
  """Equal, but floats only within the tolerances above."""
  assert type(a) is type(b) or {type(a), type(b)} <= {int, float}, path
  if isinstance(a, dict):
    assert set(a) == set(b), path
    for key in a:
      assert_close(a[key], b[key], f"{path}.{key}")
  elif isinstance(a, list):
    assert len(a) == len(b), path
    for i, (x, y) in enumerate(zip(a, b)):
      assert_close(x, y, f"{path}[{i}]")
  elif isinstance(a, float):
    assert a == pytest.approx(b, rel=RELATIVE_TOLERANCE, abs=ABSOLUTE_TOLERANCE), path
  else:
    assert a == b, path


def test_two_processes_report_what_one_process_with_as_many_devices_reports(reference):
  two, one, printed = reference
  reports, alone = read_report(two), read_report(one)
  for variant, report in reports.items():
    assert report["dense"]["metrics"] == alone[variant]["dense"]["metrics"]
    assert (report["methods"]["minmax"]["metrics"]
            == alone[variant]["methods"]["minmax"]["metrics"]), variant
    assert_close(report, alone[variant], variant)
    weights = report["methods"]["minmax"]["task_weights"]  # reweight's epoch, retrain's
    assert len(weights) == 2 and all(abs(sum(w) - 1) < 1e-5 for w in weights)
  # The variants trained differently, from the same dense models.
  first, second = (reports[v]["methods"]["minmax"]["task_weights"] for v in VARIANTS)
  assert first != second
  assert reports[VARIANTS[0]]["dense"] == reports[VARIANTS[1]]["dense"]
  # Process 0 alone printed the report, and wrote the files.
  tables = [line for line in printed.splitlines() if "| minmax |" in line]
  assert tables and all(line.startswith("[0] ") for line in tables)
  assert (two / "models" / "seed1_minmax@lr0.5-clip0.npz").exists()
  assert list((two / "tensorboard").rglob("events.out.tfevents.*"))
  assert (two / "variants" / "lr1-clip0" / "task_weights.png").exists()


def test_a_run_killed_with_sigkill_then_rerun_gives_the_same_report(reference, tmp_path):
  two, _, _ = reference
  workdir = tmp_path / "killed"
  log = tmp_path / "killed.log"
  draw = random.Random(12)
  # The run to kill does without the session's compilation cache (tests/conftest.py), as in
  # test_digits_experiment.py: it compiles, so it is still running when killed, and it never
  # dies writing to the cache. The rerun reads the cache. grace_s=0: the launcher kills the
  # other process as soon as it sees the first one dead.
  with open(log, "w") as stderr:
    process = start(launched(digits(workdir), grace_s=0), tmp_path, stdout=subprocess.DEVNULL,
                    stderr=stderr, JAX_COMPILATION_CACHE_DIR="")
    deadline = time.time() + RUN_LIMIT_S
    first = workdir / "axis" / "dense" / "pretrain" / "8"
    while time.time() < deadline and not first.exists():
      time.sleep(0.05)
    time.sleep(draw.uniform(0.0, 3.0))
    pids = [int(p) for p in re.search(r"\(pids ([\d ]+)\)", log.read_text()).group(1).split()]
    running = process.poll() is None
    os.kill(pids[draw.randrange(len(pids))], signal.SIGKILL)
    done = finish(process, timeout=60)
  assert running, "the run finished before it could be killed; kill it sooner"
  assert done.returncode == 128 + signal.SIGKILL, log.read_text()[-3000:]
  assert not (workdir / "report.md").exists()
  rerun = finish(start(launched(digits(workdir)), tmp_path))
  assert rerun.returncode == 0, rerun.stderr[-3000:]
  assert read_report(workdir) == read_report(two)


def test_a_bad_config_ends_both_processes_with_the_one_line_error(tmp_path):
  # Refused before the processes meet (sparsity), and after (the batch size must divide the
  # 4 devices of both processes; a grid's variants are checked before either): both exit by
  # themselves with status 2.
  cases = (("--config.sparsity=1.5", "config.sparsity"),
           ("--config.batch_size=6", "batch_size=6 is not divisible by the 4 devices"),
           ("--config.grid.clip_norm=(-1.0,)", "config.grid.clip_norm"))
  started = time.time()
  runs = [start(launched(digits(tmp_path / f"w{i}", flag), grace_s=30), tmp_path)
          for i, (flag, _) in enumerate(cases)]
  for (_, fragment), done in zip(cases, [finish(run, timeout=60) for run in runs]):
    assert done.returncode == 2, done.stderr[-3000:]
    assert "Traceback" not in done.stderr, done.stderr[-3000:]
    for i in range(2):
      errors = [line for line in done.stderr.splitlines() if line.startswith(f"[{i}] ")
                and "error:" in line]
      assert len(errors) == 1 and errors[0].startswith(f"[{i}] experiments.digits: error: ")
      assert fragment in errors[0]
      assert f"process {i} exited with status 2" in done.stderr
  assert time.time() - started < 60


def test_each_process_is_told_the_coordinator_the_count_and_its_id():
  base = {"XLA_FLAGS": "--xla_backend_optimization_level=0 "
                       "--xla_force_host_platform_device_count=8", "PATH": "/bin"}
  env = launch_local.process_environment(base, 1234, 3, 2, 4)
  assert env["JAX_COORDINATOR_ADDRESS"] == "127.0.0.1:1234"  # read by jax itself
  assert env[parallel.NUM_PROCESSES_ENV] == "3" and env[parallel.PROCESS_ID_ENV] == "2"
  assert env["XLA_FLAGS"] == ("--xla_backend_optimization_level=0 "
                              "--xla_force_host_platform_device_count=4")
  assert env["JAX_PLATFORMS"] == "cpu" and env["PATH"] == "/bin"
  assert launch_local.process_environment(dict(base, JAX_PLATFORMS="gpu"), 1, 2, 0, 1)[
      "JAX_PLATFORMS"] == "gpu"
  assert [launch_local.exit_status(c) for c in (0, 2, -9)] == [0, 2, 137]
