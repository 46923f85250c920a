"""The study: every weighting and pruning criterion, two task sets, 40x and 100x, 10 seeds.

Commands, measured on 2 CPU cores:

  python -m experiments.study --workdir=runs/study                       # 15 min 14 s
  python -m experiments.study --workdir=runs/tuned --config=study:tuned  # 33 min 1 s
  python -m experiments.study --workdir=runs/fair --config=study:fair    # not yet measured

(the second tunes each method's compression-stage clip on the validation split; its
leaderboard is the README's headline).

One comparison per setting (task set × sparsity), each the digits comparison of
``experiments/configs/digits.py``'s ``study`` preset (10 paired seeds, the paper's γ = 5,
the default pipeline pretrain → reweight → prune → retrain and its epochs for every method)
with the methods below, in ``<workdir>/<task set>-<ratio>x/`` with its own report; then one
leaderboard, ``<workdir>/report.md`` (and ``leaderboard.json``, ``leaderboard.png``).

The methods:

* every task weighting of `mmcompress.weighting.WEIGHTINGS`, each with the magnitude prune of
  the paper and its published defaults (the ``config.<weighting>`` sections; min-max's γ
  and step were chosen on the validation split, see the digits config);
* min-max with each task-aware pruning criterion, the per-task Taylor scores aggregated by
  mean, max, DiSparse's union and the min-max task weights (``minmax+taylor_*``).

Every method gets the same training budget (the same stages, epochs, batch size and
optimizer). Within a task set the dense reference of each seed and each method's
reweighting are trained once and shared by both sparsities: they do not depend on the
sparsity (`mmcompress.study`).

``config.study``:

* ``task_sets``, ``sparsities``: the settings, every pair of them;
* ``jobs``: task sets run side by side in that many processes (each runs its sparsities in
  order, the later ones from what the first trained before its prune); 1 runs everything
  in this process;
* ``compilation_cache``: keep JAX's compiled programs in ``<workdir>/jax_cache`` (the two
  sparsities of a task set compile the same programs; a rerun after a kill compiles nothing);
* ``compress_clip_norms``: empty, or the gradient clips (0: none) to tune every method's
  compression stages over. The study then runs once per value, in ``<workdir>/clip-<value>/``
  (the dense models trained once, by the first, and copied to the others: only the stages
  after pretraining are clipped, ``optimizer.compress_clip_norm``), and its leaderboard keeps,
  per setting and method, the value of the best mean validation worst-task retention
  (`mmcompress.leaderboard.tune`), the same grid and budget for every method.

Preset ``tuned``: ``compress_clip_norms = (0.0, 1.0)``, no clip or a clip at global norm 1
(what Nash-MTL's and FairGrad's authors clip their direction to).

Preset ``fair``: the fair protocol (`mmcompress.study`): every method's learning rate
(``FAIR_SCALES`` × the base rate, 1/4 to 4 in steps of about √2) and clip (none or 1) chosen
per setting on the tuning seeds 100–102 by the mean validation worst-task retention, then
that variant alone trained on the reported seeds 0–9 from their own dense models; the same
grid, epochs and seeds for every method. ``fair_quick``: its smoke test (2 + 2 seeds, 2
methods, 3 learning rates, `mixed` at 40x only, no reweighting, 1-2 epochs per stage).

Preset ``quick``: 2 seeds, 2 methods (equal, and min-max with task-aware masks), 1-2 epochs per stage, both task sets and sparsities:
a smoke test of the whole study in under a minute.
"""
import ml_collections

from experiments.configs import digits
from mmcompress import weighting

# Every registered weighting, equal first (the baseline every method is paired with).
WEIGHTINGS = ("equal",) + tuple(w for w in weighting.WEIGHTINGS if w != "equal")
# The fair protocol's learning-rate scales: 1/4 to 4 in steps of about √2 (written to two
# digits, so that a variant's name, lr0.35-clip0, reads back as the very scale it trained).
FAIR_SCALES = (0.25, 0.35, 0.5, 0.71, 1.0, 1.41, 2.0, 2.83, 4.0)
CRITERIA = ("minmax+taylor_mean", "minmax+taylor_max", "minmax+taylor_disparse",
            "minmax+taylor_minmax")


def get_config(preset: str = "") -> ml_collections.ConfigDict:
  """The study config, or its `quick` preset."""
  c = digits.get_config("study")
  c.unlock()
  # A study sets these per setting, from config.study.
  del c["task_sets"]
  del c["sparsity"]
  c.methods = WEIGHTINGS + CRITERIA
  c.epoch_lines = False            # a line per finished run; every epoch is in progress.log
  c.study = ml_collections.ConfigDict({
      "task_sets": ("classify", "mixed"),
      "sparsities": (0.975, 0.99),  # 40x and 100x of the prunable weights
      "jobs": 2,
      "compilation_cache": True,
      "compress_clip_norms": (),
  })
  c.study.tuning_seeds = ()
  if preset == "tuned":
    c.study.compress_clip_norms = (0.0, 1.0)
  elif preset in ("fair", "fair_quick"):
    # Every method's learning rate (×, steps of about √2 over 16×) and clip chosen on
    # tuning seeds disjoint from the reported ones (mmcompress.study, the fair protocol).
    c.study.tuning_seeds = (100, 101, 102)
    c.grid.learning_rate_scale = FAIR_SCALES
    c.grid.clip_norm = (0.0, 1.0)
    c.chunk_runs = 0
    if preset == "fair_quick":
      c.seeds = (0, 1)
      c.study.tuning_seeds = (100, 101)
      c.methods = ("equal", "minmax")
      c.stages = ("pretrain", "prune", "retrain")
      c.study.task_sets = ("mixed",)
      c.study.sparsities = (0.975,)
      c.grid.learning_rate_scale = (0.5, 1.0, 2.0)
      c.grid.clip_norm = (0.0,)
      c.epochs = ml_collections.ConfigDict({"pretrain": 2, "reweight": 1, "retrain": 2,
                                            "sparse": 2})
      c.checkpoint_every_steps = 10
  elif preset == "quick":
    c.seeds = (0, 1)
    c.methods = ("equal", "minmax+taylor_max")
    c.epochs = ml_collections.ConfigDict({"pretrain": 2, "reweight": 1, "retrain": 2,
                                          "sparse": 2})
    c.checkpoint_every_steps = 10
  elif preset:
    raise ValueError(f"unknown preset {preset!r}: use '', 'tuned', 'fair', 'fair_quick' or "
                     "'quick'.")
  c.lock()
  return c
