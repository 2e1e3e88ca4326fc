"""The generic training step, the queue pre-fill and the embedding step.

A step is ``(state, batch) -> (state, metrics)``; hyperparameters are bound
with ``functools.partial`` before ``jax.jit``. ``batch`` holds uint8 images
and coarse labels; the augmented views are made inside the step.

`train_step` runs every method (`maskcon_jax.methods`) through one skeleton:
views, the EMA key encoder's forward (methods with a queue), the method's
no-gradient extras, its loss under ``value_and_grad``, the enqueue, metrics
and the optimizer step. Methods plug in through the hooks of
`maskcon_jax.methods.base.Method`; `maskcon_jax.methods.step_for_config`
binds the step to a config. This module knows no method by name.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Callable, Sequence

import jax
import jax.numpy as jnp
import optax
from jax.sharding import PartitionSpec as P

from maskcon_jax import augment
from maskcon_jax import losses
from maskcon_jax import train_state as train_state_lib

Array = jax.Array
# The salt of the pre-fill's keys (`prefill_step`); each method has its own
# (`maskcon_jax.methods.base.Method.salt`).
PREFILL_SALT = 1


def _step_rngs(state: train_state_lib.TrainState, salt: int, num: int):
  """``num`` independent keys for this step; each method has its own
  ``salt`` (`PREFILL_SALT` for the pre-fill)."""
  base = jax.random.wrap_key_data(state.rng)
  step_rng = jax.random.fold_in(jax.random.fold_in(base, salt), state.step)
  return jax.random.split(step_rng, num)


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
    out, updates = apply_fn(
        variables, views, train=True, mutable=["batch_stats"]
    )
    return out, updates["batch_stats"]
  b = views.shape[0]
  grouped = views.reshape(groups, b // groups, *views.shape[1:])
  out, updates = jax.vmap(
      lambda x: apply_fn(variables, x, train=True, mutable=["batch_stats"])
  )(grouped)
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

  return jax.shard_map(
      local,
      mesh=mesh,
      in_specs=(P(), P("data")),
      out_specs=(P("data"), P()),
      check_vma=False,
  )(variables, views)


def key_forward(
    apply_fn,
    target_params,
    target_batch_stats,
    views,
    *,
    bn_mode: str = "global",
    bn_splits: int = 1,
    permutation: Array | None = None,
    mesh=None,
):
  """Key-encoder forward returning all its outputs, without gradient.

  Arguments as ``encode_keys``.

  Returns:
    The output dict (``projection`` unnormalised) and the new BN statistics.
  """
  variables = {"params": target_params, "batch_stats": target_batch_stats}
  if bn_mode == "global":
    out, stats = _grouped_forward(apply_fn, variables, views, 1)
  elif bn_mode == "split":
    out, stats = _grouped_forward(apply_fn, variables, views, bn_splits)
  elif bn_mode == "shuffle":
    out, stats = _per_device_forward(
        apply_fn, variables, views[permutation], mesh
    )
    # Undo the shuffle so key i belongs to query i again.
    out = jax.tree.map(lambda y: y[jnp.argsort(permutation)], out)
  else:
    raise ValueError(
        f"Unknown key BN mode {bn_mode!r}; expected one of " f"{KEY_BN_MODES}."
    )
  return jax.lax.stop_gradient(out), stats


def encode_keys(
    apply_fn,
    target_params,
    target_batch_stats,
    views,
    *,
    bn_mode: str = "global",
    bn_splits: int = 1,
    permutation: Array | None = None,
    mesh=None,
):
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
  out, stats = key_forward(
      apply_fn,
      target_params,
      target_batch_stats,
      views,
      bn_mode=bn_mode,
      bn_splits=bn_splits,
      permutation=permutation,
      mesh=mesh,
  )
  return losses.l2_normalize(out["projection"]), stats


def key_permutation(rng: Array, batch_size: int, key_bn: str) -> Array | None:
  """The batch permutation of shuffle-BN; None for the other key BN modes."""
  if key_bn != "shuffle":
    return None
  return jax.random.permutation(rng, batch_size)


@dataclasses.dataclass(frozen=True)
class StepSettings:
  """The step's hyperparameters that every method shares.

  Attributes:
    t0: temperature of the contrastive logits.
    t, w: MaskCon's soft-target temperature and weight (queue methods).
    ema_momentum: ``m`` of the key encoder's EMA.
    image_size, mean, std: view size and normalisation.
    strong_policy, weak_policy: names in ``augment.VIEW_POLICIES``.
    key_bn, bn_splits: the key encoder's BatchNorm (see `encode_keys`).
    query_bn: ``global`` or ``per_device`` BatchNorm of the query encoder.
    schedule: the learning-rate schedule, only for logging it.
    mesh: the device mesh (``shuffle`` and ``per_device`` need it).
  """

  t0: float
  image_size: int
  mean: tuple[float, ...]
  std: tuple[float, ...]
  t: float = 0.05
  w: float = 0.5
  ema_momentum: float = 0.99
  strong_policy: str = "strong"
  weak_policy: str = "weak"
  key_bn: str = "global"
  bn_splits: int = 1
  query_bn: str = "global"
  schedule: Callable[[Array], Array] | None = None
  mesh: Any = None


@dataclasses.dataclass(frozen=True)
class StepContext:
  """What a method's hooks see of one step (built while tracing it).

  Attributes:
    state: the state the step started from.
    settings: the shared hyperparameters.
    options: the method's config block, defaults filled in.
    labels_B: the batch's coarse labels, int32.
    views: one batch of views per entry of the method's ``view_policies``.
    rngs: the method's named keys (``Method.rng_names``).
    target_params, target_batch_stats: the key encoder after this step's
      EMA update and forwards (None without a queue).
    key_out: the key encoder's outputs on the first view (None without).
    k_BxD: their L2-normalised projections, the keys (None without).
    extras: what ``Method.extras`` added.
  """

  state: train_state_lib.TrainState
  settings: StepSettings
  options: Any
  labels_B: Array
  views: tuple[Array, ...]
  rngs: dict[str, Array]
  target_params: Any = None
  target_batch_stats: Any = None
  key_out: dict[str, Array] | None = None
  k_BxD: Array | None = None
  extras: dict[str, Any] = dataclasses.field(default_factory=dict)

  def replace(self, **changes) -> "StepContext":
    return dataclasses.replace(self, **changes)

  def query_forward(self, params, batch_stats, views):
    """The query encoder in train mode: ``(outputs, new batch_stats)``."""
    return query_forward(
        self.state.apply_fn,
        {"params": params, "batch_stats": batch_stats},
        views,
        self.settings.query_bn,
        self.settings.mesh,
    )

  def key_forward(self, views, target_batch_stats, *, rng: Array | None = None):
    """The key encoder on ``views`` without gradient, with the settings'
    key BatchNorm; ``rng`` permutes the batch for shuffle-BN (None: global
    BatchNorm whatever the settings, as for the saliency maps).

    Returns:
      The outputs and the key encoder's new BatchNorm statistics.
    """
    s = self.settings
    if rng is None:
      return key_forward(
          self.state.apply_fn, self.target_params, target_batch_stats, views
      )
    return key_forward(
        self.state.apply_fn,
        self.target_params,
        target_batch_stats,
        views,
        bn_mode=s.key_bn,
        bn_splits=s.bn_splits,
        mesh=s.mesh,
        permutation=key_permutation(rng, views.shape[0], s.key_bn),
    )


def train_step(
    state: train_state_lib.TrainState,
    batch: dict[str, Array],
    *,
    method,
    options,
    settings: StepSettings,
):
  """One step of ``method``: views, keys, extras, loss, SGD, enqueue.

  Args:
    state: the current state (donated by the caller).
    batch: ``image`` uint8 ``(B, H, W, C)`` and ``coarse_label`` int ``(B,)``.
    method: a `maskcon_jax.methods.base.Method`.
    options: its config block (``method.options(config)``).
    settings: the shared hyperparameters.

  Returns:
    The new state and a dict of scalar metrics.
  """
  labels_B = batch["coarse_label"].astype(jnp.int32)
  policies = tuple(method.view_policies(settings))
  names = tuple(method.rng_names(options))
  rngs = _step_rngs(state, salt=method.salt, num=len(policies) + len(names))
  views = augment.policy_views(
      policies,
      tuple(rngs[: len(policies)]),
      batch["image"],
      size=settings.image_size,
      mean=settings.mean,
      std=settings.std,
  )
  ctx = StepContext(
      state=state,
      settings=settings,
      options=options,
      labels_B=labels_B,
      views=views,
      rngs=dict(zip(names, rngs[len(policies) :])),
  )
  if method.uses_queue:
    # The official code moves the key encoder before computing the keys.
    ctx = ctx.replace(
        target_params=train_state_lib.ema_update(
            state.target_params, state.params, settings.ema_momentum
        )
    )
    key_out, target_batch_stats = ctx.key_forward(
        views[0], state.target_batch_stats, rng=ctx.rngs["key"]
    )
    ctx = ctx.replace(
        key_out=key_out,
        target_batch_stats=target_batch_stats,
        k_BxD=losses.l2_normalize(key_out["projection"]),
    )
  ctx = method.extras(ctx)

  (loss, (batch_stats, aux)), grads = jax.value_and_grad(
      lambda params: method.loss(ctx, params), has_aux=True
  )(state.params)
  updates = {}
  if method.uses_queue:
    queue_KxD, queue_labels_K, queue_ptr = train_state_lib.enqueue(
        state.queue_KxD,
        state.queue_labels_K,
        state.queue_ptr,
        ctx.k_BxD,
        labels_B,
    )
    updates = dict(
        target_params=ctx.target_params,
        target_batch_stats=ctx.target_batch_stats,
        queue_KxD=queue_KxD,
        queue_labels_K=queue_labels_K,
        queue_ptr=queue_ptr,
    )
  metrics = {"loss": loss, **method.metrics(ctx, aux)}
  metrics = _finish_metrics(metrics, grads, state, settings.schedule)
  return (
      _apply_gradients(state, grads, batch_stats=batch_stats, **updates),
      metrics,
  )


def prefill_step(
    state: train_state_lib.TrainState,
    batch: dict[str, Array],
    prefill_index: Array,
    *,
    image_size: int,
    mean: Sequence[float],
    std: Sequence[float],
    weak_policy: str = "weak",
    bn_splits: int = 1,
):
  """Enqueues the key encoder's keys of weak views (the official pre-fill).

  Run over training batches before the first step so the queue starts with
  real keys and real coarse labels, as the official ``initiate_memorybank``.
  """
  base = jax.random.wrap_key_data(state.rng)
  rng = jax.random.fold_in(
      jax.random.fold_in(base, PREFILL_SALT), prefill_index
  )
  views = augment.view_batch(
      augment.VIEW_POLICIES[weak_policy],
      rng,
      batch["image"],
      size=image_size,
      mean=mean,
      std=std,
  )
  keys, target_batch_stats = encode_keys(
      state.apply_fn,
      state.target_params,
      state.target_batch_stats,
      views,
      bn_mode="split" if bn_splits > 1 else "global",
      bn_splits=bn_splits,
  )
  queue_KxD, queue_labels_K, queue_ptr = train_state_lib.enqueue(
      state.queue_KxD,
      state.queue_labels_K,
      state.queue_ptr,
      keys,
      batch["coarse_label"],
  )
  return state.replace(
      target_batch_stats=target_batch_stats,
      queue_KxD=queue_KxD,
      queue_labels_K=queue_labels_K,
      queue_ptr=queue_ptr,
  )


def embed_step(
    variables: dict[str, Any],
    images: Array,
    *,
    apply_fn,
    image_size: int,
    mean: Sequence[float],
    std: Sequence[float],
):
  """Backbone features and projections of test views (BN in eval mode)."""
  views = augment.test_view_batch(images, size=image_size, mean=mean, std=std)
  out = apply_fn(variables, views, train=False)
  return {"features": out["features"], "projection": out["projection"]}


def query_forward(apply_fn, variables, views, query_bn: str, mesh):
  """Query-encoder forward in train mode (``per_device`` or ``global`` BN)."""
  if query_bn == "per_device":
    return _per_device_forward(apply_fn, variables, views, mesh)
  return _grouped_forward(apply_fn, variables, views, 1)


def _apply_gradients(state, grads, **updates):
  """One optimizer step on the query encoder; the step counter advances."""
  opt_updates, opt_state = state.tx.update(grads, state.opt_state, state.params)
  params = optax.apply_updates(state.params, opt_updates)
  return state.replace(
      step=state.step + 1, params=params, opt_state=opt_state, **updates
  )


def _finish_metrics(metrics, grads, state, schedule):
  metrics["grad_norm"] = optax.tree.norm(grads)
  if schedule is not None:
    metrics["learning_rate"] = schedule(state.step)
  return metrics
