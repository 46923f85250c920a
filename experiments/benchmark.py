"""Times the dense and the min-max masked training step: see `mmcompress.benchmark`.

  python -m experiments.benchmark --models=mlp,cnn,vgg16 [--steps=N --rounds=R --warmup=W]
      [--batch_size=B] [--nocontrol] [--json_out=bench.json]
"""
from collections.abc import Sequence

from absl import app, flags

from mmcompress.benchmark import SETUPS, run

_MODELS = flags.DEFINE_list("models", ["mlp", "cnn", "vgg16"],
                            f"Models to benchmark, from {list(SETUPS)}.")
_BATCH_SIZE = flags.DEFINE_integer(
    "batch_size", None, "Global batch for every model, per task for vgg16 (CIFAR-100) "
    "(default: per model).")
_STEPS = flags.DEFINE_integer("steps", None, "Timed steps per round (default: per model).")
_ROUNDS = flags.DEFINE_integer("rounds", None, "Rounds per step kind (default: per model).")
_WARMUP = flags.DEFINE_integer("warmup", None,
                               "Untimed steps after the first call (default: per model).")
_CONTROL = flags.DEFINE_bool("control", True,
                             "Also time the dense step from the pruned values (--nocontrol: "
                             "only the two steps).")
_JSON_OUT = flags.DEFINE_string("json_out", None, "Also write the results to this JSON file.")


def main(argv: Sequence[str]) -> None:
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments: {argv[1:]}")
  run(_MODELS.value, batch_size=_BATCH_SIZE.value, steps=_STEPS.value, rounds=_ROUNDS.value,
      warmup=_WARMUP.value, control=_CONTROL.value, json_out=_JSON_OUT.value)


if __name__ == "__main__":
  app.run(main)
