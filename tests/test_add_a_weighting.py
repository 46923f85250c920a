"""Adding a weighting costs one function and one registry call: registered from this file, a
toy weighting passes the contract suite, trains through the digits pipeline with its
defaults, reads its knob from a config section, and refuses a knob it does not take."""
import json

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
import pytest

import test_contract
from mmcompress import errors, weighting
from mmcompress.app import comparison
from mmcompress.weighting import base


def harder_first(sharpness: float = 1.0) -> weighting.TaskWeighting:
  """Weights softmax(sharpness · L) of the task losses, held constant in the gradient: the
  task with the larger loss gets the larger weight."""
  def objective(task_losses, task_params, task_state, key=None):
    del task_params, task_state, key
    return jnp.sum(jax.lax.stop_gradient(jax.nn.softmax(sharpness * task_losses)) * task_losses)

  return weighting.TaskWeighting("harder_first", base.counted_tasks, objective,
                                 optax.set_to_zero(), base.no_epoch_memory,
                                 base.uniform_weights)


@pytest.fixture(name="registered")
def fixture_registered():
  weighting.register("harder_first", harder_first)  # the one registry call
  yield
  weighting.unregister("harder_first")


def test_a_registered_weighting_passes_the_contract_suite(registered):
  del registered
  test_contract.check_all(*test_contract._weighting_case("harder_first"))  # pylint: disable=protected-access


def test_a_registered_weighting_trains_through_the_pipeline(registered, tmp_path, tiny_config):
  del registered
  config = tiny_config(methods=("equal", "harder_first"))
  comparison.run(config, str(tmp_path), print_report=False)
  result = json.loads((tmp_path / "seed0" / "harder_first" / "result.json").read_text())
  assert result["sparsity"] == pytest.approx(config.sparsity, abs=1e-3)
  assert np.all(np.isfinite(list(result["metrics"].values())))
  assert "harder_first" in (tmp_path / "report.md").read_text()


def test_a_registered_weighting_reads_its_section_and_refuses_other_knobs(registered):
  del registered
  config = ml_collections.ConfigDict({"task_scales": (), "loss_reduction": "mean"})
  losses = jnp.asarray([1.0, 2.0])
  default = weighting.from_config("harder_first", config, steps_per_epoch=3)
  config.harder_first = ml_collections.ConfigDict({"sharpness": 3.0})
  sharp = weighting.from_config("harder_first", config, steps_per_epoch=3)
  for built, s in ((default, 1.0), (sharp, 3.0)):
    want = float(jnp.sum(jax.nn.softmax(s * losses) * losses))
    assert float(built.objective(losses, {}, jnp.zeros(2))) == pytest.approx(want)
  config.harder_first.sharpnes = 2.0
  with pytest.raises(errors.UserError, match=r"config.harder_first.sharpnes is not a knob .*"
                                             r"\['sharpness'\]"):
    weighting.from_config("harder_first", config, steps_per_epoch=3)
  with pytest.raises(errors.UserError, match="registered already"):
    weighting.register("harder_first", harder_first)
