"""Training state, optimizer, learning-rate schedule and the key queue.

Everything that shapes the future of a run lives in one ``TrainState`` pytree,
so a checkpoint of it (plus the step-derived data order) resumes exactly.
"""

from __future__ import annotations

from typing import Any, Callable

import flax
import flax.struct
import jax
import jax.numpy as jnp
import optax

from maskcon_jax import losses

Array = jax.Array


@flax.struct.dataclass
class TrainState:
  """Query encoder, EMA key encoder, optimizer and queue of a MoCo-style run.

  Methods without a key encoder and queue (``Method.uses_queue`` False: WCL,
  SelfCon) hold None in ``target_params`` .. ``queue_ptr``: no arrays, so
  their checkpoints carry nothing unused.

  Attributes:
    step: number of optimizer steps taken.
    params, batch_stats: the query encoder (trained by gradient descent).
    target_params, target_batch_stats: the key encoder. Its params follow
      ``m * target + (1 - m) * params``; its BatchNorm statistics are its own,
      updated by its own forward passes (they are not averaged).
    opt_state: optax state of the query encoder's optimizer.
    queue_KxD: L2-normalised keys of past batches.
    queue_labels_K: coarse label of each queue entry.
    queue_ptr: row where the next batch of keys is written.
    rng: raw ``uint32`` key data; steps derive their randomness by folding in
      the step. Raw data (not a typed key) so checkpoints store it as-is.
    apply_fn, tx: static; the model's apply and the optimizer.
  """

  step: Array
  params: Any
  batch_stats: Any
  target_params: Any
  target_batch_stats: Any
  opt_state: optax.OptState
  queue_KxD: Array
  queue_labels_K: Array
  queue_ptr: Array
  rng: Array
  apply_fn: Callable[..., Any] = flax.struct.field(pytree_node=False)
  tx: optax.GradientTransformation = flax.struct.field(pytree_node=False)


def learning_rate_schedule(config, steps_per_epoch: int) -> optax.Schedule:
  """Linear warm-up from 0 over ``warmup_epochs``, then cosine decay to 0.

  The same per-iteration schedule as the official code
  (``0.5 * lr * (1 + cos(pi * T / T_max))`` after warm-up).
  """
  total_steps = config.num_epochs * steps_per_epoch
  # Capped in epochs first: a huge warm-up (1e308 epochs) would overflow to
  # an infinite step count.
  warmup_epochs = min(config.warmup_epochs, config.num_epochs)
  warmup_steps = int(round(warmup_epochs * steps_per_epoch))
  if warmup_steps == 0:
    return optax.cosine_decay_schedule(
        config.learning_rate, max(total_steps, 1)
    )
  return optax.warmup_cosine_decay_schedule(
      init_value=0.0,
      peak_value=config.learning_rate,
      warmup_steps=warmup_steps,
      decay_steps=max(total_steps, warmup_steps + 1),
      end_value=0.0,
  )


def make_optimizer(
    config, schedule: optax.Schedule
) -> optax.GradientTransformation:
  """SGD with momentum and weight decay coupled into the gradient.

  ``add_decayed_weights`` before ``sgd`` gives ``torch.optim.SGD``'s update:
  ``g += wd * p; buf = m * buf + g; p -= lr * buf`` (first ``buf = g``).
  """
  return optax.chain(
      optax.add_decayed_weights(config.weight_decay),
      optax.sgd(schedule, momentum=config.momentum, nesterov=False),
  )


def ema_update(target_params, params, momentum: float):
  """``momentum * target + (1 - momentum) * params``, leaf by leaf."""
  return jax.tree.map(
      lambda t, p: momentum * t + (1.0 - momentum) * p, target_params, params
  )


def enqueue(
    queue_KxD: Array,
    queue_labels_K: Array,
    queue_ptr: Array,
    keys_BxD: Array,
    labels_B: Array,
):
  """Writes a batch of keys and labels at ``queue_ptr``, wrapping at the end.

  Works for any queue size ``K >= B`` (the official code requires
  ``K % B == 0``). Rows are written by a scatter, so the update is in place
  when the queue is donated.

  Returns:
    ``(queue_KxD, queue_labels_K, queue_ptr)`` after the write.
  """
  k = queue_KxD.shape[0]
  b = keys_BxD.shape[0]
  rows_B = (queue_ptr + jnp.arange(b)) % k
  queue_KxD = queue_KxD.at[rows_B].set(keys_BxD.astype(queue_KxD.dtype))
  queue_labels_K = queue_labels_K.at[rows_B].set(
      labels_B.astype(queue_labels_K.dtype)
  )
  return queue_KxD, queue_labels_K, (queue_ptr + b) % k


def random_queue(
    rng: Array, queue_size: int, embed_dim: int, num_coarse: int
) -> tuple[Array, Array]:
  """A queue of random unit vectors with random coarse labels (MoCo's init)."""
  key_rng, label_rng = jax.random.split(rng)
  queue = losses.l2_normalize(
      jax.random.normal(key_rng, (queue_size, embed_dim), jnp.float32)
  )
  labels = jax.random.randint(
      label_rng, (queue_size,), 0, num_coarse, jnp.int32
  )
  return queue, labels


def create_train_state(
    rng: Array,
    model,
    tx: optax.GradientTransformation,
    *,
    image_shape: tuple[int, int, int],
    queue_size: int,
    embed_dim: int,
    num_coarse: int,
    uses_queue: bool = True,
) -> TrainState:
  """Initialises both encoders identically, the optimizer and a random queue.

  Without ``uses_queue`` the key encoder and queue are None. The encoder's
  initial weights and the state's key do not depend on it.

  Pure, so it can run under ``jax.jit(..., out_shardings=...)`` to create the
  state directly where it lives.
  """
  init_rng, queue_rng, state_rng = jax.random.split(rng, 3)
  dummy = jnp.zeros((2, *image_shape), jnp.float32)
  variables = model.init(init_rng, dummy, train=False)
  params, batch_stats = variables["params"], variables["batch_stats"]
  keys = dict(
      target_params=None,
      target_batch_stats=None,
      queue_KxD=None,
      queue_labels_K=None,
      queue_ptr=None,
  )
  if uses_queue:
    queue, queue_labels = random_queue(
        queue_rng, queue_size, embed_dim, num_coarse
    )
    keys = dict(
        # The key encoder starts as an exact copy of the query encoder.
        target_params=jax.tree.map(jnp.copy, params),
        target_batch_stats=jax.tree.map(jnp.copy, batch_stats),
        queue_KxD=queue,
        queue_labels_K=queue_labels,
        queue_ptr=jnp.zeros((), jnp.int32),
    )
  return TrainState(
      step=jnp.zeros((), jnp.int32),
      params=params,
      batch_stats=batch_stats,
      opt_state=tx.init(params),
      **keys,
      rng=jax.random.key_data(state_rng)
      if jnp.issubdtype(state_rng.dtype, jax.dtypes.prng_key)
      else state_rng,
      apply_fn=model.apply,
      tx=tx,
  )


def query_variables(state) -> dict[str, Any]:
  """The query encoder's ``{"params", "batch_stats"}`` of ``state``."""
  return {"params": state.params, "batch_stats": state.batch_stats}


def key_variables(state) -> dict[str, Any]:
  """The EMA key encoder's ``{"params", "batch_stats"}`` of ``state``."""
  return {
      "params": state.target_params,
      "batch_stats": state.target_batch_stats,
  }
