"""The application's plan builder: where an experiment config becomes the plans that train.

An entry point hands its ``ml_collections.ConfigDict`` (``experiments/configs/``) to the
application's entry functions (`comparison.run`, `study.run`), which read it here, once, into
frozen plans (this is the only module of `mmcompress` that imports ml_collections):

* `trainer` → `mmcompress.train.plan.Plan`, what the trainer reads (stages, sections,
  weightings' knobs); the trainer and the core never see the config;
* `comparison` → `RunPlan`, what a comparison reads besides (seeds, methods, batch and chunk
  sizes, how progress is shown), the trainer's plan inside it;
* `derived`: a locked copy of a config with some fields set, which is how a study makes the
  config of each of its comparisons (a setting, its tuning, its report, its controls), each
  recorded in its own folder.

Besides, the config is read where the plans do not reach: a problem's ``validate_config`` and
``from_config`` read its own fields (data folders, image sizes); the study reads its own
section (``config.study``: settings, tuning seeds, jobs) and the fields its settings derive
from; and the config is recorded as it is (``config.json``, the report's ``config``), which is
how a rerun recognises its run.
"""
from __future__ import annotations

import dataclasses
import types
from collections.abc import Mapping
from typing import Any

import ml_collections

from mmcompress import _checks, weighting as weighting_lib
from mmcompress.train import plan as plan_lib

__all__ = ["comparison", "Config", "derived", "RunPlan", "trainer"]

# The experiment config, as the entry points build it.
Config = ml_collections.ConfigDict


def _frozen(value: Any) -> Any:
  """Lists as tuples, mappings as plain dicts, recursively (a config's values, frozen)."""
  if isinstance(value, Mapping) or hasattr(value, "to_dict"):
    items = value.to_dict().items() if hasattr(value, "to_dict") else value.items()
    return {k: _frozen(v) for k, v in items}
  if isinstance(value, (list, tuple)):
    return tuple(_frozen(v) for v in value)
  return value


def _section(cls: type, given: Any, name: str) -> Any:
  """`cls` from the config section `given` (absent: the defaults); an unknown key is
  refused."""
  given = _frozen(given) if given is not None else {}
  known = [f.name for f in dataclasses.fields(cls)]
  unknown = sorted(set(given) - set(known))
  if unknown:
    raise _checks.UserError(f"config.{name}.{unknown[0]} is not a setting the trainer reads; "
                            f"config.{name} has {known}.")
  return cls(**given)


def trainer(config: Config | Mapping[str, Any],
            weighting_sections: tuple[str, ...] | None = None) -> plan_lib.Plan:
  """The trainer's `Plan` of an experiment config (read once; the config is not kept).

  Every section of the plan is a frozen dataclass whose fields have the config's names, so
  ``plan.optimizer.learning_rate`` is ``config.optimizer.learning_rate``.

  Args:
    config: the config, or a mapping with the fields of `Plan` (a missing field or section
      takes the plan's default, the neutral value of ``experiments/configs/base.py``; a key of
      a section the trainer does not know is refused, naming the keys it knows).
    weighting_sections: the config sections that hold weightings' knobs, copied into
      ``Plan.weightings`` (None: the section of every registered weighting,
      `mmcompress.weighting.section_name`).
  """
  get = config.get
  defaults = plan_lib.Plan()
  if weighting_sections is None:
    weighting_sections = tuple({weighting_lib.section_name(n): None
                                for n in weighting_lib.WEIGHTINGS})
  epochs = {**defaults.epochs, **_frozen(get("epochs") or {})}
  return plan_lib.Plan(
      stages=tuple(get("stages", defaults.stages)),
      share_pretraining=bool(get("share_pretraining", defaults.share_pretraining)),
      sparsity=get("sparsity", defaults.sparsity),
      structure=get("structure", defaults.structure),
      scope=get("scope", defaults.scope),
      batch_size=get("batch_size", defaults.batch_size),
      epochs=types.MappingProxyType(epochs),
      task_scales=tuple(get("task_scales", ()) or ()),
      loss_reduction=get("loss_reduction", defaults.loss_reduction),
      weightings=types.MappingProxyType({name: types.MappingProxyType(_frozen(get(name)))
                                         for name in weighting_sections if get(name)}),
      **{name: _section(cls, get(name), name) for name, cls in plan_lib.SECTIONS.items()})


@dataclasses.dataclass(frozen=True)
class RunPlan:
  """What a comparison reads of its config, read once (`comparison`).

  Attributes:
    trainer: the trainer's plan (stages, epochs, sections, sparsity, batch size).
    problem: the registered problem's name (`mmcompress.problems.PROBLEMS`; None when the
      config names none, which validation refuses).
    model, model_kwargs: the model's registered name and its keyword arguments.
    seeds, methods: the comparison's seeds and methods, in order.
    eval_batch_size, checkpoint_every_steps: evaluation batch; steps between checkpoints.
    chunk_runs, runs_sharded: the run axis in chunks of that many runs (0: all at once);
      whether a chunk's runs are split over the devices.
    data_order: 0, or another draw of the batches' order after pretraining (the null control).
    distributed: join the processes of a multi-host run.
    quiet, epoch_lines: print nothing; a line per epoch (else per finished run).
    config_json: the config as JSON (``config.json``, the report's ``config``).
    config: the config itself, for the problem's ``from_config`` only.
  """
  trainer: plan_lib.Plan
  problem: str | None
  model: str
  model_kwargs: Mapping[str, Any]
  seeds: tuple[int, ...]
  methods: tuple[str, ...]
  eval_batch_size: int
  checkpoint_every_steps: int
  chunk_runs: int
  runs_sharded: bool
  data_order: int
  distributed: bool
  quiet: bool
  epoch_lines: bool
  config_json: str
  config: Any = dataclasses.field(repr=False, compare=False)

  # The trainer's fields a comparison reads too, by their config names.
  @property
  def stages(self) -> tuple[str, ...]:
    return self.trainer.stages

  @property
  def epochs(self) -> Mapping[str, int]:
    return self.trainer.epochs

  @property
  def sparsity(self) -> float:
    return self.trainer.sparsity

  @property
  def batch_size(self) -> int:
    return self.trainer.batch_size


def comparison(config: Config) -> RunPlan:
  """The `RunPlan` of a comparison's config (the problem's own fields stay in the config).

  A field the config lacks takes the neutral value of ``experiments/configs/base.py``, as in
  `trainer`."""
  get = config.get
  return RunPlan(
      trainer=trainer(config),
      problem=get("problem"),
      model=config.model,
      model_kwargs=types.MappingProxyType(_frozen(get("model_kwargs") or {})),
      seeds=tuple(config.seeds),
      methods=tuple(config.methods),
      eval_batch_size=config.eval_batch_size,
      checkpoint_every_steps=config.checkpoint_every_steps,
      chunk_runs=get("chunk_runs", 1),
      runs_sharded=bool(get("runs_sharded", False)),
      data_order=get("data_order", 0),
      distributed=bool(get("distributed", False)),
      quiet=bool(get("quiet", False)),
      epoch_lines=bool(get("epoch_lines", True)),
      config_json=config.to_json(),
      config=config)


def derived(config: Config, drop: tuple[str, ...] = (), **fields: Any) -> Config:
  """A locked copy of `config` without the sections `drop` and with `fields` set; a field
  ``a__b`` is ``config.a.b``."""
  values = config.to_dict()
  for name in drop:
    del values[name]
  out = ml_collections.ConfigDict(values)
  for name, value in fields.items():
    *sections, leaf = name.split("__")
    target = out
    for section in sections:
      target = target[section]
    target[leaf] = value
  out.lock()
  return out
