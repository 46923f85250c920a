"""mmcompress: min-max task weighting and sparsity for compressing multi-task JAX networks.

The core a user composes into their own JAX training loop:

* `saddle_objective`: Σ_k w_k c_k L_k − (γ/2)‖w − 1/K‖², as a pure function;
* `simplex_ascent`: the task weights' projected ascent, an optax transform;
* `saddle_point`: one optax transform over ``{"params", "task_params"}`` for both players;
* `mmcompress.sparsity`: magnitude masks, `static_sparse`, reweighted-ℓ1, dynamic sparse training,
  gradual magnitude pruning;
* `mmcompress.weighting`: the task weightings behind one interface and registry, loss-level (equal,
  uncertainty, DWA, min-max, RLW, GLS, STCH, FAMO) and gradient-level (MGDA, PCGrad, CAGrad,
  IMTL-G, Nash-MTL, Aligned-MTL, UPGrad, FairGrad, DB-MTL), the per-task gradients and the
  transform that combines them;
* `mmcompress.aggregators`: the gradient-level methods as pure functions of the task
  gradients (or of their Gram matrix);
* `UserError`: what every public function raises for a mistake in its arguments.

The layers above the core: `mmcompress.train` (the trainer), `mmcompress.models` and
`mmcompress.problems`, and `mmcompress.app` (comparisons, the study, reports).
"""
from mmcompress import sparsity
from mmcompress import weighting
from mmcompress.errors import UserError
from mmcompress.transforms import SaddlePointState, SimplexAscentState, saddle_point, simplex_ascent
from mmcompress.objective import equal_task_weights, saddle_objective
from mmcompress.weighting import TaskWeighting

__all__ = [
    "SaddlePointState",
    "SimplexAscentState",
    "TaskWeighting",
    "UserError",
    "equal_task_weights",
    "saddle_objective",
    "saddle_point",
    "simplex_ascent",
    "sparsity",
    "weighting",
]
