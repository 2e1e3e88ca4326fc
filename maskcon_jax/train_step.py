"""Pure training and evaluation steps (jax + flax + optax only).

A step is ``(state, batch) -> (state, metrics)``; hyperparameters are bound
with ``functools.partial`` before ``jax.jit``. ``batch`` holds uint8 images
and coarse labels; both augmented views are made inside the step.

``train_step`` runs the queue modes (``QUEUE_MODES``); ``wcl_train_step``,
``selfcon_train_step`` and ``saliency_train_step`` run the other methods on
the same ``TrainState``, so checkpoints, resumption and evaluation are shared.
"""

from __future__ import annotations

import functools
from typing import Any, Callable, Sequence

import jax
import jax.numpy as jnp
import optax
from jax.sharding import PartitionSpec as P

from maskcon_jax import augment
from maskcon_jax import losses
from maskcon_jax import models
from maskcon_jax import train_state as train_state_lib

Array = jax.Array
# Modes with a MoCo queue of keys; mode_loss gives their loss.
QUEUE_MODES = ("maskcon", "grafit", "coins", "moco")
# In-batch modes: no key encoder or queue (see wcl_train_step and
# selfcon_train_step); saliency is MoCo with masked views (saliency_train_step).
IN_BATCH_MODES = ("wcl", "selfcon")
MODES = QUEUE_MODES + IN_BATCH_MODES + ("saliency",)


def mode_loss(mode: str, q: Array, k: Array, coarse_logits: Array,
              queue_KxD: Array, queue_labels_K: Array, labels_B: Array, *,
              t0: float, t: float, w: float) -> Array:
  """The loss of ``mode`` (one of ``QUEUE_MODES``) on one batch."""
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
  raise ValueError(f"Unknown mode {mode!r}; expected one of {QUEUE_MODES}.")


def _step_rngs(state: train_state_lib.TrainState, salt: int, num: int):
  """``num`` independent keys for this step; each mode has its own ``salt``.

  Salts: 0 the queue modes, 1 the pre-fill, 2 WCL, 3 SelfCon, 4 saliency.
  """
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


def key_forward(apply_fn, target_params, target_batch_stats, views, *,
                bn_mode: str = "global", bn_splits: int = 1,
                permutation: Array | None = None, mesh=None):
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
    out, stats = _per_device_forward(apply_fn, variables, views[permutation],
                                     mesh)
    # Undo the shuffle so key i belongs to query i again.
    out = jax.tree.map(lambda y: y[jnp.argsort(permutation)], out)
  else:
    raise ValueError(f"Unknown key BN mode {bn_mode!r}; expected one of "
                     f"{KEY_BN_MODES}.")
  return jax.lax.stop_gradient(out), stats


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
  out, stats = key_forward(apply_fn, target_params, target_batch_stats, views,
                           bn_mode=bn_mode, bn_splits=bn_splits,
                           permutation=permutation, mesh=mesh)
  return losses.l2_normalize(out["projection"]), stats


def _key_permutation(rng: Array, batch_size: int, key_bn: str) -> Array | None:
  """The batch permutation of shuffle-BN; None for the other key BN modes."""
  if key_bn != "shuffle":
    return None
  return jax.random.permutation(rng, batch_size)


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
    mode: which loss (``QUEUE_MODES``).
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
  weak_rng, strong_rng, shuffle_rng = _step_rngs(state, salt=0, num=3)
  weak_views, strong_views = augment.policy_views(
      (weak_policy, strong_policy), (weak_rng, strong_rng), batch["image"],
      size=image_size, mean=mean, std=std)

  # The official code moves the key encoder before computing the keys.
  target_params = train_state_lib.ema_update(state.target_params, state.params,
                                             ema_momentum)
  k_BxD, target_batch_stats = encode_keys(
      state.apply_fn, target_params, state.target_batch_stats, weak_views,
      bn_mode=key_bn, bn_splits=bn_splits,
      permutation=_key_permutation(shuffle_rng, labels_B.shape[0], key_bn),
      mesh=mesh)

  def loss_fn(params):
    variables = {"params": params, "batch_stats": state.batch_stats}
    out, batch_stats = _query_forward(state.apply_fn, variables, strong_views,
                                      query_bn, mesh)
    q_BxD = losses.l2_normalize(out["projection"])
    loss = mode_loss(mode, q_BxD, k_BxD, out["coarse_logits"], state.queue_KxD,
                     state.queue_labels_K, labels_B, t0=t0, t=t, w=w)
    return loss, (batch_stats, q_BxD)

  (loss, (batch_stats, q_BxD)), grads = jax.value_and_grad(
      loss_fn, has_aux=True)(state.params)
  queue_KxD, queue_labels_K, queue_ptr = train_state_lib.enqueue(
      state.queue_KxD, state.queue_labels_K, state.queue_ptr, k_BxD, labels_B)
  metrics = {
      "loss": loss,
      "positive_similarity": jnp.mean(jnp.sum(q_BxD * k_BxD, axis=-1)),
  }
  metrics = _finish_metrics(metrics, grads, state, schedule)
  new_state = _apply_gradients(
      state, grads, batch_stats=batch_stats, target_params=target_params,
      target_batch_stats=target_batch_stats, queue_KxD=queue_KxD,
      queue_labels_K=queue_labels_K, queue_ptr=queue_ptr)
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


# ---------------------------------------------------------------------------
# WCL, SelfCon and saliency-guided masking. Each mode reuses the encoder, the
# views, the optimizer and the state of the steps above. WCL and SelfCon are
# in-batch methods: they train the query encoder alone and leave the EMA key
# encoder, the queue and its labels untouched (they stay in the state so that
# every mode has the same state structure, checkpoints and evaluation).
# ---------------------------------------------------------------------------

def _query_forward(apply_fn, variables, views, query_bn: str, mesh):
  """Query-encoder forward in train mode (``per_device`` or ``global`` BN)."""
  if query_bn == "per_device":
    return _per_device_forward(apply_fn, variables, views, mesh)
  return _grouped_forward(apply_fn, variables, views, 1)


def _apply_gradients(state, grads, **updates):
  """One optimizer step on the query encoder; the step counter advances."""
  opt_updates, opt_state = state.tx.update(grads, state.opt_state,
                                           state.params)
  params = optax.apply_updates(state.params, opt_updates)
  return state.replace(step=state.step + 1, params=params,
                       opt_state=opt_state, **updates)


def _finish_metrics(metrics, grads, state, schedule):
  metrics["grad_norm"] = optax.tree.norm(grads)
  if schedule is not None:
    metrics["learning_rate"] = schedule(state.step)
  return metrics


def wcl_train_step(state: train_state_lib.TrainState,
                   batch: dict[str, Array], *, t0: float, image_size: int,
                   mean: Sequence[float], std: Sequence[float],
                   view_policy: str = "strong", same_coarse_nn: bool = False,
                   graph_weight: float = 1.0,
                   schedule: Callable[[Array], Array] | None = None,
                   query_bn: str = "global", mesh=None):
  """One WCL step (Zheng et al., ICCV 2021): ``L_inst + w * L_graph``.

  Two views of every image (both ``view_policy``, as SimCLR's symmetric
  views) go through the query encoder, each in its own forward so BatchNorm
  sees one view at a time, as the official code. ``L_inst`` is NT-Xent over
  the ``2N`` first-head embeddings. The weak labels are the connected
  components of each view's 1-NN graph on the second head (no gradient); the
  graph loss is SupCon on the second head with the labels swapped between
  the views.

  Args:
    state: the current state (donated by the caller).
    batch: ``image`` uint8 ``(B, H, W, C)`` and ``coarse_label`` ``(B,)``.
    t0: temperature of both losses (WCL: 0.1).
    image_size, mean, std: view size and normalisation.
    view_policy: the ``augment.VIEW_POLICIES`` entry of both views.
    same_coarse_nn: restrict each sample's nearest neighbour to samples of
      its coarse class (uses the coarse labels; the paper is unsupervised).
    graph_weight: weight of the graph loss (the paper: 1).
    schedule: the learning-rate schedule, only for logging it.
    query_bn: ``global`` or ``per_device`` BatchNorm.
    mesh: the device mesh (``per_device`` needs it).

  Returns:
    The new state and a dict of scalar metrics.
  """
  labels_B = batch["coarse_label"].astype(jnp.int32)
  rng1, rng2 = _step_rngs(state, salt=2, num=2)
  views1, views2 = augment.policy_views(
      (view_policy, view_policy), (rng1, rng2), batch["image"],
      size=image_size, mean=mean, std=std)
  allowed_BxB = (losses.same_coarse_mask(labels_B, labels_B)
                 if same_coarse_nn else None)

  def loss_fn(params):
    out1, stats = _query_forward(
        state.apply_fn, {"params": params, "batch_stats": state.batch_stats},
        views1, query_bn, mesh)
    # The second forward starts from the first one's running statistics, as
    # two consecutive PyTorch forwards do; train-mode outputs don't use them.
    out2, stats = _query_forward(
        state.apply_fn, {"params": params, "batch_stats": stats}, views2,
        query_bn, mesh)
    z1_BxD = losses.l2_normalize(out1["projection"])
    z2_BxD = losses.l2_normalize(out2["projection"])
    g1_BxD = losses.l2_normalize(out1["projection2"])
    g2_BxD = losses.l2_normalize(out2["projection2"])
    comp1_B = losses.nn_component_labels(g1_BxD, allowed_BxB)
    comp2_B = losses.nn_component_labels(g2_BxD, allowed_BxB)
    same1_BxB = losses.label_positives(comp1_B)
    same2_BxB = losses.label_positives(comp2_B)
    inst = losses.nt_xent_loss(z1_BxD, z2_BxD, temperature=t0)
    graph = losses.wcl_graph_loss(g1_BxD, g2_BxD, same1_BxB, same2_BxB,
                                  temperature=t0)
    b = labels_B.shape[0]
    same_coarse = losses.same_coarse_mask(labels_B, labels_B)
    off_diag = jnp.logical_not(jnp.eye(b, dtype=bool))
    linked = jnp.logical_and(same1_BxB, off_diag)
    metrics = {
        "inst_loss": inst,
        "graph_loss": graph,
        "positive_similarity": jnp.mean(jnp.sum(z1_BxD * z2_BxD, axis=-1)),
        # Components of view 1 and how often their pairs share a coarse label.
        "num_components": jnp.sum(comp1_B == jnp.arange(b)).astype(
            jnp.float32),
        "component_coarse_purity": (
            jnp.sum(jnp.logical_and(linked, same_coarse))
            / jnp.maximum(jnp.sum(linked), 1)),
    }
    return inst + graph_weight * graph, (stats, metrics)

  (loss, (batch_stats, metrics)), grads = jax.value_and_grad(
      loss_fn, has_aux=True)(state.params)
  metrics = _finish_metrics({"loss": loss, **metrics}, grads, state, schedule)
  return _apply_gradients(state, grads, batch_stats=batch_stats), metrics


def selfcon_train_step(state: train_state_lib.TrainState,
                       batch: dict[str, Array], *, t0: float,
                       base_temperature: float, image_size: int,
                       mean: Sequence[float], std: Sequence[float],
                       view_policy: str = "strong", label_free: bool = False,
                       schedule: Callable[[Array], Array] | None = None,
                       query_bn: str = "global", mesh=None):
  """One SelfCon step (Bae et al., AAAI 2023): SupCon over the exits.

  One view per image; its backbone and exit embeddings are the "views" of a
  SupCon loss whose positives share a coarse label (with ``label_free``:
  only the same image's other exits). Scaled by ``t0 / base_temperature``.

  Args:
    state: the current state (donated by the caller).
    batch: ``image`` uint8 ``(B, H, W, C)`` and ``coarse_label`` ``(B,)``.
    t0: temperature ``tau`` (SelfCon: 0.1).
    base_temperature: ``tau_b`` (SelfCon: 0.07).
    image_size, mean, std: view size and normalisation.
    view_policy: the ``augment.VIEW_POLICIES`` entry of the view.
    label_free: identity positives instead of coarse labels.
    schedule: the learning-rate schedule, only for logging it.
    query_bn: ``global`` or ``per_device`` BatchNorm.
    mesh: the device mesh (``per_device`` needs it).

  Returns:
    The new state and a dict of scalar metrics.
  """
  labels_B = batch["coarse_label"].astype(jnp.int32)
  (rng,) = _step_rngs(state, salt=3, num=1)
  views = augment.view_batch(augment.VIEW_POLICIES[view_policy], rng,
                             batch["image"], size=image_size, mean=mean,
                             std=std)
  b = labels_B.shape[0]
  ids_B = jnp.arange(b, dtype=jnp.int32) if label_free else labels_B

  def loss_fn(params):
    out, stats = _query_forward(
        state.apply_fn, {"params": params, "batch_stats": state.batch_stats},
        views, query_bn, mesh)
    # Rows ordered view-major, [backbone; exit 1; ...], as SupCon's code.
    z_VxBxD = jnp.concatenate(
        [out["projection"][None],
         jnp.moveaxis(out["exit_projections"], 1, 0)], axis=0)
    z_VxBxD = losses.l2_normalize(z_VxBxD)
    num_views = z_VxBxD.shape[0]
    z_MxD = z_VxBxD.reshape(num_views * b, -1)
    positives = losses.label_positives(jnp.tile(ids_B, num_views))
    loss = losses.supcon_loss(z_MxD, positives, temperature=t0,
                              base_temperature=base_temperature)
    metrics = {"exit_similarity": jnp.mean(
        jnp.sum(z_VxBxD[0][None] * z_VxBxD[1:], axis=-1))}
    return loss, (stats, metrics)

  (loss, (batch_stats, metrics)), grads = jax.value_and_grad(
      loss_fn, has_aux=True)(state.params)
  metrics = _finish_metrics({"loss": loss, **metrics}, grads, state, schedule)
  return _apply_gradients(state, grads, batch_stats=batch_stats), metrics


# Saliency-guided masking (Chin et al., WACV 2024), per example on the device.


def saliency_grid_map(feature_map_hxwxC: Array, grid: int) -> Array:
  """Channel sum of an activation map, resized to ``(grid, grid)`` patches."""
  saliency_hxw = jnp.sum(feature_map_hxwxC.astype(jnp.float32), axis=-1)
  if saliency_hxw.shape == (grid, grid):
    return saliency_hxw
  return jax.image.resize(saliency_hxw, (grid, grid), method="bilinear")


def foreground_patches(saliency_GxG: Array, fg_std: float = 0.6,
                       rule: str = "intent") -> Array:
  """The foreground patches of a saliency grid (bool ``(G, G)``).

  With ``thr = mean - fg_std * std`` over the patches:

  * ``intent`` (the paper, and our default): a patch is foreground if its
    saliency is ``>= thr``, i.e. at or above the mean, or below it by at most
    ``fg_std`` standard deviations (the official rule, as one threshold).
  * ``official``: what the official ``localize.py`` computes. It sorts each
    row of the grid (``np.sort`` sorts along the last axis) and then tests the
    *sorted* value at ``(i, j)`` for each patch ``(i, j)``, so in every row
    the right-most columns are foreground, as many as that row has patches
    ``>= thr``, wherever the salient patches are.
  """
  mean = jnp.mean(saliency_GxG)
  threshold = mean - fg_std * jnp.std(saliency_GxG)
  if rule == "intent":
    return saliency_GxG >= threshold
  if rule == "official":
    return jnp.sort(saliency_GxG, axis=-1) >= threshold
  raise ValueError(f"Unknown foreground rule {rule!r}; expected one of "
                   f"{models.SALIENCY_FG_RULES}.")


def patch_mask_counts(fg_GxG: Array, ratio: Array, *, background: bool,
                      fg_cap: float | None = None) -> tuple[Array, Array]:
  """How many foreground and background patches a mask of ``ratio`` hides.

  As the official code: ``round(ratio * FG_ratio * P)`` foreground patches
  (``P`` patches, ``FG_ratio`` their foreground share, i.e. that fraction of
  the foreground) and, for a query mask, ``int(P * ratio)`` minus that of
  the background, so the masking is balanced between both. ``fg_cap`` (the
  ``hp`` code's 0.55) caps ``ratio * FG_ratio``. The counts are clipped to
  what exists (the official code would index past the end).

  Returns:
    int32 ``(num_fg, num_bg)``.
  """
  num_patches = fg_GxG.size
  fg_count = jnp.sum(fg_GxG)
  fg_share = ratio * fg_count / num_patches
  if fg_cap is not None:
    fg_share = jnp.minimum(fg_share, fg_cap)
  num_fg = jnp.minimum(jnp.round(fg_share * num_patches).astype(jnp.int32),
                       fg_count)
  if not background:
    return num_fg, jnp.zeros_like(num_fg)
  total = jnp.floor(num_patches * ratio).astype(jnp.int32)
  num_bg = jnp.clip(total - num_fg, 0, num_patches - fg_count)
  return num_fg, num_bg.astype(jnp.int32)


def _lowest(priority_P: Array, members_P: Array, count: Array) -> Array:
  """The ``count`` members with the lowest priority (a random subset)."""
  key_P = jnp.where(members_P, priority_P, 2.0 + priority_P)
  rank_P = jnp.argsort(jnp.argsort(key_P))
  return jnp.logical_and(members_P, rank_P < count)


def sample_patch_mask(uniforms: Array, fg_GxG: Array,
                      ratio_range: tuple[float, float], *, background: bool,
                      fg_cap: float | None = None) -> Array:
  """A random saliency-balanced patch mask (True = hidden), ``(G, G)``.

  Args:
    uniforms: ``1 + G * G`` uniforms: the ratio and each patch's priority.
    fg_GxG: bool foreground patches.
    ratio_range: ``ratio ~ U[low, high]``.
    background: also hide background patches (query masks); hard negatives
      hide foreground patches only.
    fg_cap: see ``patch_mask_counts``.
  """
  low, high = ratio_range
  ratio = low + (high - low) * uniforms[0]
  num_fg, num_bg = patch_mask_counts(fg_GxG, ratio, background=background,
                                     fg_cap=fg_cap)
  fg_P = fg_GxG.reshape(-1)
  priority_P = uniforms[1:]
  hidden_P = jnp.logical_or(
      _lowest(priority_P, fg_P, num_fg),
      _lowest(priority_P, jnp.logical_not(fg_P), num_bg))
  return hidden_P.reshape(fg_GxG.shape)


def patch_mask_to_pixels(mask_GxG: Array, height: int, width: int) -> Array:
  """Pixel ``(y, x)`` belongs to patch ``(y * G // H, x * G // W)``."""
  g = mask_GxG.shape[0]
  rows = (jnp.arange(height) * g) // height
  cols = (jnp.arange(width) * g) // width
  return mask_GxG[rows][:, cols]


def saliency_masked_views(rng: Array, views_BxHxWxC: Array,
                          saliency_BxGxG: Array, *, strategy: str,
                          ratio_range: tuple[float, float], background: bool,
                          noise_std: float, fg_std: float,
                          blur: tuple[float, int],
                          fg_rule: str = "intent") -> tuple[Array, Array]:
  """Masks each view on its patch grid and fills the hidden patches.

  Fills: ``hp`` Gaussian noise of ``noise_std`` (the encoder high-passes its
  input afterwards), ``blur`` the same pixels of a strongly blurred copy,
  ``mean`` the view's per-channel mean. Every example draws its own ratio,
  patches and noise (the official code shares one noise patch per batch).

  Returns:
    The masked views and the hidden-pixel masks ``(B, H, W)``.
  """
  b, h, w, c = views_BxHxWxC.shape
  g = saliency_BxGxG.shape[-1]
  mask_rng, noise_rng = jax.random.split(rng)
  uniforms = jax.random.uniform(mask_rng, (b, 1 + g * g))
  fg_BxGxG = jax.vmap(lambda s: foreground_patches(s, fg_std, fg_rule))(
      saliency_BxGxG)
  fg_cap = 0.55 if strategy == "hp" else None
  masks_BxGxG = jax.vmap(lambda u, fg: sample_patch_mask(
      u, fg, ratio_range, background=background, fg_cap=fg_cap))(uniforms,
                                                                  fg_BxGxG)
  pixels_BxHxW = jax.vmap(lambda m: patch_mask_to_pixels(m, h, w))(
      masks_BxGxG)
  if strategy == "hp":
    fill = noise_std * jax.random.normal(noise_rng, views_BxHxWxC.shape)
  elif strategy == "blur":
    sigma, kernel_size = blur
    fill = jax.vmap(lambda x: augment.gaussian_blur(x, sigma, kernel_size))(
        views_BxHxWxC)
  elif strategy == "mean":
    fill = jnp.broadcast_to(
        jnp.mean(views_BxHxWxC, axis=(1, 2), keepdims=True),
        views_BxHxWxC.shape)
  else:
    raise ValueError(f"Unknown saliency strategy {strategy!r}.")
  masked = jnp.where(pixels_BxHxW[..., None], fill, views_BxHxWxC)
  return masked, pixels_BxHxW


def saliency_train_step(state: train_state_lib.TrainState,
                        batch: dict[str, Array], *, t0: float, alpha: float,
                        num_hard_negatives: int, strategy: str,
                        grid: int | None, fg_std: float,
                        fg_rule: str = "intent",
                        query_ratio: tuple[float, float],
                        negative_ratio: tuple[float, float],
                        query_noise_std: float, negative_noise_std: float,
                        blur: tuple[float, int], ema_momentum: float,
                        image_size: int, mean: Sequence[float],
                        std: Sequence[float], strong_policy: str = "strong",
                        weak_policy: str = "weak",
                        schedule: Callable[[Array], Array] | None = None,
                        key_bn: str = "global", bn_splits: int = 1,
                        query_bn: str = "global", mesh=None):
  """One MoCo step with saliency-guided masked views and hard negatives.

  The saliency of a view is the channel sum of the EMA key encoder's last
  activation map of that view, on a ``grid`` x ``grid`` patch grid (the
  official code uses a frozen supervised ResNet-50 instead, which would need
  downloaded weights). The query is the strong view with a balanced share of
  foreground and background patches hidden (ratio ~ ``query_ratio``); each of
  the ``num_hard_negatives`` hard negatives is the weak (key) view with only
  foreground patches hidden (ratio ~ ``negative_ratio``), embedded by the key
  encoder and never enqueued. Every query gets its own image's negatives,
  where the official code broadcasts one image's negative to the whole batch.
  The loss is InfoNCE over ``[k, queue, alpha * t_1..M] / t0``.

  Args:
    state: the current state (donated by the caller).
    batch: ``image`` uint8 ``(B, H, W, C)`` and ``coarse_label`` ``(B,)``.
    t0: temperature.
    alpha: scale of the hard-negative similarities.
    num_hard_negatives: masked negative views per image (0: none, MoCo on
      the masked query).
    strategy: ``hp``, ``blur`` or ``mean`` fill (``saliency_masked_views``).
    grid: patches per side; None: the feature map's size.
    fg_std, fg_rule: the foreground threshold and rule
      (``foreground_patches``).
    query_ratio, negative_ratio: ranges of the masking ratios.
    query_noise_std, negative_noise_std: noise of the ``hp`` fill.
    blur: ``(sigma, kernel_size)`` of the ``blur`` fill.
    ema_momentum, image_size, mean, std, strong_policy, weak_policy,
      schedule, key_bn, bn_splits, query_bn, mesh: as for `train_step`.

  Returns:
    The new state and a dict of scalar metrics.
  """
  labels_B = batch["coarse_label"].astype(jnp.int32)
  b = labels_B.shape[0]
  weak_rng, strong_rng, mask_rng, *shuffle_rngs = _step_rngs(
      state, salt=4, num=4 + num_hard_negatives)
  weak_views, strong_views = augment.policy_views(
      (weak_policy, strong_policy), (weak_rng, strong_rng), batch["image"],
      size=image_size, mean=mean, std=std)

  target_params = train_state_lib.ema_update(state.target_params, state.params,
                                             ema_momentum)

  key_kwargs = dict(bn_mode=key_bn, bn_splits=bn_splits, mesh=mesh)
  key_out, target_batch_stats = key_forward(
      state.apply_fn, target_params, state.target_batch_stats, weak_views,
      permutation=_key_permutation(shuffle_rngs[0], b, key_bn), **key_kwargs)
  k_BxD = losses.l2_normalize(key_out["projection"])
  # The strong view's map comes from a key-encoder pass over the strong views;
  # its BatchNorm statistics are dropped, so the key encoder's running
  # statistics follow the keys alone.
  strong_out, _ = key_forward(state.apply_fn, target_params,
                              target_batch_stats, strong_views)
  grid = grid or key_out["feature_map"].shape[1]
  to_grid = jax.vmap(lambda f: saliency_grid_map(f, grid))
  key_saliency = to_grid(key_out["feature_map"])
  query_saliency = to_grid(strong_out["feature_map"])

  mask_rngs = jax.random.split(mask_rng, 1 + num_hard_negatives)
  mask_kwargs = dict(strategy=strategy, fg_std=fg_std, blur=blur,
                     fg_rule=fg_rule)
  query_views, query_pixels = saliency_masked_views(
      mask_rngs[0], strong_views, query_saliency, ratio_range=query_ratio,
      background=True, noise_std=query_noise_std, **mask_kwargs)
  hard, hidden = [], []
  for m in range(num_hard_negatives):
    negative_views, negative_pixels = saliency_masked_views(
        mask_rngs[1 + m], weak_views, key_saliency, ratio_range=negative_ratio,
        background=False, noise_std=negative_noise_std, **mask_kwargs)
    # Each batch of negatives gets its own shuffle, as the official code.
    negative_out, target_batch_stats = key_forward(
        state.apply_fn, target_params, target_batch_stats, negative_views,
        permutation=_key_permutation(shuffle_rngs[1 + m], b, key_bn),
        **key_kwargs)
    hard.append(losses.l2_normalize(negative_out["projection"]))
    hidden.append(jnp.mean(negative_pixels))
  # No hard negatives (an ablation): MoCo on the masked query alone.
  t_BxMxD = (jnp.stack(hard, axis=1) if hard else
             jnp.zeros((b, 0, k_BxD.shape[-1]), k_BxD.dtype))

  def loss_fn(params):
    variables = {"params": params, "batch_stats": state.batch_stats}
    out, batch_stats = _query_forward(state.apply_fn, variables, query_views,
                                      query_bn, mesh)
    q_BxD = losses.l2_normalize(out["projection"])
    loss = losses.hard_negative_moco_loss(
        q_BxD, k_BxD, state.queue_KxD, t_BxMxD, t0=t0, alpha=alpha)
    return loss, (batch_stats, q_BxD)

  (loss, (batch_stats, q_BxD)), grads = jax.value_and_grad(
      loss_fn, has_aux=True)(state.params)
  queue_KxD, queue_labels_K, queue_ptr = train_state_lib.enqueue(
      state.queue_KxD, state.queue_labels_K, state.queue_ptr, k_BxD, labels_B)
  metrics = {
      "loss": loss,
      "positive_similarity": jnp.mean(jnp.sum(q_BxD * k_BxD, axis=-1)),
      "query_hidden_fraction": jnp.mean(query_pixels),
      "foreground_fraction": jnp.mean(jax.vmap(
          lambda s: foreground_patches(s, fg_std, fg_rule))(query_saliency)),
  }
  if hard:
    metrics["hard_negative_similarity"] = jnp.mean(
        jnp.einsum("bd,bmd->bm", q_BxD, t_BxMxD))
    metrics["negative_hidden_fraction"] = jnp.mean(jnp.stack(hidden))
  metrics = _finish_metrics(metrics, grads, state, schedule)
  new_state = _apply_gradients(
      state, grads, batch_stats=batch_stats, target_params=target_params,
      target_batch_stats=target_batch_stats, queue_KxD=queue_KxD,
      queue_labels_K=queue_labels_K, queue_ptr=queue_ptr)
  return new_state, metrics


def step_for_config(config, *, mean: Sequence[float], std: Sequence[float],
                    schedule: Callable[[Array], Array] | None = None,
                    mesh=None) -> Callable:
  """``config``'s train step ``(state, batch) -> (state, metrics)``, not jitted.

  Binds the step function of ``config.mode`` to the config's hyperparameters
  (method fields it leaves out take ``models.METHOD_DEFAULTS``), so the
  trainer, benchmarks and notebooks build the same step.

  Args:
    config: a training config (an ``ml_collections.ConfigDict`` or any mapping
      with attribute access and ``get``).
    mean, std: the dataset's normalisation.
    schedule: the learning-rate schedule, only for logging it.
    mesh: the device mesh (key BN ``shuffle`` and query BN ``per_device``).
  """
  option = functools.partial(models.method_option, config)
  views = dict(image_size=config.image_size, mean=tuple(mean), std=tuple(std))
  query = dict(schedule=schedule, query_bn=config.query_bn, mesh=mesh)
  keys = dict(ema_momentum=config.ema_momentum, key_bn=config.key_bn,
              bn_splits=config.bn_splits, strong_policy=config.strong_policy,
              weak_policy=config.weak_policy)
  if config.mode == "wcl":
    return functools.partial(
        wcl_train_step, t0=config.t0, view_policy=config.strong_policy,
        same_coarse_nn=option("wcl_same_coarse_nn"),
        graph_weight=option("wcl_graph_weight"), **query, **views)
  if config.mode == "selfcon":
    return functools.partial(
        selfcon_train_step, t0=config.t0,
        base_temperature=option("selfcon_base_temperature"),
        label_free=option("selfcon_label_free"),
        view_policy=config.strong_policy, **query, **views)
  if config.mode == "saliency":
    return functools.partial(
        saliency_train_step, t0=config.t0, alpha=option("alpha"),
        num_hard_negatives=option("num_hard_negatives"),
        strategy=option("saliency_strategy"), grid=option("saliency_grid"),
        fg_std=option("saliency_fg_std"),
        fg_rule=option("saliency_fg_rule"),
        query_ratio=tuple(option("saliency_query_ratio")),
        negative_ratio=tuple(option("saliency_negative_ratio")),
        query_noise_std=option("saliency_query_noise_std"),
        negative_noise_std=option("saliency_negative_noise_std"),
        blur=models.saliency_blur(config), **keys, **query, **views)
  return functools.partial(train_step, mode=config.mode, t0=config.t0,
                           t=config.t, w=config.w, **keys, **query, **views)
