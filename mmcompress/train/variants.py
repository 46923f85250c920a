"""Variants: per-run hyperparameters of the stages after pretraining, carried in the state.

A grid (``config.grid``) names learning-rate scales and gradient clips; each combination is a
`Variant`, and every (seed, variant) pair is one point on the run axis
(`mmcompress.train.run_axis`). The values live in the optimizer state (optax's
`inject_hyperparams`), not in the program: one compiled step trains every variant, each
reading its own values from its own slice of the stacked state.

* The learning-rate scale multiplies the optimizer's update (after momentum or Adam's
  normalisation and weight decay, before the masks): for SGD, momentum and Adam that is
  exactly the base rate (and its schedule) times the scale, so a variant's rate is
  recorded as ``optimizer.learning_rate × scale``.
* The clip is a global-norm clip of the model's gradient where it is > 0, and no clip at 0:
  one traced value covers both, so "no clip" and "clip 1" share a program.
"""
from __future__ import annotations

import itertools
import re
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import optax

from mmcompress import _checks
from mmcompress.train import plan as plan_lib

__all__ = ["base_method", "clip_by_run", "default_clip", "grid", "parse", "PIN", "pinned",
           "scale_by_run", "Variant"]


class Variant(NamedTuple):
  """One point of the grid.

  Attributes:
    learning_rate_scale: multiplies the stage's learning rate (and its schedule).
    clip_norm: the global-norm clip of the model's gradient; 0 = no clip.
  """
  learning_rate_scale: float = 1.0
  clip_norm: float = 0.0

  @property
  def name(self) -> str:
    """The variant's folder and report name, e.g. ``lr0.5-clip1`` or ``lr2-clip0``."""
    return f"lr{self.learning_rate_scale:g}-clip{self.clip_norm:g}"

  def describe(self, base_learning_rate: float) -> str:
    """``learning rate 0.025 (× 0.5), clip 1`` (or ``no clip``), for a report's notes."""
    return (f"learning rate {base_learning_rate * self.learning_rate_scale:g} "
            f"(× {self.learning_rate_scale:g}), "
            + (f"clip {self.clip_norm:g}" if self.clip_norm else "no clip"))

  def to_json(self, base_learning_rate: float) -> dict[str, Any]:
    """What a result records of its variant: the rate actually used among them."""
    return {"name": self.name, "learning_rate_scale": self.learning_rate_scale,
            "learning_rate": base_learning_rate * self.learning_rate_scale,
            "clip_norm": self.clip_norm}


PIN = "@"  # a config.methods entry "pcgrad@lr0.5-clip1" trains that method at that variant only
_NAME = re.compile(r"lr([0-9]*\.?[0-9]+(?:e[+-]?[0-9]+)?)-clip([0-9]*\.?[0-9]+(?:e[+-]?[0-9]+)?)")


def parse(name: str, where: str = "variant") -> Variant:
  """The variant a name such as ``lr0.5-clip1`` (`Variant.name`) stands for, or a `UserError`
  naming `where`."""
  match = _NAME.fullmatch(name)
  if not match:
    raise _checks.UserError(f"{where}: {name!r} is not a variant; write lr<scale>-clip<clip>, "
                            "e.g. lr0.5-clip1 (clip 0: none).")
  scale, clip = (float(g) for g in match.groups())
  _checks.positive(scale, f"{where}: the learning-rate scale")
  return Variant(scale, clip)


def pinned(method: str) -> Variant | None:
  """The variant a ``config.methods`` entry pins (``pcgrad@lr0.5-clip1``), or None."""
  _, at, name = method.partition(PIN)
  return parse(name, f"config.methods entry {method!r}") if at else None


def base_method(method: str) -> str:
  """A ``config.methods`` entry without its pinned variant (``pcgrad@lr0.5-clip1`` -> pcgrad)."""
  return method.partition(PIN)[0]


def default_clip(config: plan_lib.Plan) -> float:
  """The clip of the stages after pretraining without a grid: ``compress_clip_norm`` when it
  is > 0, else ``clip_norm`` (what pretraining uses)."""
  opt = config.optimizer
  compress = _checks.non_negative(opt.compress_clip_norm, "optimizer.compress_clip_norm")
  return compress if compress > 0 else _checks.non_negative(opt.clip_norm, "optimizer.clip_norm")


def grid(config: plan_lib.Plan) -> tuple[Variant, ...]:
  """The variants of ``config.grid``, learning-rate scales outermost; an empty list takes
  the config's own value (scale 1, `default_clip`)."""
  scales = tuple(config.grid.learning_rate_scale or (1.0,))
  clips = tuple(config.grid.clip_norm or (default_clip(config),))
  for scale in scales:
    _checks.positive(scale, "config.grid.learning_rate_scale")
  for clip in clips:
    _checks.non_negative(clip, "config.grid.clip_norm (0 = no clip)")
  variants = tuple(Variant(float(s), float(c)) for s, c in itertools.product(scales, clips))
  names = [v.name for v in variants]
  if len(set(names)) != len(names):
    raise _checks.UserError(f"config.grid names a variant twice ({names}): give each "
                            "learning-rate scale and each clip once.")
  return variants


def _clip_or_off(max_norm: jax.Array) -> optax.GradientTransformation:
  """`optax.clip_by_global_norm` where ``max_norm > 0``, the identity at 0 (traced)."""

  def update_fn(updates, state, params=None):
    del params
    norm = optax.tree.norm(updates)
    clip = (max_norm > 0) & (norm > max_norm)
    factor = jnp.where(clip, max_norm / jnp.where(clip, norm, 1.0), 1.0)
    return jax.tree.map(lambda u: (u * factor).astype(u.dtype), updates), state

  return optax.GradientTransformation(lambda params: optax.EmptyState(), update_fn)


def clip_by_run(max_norm: float) -> optax.GradientTransformation:
  """A global-norm clip whose norm (0 = none) is a value of the state, not of the program."""
  return optax.inject_hyperparams(_clip_or_off)(max_norm=max_norm)


def scale_by_run(scale: float) -> optax.GradientTransformation:
  """Multiplies the updates by `scale`, a value of the state, not of the program."""
  return optax.inject_hyperparams(optax.scale)(step_size=scale)
