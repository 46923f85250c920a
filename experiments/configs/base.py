"""The fields every experiment config shares, with neutral defaults; see each config."""
import ml_collections


def get_base_config() -> ml_collections.ConfigDict:
  """Fields of the staged pipeline, the weightings and the trainer (unlocked)."""
  c = ml_collections.ConfigDict()
  c.model = "mlp"
  c.model_kwargs = ml_collections.ConfigDict()
  c.seeds = (0,)
  c.methods = ("equal", "uncertainty", "dwa", "minmax")
  c.stages = ("pretrain", "reweight", "prune", "retrain")
  c.share_pretraining = True
  c.sparsity = 0.975               # 40x; 0.983 is 60x, 0.99 is 100x
  c.structure = "unstructured"     # or "filter", or an "n:m" pattern such as "2:4"
  c.scope = "layer"                # or "global"
  c.batch_size = 64
  c.eval_batch_size = 128
  c.optimizer = ml_collections.ConfigDict({
      "name": "sgd", "learning_rate": 0.05, "momentum": 0.9, "weight_decay": 5e-4,
      "schedule": "cosine", "decay_every_epochs": 0, "decay_factor": 0.5,
      "clip_norm": 0.0})            # > 0 clips the model's gradient by global norm
  c.epochs = ml_collections.ConfigDict({"pretrain": 30, "reweight": 15, "retrain": 30,
                                        "sparse": 60})
  c.reweight = ml_collections.ConfigDict({"penalty": 1e-4, "eps": 1e-6,
                                          "refresh_every_epochs": 5, "refresh_at_epochs": ()})
  c.dynamic = ml_collections.ConfigDict({"update_every_epochs": 2, "grow_fraction": 0.005,
                                         "end_fraction": 0.75, "grow": "gradient"})
  c.task_scales = ()               # per-task loss scales, for every weighting; () = all 1
  c.minmax = ml_collections.ConfigDict({"learning_rate": 0.02, "gamma": 5.0, "every": "step",
                                        "geometry": "euclidean"})
  c.uncertainty = ml_collections.ConfigDict({"learning_rate": 0.01})
  c.dwa = ml_collections.ConfigDict({"temperature": 2.0})
  c.checkpoint_every_steps = 200
  c.distributed = False            # True on a multi-host Cloud TPU slice
  c.quiet = False                  # CI=true is quiet too
  return c
