"""Where the wall time goes (`mmcompress.train.clock`): measured blocks, compilation taken out of
them, the rest by difference."""
import time

import jax
import jax.numpy as jnp
import pytest

from mmcompress.train import clock as clock_lib


def test_a_block_counts_its_wall_time_less_what_compiled_inside_it():
  with clock_lib.Clock() as clock:
    with clock.measure("evaluation"):
      time.sleep(0.2)
    # A new program: its compile time goes to compilation, not to the block.
    f = jax.jit(lambda x: jnp.tanh(x @ x.T + x.shape[0]))
    compiled_before, started = clock.totals["compilation"], time.perf_counter()
    with clock.measure("training steps"):
      f(jnp.ones((37, 41))).block_until_ready()
      time.sleep(0.1)
    block = time.perf_counter() - started
    compiled_inside = clock.totals["compilation"] - compiled_before
    with clock.measure("checkpoints"):
      with clock.measure("evaluation"):  # nested: counted by the outer block only
        time.sleep(0.05)
  split = clock.split()
  assert compiled_inside > 0
  # Exactly the block's wall time less what compiled inside it (up to the timer calls).
  assert split["training steps"] == pytest.approx(block - compiled_inside, abs=5e-3)
  assert split["training steps"] >= 0.1
  assert 0.2 <= split["evaluation"] < 0.2 + 0.5
  assert 0.05 <= split["checkpoints"] < 0.05 + 0.5
  assert sum(split.values()) == pytest.approx(clock.wall, rel=1e-6)
  line = clock.line()
  assert line.startswith("wall time ") and "the rest" in line and "compilation" in line
  # Closed: nothing more is heard.
  before = clock.totals["compilation"]
  jax.jit(lambda x: x * 3 + 1)(jnp.ones(7)).block_until_ready()
  assert clock.totals["compilation"] == before


def test_split_text_formats_each_part_and_its_share_of_the_wall_time():
  split = {"compilation": 1.0, "training steps": 90.0, "the rest": 9.0}
  assert clock_lib.split_text(split) == (
      "compilation 1.0 s, training steps 1 min 30 s, the rest 9.0 s")
  assert clock_lib.split_text(split, 100.0) == (
      "compilation 1.0 s (1 %), training steps 1 min 30 s (90 %), the rest 9.0 s (9 %)")
  assert clock_lib.split_text(split, 0.0) == clock_lib.split_text(split)


def test_measure_names_its_kind_and_no_clock_measures_nothing():
  with pytest.raises(ValueError, match="kind must be one of"):
    with clock_lib.Clock() as clock, clock.measure("compilation"):
      pass
  with clock_lib.Clock() as clock:
    with clock_lib.measure(None, "evaluation"):  # no clock: this block goes nowhere
      time.sleep(0.01)
    assert clock.totals["evaluation"] == 0.0
    with clock_lib.measure(clock, "evaluation"):  # the clock's own: it counts
      time.sleep(0.01)
    assert clock.totals["evaluation"] >= 0.01


def test_the_compilation_cache_goes_to_the_users_cache_folder_unless_turned_off(monkeypatch,
                                                                                tmp_path):
  from mmcompress.train import parallel  # pylint: disable=import-outside-toplevel
  monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
  assert parallel.default_cache_dir() == str(tmp_path / "cache" / "mmcompress" / "jax")
  monkeypatch.setenv("JAX_COMPILATION_CACHE_DIR", "")
  assert parallel.use_compilation_cache(str(tmp_path / "x")) is None  # off
  monkeypatch.setenv("JAX_COMPILATION_CACHE_DIR", str(tmp_path / "mine"))
  assert parallel.use_compilation_cache(str(tmp_path / "x")) == str(tmp_path / "mine")
  assert jax.config.jax_compilation_cache_dir != str(tmp_path / "x")  # the environment's


@pytest.mark.slow
def test_an_entry_point_fills_the_users_cache(tmp_path, run_python,
                                                                 monkeypatch):
  # The benchmark at its smallest, without the test session's own cache (conftest.py).
  monkeypatch.delenv("JAX_COMPILATION_CACHE_DIR", raising=False)
  args = ("-m", "experiments.benchmark", "--models=mlp", "--steps=1", "--rounds=1",
          "--warmup=0", "--nocontrol")
  env = {"XDG_CACHE_HOME": str(tmp_path / "cache")}
  first = run_python(*args, cwd=tmp_path, env=env)
  assert first.returncode == 0, first.stderr[-2000:]
  cache = tmp_path / "cache" / "mmcompress" / "jax"
  assert any(cache.iterdir())  # (turned off by the environment: the test above)
