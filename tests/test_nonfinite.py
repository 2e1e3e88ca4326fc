"""Non-finite steps (maskcon_jax.nonfinite) on a toy step. Whole runs that
stop or skip: tests/test_reliability.py."""

import flax.struct
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from maskcon_jax import nonfinite


@flax.struct.dataclass
class _State:
  step: jax.Array
  params: dict


def _state():
  return _State(step=jnp.asarray(0, jnp.int32), params={"w": jnp.ones(3)})


def _step(state, batch):
  """Adds the batch to the weights; the loss is their sum."""
  new = state.replace(
      step=state.step + 1, params={"w": state.params["w"] + batch}
  )
  return new, {"loss": jnp.sum(new.params["w"]), "count": jnp.asarray(1)}


def _run(step_fn, batches):
  state, losses = _state(), []
  for batch in batches:
    state, metrics = step_fn(state, jnp.asarray(batch, jnp.float32))
    losses.append(float(metrics["loss"]))
  return state, losses


def test_finite_checks_look_at_floats_only():
  assert bool(nonfinite.all_finite({"a": jnp.ones(2), "n": jnp.arange(3)}))
  assert not bool(nonfinite.all_finite({"a": jnp.array([1.0, jnp.inf])}))
  assert bool(nonfinite.all_finite({"n": jnp.arange(3)}))  # No floats.
  assert bool(nonfinite.state_is_finite(_state()))
  assert nonfinite.metrics_finite({"loss": np.float32(1), "k": np.int32(3)})
  assert not nonfinite.metrics_finite({"loss": np.float32(np.nan)})


def test_without_settings_the_step_is_unwrapped():
  config = ml_collections.ConfigDict({"max_nonfinite_steps": 0})
  assert nonfinite.guard_step(_step, config) is _step


def test_poisoned_step_is_skipped_when_skipping_is_on():
  config = ml_collections.ConfigDict(
      {"max_nonfinite_steps": 2, "debug_nan_at_step": 2}
  )
  state, losses = _run(nonfinite.guard_step(_step, config), [1, 10, 100])
  # Step 2 (+10) is poisoned and skipped: its NaN loss is reported, the
  # weights and everything else stay, only the step count advances.
  assert losses[0] == 6.0 and np.isnan(losses[1]) and losses[2] == 306.0
  assert int(state.step) == 3
  np.testing.assert_array_equal(state.params["w"], np.full(3, 102.0))


def test_poisoned_steps_without_skipping_make_nan_weights():
  config = ml_collections.ConfigDict(
      {"debug_nan_at_step": 2, "debug_nan_num_steps": 2}
  )
  state, losses = _run(nonfinite.guard_step(_step, config), [1, 1, 1, 1])
  # As a diverging run: NaN from step 2 on (the trainer stops there).
  assert losses[0] == 6.0 and np.all(np.isnan(losses[1:]))
  assert np.all(np.isnan(state.params["w"]))


def test_every_poisoned_step_is_skipped():
  config = ml_collections.ConfigDict(
      {
          "max_nonfinite_steps": 5,
          "debug_nan_at_step": 2,
          "debug_nan_num_steps": 2,
      }
  )
  state, losses = _run(nonfinite.guard_step(_step, config), [1, 2, 4, 8])
  assert np.isnan(losses[1]) and np.isnan(losses[2]) and losses[3] == 30.0
  np.testing.assert_array_equal(state.params["w"], np.full(3, 10.0))


def test_real_nonfinite_step_is_skipped_like_a_poisoned_one():
  config = ml_collections.ConfigDict({"max_nonfinite_steps": 1})
  state, losses = _run(nonfinite.guard_step(_step, config), [1, np.inf, 1])
  assert np.isinf(losses[1]) and int(state.step) == 3
  np.testing.assert_array_equal(state.params["w"], np.full(3, 3.0))
