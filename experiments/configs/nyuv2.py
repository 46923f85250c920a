"""NYUv2 with three dense tasks, SegNet with task attention (MTAN): the paper's NYUv2 setting.

Command (meant for one GPU with at least 16 GB, or a Cloud TPU VM; data in the preprocessed
npy layout described in docs/paper.md):

  python -m experiments.nyuv2 --workdir=runs/nyuv2 --config.data_dir=/data/nyuv2
  python -m experiments.nyuv2 --workdir=runs/nyuv2_dst60 \
      --config=experiments/configs/nyuv2.py:dst60x --config.data_dir=/data/nyuv2

Presets: ``40x`` (default, 97.5 %) and ``60x`` (98.3 %) through pretrain → reweight → prune →
retrain, with the settings of the reference's pruning code (ISCAS 2024); ``dst60x`` and
``dst100x``: the journal's dynamic sparse training from scratch at 98.3 % / 99 %, growing
ceil(0.51 % / 0.3 %) of each layer every 10 epochs until epoch 150 with the reference's
budget (prune back to the target, then grow, so the density ends at (1 − p) + g: about
45x / 77x), β = 10, and the journal code's training: SGD lr 0.1, momentum 0.9, cosine,
weight decay 5e-4, batch 4, raw (unscaled) losses, an L1 normal loss, on MTAN-SegNet rather
than the journal's MTAN-DeepLabv3 (docs/deviations.md); ``smoke``: a few epochs at reduced
size, for checking an installation on real data.

Reference settings of the pruning presets (Guo et al.; docs/method.md §1–§4):
Adam 1e-4, ×0.5 every 100 epochs, 200 epochs per stage, batch 2 (the MTAN code's), min-max
β = 50 (step 0.02), γ = 5, ascending once per epoch, and the reference's loss scales
(1, 1.5, 3) for (segmentation, depth, normals) in every weighting's objective (so that the
comparison isolates the weighting); reweighted-ℓ1 λ = 1e-7, ε = 1e-6, refreshed at epochs
60 and 120. As in the reference code, each method pretrains under its own weighting and the
losses are combined as it does (``loss_reduction = "reference"``; uncertainty's log-variances
start at −0.5, −0.7 in the DST presets, and move at the model's learning rate 1e-4 in the
pruning presets); set ``share_pretraining=True`` or ``loss_reduction="mean"`` for this
project's conventions. The official val split is the test split; model selection uses 10 %
of train held out.

Results: not yet measured (no GPU run of this config has been made).
"""
import ml_collections

from experiments.configs import base

PRESETS = ("", "40x", "60x", "dst60x", "dst100x", "smoke")


def get_config(preset: str = "") -> ml_collections.ConfigDict:
  """The paper's NYUv2 setting for the preset.

  Over 50 lines because it is a list of settings, read top to bottom, one per line.
  """
  if preset not in PRESETS:
    raise ValueError(f"unknown preset {preset!r}: use one of {list(PRESETS)}.")
  c = base.get_base_config()
  c.data_dir = ""                  # holds train/ and val/ in the npy layout
  c.height, c.width = 288, 384
  c.val_fraction = 0.1
  c.split_seed = 0
  c.augment = True
  c.check_values = True            # check every file's values once before training
  c.normal_loss = "cosine"         # 1 − cosine (MTAN, the pruning code); "l1" (the DST code)
  # Depth and normal errors: "split" (every valid pixel of the split weighs the same) or
  # "mtan" (per batch of 2 images, then the mean over batches, as MTAN and the reference).
  c.metric_averaging = "split"
  c.problem = "nyuv2"
  c.model = "mtan"
  c.model_kwargs = ml_collections.ConfigDict({"filters": (64, 128, 256, 512, 512)})
  c.seeds = (0,)
  c.sparsity = 0.983 if preset == "60x" else 0.975
  c.batch_size = 2
  c.eval_batch_size = 8
  c.optimizer.update({"name": "adam", "learning_rate": 1e-4, "momentum": 0.0,
                      "weight_decay": 0.0, "schedule": "step", "decay_every_epochs": 100,
                      "decay_factor": 0.5})
  c.epochs.update({"pretrain": 200, "reweight": 200, "retrain": 200, "sparse": 200})
  c.reweight.update({"penalty": 1e-7, "eps": 1e-6, "refresh_every_epochs": 0,
                     "refresh_at_epochs": (60, 120)})
  c.minmax.update({"learning_rate": 0.02, "gamma": 5.0, "every": "epoch"})
  c.task_scales = (1.0, 1.5, 3.0)  # the reference's loss scales, for every weighting
  c.share_pretraining = False      # the reference pretrains each method under its weighting
  c.loss_reduction = "reference"   # its sums, K·softmax and ½e^{-s}L + s/2
  c.uncertainty.update({"init_log_var": -0.5,  # the reference pruning code's start
                        "learning_rate": 1e-4})  # there s moves with the model's Adam 1e-4
  c.checkpoint_every_steps = 2000
  if preset.startswith("dst"):     # the journal code's dynamic sparse training
    c.stages = ("sparse",)
    c.sparsity = {"dst60x": 0.983, "dst100x": 0.99}[preset]
    c.dynamic.update({"update_every_epochs": 10, "end_fraction": 0.75, "grow": "gradient",
                      "budget": "reference",
                      "grow_fraction": {"dst60x": 0.0051, "dst100x": 0.003}[preset]})
    c.minmax.learning_rate = 0.1   # β = 10
    c.batch_size = 4
    c.optimizer.update({"name": "sgd", "learning_rate": 0.1, "momentum": 0.9,
                        "weight_decay": 5e-4, "schedule": "cosine"})
    c.task_scales = ()             # the journal code adds the raw task losses
    c.normal_loss = "l1"
    c.uncertainty.update({"init_log_var": -0.7, "learning_rate": 0.01})
  if preset == "smoke":
    c.height, c.width = 96, 128
    c.epochs.update({"pretrain": 2, "reweight": 2, "retrain": 2, "sparse": 2})
    c.reweight.refresh_at_epochs = (1,)
  c.lock()
  return c
