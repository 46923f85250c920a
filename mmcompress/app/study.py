"""A study: the comparison at every setting (task set × sparsity), one leaderboard over them.

`run(config, workdir)` runs, for every task set of ``config.study.task_sets`` and every
sparsity of ``config.study.sparsities``, the comparison of ``config.problem`` (`comparison.run`) into
``<workdir>/<task set>-<ratio>x/``, where it writes its full report; then it ranks the methods
across the settings (`mmcompress.app.leaderboard`) into ``<workdir>/report.md``,
``leaderboard.json`` and ``leaderboard.png``.

* **Before any compute** every setting's config is checked, and a workdir (or a setting's
  folder) that holds a run of another config is refused.
* **Task sets run side by side**, ``config.study.jobs`` processes at a time. Each runs its
  sparsities in order. A process dies with the one that started it, so a killed study leaves
  nothing running in its folders.
* **What precedes pruning is shared within a task set**: the dense references and each
  method's stages before the prune (reweighting) do not depend on the sparsity, so the later
  sparsities' folders get a copy of the first one's (`share_unpruned`) and resume from it
  instead of training it again: the same numbers, a third less training at 100x.
* **Resuming**: rerunning the same command resumes every setting where it stopped (each
  comparison resumes from its checkpoints and finished runs) and writes the same leaderboard.
* **Tuning** (``config.study.compress_clip_norms``): the study runs once per gradient clip
  of the compression stages, in ``<workdir>/clip-<value>/``, the later variants from copies
  of the first one's dense models; the leaderboard at the top keeps, per setting and method,
  the variant chosen on the validation split (`leaderboard.tune`), and each variant's own
  leaderboard stays in its folder.
* ``config.study.compilation_cache`` keeps JAX's compiled programs in
  ``<workdir>/jax_cache``: the sparsities of a task set compile the same programs, and a
  rerun reads them back (an environment that already names a cache, JAX_COMPILATION_CACHE_DIR,
  keeps its own).
"""
from __future__ import annotations

import json
import multiprocessing
import multiprocessing.connection
import os
import shutil
import signal
import sys
import threading
import time
from typing import Any, NamedTuple

from mmcompress import _checks, _files, problems
from mmcompress.app import comparison, leaderboard, plan as app_plan, plots, progress
from mmcompress.train import clock as clock_lib, parallel
from mmcompress.train import stages as stages_lib, variants as variants_lib

__all__ = ["CONTROLS", "controls", "has_task_sets", "ratio_text", "reporting_config", "run",
           "run_task_set", "Setting", "setting_config", "settings", "share", "share_unpruned",
           "sum_tuning_config", "tuned", "tuning_config", "unpruned_stages", "validate",
           "variant_config", "variants"]


class Setting(NamedTuple):
  """One comparison of a study: its folder name, task set and sparsity."""
  name: str
  task_set: str
  sparsity: float


def ratio_text(sparsity: float) -> str:
  """``"40x"`` for 0.975, ``"100x"`` for 0.99, ``"33.3x"`` for 0.97: the kept fraction's
  inverse, what "40x" counts (the prunable weights)."""
  ratio = 1.0 / (1.0 - sparsity)
  return f"{ratio:.0f}x" if abs(ratio - round(ratio)) < 1e-6 * ratio else f"{ratio:.1f}x"


def has_task_sets(config: app_plan.Config) -> bool:
  """Whether ``config.problem`` has task sets to choose from (digits: ``TASK_SETS``); a study
  of a problem without them (scenes, NYUv2) names none and has one setting per sparsity."""
  return hasattr(problems.get(config.problem), "TASK_SETS")


def _task_sets(config: app_plan.Config) -> tuple[str, ...]:
  """The study's task sets; ``("",)`` (the problem's one) for a problem without task sets."""
  return tuple(config.study.task_sets) if has_task_sets(config) else ("",)


def settings(config: app_plan.Config) -> list[Setting]:
  """Every (task set, sparsity) of the study, task set by task set; a setting of a problem
  without task sets is named after the problem (``scenes-40x``)."""
  module = problems.get(config.problem)

  def folder(task_set):  # a digits grouping's ':' and '/' are not a name
    return module.data.folder_name(task_set) if task_set else config.problem

  return [Setting(f"{folder(t)}-{ratio_text(s)}", t, float(s))
          for t in _task_sets(config) for s in config.study.sparsities]


def setting_config(config: app_plan.Config, setting: Setting) -> app_plan.Config:
  """The comparison config of one setting: the study's fields with its task set (if the
  problem has task sets) and sparsity (and no ``study`` section)."""
  task_sets = {"task_sets": (setting.task_set,)} if setting.task_set else {}
  return app_plan.derived(config, drop=("study",), sparsity=setting.sparsity, **task_sets)


@_checks.as_user_error()
def _validate_study(config: app_plan.Config) -> None:
  study = config.study
  if not has_task_sets(config):
    if study.task_sets:
      raise ValueError(f"config.problem {config.problem!r} has no task sets: leave "
                       "config.study.task_sets empty, (), for a study of its tasks.")
  elif not study.task_sets:
    raise ValueError("config.study.task_sets is empty: name at least one, e.g. ('classify',).")
  if not study.sparsities:
    raise ValueError("config.study.sparsities is empty: give at least one, e.g. (0.975,).")
  module = problems.get(config.problem)
  for task_set in study.task_sets if has_task_sets(config) else ():
    module.data.check_task_set(task_set, "config.study.task_sets entry")
  for name, values in (("task_sets", study.task_sets), ("sparsities", study.sparsities)):
    if len(set(values)) != len(values):
      raise ValueError(f"config.study.{name} names one twice: {tuple(values)}.")
  for s in study.sparsities:
    _checks.sparsity(s, "config.study.sparsities")
  _checks.positive_int(study.jobs, "config.study.jobs")
  clips = tuple(study.get("compress_clip_norms", ()))
  for value in clips:
    _checks.non_negative(value, "config.study.compress_clip_norms")
  if len({name for name, _ in variants(config)}) != len(clips):
    raise ValueError(f"config.study.compress_clip_norms names one twice: {clips}.")
  tuning_seeds = tuple(study.get("tuning_seeds", ()))
  if tuning_seeds:
    if set(tuning_seeds) & set(config.seeds):
      raise ValueError(
          f"config.study.tuning_seeds {tuning_seeds} and config.seeds {tuple(config.seeds)} "
          f"share {sorted(set(tuning_seeds) & set(config.seeds))}: a method's step size is "
          "chosen on seeds it is not reported on; make them disjoint (e.g. 100, 101, 102).")
    if len(set(tuning_seeds)) != len(tuning_seeds):
      raise ValueError(f"config.study.tuning_seeds names one twice: {tuning_seeds}.")
    if clips:
      raise ValueError("config.study.tuning_seeds tunes every method on its own seeds over "
                       "config.grid; leave config.study.compress_clip_norms empty.")
    if any("@" in m for m in config.methods):
      raise ValueError("a tuned study chooses each method's variant itself: name the methods "
                       "without '@<variant>'.")
  if clips and (config.optimizer.compress_clip_norm or config.optimizer.clip_norm):
    raise ValueError("config.study.compress_clip_norms tunes the compression stages' clip "
                     "(clip-0: none): leave --config.optimizer.clip_norm and "
                     "--config.optimizer.compress_clip_norm at 0, or set "
                     "--config.study.compress_clip_norms=() to clip every method alike.")


def variants(config: app_plan.Config) -> list[tuple[str, float]]:
  """The variants a study tunes over, as ``(folder, clip)``: one per value of
  ``config.study.compress_clip_norms`` (``clip-0`` is no clipping); none when it is empty."""
  return [(f"clip-{float(v):g}", float(v)) for v in config.study.get("compress_clip_norms", ())]


def variant_config(config: app_plan.Config, clip: float) -> app_plan.Config:
  """The study of one variant: the compression stages clipped at `clip` (0: not clipped),
  nothing left to tune."""
  return app_plan.derived(config, optimizer__compress_clip_norm=clip,
                          study__compress_clip_norms=())


def tuned(config: app_plan.Config) -> bool:
  """Whether the study tunes every method's variant on its own seeds (the fair protocol)."""
  return bool(config.study.get("tuning_seeds", ()))


def tuning_config(sub: app_plan.Config, study: app_plan.Config) -> app_plan.Config:
  """A setting's tuning comparison: its config on the study's tuning seeds, every method
  over every variant of ``config.grid``."""
  return app_plan.derived(sub, seeds=tuple(study.study.tuning_seeds))


def reporting_config(sub: app_plan.Config, chosen: dict[str, Any]
                     ) -> app_plan.Config:
  """A setting's reported comparison: its seeds, each method pinned at its chosen variant
  (``pcgrad@lr0.5-clip1``), no grid."""
  return app_plan.derived(sub, methods=tuple(f"{m}@{chosen[m]['chosen']}" for m in sub.methods),
                          grid__learning_rate_scale=(), grid__clip_norm=())


def sum_tuning_config(tune: app_plan.Config) -> app_plan.Config | None:
  """A setting's tuning of equal with summed losses (``loss_reduction="reference"``) over the
  same grid and seeds as the methods' (`tuning_config` `tune`): the tuned control that checks
  that tuning removes the loss-scale convention. None without ``equal`` among the methods."""
  if "equal" not in tune.methods:
    return None
  return app_plan.derived(tune, methods=("equal",), loss_reduction="reference")


def _read_tuning(folder: str) -> dict[str, Any] | None:
  """A setting's recorded choices (``tuning.json``), or None before its tuning finished."""
  path = os.path.join(folder, "tuning.json")
  if not os.path.exists(path):
    return None
  with open(path) as f:
    return json.load(f)


def _read_choices(folder: str) -> dict[str, Any] | None:
  """A setting's recorded choice per method, or None before its tuning finished."""
  record = _read_tuning(folder)
  return None if record is None else record["methods"]


def _choose(outcome: dict[str, Any], grid_names: list[str], where: str) -> dict[str, Any]:
  """`leaderboard.choose` over a finished tuning comparison's reports (what `comparison.run`
  returned: ``{"variants": {name: report}}``, or the one report of a grid of one)."""
  reports = outcome["variants"] if len(grid_names) > 1 else {grid_names[0]: outcome}
  return leaderboard.choose({name: reports[name] for name in grid_names}, where=where)


def validate(config: app_plan.Config, workdir: str) -> list[Setting]:
  """Checks the study and every setting's config, and that no folder holds another run;
  raises a `UserError` naming what to change. Returns the settings."""
  _validate_study(config)
  found = settings(config)
  if variants(config):
    for name, clip in variants(config):
      validate(variant_config(config, clip), os.path.join(workdir, name))
  else:
    module, checked = problems.get(config.problem), set()
    for setting in found:
      sub = setting_config(config, setting)
      plan = comparison.validate(sub)
      module.validate_config(sub)
      if setting.task_set not in checked:  # the data, the model, the task scales: once a set
        comparison.check_runnable(plan, module.from_config(sub))
        checked.add(setting.task_set)
      folder = os.path.join(workdir, setting.name)
      if tuned(config):
        tune = tuning_config(sub, config)
        comparison.validate(tune)
        comparison.refuse_other_run(tune, os.path.join(folder, "tune"))
        tune_sum = sum_tuning_config(tune)
        if tune_sum is not None:
          comparison.refuse_other_run(tune_sum, os.path.join(folder, "tune-sum"))
        chosen = _read_choices(folder)
        if chosen is not None:  # the report runs of a setting already tuned
          comparison.refuse_other_run(reporting_config(sub, chosen), folder)
      else:
        comparison.refuse_other_run(sub, folder)
  comparison.refuse_other_run(config, workdir)
  return found


# The stages that cut or grow weights by the target sparsity: the stages before the first of
# them (pretraining, reweighting) train the same weights at every sparsity.
_SPARSITY_STAGES = ("prune", "gradual", "sparse")


def unpruned_stages(config: app_plan.Config) -> tuple[str, ...]:
  """The stages of ``config.stages`` before the first that depends on the sparsity."""
  stages = tuple(config.stages)
  cut = min((stages.index(s) for s in _SPARSITY_STAGES if s in stages), default=len(stages))
  return stages[:cut]


def _pieces(config: app_plan.Config, stages: set[str]) -> list[str]:
  """The folders (relative to a setting's workdir) of each seed's dense reference (its
  checkpoints on the run axis, ``axis/dense``, and its result) and of each method's own
  `stages` (`stages_lib.method_stages`) on the run axis (``axis/<method>/<stage>``)."""
  pieces = ["axis/dense"] + [f"seed{s}/dense" for s in config.seeds]
  for method in config.methods:
    for stage in stages_lib.method_stages(app_plan.trainer(config)):
      if stage in stages:
        pieces.append(f"axis/{method}/{stage}")
  return pieces


def _pretrained_pieces(config: app_plan.Config) -> list[str]:
  """What precedes compression: the dense references, and each method's pretraining when
  the methods do not share one (no variant of a tuned study clips them)."""
  return _pieces(config, {"pretrain"})


def _unpruned_pieces(config: app_plan.Config) -> list[str]:
  """What precedes the prune: the dense references and each method's stages before it."""
  return _pieces(config, set(unpruned_stages(config)))


def share(source: str, target: str, pieces: list[str]) -> bool:
  """Copies the folders `pieces` of a finished setting into another setting's folder.

  Each folder is copied beside its place and renamed into it, so a copy interrupted by a
  kill leaves whole folders or none; a rerun copies what is missing. Folders `target`
  already has are kept.

  Returns:
    Whether there was something to share (`source` finished: its ``report.json`` exists).
  """
  if not os.path.exists(os.path.join(source, "report.json")):
    return False
  for piece in pieces:
    origin, destination = os.path.join(source, piece), os.path.join(target, piece)
    if not os.path.isdir(origin) or os.path.exists(destination):
      continue
    partial = destination + ".copying"
    shutil.rmtree(partial, ignore_errors=True)
    shutil.copytree(origin, partial)
    os.rename(partial, destination)
  return True


def share_unpruned(source: str, target: str, config: app_plan.Config) -> bool:
  """Copies what a finished setting trained before any pruning into another setting's folder
  (`share`).

  Two settings of one task set differ only in the sparsity, so their dense references and
  each method's stages before the prune (`unpruned_stages`) are the same computation; the
  target resumes them from the copied checkpoints and records instead of training them again.
  """
  return share(source, target, _unpruned_pieces(config))


def run_task_set(config: app_plan.Config, workdir: str, task_set: str) -> None:
  """Every sparsity of one task set, in order (`_run_settings`). A study that tunes runs
  every variant in turn, each in ``<workdir>/<variant>/``, the later ones from the first
  one's dense models."""
  if config.study.compilation_cache:
    parallel.use_compilation_cache(os.path.join(workdir, "jax_cache"))
  with clock_lib.Clock() as clock:
    if not variants(config):
      _run_settings(config, workdir, task_set, clock=clock)
    else:
      first = None
      for name, clip in variants(config):
        folder = os.path.join(workdir, name)
        _run_settings(variant_config(config, clip), folder, task_set, dense_from=first,
                      label=f"{name}/", clock=clock)
        first = first or folder
  print(f"study: task set {task_set or config.problem!r}: {clock.line()}", flush=True)


def _run_settings(config: app_plan.Config, workdir: str, task_set: str,
                  dense_from: str | None = None, label: str = "",
                  clock: clock_lib.Clock | None = None) -> None:
  """Every sparsity of one task set of a study that tunes nothing, in order; the later ones
  share what the first one trained before pruning (`share_unpruned`).

  Args:
    config: the study (of one variant).
    workdir: its folder.
    task_set: the task set to run.
    dense_from: a study folder whose settings of this task set hold the dense models to
      start from (`share` of `_pretrained_pieces`), or None.
    label: put before each setting's name in the progress lines.
    clock: the `clock.Clock` its comparisons measure on.
  """
  first = None
  for setting in settings(config):
    if setting.task_set != task_set:
      continue
    folder = os.path.join(workdir, setting.name)
    sub = setting_config(config, setting)
    if first is not None:
      os.makedirs(folder, exist_ok=True)
      share_unpruned(first, folder, sub)
    elif dense_from is not None:
      os.makedirs(folder, exist_ok=True)
      if not share(os.path.join(dense_from, setting.name), folder, _pretrained_pieces(sub)):
        raise RuntimeError(f"{dense_from}/{setting.name} has not finished: the variants after "
                           "the first start from its dense models.")
    if tuned(config):
      _tune_and_report(config, sub, folder, first, label + setting.name, clock)
    else:
      comparison.run(sub, folder, label=label + setting.name, print_report=False,
                     clock=clock)
    first = first or folder


def _tune_and_report(config: app_plan.Config, sub: app_plan.Config,
                     folder: str, first: str | None, label: str,
                     clock: clock_lib.Clock | None = None) -> None:
  """One setting of the fair protocol: every method over the grid on the tuning seeds (in
  ``<folder>/tune/``; equal with summed losses too, in ``<folder>/tune-sum/``), each method's
  variant chosen on their validation split (``<folder>/tuning.json``), then each method at
  its choice on the reporting seeds (in `folder`, whose report the leaderboard reads), then
  the controls (`controls`). `first`: the task set's first setting, whose tuning runs'
  unpruned stages this one's start from."""
  tune_folder, sum_folder = os.path.join(folder, "tune"), os.path.join(folder, "tune-sum")
  tune = tuning_config(sub, config)
  tune_sum = sum_tuning_config(tune)
  if first is not None:
    os.makedirs(tune_folder, exist_ok=True)
    share_unpruned(os.path.join(first, "tune"), tune_folder, tune)
  tuned_outcome = comparison.run(tune, tune_folder, label=f"{label}/tune", print_report=False,
                                 clock=clock)
  grid_names = [v.name for v in variants_lib.grid(app_plan.trainer(tune))]
  record = _read_tuning(folder) or {
      "tuning_seeds": list(tune.seeds), "report_seeds": list(sub.seeds), "grid": grid_names,
      "methods": _choose(tuned_outcome, grid_names, where=label)}
  record.setdefault("controls", {})
  if tune_sum is not None:
    os.makedirs(sum_folder, exist_ok=True)
    if first is not None:
      share_unpruned(os.path.join(first, "tune-sum"), sum_folder, tune_sum)
    share(tune_folder, sum_folder, _pretrained_pieces(tune_sum))  # the same dense models
    summed = comparison.run(tune_sum, sum_folder, label=f"{label}/tune-sum",
                            print_report=False, clock=clock)
    # (Also for a record written before the summed-losses control existed.)
    record["controls"].setdefault("sum_tuned", _choose(summed, grid_names,
                                                       where=f"{label}/tune-sum")["equal"])
  _files.write_json_atomically(os.path.join(folder, "tuning.json"), record)
  chosen = record["methods"]
  reporting = reporting_config(sub, chosen)
  if first is not None:
    share_unpruned(first, folder, reporting)
  comparison.run(reporting, folder, label=label, print_report=False, clock=clock)
  for name, control in controls(sub, chosen, record.get("controls", {})).items():
    control_folder = os.path.join(folder, f"control-{name}")
    os.makedirs(control_folder, exist_ok=True)
    share(folder, control_folder, _pretrained_pieces(control))  # the same dense models
    comparison.run(control, control_folder, label=f"{label}/control-{name}",
                   print_report=False, clock=clock)


# The controls of the fair protocol: folder name -> the leaderboard's row name.
CONTROLS = {"base": "equal, base rate (control)",
            "sum": "equal, summed losses, base rate (control)",
            "null": "equal, another data order (null control)",
            "sum_tuned": "equal, summed losses, tuned (control)"}


def controls(sub: app_plan.Config, chosen: dict[str, Any],
             tuned_controls: dict[str, Any] | None = None
             ) -> dict[str, app_plan.Config]:
  """A setting's controls, each a comparison of equal alone on the reporting seeds, from the
  reported comparison's dense models: with averaged losses (``base``: what an untuned study
  ran) and with summed losses (``sum``, ``loss_reduction="reference"``: with SGD and no weight
  decay or ℓ1 term, step for step averaged losses at K times the rate,
  `tests/test_step_size.py`), both at the base learning rate and the config's own clip: how
  much step size alone moves a method; and tuned equal again on another data order
  (``null``, ``config.data_order=1``: the run-to-run noise that gives the detection limit);
  and equal with summed losses at its own tuned variant (``sum_tuned``, from
  `tuned_controls`, the choices of `sum_tuning_config`): after tuning, the two conventions
  should tie. None without ``equal`` among the methods."""
  if "equal" not in sub.methods:
    return {}
  clip = variants_lib.default_clip(app_plan.trainer(sub))
  base = f"equal@{variants_lib.Variant(1.0, clip).name}"
  alone = dict(grid__learning_rate_scale=(), grid__clip_norm=())
  out = {
      "base": app_plan.derived(sub, methods=(base,), **alone),
      # (The dense models are the reported ones, copied: trained on averaged losses.)
      "sum": app_plan.derived(sub, methods=(base,), loss_reduction="reference", **alone),
      "null": app_plan.derived(sub, methods=(f"equal@{chosen['equal']['chosen']}",),
                               data_order=1, **alone)}
  if tuned_controls and "sum_tuned" in tuned_controls:
    out["sum_tuned"] = app_plan.derived(
        sub, methods=(f"equal@{tuned_controls['sum_tuned']['chosen']}",),
        loss_reduction="reference", **alone)
  return out


def _die_with_parent(parent: int) -> None:
  """Ends this process when `parent` ends (a killed study leaves no process behind): Linux's
  parent-death signal, else a thread that watches the parent."""
  if sys.platform.startswith("linux"):
    import ctypes  # pylint: disable=import-outside-toplevel
    pr_set_pdeathsig = 1
    ctypes.CDLL(None, use_errno=True).prctl(pr_set_pdeathsig, signal.SIGKILL)
  else:
    def watch():
      while os.getppid() == parent:
        time.sleep(0.5)
      os._exit(1)  # pylint: disable=protected-access
    threading.Thread(target=watch, daemon=True).start()
  if os.getppid() != parent:  # it ended before the signal was set
    os._exit(1)  # pylint: disable=protected-access


# The exit status of a task set's process that the filesystem stopped (`_checks.refused_write`).
_REFUSED_STATUS = 2


def _task_set_process(config: app_plan.Config, workdir: str, task_set: str,
                      parent: int, messages: Any) -> None:
  _die_with_parent(parent)
  try:
    run_task_set(config, workdir, task_set)
  except Exception as error:  # pylint: disable=broad-except
    refused = _checks.refused_write(error)
    if refused is None:
      raise
    messages.put(f"task set {task_set!r}: {_checks.refused_write_message(refused)}")
    sys.exit(_REFUSED_STATUS)


def _run_task_sets(config: app_plan.Config, workdir: str) -> None:
  """`run_task_set` for every task set, ``config.study.jobs`` processes at a time (in this
  process when one job or one task set)."""
  task_sets = list(_task_sets(config))
  if config.study.jobs == 1 or len(task_sets) == 1:
    for task_set in task_sets:
      run_task_set(config, workdir, task_set)
    return
  context = multiprocessing.get_context("spawn")  # JAX's threads do not survive a fork
  messages = context.SimpleQueue()  # a refused write's one line, from a task set's process
  waiting, running, failed, refused = list(task_sets), {}, [], []
  started = time.monotonic()
  while waiting or running:
    while waiting and len(running) < config.study.jobs:
      task_set = waiting.pop(0)
      process = context.Process(target=_task_set_process, name=f"study-{task_set}",
                                args=(config, workdir, task_set, os.getpid(), messages))
      process.start()
      running[process.sentinel] = (task_set, process)
    for sentinel in multiprocessing.connection.wait(list(running)):
      task_set, process = running.pop(sentinel)
      process.join()
      if process.exitcode == _REFUSED_STATUS:
        refused.append(task_set)
      elif process.exitcode != 0:
        failed.append(f"{task_set} (exit status {process.exitcode})")
      print(f"study: task set {task_set!r} {'stopped' if process.exitcode else 'done'} "
            f"after {progress.duration(time.monotonic() - started)}", flush=True)
  lines = []  # each refused process's own line, in whatever order they were put
  while not messages.empty():
    lines.append(messages.get())
  failed += [f"{t} (exit status {_REFUSED_STATUS})" for t in refused[len(lines):]]
  if failed:
    raise RuntimeError(f"the study's task sets {', '.join(failed)} stopped before the end "
                       "(their messages are above); rerun the same command to resume.")
  if lines:  # the filesystem's doing, not the program's: one line
    raise _checks.UserError("; ".join(sorted(lines)))


def _read_reports(workdir: str, found: list[Setting]) -> dict[str, Any]:
  """Each setting's ``report.json`` in `workdir`, by setting name."""
  reports = {}
  for setting in found:
    with open(os.path.join(workdir, setting.name, "report.json")) as f:
      reports[setting.name] = json.load(f)
  return reports


def _record_choices(board: dict[str, Any], workdir: str, found: list[Setting]) -> None:
  """Puts each setting's choices (``tuning.json``) into the board: per setting the tuning and
  reporting seeds, per method its chosen learning rate and clip and whether the choice sits
  at the grid's edge, and the table of the validation means (``board["tuning"]``)."""
  board["tuning"], grids = {}, []
  for setting in found:
    with open(os.path.join(workdir, setting.name, "tuning.json")) as f:
      record = json.load(f)
    board["tuning"][setting.name] = dict(record["methods"])
    if "sum_tuned" in record.get("controls", {}):
      board["tuning"][setting.name][CONTROLS["sum_tuned"]] = record["controls"]["sum_tuned"]
    grids.append(record["grid"])
    rows = board["settings"][setting.name]
    rows["tuning_seeds"], rows["report_seeds"] = record["tuning_seeds"], record["report_seeds"]
    for method, row in rows["methods"].items():
      choice = record["methods"].get(method)
      if method == CONTROLS["sum_tuned"]:
        choice = record.get("controls", {}).get("sum_tuned")
      if choice is None:  # a control: its variant is fixed, not chosen
        continue
      row["tuning"] = {"chosen": choice["chosen"],
                       "chosen_learning_rate_scale": choice["learning_rate_scale"],
                       "chosen_clip_norm": choice["clip_norm"],
                       "at_grid_edge": choice["at_grid_edge"], "stable": choice["stable"]}
  board["variants"] = grids[0] if grids else []


def _write_board(board: dict[str, Any], found: list[Setting], workdir: str) -> str:
  """Writes a leaderboard's ``leaderboard.json``, ``report.md`` and ``leaderboard.png`` into
  `workdir`; returns the Markdown."""
  board["settings_info"] = {s.name: {"task_set": s.task_set, "sparsity": s.sparsity,
                                     "ratio": ratio_text(s.sparsity)} for s in found}
  _files.write_json_atomically(os.path.join(workdir, "leaderboard.json"), board)
  markdown = leaderboard.to_markdown(board)
  _files.write_atomically(os.path.join(workdir, "report.md"),
                          lambda f: f.write(markdown.encode("utf-8")))
  plots.plot_leaderboard(board, os.path.join(workdir, "leaderboard.png"))
  return markdown


def run(config: app_plan.Config, workdir: str, *, print_report: bool = True
        ) -> dict[str, Any]:
  """Runs (or resumes) the whole study in `workdir` and returns its leaderboard.

  A study that tunes (``config.study.compress_clip_norms``) writes each variant's own
  leaderboard in ``<workdir>/<variant>/`` and, at the top, the leaderboard of each method's
  variant chosen on the validation split (`leaderboard.tune`).

  Args:
    config: see ``experiments/configs/study.py``.
    workdir: one folder per setting (per variant and setting when it tunes), and the
      leaderboard at the top.
    print_report: print the leaderboard's Markdown at the end.
  """
  started = time.monotonic()
  found = validate(config, workdir)
  comparison.check_workdir(config, workdir)
  for name, clip in variants(config):
    comparison.check_workdir(variant_config(config, clip), os.path.join(workdir, name))
  _run_task_sets(config, workdir)
  names = [name for name, _ in variants(config)]
  if names:
    by_variant = {}
    for name in names:
      by_variant[name] = _read_reports(os.path.join(workdir, name), found)
      _write_board(leaderboard.build(by_variant[name]), found, os.path.join(workdir, name))
    reports, tuning = {}, {}
    for setting in found:
      reports[setting.name], tuning[setting.name] = leaderboard.tune(
          {name: by_variant[name][setting.name] for name in names}, where=setting.name)
    board = leaderboard.build(reports)
    board["variants"], board["tuning"] = names, tuning
  elif tuned(config):
    reports = _read_reports(workdir, found)
    for setting in found:  # each control's one method, equal, as a row of its own
      for name, row in CONTROLS.items():
        path = os.path.join(workdir, setting.name, f"control-{name}", "report.json")
        if os.path.exists(path):
          with open(path) as f:
            reports[setting.name]["methods"][row] = json.load(f)["methods"]["equal"]
    board = leaderboard.build(reports, controls=list(CONTROLS.values()), null=CONTROLS["null"])
    _record_choices(board, workdir, found)
  else:
    board = leaderboard.build(_read_reports(workdir, found))
  markdown = _write_board(board, found, workdir)
  if print_report:
    print(markdown, flush=True)
    print(f"(this call took {progress.duration(time.monotonic() - started)}; a call that "
          "resumed is shorter than a full study)", file=sys.stderr)
  return board
