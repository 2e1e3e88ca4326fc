"""Retrieval metrics on embeddings (pure jax; no TensorFlow).

Recall@K here is the metric of the MaskCon paper and most deep-metric-learning
work: the fraction of queries that have at least one item with the same
(fine) label among their K nearest neighbours, by cosine similarity, with the
query itself excluded from its own neighbours.
"""

from __future__ import annotations

import functools
from typing import Sequence

import jax
import jax.numpy as jnp
import numpy as np

DEFAULT_KS = (1, 2, 5, 10, 50, 100)


@functools.partial(jax.jit, static_argnames=("k_max",))
def _chunk_hits(queries_CxD, query_ids_C, bank_NxD, labels_N, *, k_max):
  """Label matches of each query's k_max nearest neighbours, ``(C, k_max)``."""
  sims_CxN = queries_CxD @ bank_NxD.T
  # Exclude each query from its own neighbours by masking the diagonal
  # (the official code drops column 0, which is wrong under ties).
  is_self = query_ids_C[:, None] == jnp.arange(bank_NxD.shape[0])[None, :]
  sims_CxN = jnp.where(is_self, -jnp.inf, sims_CxN)
  _, nn_idx_CxK = jax.lax.top_k(sims_CxN, k_max)
  query_labels = labels_N[jnp.clip(query_ids_C, 0, labels_N.shape[0] - 1)]
  return labels_N[nn_idx_CxK] == query_labels[:, None]


def l2_normalize_np(x: np.ndarray, eps: float = 1e-12) -> np.ndarray:
  x = np.asarray(x, np.float32)
  return x / np.maximum(np.linalg.norm(x, axis=-1, keepdims=True), eps)


def recall_at_k(embeddings_NxD, labels_N, ks: Sequence[int] = DEFAULT_KS, *,
                chunk_size: int = 1024) -> dict[int, float]:
  """Recall@K of every item against all others, for each K in ``ks``.

  Embeddings are L2-normalised here, so the ranking is by cosine similarity.
  Ties are broken towards the lower index. Each K is clipped to ``N - 1``.
  Memory is O(chunk_size x N): queries are processed in chunks, and the last
  chunk is padded to ``chunk_size`` so only one program is compiled.

  Args:
    embeddings_NxD: ``(N, D)`` embeddings.
    labels_N: ``(N,)`` integer labels.
    ks: the K values.
    chunk_size: queries per chunk.

  Returns:
    ``{K: recall}`` with recall in [0, 1], keyed by the requested K.
  """
  bank = jnp.asarray(l2_normalize_np(embeddings_NxD))
  labels = jnp.asarray(np.asarray(labels_N, np.int32))
  n = bank.shape[0]
  if n < 2:
    raise ValueError(f"Recall@K needs at least 2 items, got {n}.")
  k_max = min(max(ks), n - 1)
  chunk_size = min(chunk_size, n)
  found_at = []
  for start in range(0, n, chunk_size):
    ids = np.arange(start, start + chunk_size)
    valid = ids < n
    ids_padded = np.where(valid, ids, n)  # n matches no bank row.
    queries = bank[np.minimum(ids_padded, n - 1)]
    hits = _chunk_hits(queries, jnp.asarray(ids_padded, jnp.int32), bank,
                       labels, k_max=k_max)
    hits = np.asarray(hits)[valid]
    # Rank of the first hit (k_max if none): Recall@K = mean(first < K).
    first = np.where(hits.any(-1), hits.argmax(-1), k_max)
    found_at.append(first)
  first_hit = np.concatenate(found_at)
  return {k: float(np.mean(first_hit < min(k, n - 1))) for k in ks}
