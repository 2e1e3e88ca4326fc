"""Recall@K against a brute-force NumPy reference."""

import numpy as np
import pytest

from maskcon_jax import evaluation


def brute_force_recall(emb, labels, k):
  """For each query: sort all others by cosine similarity (stable, ties to
  the lower index) and check the first k for a label match."""
  emb = emb / np.linalg.norm(emb, axis=1, keepdims=True)
  n = len(emb)
  hits = 0
  for i in range(n):
    sims = emb @ emb[i]
    others = [j for j in range(n) if j != i]
    order = sorted(others, key=lambda j: (-sims[j], j))
    hits += any(labels[j] == labels[i] for j in order[:min(k, n - 1)])
  return hits / n


@pytest.mark.parametrize("seed,n,chunk", [(0, 50, 7), (1, 64, 64), (2, 33, 1000)])
def test_recall_matches_brute_force(seed, n, chunk):
  rng = np.random.default_rng(seed)
  emb = rng.normal(size=(n, 6)).astype(np.float32)
  labels = rng.integers(0, 5, n)
  ks = (1, 2, 5, 10, 100)
  got = evaluation.recall_at_k(emb, labels, ks, chunk_size=chunk)
  for k in ks:
    assert got[k] == pytest.approx(brute_force_recall(emb, labels, k), abs=1e-9)


def test_query_itself_is_excluded_even_with_duplicates():
  # Two identical embeddings with different labels: the query must not count
  # itself, and its duplicate (a different label) is its nearest neighbour.
  emb = np.array([[1.0, 0.0], [1.0, 0.0], [0.0, 1.0], [0.0, 1.0]], np.float32)
  labels = np.array([0, 1, 0, 1])
  got = evaluation.recall_at_k(emb, labels, (1, 2, 3))
  assert got[1] == 0.0
  assert got[2] == brute_force_recall(emb, labels, 2)
  assert got[3] == 1.0


def test_k_larger_than_set_is_clipped():
  emb = np.eye(3, dtype=np.float32)
  got = evaluation.recall_at_k(emb, np.array([0, 0, 1]), (1, 50))
  assert got[50] == pytest.approx(2 / 3)


def test_perfect_clusters():
  rng = np.random.default_rng(3)
  centres = rng.normal(size=(4, 8))
  labels = np.repeat(np.arange(4), 10)
  emb = centres[labels] + 1e-3 * rng.normal(size=(40, 8))
  assert evaluation.recall_at_k(emb, labels, (1,))[1] == 1.0
