"""Non-finite steps: detecting them and, where asked, skipping or faking them.

The trainer checks the losses at each log line and the state before each
checkpoint (`metrics_finite`, `state_is_finite`); `guard_step` wraps the
train step for ``max_nonfinite_steps`` (skip up to K such steps) and
``debug_nan_at_step`` (poison a step, to rehearse a diverging run).
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
import numpy as np


def all_finite(tree) -> jax.Array:
  """Whether every floating-point value in ``tree`` is finite."""
  checks = [
      jnp.all(jnp.isfinite(leaf))
      for leaf in jax.tree.leaves(tree)
      if jnp.issubdtype(jnp.result_type(leaf), jnp.inexact)
  ]
  return jnp.all(jnp.stack(checks)) if checks else jnp.asarray(True)


state_is_finite = jax.jit(all_finite)


def metrics_finite(metrics: dict[str, Any]) -> bool:
  """The host-side twin of ``all_finite`` for one step's fetched metrics."""
  return all(
      np.all(np.isfinite(v))
      for v in metrics.values()
      if np.issubdtype(np.asarray(v).dtype, np.inexact)
  )


def guard_step(step_fn, config):
  """The train step, wrapped where non-finite steps are skipped or poisoned.

  Without ``max_nonfinite_steps`` or ``debug_nan_at_step`` this is
  ``step_fn`` itself. Otherwise one jitted wrapper runs it and then

  * poisons the weights and loss of steps ``debug_nan_at_step`` ..
    ``debug_nan_at_step + debug_nan_num_steps - 1`` (as a diverging run
    would), and
  * if ``max_nonfinite_steps > 0``, returns the input state with only its
    step advanced when any floating-point metric is not finite.

  The step donates its input state, so the wrapper (jitted as a whole) is the
  only place the old state is still available for the select. The settings
  enter as data, so every combination shares one compiled program.
  """
  skip = bool(config.get("max_nonfinite_steps"))
  poison_at = config.get("debug_nan_at_step")
  if not skip and poison_at is None:
    return step_fn
  first, end = 0, 0  # An empty range of poisoned steps.
  if poison_at is not None:
    first, end = poison_at, poison_at + (config.get("debug_nan_num_steps") or 1)
  controls = jnp.asarray([first, end, int(skip)], jnp.int32)

  def guarded(state, batch, controls):
    new_state, metrics = step_fn(state, batch)
    number = state.step + 1
    poisoned = (number >= controls[0]) & (number < controls[1])
    scale = jnp.where(poisoned, jnp.nan, 1.0)
    new_state = new_state.replace(
        params=jax.tree.map(
            lambda p: p * scale.astype(p.dtype), new_state.params
        )
    )
    metrics = {
        **metrics,
        "loss": metrics["loss"] * scale.astype(metrics["loss"].dtype),
    }
    keep = all_finite(metrics) | (controls[2] == 0)
    unchanged = state.replace(step=state.step + 1)
    new_state = jax.tree.map(
        lambda new, old: jnp.where(keep, new, old), new_state, unchanged
    )
    return new_state, metrics

  guarded = jax.jit(guarded, donate_argnums=0)
  return lambda state, batch: guarded(state, batch, controls)
