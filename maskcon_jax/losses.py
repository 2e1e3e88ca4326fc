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

Conventions: ``q`` and ``k`` are L2-normalised ``(N, D)`` projections, the
queue is ``(K, D)`` with L2-normalised rows, labels are integer coarse labels.
Gradients flow only through ``q`` (and ``cls_logits`` for CoIns): keys, queue
and targets are constants, as in the official code. All functions return the
batch mean as a float32 scalar and run with jax alone.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

Array = jax.Array


def l2_normalize(x: Array, axis: int = -1, eps: float = 1e-12) -> Array:
  """``x / max(||x||, eps)``, the same as ``torch.nn.functional.normalize``."""
  norm = jnp.linalg.norm(x, axis=axis, keepdims=True)
  return x / jnp.maximum(norm, eps)


def queue_logits(q_NxD: Array, k_NxD: Array, queue_KxD: Array, *,
                 t0: float) -> Array:
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
  return jax.nn.one_hot(jnp.zeros((num_rows,), jnp.int32), num_candidates,
                        dtype=jnp.float32)


def same_coarse_mask(labels_N: Array, queue_labels_K: Array) -> Array:
  """``M_ij = [labels_i == queue_labels_j]`` as a bool ``(N, K)`` array."""
  return labels_N[:, None] == queue_labels_K[None, :]


def _mix_with_self(targets_NxC: Array, w: float) -> Array:
  return w * targets_NxC + (1.0 - w) * self_targets(*targets_NxC.shape)


def maskcon_targets(k_NxD: Array, queue_KxD: Array, queue_labels_K: Array,
                    labels_N: Array, *, t: float, w: float) -> Array:
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
      [jnp.ones_like(rescaled_NxK[:, :1]), rescaled_NxK], axis=-1)
  z_Nx1pK = raw_Nx1pK / jnp.sum(raw_Nx1pK, axis=-1, keepdims=True)
  return jax.lax.stop_gradient(_mix_with_self(z_Nx1pK, w))


def supcon_targets(queue_labels_K: Array, labels_N: Array, *,
                   w: float) -> Array:
  """Grafit-style targets: ``w * uniform(positive, same-coarse queue) + (1 - w) e_0``.

  The positive key is always a candidate, so a row with no same-coarse queue
  entry is already the one-hot self target.
  """
  mask_NxK = same_coarse_mask(labels_N, queue_labels_K).astype(jnp.float32)
  raw_Nx1pK = jnp.concatenate([jnp.ones_like(mask_NxK[:, :1]), mask_NxK],
                              axis=-1)
  z_Nx1pK = raw_Nx1pK / jnp.sum(raw_Nx1pK, axis=-1, keepdims=True)
  return _mix_with_self(z_Nx1pK, w)


def moco_loss(q: Array, k: Array, queue: Array, *, t0: float) -> Array:
  """Self-supervised InfoNCE over ``[positive key, queue]`` (MoCo v2)."""
  logits = queue_logits(q, k, queue, t0=t0)
  return soft_cross_entropy(logits, self_targets(*logits.shape))


def maskcon_loss(q: Array, k: Array, queue: Array, queue_labels: Array,
                 labels: Array, *, t0: float, t: float, w: float) -> Array:
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


def grafit_loss(q: Array, k: Array, queue: Array, queue_labels: Array,
                labels: Array, *, t0: float, w: float) -> Array:
  """``w * SupCon(coarse labels over the queue) + (1 - w) * self`` loss.

  This is the official repository's ``grafit`` mode: MaskCon in the limit
  ``t -> inf``.
  """
  targets = supcon_targets(queue_labels, labels, w=w)
  return soft_cross_entropy(queue_logits(q, k, queue, t0=t0), targets)


def coins_loss(q: Array, k: Array, cls_logits: Array, queue: Array,
               labels: Array, *, t0: float, w: float) -> Array:
  """CoIns: ``w * CE(coarse classifier) + (1 - w) * MoCo self loss``."""
  coarse_targets = jax.nn.one_hot(labels, cls_logits.shape[-1],
                                  dtype=jnp.float32)
  classification = soft_cross_entropy(cls_logits, coarse_targets)
  return w * classification + (1.0 - w) * moco_loss(q, k, queue, t0=t0)
