"""Times the dense and the min-max masked training step: see `experiments.step_benchmark`.

  python -m experiments.benchmark [--models=mlp,cnn,vgg16] [--full] [--steps=N --rounds=R
      --warmup=W] [--batch_size=B] [--nocontrol] [--json_out=bench.json]

Without size flags it sizes itself to the platform: small on a CPU (the whole run in under
two minutes on 2 cores), full on a GPU or TPU; ``--full`` takes the full sizes anywhere.
"""
from collections.abc import Sequence

import jax
from absl import flags

from experiments import launch
from experiments import step_benchmark as benchmark

_MODELS = flags.DEFINE_list("models", ["mlp", "cnn", "vgg16"],
                            f"Models to benchmark, from {list(benchmark.SETUPS)}.")
_FULL = flags.DEFINE_bool("full", False,
                          "The full sizes on any platform (VGG16 at the paper's 32 images per "
                          "task); without it a CPU run takes small sizes.")
_BATCH_SIZE = flags.DEFINE_integer(
    "batch_size", None, "Global batch for every model, per task for vgg16 (CIFAR-100) "
    "(default: per model and platform).")
_STEPS = flags.DEFINE_integer("steps", None,
                              "Timed steps per round (default: per model and platform).")
_ROUNDS = flags.DEFINE_integer("rounds", None,
                               "Rounds per step kind (default: per model and platform).")
_WARMUP = flags.DEFINE_integer(
    "warmup", None, "Untimed steps after the first call (default: per model and platform).")
_CONTROL = flags.DEFINE_bool("control", True,
                             "Also time the dense step from the pruned values (--nocontrol: "
                             "only the two steps).")
_JSON_OUT = flags.DEFINE_string("json_out", None, "Also write the results to this JSON file.")


def main(argv: Sequence[str]) -> None:
  del argv
  setups, sizing = benchmark.platform_setups(jax.default_backend(), full=_FULL.value)
  print(sizing, flush=True)
  benchmark.run(_MODELS.value, batch_size=_BATCH_SIZE.value, steps=_STEPS.value,
                rounds=_ROUNDS.value, warmup=_WARMUP.value, control=_CONTROL.value,
                json_out=_JSON_OUT.value, setups=setups)


if __name__ == "__main__":
  launch.run_main(main)
