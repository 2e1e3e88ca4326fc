"""Pure training and evaluation steps (jax + flax + optax only).

A step is ``(state, batch) -> (state, metrics)``; hyperparameters are bound
with ``functools.partial`` before ``jax.jit``. ``batch`` holds uint8 images
and coarse labels; both augmented views are made inside the step.
"""

from __future__ import annotations

from typing import Any, Callable, Sequence

import jax
import jax.numpy as jnp
import optax
from jax.sharding import PartitionSpec as P

from maskcon_jax import augment
from maskcon_jax import losses
from maskcon_jax import train_state as train_state_lib

Array = jax.Array
MODES = ("maskcon", "grafit", "coins", "moco")


def mode_loss(mode: str, q: Array, k: Array, coarse_logits: Array,
              queue_KxD: Array, queue_labels_K: Array, labels_B: Array, *,
              t0: float, t: float, w: float) -> Array:
  """The loss of ``mode`` (one of ``MODES``) on one batch."""
  if mode == "maskcon":
    return losses.maskcon_loss(q, k, queue_KxD, queue_labels_K, labels_B,
                               t0=t0, t=t, w=w)
  if mode == "grafit":
    return losses.grafit_loss(q, k, queue_KxD, queue_labels_K, labels_B,
                              t0=t0, w=w)
  if mode == "coins":
    return losses.coins_loss(q, k, coarse_logits, queue_KxD, labels_B,
                             t0=t0, w=w)
  if mode == "moco":
    return losses.moco_loss(q, k, queue_KxD, t0=t0)
  raise ValueError(f"Unknown mode {mode!r}; expected one of {MODES}.")


def _step_rngs(state: train_state_lib.TrainState, salt: int):
  """Independent keys for this step's weak and strong views."""
  base = jax.random.wrap_key_data(state.rng)
  step_rng = jax.random.fold_in(jax.random.fold_in(base, salt), state.step)
  return jax.random.split(step_rng, 3)


KEY_BN_MODES = ("global", "shuffle", "split")
QUERY_BN_MODES = ("global", "per_device")


def _grouped_forward(apply_fn, variables, views, groups: int):
  """Forward in train mode with BatchNorm statistics per group of rows.

  The batch is cut into ``groups`` contiguous sub-batches; each normalises
  with its own statistics (MoCo's SplitBatchNorm). The running statistics are
  the mean of the groups' updates, which equals one update with the mean of
  the groups' batch statistics, because the update is linear.
  """
  if groups == 1:
    out, updates = apply_fn(variables, views, train=True,
                            mutable=["batch_stats"])
    return out, updates["batch_stats"]
  b = views.shape[0]
  grouped = views.reshape(groups, b // groups, *views.shape[1:])
  out, updates = jax.vmap(
      lambda x: apply_fn(variables, x, train=True, mutable=["batch_stats"]))(
          grouped)
  out = jax.tree.map(lambda y: y.reshape(b, *y.shape[2:]), out)
  stats = jax.tree.map(lambda y: jnp.mean(y, axis=0), updates["batch_stats"])
  return out, stats


def _per_device_forward(apply_fn, variables, views, mesh):
  """Forward with BatchNorm over each device's shard of the batch.

  ``shard_map`` makes the per-device semantics explicit; the running
  statistics are averaged across devices so the state stays replicated.
  """
  def local(variables, x):
    out, updates = apply_fn(variables, x, train=True, mutable=["batch_stats"])
    stats = jax.lax.pmean(updates["batch_stats"], "data")
    return out, stats

  return jax.shard_map(local, mesh=mesh, in_specs=(P(), P("data")),
                       out_specs=(P("data"), P()), check_vma=False)(
                           variables, views)


def encode_keys(apply_fn, target_params, target_batch_stats, views, *,
                bn_mode: str = "global", bn_splits: int = 1,
                permutation: Array | None = None, mesh=None):
  """Key-encoder forward (BN in training mode, no gradient).

  Args:
    apply_fn, target_params, target_batch_stats: the key encoder.
    views: weak views ``(B, H, W, C)``.
    bn_mode: ``global`` (statistics over the whole global batch), ``split``
      (over ``bn_splits`` sub-batches) or ``shuffle`` (MoCo's shuffle-BN:
      permute the batch by ``permutation``, normalise per device shard of
      ``mesh``, un-permute the keys).
    bn_splits: number of sub-batches for ``split``.
    permutation: the batch permutation for ``shuffle``.
    mesh: the device mesh for ``shuffle``.

  Returns:
    The normalised keys and the key encoder's new BN statistics.
  """
  variables = {"params": target_params, "batch_stats": target_batch_stats}
  if bn_mode == "global":
    out, stats = _grouped_forward(apply_fn, variables, views, 1)
  elif bn_mode == "split":
    out, stats = _grouped_forward(apply_fn, variables, views, bn_splits)
  elif bn_mode == "shuffle":
    out, stats = _per_device_forward(apply_fn, variables, views[permutation],
                                     mesh)
    # Undo the shuffle so key i belongs to query i again.
    out = jax.tree.map(lambda y: y[jnp.argsort(permutation)], out)
  else:
    raise ValueError(f"Unknown key BN mode {bn_mode!r}; expected one of "
                     f"{KEY_BN_MODES}.")
  keys = jax.lax.stop_gradient(losses.l2_normalize(out["projection"]))
  return keys, stats


def train_step(state: train_state_lib.TrainState, batch: dict[str, Array], *,
               mode: str, t0: float, t: float, w: float, ema_momentum: float,
               image_size: int, mean: Sequence[float], std: Sequence[float],
               strong_policy: str = "strong", weak_policy: str = "weak",
               schedule: Callable[[Array], Array] | None = None,
               key_bn: str = "global", bn_splits: int = 1,
               query_bn: str = "global", mesh=None):
  """One MaskCon/MoCo step: EMA, key and query forwards, loss, SGD, enqueue.

  Args:
    state: the current state (donated by the caller).
    batch: ``image`` uint8 ``(B, H, W, C)`` and ``coarse_label`` int ``(B,)``.
    mode: which loss (``MODES``).
    t0, t, w: loss hyperparameters (see ``losses``).
    ema_momentum: ``m`` of the key encoder's EMA.
    image_size, mean, std: view size and normalisation.
    strong_policy, weak_policy: names in ``augment.VIEW_POLICIES``.
    schedule: the learning-rate schedule, only for logging it.
    key_bn, bn_splits: the key encoder's BatchNorm (see ``encode_keys``).
    query_bn: ``global`` or ``per_device`` BatchNorm for the query encoder.
    mesh: the device mesh (``shuffle`` and ``per_device`` need it).

  Returns:
    The new state and a dict of scalar metrics.
  """
  labels_B = batch["coarse_label"].astype(jnp.int32)
  weak_rng, strong_rng, shuffle_rng = _step_rngs(state, salt=0)
  view_kwargs = dict(size=image_size, mean=mean, std=std)
  weak_views = augment.view_batch(augment.VIEW_POLICIES[weak_policy], weak_rng,
                                  batch["image"], **view_kwargs)
  strong_views = augment.view_batch(augment.VIEW_POLICIES[strong_policy],
                                    strong_rng, batch["image"], **view_kwargs)

  # The official code moves the key encoder before computing the keys.
  target_params = train_state_lib.ema_update(state.target_params, state.params,
                                             ema_momentum)
  permutation = (jax.random.permutation(shuffle_rng, labels_B.shape[0])
                 if key_bn == "shuffle" else None)
  k_BxD, target_batch_stats = encode_keys(
      state.apply_fn, target_params, state.target_batch_stats, weak_views,
      bn_mode=key_bn, bn_splits=bn_splits, permutation=permutation, mesh=mesh)

  def loss_fn(params):
    variables = {"params": params, "batch_stats": state.batch_stats}
    if query_bn == "per_device":
      out, batch_stats = _per_device_forward(state.apply_fn, variables,
                                             strong_views, mesh)
    else:
      out, batch_stats = _grouped_forward(state.apply_fn, variables,
                                          strong_views, 1)
    q_BxD = losses.l2_normalize(out["projection"])
    loss = mode_loss(mode, q_BxD, k_BxD, out["coarse_logits"], state.queue_KxD,
                     state.queue_labels_K, labels_B, t0=t0, t=t, w=w)
    return loss, (batch_stats, q_BxD)

  (loss, (batch_stats, q_BxD)), grads = jax.value_and_grad(
      loss_fn, has_aux=True)(state.params)
  updates, opt_state = state.tx.update(grads, state.opt_state, state.params)
  params = optax.apply_updates(state.params, updates)
  queue_KxD, queue_labels_K, queue_ptr = train_state_lib.enqueue(
      state.queue_KxD, state.queue_labels_K, state.queue_ptr, k_BxD, labels_B)

  metrics = {
      "loss": loss,
      "positive_similarity": jnp.mean(jnp.sum(q_BxD * k_BxD, axis=-1)),
      "grad_norm": optax.tree.norm(grads),
  }
  if schedule is not None:
    metrics["learning_rate"] = schedule(state.step)
  new_state = state.replace(
      step=state.step + 1, params=params, batch_stats=batch_stats,
      target_params=target_params, target_batch_stats=target_batch_stats,
      opt_state=opt_state, queue_KxD=queue_KxD, queue_labels_K=queue_labels_K,
      queue_ptr=queue_ptr)
  return new_state, metrics


def prefill_step(state: train_state_lib.TrainState, batch: dict[str, Array],
                 prefill_index: Array, *, image_size: int,
                 mean: Sequence[float], std: Sequence[float],
                 weak_policy: str = "weak", bn_splits: int = 1):
  """Enqueues the key encoder's keys of weak views (the official pre-fill).

  Run over training batches before the first step so the queue starts with
  real keys and real coarse labels, as the official ``initiate_memorybank``.
  """
  base = jax.random.wrap_key_data(state.rng)
  rng = jax.random.fold_in(jax.random.fold_in(base, 1), prefill_index)
  views = augment.view_batch(augment.VIEW_POLICIES[weak_policy], rng,
                             batch["image"], size=image_size, mean=mean,
                             std=std)
  keys, target_batch_stats = encode_keys(
      state.apply_fn, state.target_params, state.target_batch_stats, views,
      bn_mode="split" if bn_splits > 1 else "global", bn_splits=bn_splits)
  queue_KxD, queue_labels_K, queue_ptr = train_state_lib.enqueue(
      state.queue_KxD, state.queue_labels_K, state.queue_ptr, keys,
      batch["coarse_label"])
  return state.replace(target_batch_stats=target_batch_stats,
                       queue_KxD=queue_KxD, queue_labels_K=queue_labels_K,
                       queue_ptr=queue_ptr)


def embed_step(variables: dict[str, Any], images: Array, *, apply_fn,
               image_size: int, mean: Sequence[float], std: Sequence[float]):
  """Backbone features and projections of test views (BN in eval mode)."""
  views = augment.test_view_batch(images, size=image_size, mean=mean, std=std)
  out = apply_fn(variables, views, train=False)
  return {"features": out["features"], "projection": out["projection"]}
