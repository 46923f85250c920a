"""The README's composition snippet runs as written and keeps its promises."""
import pathlib
import re

import jax
import jax.numpy as jnp
import numpy as np

README = pathlib.Path(__file__).resolve().parents[1] / "README.md"


def readme_snippet(name: str = "snippet") -> str:
  text = README.read_text()
  block = re.search(rf"<!-- {name}:start -->\s*```python\n(.*?)```\s*<!-- {name}:end -->",
                    text, re.S)
  assert block, f"README lost its {name} markers"
  return block.group(1)


def _two_task_problem():
  """Params of a shared tanh layer and two heads, and the two regressions' losses."""
  k1, k2, k3 = jax.random.split(jax.random.key(0), 3)
  params = {"trunk": {"kernel": jax.random.normal(k1, (16, 32))},
            "head_0": {"kernel": jax.random.normal(k2, (32, 1))},
            "head_1": {"kernel": jax.random.normal(k3, (32, 1))}}

  def task_losses(params, batch):
    x, y = batch
    h = jnp.tanh(x @ params["trunk"]["kernel"])
    return jnp.stack([jnp.mean((h @ params[f"head_{k}"]["kernel"] - y[:, k:k + 1]) ** 2)
                      for k in range(2)])

  x = jax.random.normal(jax.random.key(1), (64, 16))
  return params, task_losses, (x, jnp.stack([x[:, 0], 10 * x[:, 1]], 1))


def test_readme_gradient_level_snippet_trains_masked_with_nash_mtl():
  params, task_losses, batch = _two_task_problem()
  namespace = {"params": params, "task_losses": task_losses, "num_tasks": 2}
  exec(readme_snippet("gradient-snippet"), namespace)
  params, opt_state, train_step = (namespace[n] for n in ("params", "opt_state", "train_step"))
  masks = namespace["masks"]
  before = task_losses(params, batch)
  for _ in range(30):
    params, opt_state = train_step(params, opt_state, batch)
  trunk, mask = np.asarray(params["trunk"]["kernel"]), np.asarray(masks["trunk"]["kernel"])
  assert (~mask).sum() == round(0.975 * mask.size)
  assert np.all(trunk[~mask] == 0.0)
  assert np.all(np.asarray(task_losses(params, batch)) < np.asarray(before))  # both tasks
  from mmcompress import weighting  # pylint: disable=import-outside-toplevel
  w = np.asarray(weighting.current_weights(namespace["nash"], {}, (), opt_state))
  assert abs(w.sum() - 1) < 1e-6 and np.all(w > 0)


def test_readme_snippet_trains_a_masked_min_max_model():
  params, task_losses, (x, y) = _two_task_problem()
  namespace = {"params": params, "task_losses": task_losses, "num_tasks": 2}
  exec(readme_snippet(), namespace)
  state, opt_state, train_step = (namespace[n] for n in ("state", "opt_state", "train_step"))
  masks = namespace["masks"]
  start = state
  for _ in range(30):
    state, opt_state = train_step(state, opt_state, (x, y))
  trunk, mask = np.asarray(state["params"]["trunk"]["kernel"]), np.asarray(masks["trunk"]["kernel"])
  assert (~mask).sum() == round(0.975 * mask.size)
  assert np.all(trunk[~mask] == 0.0)
  assert not np.allclose(trunk[mask], np.asarray(start["params"]["trunk"]["kernel"])[mask])
  w = np.asarray(state["task_params"])
  assert abs(w.sum() - 1) < 1e-6 and np.all(w >= 0)
  assert w[1] > w[0]  # the ascent moved weight to the task with the larger loss
