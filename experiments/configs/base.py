"""The fields every experiment config shares, with neutral defaults; see each config."""
import ml_collections


def get_base_config() -> ml_collections.ConfigDict:
  """Fields of the staged pipeline, the weightings and the trainer (unlocked)."""
  c = ml_collections.ConfigDict()
  c.problem = "digits"           # a name in mmcompress.problems.PROBLEMS
  c.model = "mlp"
  c.model_kwargs = ml_collections.ConfigDict()
  c.seeds = (0,)
  c.methods = ("equal", "uncertainty", "dwa", "minmax")
  c.stages = ("pretrain", "reweight", "prune", "retrain")
  c.share_pretraining = True
  # "mean": every weighting's objective is normalised to the mean task loss (ours);
  # "reference": the reference code's sums (equal), K·softmax (DWA), ½e^{-s}L + s/2 (uncertainty).
  c.loss_reduction = "mean"
  c.sparsity = 0.975               # 40x; 0.983 is 60x, 0.99 is 100x
  c.structure = "unstructured"     # or "filter", or an "n:m" pattern such as "2:4"
  c.scope = "layer"                # or "global"
  c.batch_size = 64
  c.eval_batch_size = 128
  c.optimizer = ml_collections.ConfigDict({
      "name": "sgd", "learning_rate": 0.05, "momentum": 0.9, "weight_decay": 5e-4,
      "schedule": "cosine", "decay_every_epochs": 0, "decay_factor": 0.5,
      "clip_norm": 0.0,             # > 0 clips the model's gradient by global norm
      "compress_clip_norm": 0.0})   # > 0: the stages after pretraining clip at this instead
  c.epochs = ml_collections.ConfigDict({"pretrain": 30, "reweight": 15, "retrain": 30,
                                        "sparse": 60, "gradual": 15})
  c.reweight = ml_collections.ConfigDict({"penalty": 1e-4, "eps": 1e-6,
                                          "refresh_every_epochs": 5, "refresh_at_epochs": (),
                                          # the stage's own lr / schedule; 0 / "" = optimizer's
                                          "learning_rate": 0.0, "schedule": ""})
  # budget "exact": a constant number of active weights; "reference": prune back to the
  # target, then grow ceil(grow_fraction · n) more at every update (density 1 - p + g).
  # grow "gradient" (RigL: |summed gradient|), "random" (SET), or task-aware "task_mean" /
  # "task_max" / "task_disparse" / "task_minmax" (per-task gradient magnitudes, aggregated as
  # the pruning aggregates; task_minmax by the run's task weights; K backward passes a step).
  c.dynamic = ml_collections.ConfigDict({"update_every_epochs": 2, "grow_fraction": 0.005,
                                         "end_fraction": 0.75, "grow": "gradient",
                                         "budget": "exact"})
  # The "gradual" stage (gradual magnitude pruning, in place of "prune", followed by
  # "retrain"): the sparsity rises along Zhu & Gupta's cubic schedule from initial_sparsity
  # to config.sparsity, the masks changing every update_every_epochs from begin_fraction of
  # the stage to end_fraction (the last change on the stage's last step at 1.0).
  c.gradual = ml_collections.ConfigDict({"update_every_epochs": 1, "begin_fraction": 0.0,
                                         "end_fraction": 1.0, "initial_sparsity": 0.0})
  # The prune stage's masks: "magnitude" (the paper) or "taylor" (per-task first-order Taylor
  # scores on calibration batches of the training split, aggregated across the tasks by
  # "mean", "max", "disparse" or "minmax"); a method "minmax+taylor_max" names its own.
  c.prune = ml_collections.ConfigDict({"criterion": "magnitude", "aggregate": "mean",
                                       "calibration_batches": 8})
  c.task_scales = ()               # per-task loss scales, for every weighting; () = all 1
  c.minmax = ml_collections.ConfigDict({"learning_rate": 0.02, "gamma": 5.0, "every": "step",
                                        "geometry": "euclidean"})
  c.uncertainty = ml_collections.ConfigDict({"learning_rate": 0.01, "init_log_var": 0.0})
  c.dwa = ml_collections.ConfigDict({"temperature": 2.0})
  c.db_mtl = ml_collections.ConfigDict({"beta": 0.9, "beta_sigma": 0.0})  # LibMTL's defaults
  c.cagrad = ml_collections.ConfigDict({"c": 0.4})  # the authors' NYUv2 setting
  # alpha 1: Nash-MTL's solution; max_norm: the combined direction clipped to this norm, as
  # the authors' trainers (0: not clipped)
  c.fairgrad = ml_collections.ConfigDict({"alpha": 1.0, "max_norm": 1.0})
  c.nash_mtl = ml_collections.ConfigDict({"max_norm": 1.0})
  c.stch = ml_collections.ConfigDict({"mu": 1.0, "warmup_epochs": 4})  # LibMTL's defaults
  # LibMTL's defaults (--FAMO_w_lr, --FAMO_w_gamma); min_losses () = all 0
  c.famo = ml_collections.ConfigDict({"w_lr": 0.025, "gamma": 1e-3, "min_losses": ()})
  c.checkpoint_every_steps = 200
  # The run axis (mmcompress.train.run_axis): every (seed, variant) of a method trains as one
  # program, in chunks of chunk_runs runs (0 = all at once; 1 = one run at a time, the safe
  # choice for the paper-size models, whose configs keep it). runs_sharded splits the runs
  # over the devices instead of each run's batch (one process only).
  c.chunk_runs = 1
  c.runs_sharded = False
  # Variants of the stages after pretraining, every combination trained on the run axis from
  # the same dense models: learning-rate scales (× optimizer.learning_rate) and gradient clips
  # by global norm (0 = none). () = the config's own (scale 1; compress_clip_norm, or
  # clip_norm when that is 0).
  c.grid = ml_collections.ConfigDict({"learning_rate_scale": (), "clip_norm": ()})
  # > 0: the stages after pretraining draw their batches (and their randomness) anew, from the
  # same data and the same dense model: the null control of a study (0 = the seed's own).
  c.data_order = 0
  c.distributed = False            # True on a multi-host Cloud TPU slice
  c.quiet = False                  # CI=true is quiet too
  c.epoch_lines = True             # a line per epoch; False: per finished run (progress.log)
  return c
