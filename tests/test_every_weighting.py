"""Every registered weighting, loss- or gradient-level, through the digits pipeline at 40x.

Its own file, so that the parallel runner (``--dist loadfile``) can give it a worker of its
own. The methods share one dense pretraining (as the digits runs do), then prune and
retrain under the weighting: no reweighting stage, whose step would be each method's second
compilation. The reweighting stage runs in the pipeline tests (tests/test_trainer.py,
tests/test_run_axis.py), and under every weighting in the measured study (README).
"""
import numpy as np
import pytest

from mmcompress import weighting
from mmcompress.app import comparison


@pytest.fixture(name="dense", scope="module")
def fixture_dense(tmp_path_factory, tiny_experiment):
  """The tiny dense reference of seed 0, trained once: its (params, model state)."""
  _, params, model_state = comparison.run_dense(
      tiny_experiment(tmp_path_factory.mktemp("dense")), (0,))[0]
  return {0: (params, model_state)}


@pytest.mark.slow
@pytest.mark.parametrize("method", sorted(weighting.WEIGHTINGS))
def test_every_weighting_runs_the_digits_pipeline_at_40x(tmp_path, tiny_config, tiny_experiment,
                                                         dense, method):
  exp = tiny_experiment(tmp_path, tiny_config(methods=(method,),
                                              stages=("pretrain", "prune", "retrain")))
  (result,) = comparison.run_method(exp, method, (0,), dense).values()
  assert all(np.isfinite(v) for v in result.metrics.values())
  assert result.sparsity == pytest.approx(0.975, abs=1e-3)
  assert result.prunable_compression_ratio == pytest.approx(40.0, rel=0.05)
  assert result.selected["stage"] == "retrain"
  # Every method reports weights summing to one, on the simplex except IMTL-G's and
  # Aligned-MTL's, whose combinations may subtract a task's gradient.
  trajectory = np.asarray(result.task_weights)
  assert trajectory.shape[0] == 2  # retrain (2 epochs)
  assert np.allclose(trajectory.sum(1), 1.0, atol=1e-5)
  assert method in ("imtl_g", "aligned_mtl") or np.all(trajectory >= 0)
