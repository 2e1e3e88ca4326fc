"""Contrastive losses over a MoCo queue: MaskCon, Grafit-style SupCon, CoIns, MoCo.

Every loss here is one soft cross-entropy between a row-stochastic target
matrix and the logits of each query against its candidates
``[positive key, queue_1 .. queue_K] / t0``. The methods differ only in the
target matrix (see ``ALGORITHMS`` in the README):

* ``moco``: one-hot on the positive key (self-supervised InfoNCE).
* ``maskcon``: ``w * z + (1 - w) * e_0`` where ``z`` holds soft labels from
  key-to-queue similarities, restricted to queue entries of the same coarse
  class and rescaled so the nearest one weighs as much as the positive key.
* ``grafit``: ``w * uniform(positive + same-coarse queue entries) + (1 - w) *
  e_0`` (SupCon over the queue with coarse labels).
* ``coins``: ``w * CE(coarse logits, coarse label) + (1 - w) * moco``.

The second half holds the losses of the in-batch methods, whose candidates
are the other embeddings of the batch: SimCLR's NT-Xent and SupCon (WCL's
instance and graph losses, SelfCon's loss over its exits), WCL's weak labels
(connected components of the 1-NN graph, computed with jax alone) and the
saliency method's MoCo logits with extra hard negatives.

Conventions: ``q`` and ``k`` are L2-normalised ``(N, D)`` projections, the
queue is ``(K, D)`` with L2-normalised rows, labels are integer coarse labels.
In the queue losses gradients flow only through ``q`` (and ``cls_logits`` for
CoIns): keys, queue and targets are constants, as in the official code. All
functions return the batch mean as a float32 scalar and run with jax alone.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

Array = jax.Array


def l2_normalize(x: Array, axis: int = -1, eps: float = 1e-12) -> Array:
  """``x / max(||x||, eps)``, the same as ``torch.nn.functional.normalize``."""
  norm = jnp.linalg.norm(x, axis=axis, keepdims=True)
  return x / jnp.maximum(norm, eps)


def queue_logits(
    q_NxD: Array, k_NxD: Array, queue_KxD: Array, *, t0: float
) -> Array:
  """Logits ``[q.k, q.queue_1, ..., q.queue_K] / t0`` of shape ``(N, 1 + K)``.

  Column 0 is the positive key. Keys and queue are treated as constants.
  """
  q_NxD = q_NxD.astype(jnp.float32)
  k_NxD = jax.lax.stop_gradient(k_NxD).astype(jnp.float32)
  queue_KxD = jax.lax.stop_gradient(queue_KxD).astype(jnp.float32)
  pos_Nx1 = jnp.sum(q_NxD * k_NxD, axis=-1, keepdims=True)
  neg_NxK = q_NxD @ queue_KxD.T
  return jnp.concatenate([pos_Nx1, neg_NxK], axis=-1) / t0


def soft_cross_entropy(logits_NxC: Array, targets_NxC: Array) -> Array:
  """Batch mean of ``-sum_j y_ij log softmax(logits_i)_j`` (targets constant)."""
  targets_NxC = jax.lax.stop_gradient(targets_NxC)
  log_probs = jax.nn.log_softmax(logits_NxC.astype(jnp.float32), axis=-1)
  return -jnp.mean(jnp.sum(targets_NxC * log_probs, axis=-1))


def self_targets(num_rows: int, num_candidates: int) -> Array:
  """One-hot targets on the positive key (column 0): the MoCo target."""
  return jax.nn.one_hot(
      jnp.zeros((num_rows,), jnp.int32), num_candidates, dtype=jnp.float32
  )


def same_coarse_mask(labels_N: Array, queue_labels_K: Array) -> Array:
  """``M_ij = [labels_i == queue_labels_j]`` as a bool ``(N, K)`` array."""
  return labels_N[:, None] == queue_labels_K[None, :]


def _mix_with_self(targets_NxC: Array, w: float) -> Array:
  return w * targets_NxC + (1.0 - w) * self_targets(*targets_NxC.shape)


def maskcon_targets(
    k_NxD: Array,
    queue_KxD: Array,
    queue_labels_K: Array,
    labels_N: Array,
    *,
    t: float,
    w: float,
) -> Array:
  """MaskCon's soft targets ``y = w * z + (1 - w) * e_0``, shape ``(N, 1 + K)``.

  The official code computes a softmax of the key-to-queue similarities over
  same-coarse entries and divides it by its maximum. The softmax normaliser
  cancels in that ratio, so we use the closed form
  ``r_ij = M_ij exp((k_i.Q_j - max_{l: M_il} k_i.Q_l) / t)``, which never
  exponentiates a positive number. ``z_i = [1, r_i] / (1 + sum_j r_ij)``.

  A row with no same-coarse queue entry (where the official code returns NaN)
  gets ``r_i = 0`` and so falls back to the one-hot self target.
  """
  k_NxD = jax.lax.stop_gradient(k_NxD).astype(jnp.float32)
  queue_KxD = jax.lax.stop_gradient(queue_KxD).astype(jnp.float32)
  mask_NxK = same_coarse_mask(labels_N, queue_labels_K)
  sim_NxK = (k_NxD @ queue_KxD.T) / t
  masked_sim_NxK = jnp.where(mask_NxK, sim_NxK, -jnp.inf)
  row_max_Nx1 = jnp.max(masked_sim_NxK, axis=-1, keepdims=True)
  # Rows without any same-coarse entry have max = -inf; any finite shift keeps
  # their (all masked) entries at exp(-inf) = 0 without producing NaN.
  row_max_Nx1 = jnp.where(jnp.isfinite(row_max_Nx1), row_max_Nx1, 0.0)
  rescaled_NxK = jnp.exp(masked_sim_NxK - row_max_Nx1)
  raw_Nx1pK = jnp.concatenate(
      [jnp.ones_like(rescaled_NxK[:, :1]), rescaled_NxK], axis=-1
  )
  z_Nx1pK = raw_Nx1pK / jnp.sum(raw_Nx1pK, axis=-1, keepdims=True)
  return jax.lax.stop_gradient(_mix_with_self(z_Nx1pK, w))


def supcon_targets(
    queue_labels_K: Array, labels_N: Array, *, w: float
) -> Array:
  """Grafit-style targets: ``w * uniform(positive, same-coarse queue) + (1 - w) e_0``.

  The positive key is always a candidate, so a row with no same-coarse queue
  entry is already the one-hot self target.
  """
  mask_NxK = same_coarse_mask(labels_N, queue_labels_K).astype(jnp.float32)
  raw_Nx1pK = jnp.concatenate(
      [jnp.ones_like(mask_NxK[:, :1]), mask_NxK], axis=-1
  )
  z_Nx1pK = raw_Nx1pK / jnp.sum(raw_Nx1pK, axis=-1, keepdims=True)
  return _mix_with_self(z_Nx1pK, w)


def moco_loss(q: Array, k: Array, queue: Array, *, t0: float) -> Array:
  """Self-supervised InfoNCE over ``[positive key, queue]`` (MoCo v2)."""
  logits = queue_logits(q, k, queue, t0=t0)
  return soft_cross_entropy(logits, self_targets(*logits.shape))


def maskcon_loss(
    q: Array,
    k: Array,
    queue: Array,
    queue_labels: Array,
    labels: Array,
    *,
    t0: float,
    t: float,
    w: float,
) -> Array:
  """MaskCon loss (Feng & Patras, CVPR 2023, Eq. 4-6 / official model.py).

  Args:
    q: ``(N, D)`` L2-normalised query projections (strong view).
    k: ``(N, D)`` L2-normalised key projections (weak view, EMA encoder).
    queue: ``(K, D)`` L2-normalised keys of past batches.
    queue_labels: ``(K,)`` coarse labels of the queue entries.
    labels: ``(N,)`` coarse labels of the batch.
    t0: temperature of the contrastive logits.
    t: temperature of the soft labels (key-to-queue similarities).
    w: weight of the soft target; ``w = 0`` is MoCo.

  Returns:
    The batch-mean loss, a float32 scalar.
  """
  targets = maskcon_targets(k, queue, queue_labels, labels, t=t, w=w)
  return soft_cross_entropy(queue_logits(q, k, queue, t0=t0), targets)


def grafit_loss(
    q: Array,
    k: Array,
    queue: Array,
    queue_labels: Array,
    labels: Array,
    *,
    t0: float,
    w: float,
) -> Array:
  """``w * SupCon(coarse labels over the queue) + (1 - w) * self`` loss.

  This is the official repository's ``grafit`` mode: MaskCon in the limit
  ``t -> inf``.
  """
  targets = supcon_targets(queue_labels, labels, w=w)
  return soft_cross_entropy(queue_logits(q, k, queue, t0=t0), targets)


def coins_loss(
    q: Array,
    k: Array,
    cls_logits: Array,
    queue: Array,
    labels: Array,
    *,
    t0: float,
    w: float,
) -> Array:
  """CoIns: ``w * CE(coarse classifier) + (1 - w) * MoCo self loss``."""
  coarse_targets = jax.nn.one_hot(
      labels, cls_logits.shape[-1], dtype=jnp.float32
  )
  classification = soft_cross_entropy(cls_logits, coarse_targets)
  return w * classification + (1.0 - w) * moco_loss(q, k, queue, t0=t0)


# ---------------------------------------------------------------------------
# In-batch contrastive losses (WCL, SelfCon) and the saliency method's hard
# negatives. Here every embedding of the batch is a candidate for every other
# one, so gradients flow through all of them, unlike the queue losses above.
# ---------------------------------------------------------------------------


def label_positives(labels_M: Array) -> Array:
  """``P_ij = [labels_i == labels_j]`` as a bool ``(M, M)`` array."""
  return labels_M[:, None] == labels_M[None, :]


def supcon_loss(
    z_MxD: Array,
    positives_MxM: Array,
    *,
    temperature: float,
    base_temperature: float | None = None,
) -> Array:
  """Supervised contrastive loss (Khosla et al., 2020) over ``M`` embeddings.

  For each anchor ``i`` with positives ``P_i = {p != i : positives_ip}``::

    L_i = -(tau / tau_b) / |P_i| * sum_{p in P_i}
          log( exp(z_i.z_p / tau) / sum_{a != i} exp(z_i.z_a / tau) )

  and the loss is the mean of ``L_i`` over anchors with at least one
  positive. The official SelfCon and WCL code divide by ``|P_i|`` without a
  guard (NaN for an anchor without positives); such anchors are dropped
  instead, as SupCon's single-view variant does.

  Args:
    z_MxD: L2-normalised embeddings (all views stacked along the rows).
    positives_MxM: bool, which pairs are positives; the diagonal is ignored.
    temperature: ``tau``.
    base_temperature: ``tau_b``; the loss is scaled by ``tau / tau_b`` (the
      SelfCon/SupCon code's convention). None: no scaling.

  Returns:
    The mean loss, a float32 scalar.
  """
  z_MxD = z_MxD.astype(jnp.float32)
  m = z_MxD.shape[0]
  self_MxM = jnp.eye(m, dtype=bool)
  # -inf (not a large negative) removes the anchor from its own denominator
  # exactly; masked entries get zero weight and zero gradient below.
  logits_MxM = jnp.where(self_MxM, -jnp.inf, (z_MxD @ z_MxD.T) / temperature)
  log_prob_MxM = jax.nn.log_softmax(logits_MxM, axis=-1)
  pos_MxM = jnp.logical_and(positives_MxM, jnp.logical_not(self_MxM))
  num_pos_M = jnp.sum(pos_MxM, axis=-1)
  sum_log_prob_M = jnp.sum(jnp.where(pos_MxM, log_prob_MxM, 0.0), axis=-1)
  per_anchor_M = -sum_log_prob_M / jnp.maximum(num_pos_M, 1)
  valid_M = num_pos_M > 0
  loss = jnp.sum(jnp.where(valid_M, per_anchor_M, 0.0)) / jnp.maximum(
      jnp.sum(valid_M), 1
  )
  if base_temperature is not None:
    loss = loss * (temperature / base_temperature)
  return loss


def nt_xent_loss(z1_NxD: Array, z2_NxD: Array, *, temperature: float) -> Array:
  """SimCLR's NT-Xent over the ``2N`` views of ``N`` images.

  Row ``i`` of ``[z1; z2]`` is classified among the other ``2N - 1`` rows,
  the other view of the same image being the target (WCL's instance loss).

  Args:
    z1_NxD, z2_NxD: L2-normalised embeddings of the two views; row ``i`` of
      both belongs to image ``i``.
    temperature: ``tau``.

  Returns:
    The mean over the ``2N`` anchors, a float32 scalar.
  """
  z_2NxD = jnp.concatenate([z1_NxD, z2_NxD], axis=0).astype(jnp.float32)
  two_n = z_2NxD.shape[0]
  n = two_n // 2
  logits = jnp.where(
      jnp.eye(two_n, dtype=bool), -jnp.inf, (z_2NxD @ z_2NxD.T) / temperature
  )
  partner_2N = (jnp.arange(two_n) + n) % two_n
  log_prob = jax.nn.log_softmax(logits, axis=-1)
  return -jnp.mean(jnp.take_along_axis(log_prob, partner_2N[:, None], axis=-1))


def connected_component_labels(adjacency_NxN: Array) -> Array:
  """Connected components of an undirected graph, in pure JAX.

  Every node starts with its own index as label; each round a node takes the
  smallest label among itself and its neighbours, then the label of its label
  (pointer jumping, which halves long chains). The loop stops at the fixed
  point, where the labels are constant on each component and equal its
  smallest node index. A fixed number of ``log2 N`` rounds would not do: a
  1-NN graph can be a chain of length ``N``.

  Args:
    adjacency_NxN: bool; symmetrised here, the diagonal is irrelevant.

  Returns:
    int32 ``(N,)``: the smallest node index of each node's component.
  """
  n = adjacency_NxN.shape[0]
  adjacency_NxN = jnp.logical_or(adjacency_NxN, adjacency_NxN.T)
  init_N = jnp.arange(n, dtype=jnp.int32)

  def body(carry):
    labels_N, _ = carry
    neighbour_min_N = jnp.min(
        jnp.where(adjacency_NxN, labels_N[None, :], n), axis=-1
    )
    new_N = jnp.minimum(labels_N, neighbour_min_N)
    # A label is always a node of the same component whose own label is no
    # larger, so adopting it keeps the labels correct and monotone.
    new_N = new_N[new_N]
    return new_N, jnp.any(new_N != labels_N)

  labels_N, _ = jax.lax.while_loop(
      lambda carry: carry[1], body, (init_N, jnp.asarray(True))
  )
  return labels_N


def nearest_neighbour_adjacency(
    z_NxD: Array, allowed_NxN: Array | None = None
) -> Array:
  """Directed 1-NN graph ``A[i, NN(i)]`` by dot product, self excluded.

  Args:
    z_NxD: embeddings (L2-normalised: the dot product is cosine similarity).
    allowed_NxN: optional bool, which neighbours ``j`` row ``i`` may pick
      (e.g. only samples of the same coarse class). A row with no allowed
      neighbour gets no edge and stays a singleton.

  Returns:
    bool ``(N, N)`` with at most one ``True`` per row.
  """
  z_NxD = jax.lax.stop_gradient(z_NxD).astype(jnp.float32)
  n = z_NxD.shape[0]
  allowed = jnp.logical_not(jnp.eye(n, dtype=bool))
  if allowed_NxN is not None:
    allowed = jnp.logical_and(allowed, allowed_NxN)
  sim_NxN = jnp.where(allowed, z_NxD @ z_NxD.T, -jnp.inf)
  nn_N = jnp.argmax(sim_NxN, axis=-1)
  has_nn_N = jnp.any(allowed, axis=-1)
  return jnp.logical_and(jax.nn.one_hot(nn_N, n, dtype=bool), has_nn_N[:, None])


def nn_component_labels(
    z_NxD: Array, allowed_NxN: Array | None = None
) -> Array:
  """WCL's weak labels: components of the symmetrised 1-NN graph of ``z``."""
  return connected_component_labels(
      nearest_neighbour_adjacency(z_NxD, allowed_NxN)
  )


def wcl_graph_loss(
    g1_NxD: Array,
    g2_NxD: Array,
    same1_NxN: Array,
    same2_NxN: Array,
    *,
    temperature: float,
) -> Array:
  """WCL's graph loss ``(S(g1, same2) + S(g2, same1)) / 2``.

  ``S`` is SupCon within one view; each view uses the weak labels of the
  *other* view (the official code's swap), so the grouping a view is pulled
  towards is not the one its own embeddings just produced.

  Args:
    g1_NxD, g2_NxD: L2-normalised second-head embeddings of the two views.
    same1_NxN, same2_NxN: bool, same weak label within view 1 / view 2.
    temperature: ``tau``.

  Returns:
    A float32 scalar.
  """
  return 0.5 * (
      supcon_loss(g1_NxD, same2_NxN, temperature=temperature)
      + supcon_loss(g2_NxD, same1_NxN, temperature=temperature)
  )


def hard_negative_logits(
    q_NxD: Array,
    k_NxD: Array,
    queue_KxD: Array,
    t_NxMxD: Array,
    *,
    t0: float,
    alpha: float,
) -> Array:
  """``[q.k, q.queue_1..K, alpha q.t_1..alpha q.t_M] / t0``, ``(N, 1+K+M)``.

  ``t_NxMxD`` holds ``M`` hard negatives per query (key-encoder embeddings of
  masked views of the query's own image); ``alpha`` sharpens them. They are
  constants, like the keys.
  """
  base_Nx1pK = queue_logits(q_NxD, k_NxD, queue_KxD, t0=t0)
  t_NxMxD = jax.lax.stop_gradient(t_NxMxD).astype(jnp.float32)
  hard_NxM = (
      alpha * jnp.einsum("nd,nmd->nm", q_NxD.astype(jnp.float32), t_NxMxD) / t0
  )
  return jnp.concatenate([base_Nx1pK, hard_NxM], axis=-1)


def hard_negative_moco_loss(
    q: Array, k: Array, queue: Array, t: Array, *, t0: float, alpha: float
) -> Array:
  """MoCo InfoNCE with extra per-query hard negatives (saliency masking).

  Args:
    q, k, queue: as in ``moco_loss``.
    t: ``(N, M, D)`` L2-normalised hard-negative embeddings.
    t0: temperature.
    alpha: scale of the hard-negative similarities.

  Returns:
    The batch-mean loss, a float32 scalar.
  """
  logits = hard_negative_logits(q, k, queue, t, t0=t0, alpha=alpha)
  return soft_cross_entropy(logits, self_targets(*logits.shape))
