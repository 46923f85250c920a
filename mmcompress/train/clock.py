"""Where a run's wall time goes: compilation, training steps, evaluation, checkpoints, the rest.

A `Clock` measures, it does not estimate. While it is open (``with Clock() as clock:``) it
listens to JAX's own compile events (tracing, lowering to MLIR, XLA's backend compile) and
sums them as *compilation*; the trainer wraps its training steps, its evaluations and its
checkpoint saves and restores in `Clock.measure`, which adds the wall time of the block to
its kind minus whatever compiled inside it. *The rest* is the clock's whole wall time minus
those four: data loading, pruning, exports, reports, Python.

JAX dispatches work asynchronously, so a block's time is the time until its results were on
the host: the trainer reads every step's losses back before each epoch's evaluation (inside
the measured steps), so a step's compute is counted with the steps, not with what follows.

One clock at a time per process (JAX's monitoring listeners are process-wide); a nested
``measure`` is counted by the outer block only.
"""
from __future__ import annotations

import contextlib
import time
from collections.abc import Iterator

import jax

__all__ = ["Clock", "KINDS", "measure", "split_text"]

KINDS = ("compilation", "training steps", "evaluation", "checkpoints")
# JAX's compile events (jax._src.dispatch / pxla), each a duration in seconds.
_COMPILE_EVENTS = ("/jax/core/compile/jaxpr_trace_duration",
                   "/jax/core/compile/jaxpr_to_mlir_module_duration",
                   "/jax/core/compile/backend_compile_duration")


def _duration(seconds: float) -> str:
  seconds = max(0.0, seconds)
  if seconds < 60:
    return f"{seconds:.1f} s"
  minutes, rest = divmod(int(round(seconds)), 60)
  return f"{minutes} min {rest} s" if minutes < 60 else f"{minutes // 60} h {minutes % 60} min"


def split_text(split: dict[str, float], wall: float | None = None) -> str:
  """``compilation 41.0 s, training steps 2 min 3 s, ...`` for a `Clock.split` (each part
  with its percentage of `wall` when `wall` is given and positive)."""
  share = wall is not None and wall > 0
  return ", ".join(f"{kind} {_duration(s)}" + (f" ({100 * s / wall:.0f} %)" if share else "")
                   for kind, s in split.items())


class Clock:
  """Sums a run's wall time by kind (`KINDS`, and the rest); see the module docstring."""

  def __init__(self):
    self.totals = dict.fromkeys(KINDS, 0.0)
    self._compiled = 0.0  # every compile second so far (to take out of measured blocks)
    self._started = None
    self._stopped = None
    self._depth = 0

  def _listen(self, event: str, seconds: float, **_) -> None:
    if event in _COMPILE_EVENTS:
      self.totals["compilation"] += seconds
      self._compiled += seconds

  def __enter__(self) -> Clock:
    self._started, self._stopped = time.perf_counter(), None
    jax.monitoring.register_event_duration_secs_listener(self._listen)
    return self

  def __exit__(self, *exc) -> None:
    self._stopped = time.perf_counter()
    jax.monitoring.unregister_event_duration_listener(self._listen)

  @contextlib.contextmanager
  def measure(self, kind: str) -> Iterator[None]:
    """Adds the block's wall time, less what compiled inside it, to `kind`."""
    if kind not in KINDS[1:]:
      raise ValueError(f"kind must be one of {list(KINDS[1:])}, got {kind!r}.")
    self._depth += 1
    start, compiled = time.perf_counter(), self._compiled
    try:
      yield
    finally:
      self._depth -= 1
      if self._depth == 0:
        elapsed = time.perf_counter() - start - (self._compiled - compiled)
        self.totals[kind] += max(0.0, elapsed)

  @property
  def wall(self) -> float:
    """Seconds since the clock opened (until it closed)."""
    if self._started is None:
      return 0.0
    return (self._stopped or time.perf_counter()) - self._started

  def split(self) -> dict[str, float]:
    """Seconds by kind, and ``"the rest"``: the wall time none of them took."""
    out = dict(self.totals)
    out["the rest"] = max(0.0, self.wall - sum(self.totals.values()))
    return out

  def line(self) -> str:
    """``wall time 3 min 5 s: compilation 41.0 s (22 %), training steps ...``."""
    wall = self.wall
    return f"wall time {_duration(wall)}: {split_text(self.split(), wall)}"


@contextlib.contextmanager
def measure(clock: Clock | None, kind: str) -> Iterator[None]:
  """`Clock.measure` of `clock`, or nothing when there is no clock."""
  if clock is None:
    yield
  else:
    with clock.measure(kind):
      yield
