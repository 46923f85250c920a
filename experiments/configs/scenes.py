"""Scenes: rendered rooms as NYUv2's three dense tasks, MTAN, trained end to end on a CPU.

Command (the default: dense reference, then 40x with equal and min-max weighting through
pretrain → reweight → prune → retrain, 3 seeds, sized for a 2-core CPU; see
docs/scenes.md for what it measured and how long it took):

  python -m experiments.scenes --workdir=runs/scenes

The problem is NYUv2's (`mmcompress.problems.nyuv2.problem.DenseProblem`: the same batches and
augmentation, losses, metrics and MTAN model), on scenes rendered once by
`mmcompress.problems.scenes` and cached in ``data_dir`` (empty: the default cache,
``~/.cache/mmcompress/scenes``). Only the data and the sizes differ from a NYUv2 run:
7 classes instead of 13, 32×64 images, MTAN at widths (8, 16, 32, 32, 32) instead of
(64, 128, 256, 512, 512) with SegNet's 13 convolutions kept, and this project's conventions
(shared pretraining, mean losses, the min-max defaults of the base config: β = 50, γ = 5,
ascending every step). Adam at 3e-3 with a cosine schedule, as a short CPU run needs.

Measured (docs/scenes.md): the dense model beats the trivial predictor on every task
(test mIoU 0.192 against 0.064, depth error 0.881 m against 1.125 m, normal error 33.8°
against 49.5°, means over 3 seeds); 13 min 48 s wall on the 2-core machine.

Presets: ``quick`` (a few tiny scenes, a narrow MTAN of one convolution per block, one seed,
one epoch per compression stage: a smoke test of the whole pipeline, for the tests); ``gpu``
(more and larger scenes, a wider MTAN, longer retraining: the scenes comparison of
``python -m experiments.gpu_check --all``). Override
any field, e.g. ``--config.seeds="(0,)"``; the config is locked, so a mistyped field fails.
"""
import ml_collections

from experiments.configs import base

PRESETS = ("", "quick", "gpu")


def get_config(preset: str = "") -> ml_collections.ConfigDict:
  """The default (measured) config, or the `quick` or `gpu` preset."""
  if preset not in PRESETS:
    raise ValueError(f"unknown preset {preset!r}: use one of {list(PRESETS)}.")
  c = base.get_base_config()
  c.problem = "scenes"
  c.data_dir = ""                  # the scenes cache; "" = ~/.cache/mmcompress/scenes
  c.data_seed = 0                  # the rendered scenes (fixed across model seeds)
  c.height, c.width = 32, 64       # MTAN of 5 blocks needs multiples of 32
  c.num_train, c.num_val, c.num_test = 320, 64, 128
  c.augment = True                 # NYUv2's rescale-crop and flip
  c.normal_loss = "cosine"
  c.metric_averaging = "split"
  c.model = "mtan"
  c.model_kwargs = ml_collections.ConfigDict({"filters": (8, 16, 32, 32, 32)})
  c.methods = ("equal", "minmax")
  # The seeds and variants of a method in chunks of at most 25 runs (docs/running.md, "The run axis"):
  # a grid of 50 runs took 173 s in two chunks against 208 s in one (their states no longer
  # fit the caches) and 208 s in five of 10 (the chunks' own overheads), on 2 CPU cores.
  c.chunk_runs = 25
  c.seeds = (0, 1, 2)
  c.batch_size = 16
  c.eval_batch_size = 64
  c.optimizer.update({"name": "adam", "learning_rate": 3e-3, "momentum": 0.0,
                      "weight_decay": 0.0, "schedule": "cosine"})
  c.epochs.update({"pretrain": 12, "reweight": 2, "retrain": 4, "sparse": 16})
  c.reweight.update({"refresh_every_epochs": 1})
  c.checkpoint_every_steps = 400
  if preset == "quick":
    c.num_train, c.num_val, c.num_test = 16, 4, 4
    c.model_kwargs.filters = (4, 4, 4, 4, 4)
    # One convolution per SegNet block (the full MTAN has 2, 2, 3, 3, 3): the same
    # architecture with 5 + 5 convolutions in the encoder and decoder instead of 13 + 13 (its
    # study test, when it ran this model, 84 s -> 69 s alone on an earlier 2-core machine).
    c.model_kwargs.convs_per_block = (1, 1, 1, 1, 1)
    c.seeds = (0,)
    c.batch_size = 4
    c.eval_batch_size = 4
    # Enough dense steps that every metric of the dense model is above 0 (the report divides
    # by them), the compression stages one epoch each.
    c.epochs.update({"pretrain": 6, "reweight": 1, "retrain": 1, "sparse": 1})
    c.checkpoint_every_steps = 50
  if preset == "gpu":
    # Sized for one GPU (`python -m experiments.gpu_check --all`, about 10 minutes in all):
    # 4x the scenes at 4x the pixels, the MTAN twice as wide, and the compression stages
    # long enough to train back (retraining 5x the default). Chosen by estimate from the
    # CPU runs (the default: 13 min 48 s on 2 cores); no GPU has run it yet.
    c.num_train, c.num_val, c.num_test = 1280, 256, 512
    c.height, c.width = 64, 128
    c.model_kwargs.filters = (16, 32, 64, 64, 64)
    c.batch_size = 32
    c.eval_batch_size = 128
    c.epochs.update({"pretrain": 20, "reweight": 3, "retrain": 20, "sparse": 40})
    c.checkpoint_every_steps = 1000
  c.lock()
  return c
