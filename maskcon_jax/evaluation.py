"""Retrieval and classification metrics on embeddings (numpy + jax; no TF).

Every retrieval metric ranks neighbours by cosine similarity (embeddings are
L2-normalised here), excludes the query from its own neighbours, and breaks
ties towards the lower bank index. All of them are computed from one primitive,
`iter_neighbours`, which yields the sorted neighbour indices of a chunk of
queries at a time, so memory is O(chunk_size x N) whatever the metric.

Definitions (N queries; "label" is whichever label array is passed in):

* Recall@K (the metric of the MaskCon paper and most deep-metric-learning
  work): the fraction of queries with at least one item of their label among
  their K nearest neighbours.
* Precision@K: the mean over queries of the fraction of their K nearest
  neighbours that have the query's label.
* MAP@R (Musgrave et al., "A Metric Learning Reality Check", 2020): for a query
  with R other items of its label, ``AP@R = (1/R) sum_{i<=R} P(i) rel(i)``
  over its first R neighbours, where ``rel(i)`` says whether neighbour ``i``
  has the label and ``P(i)`` is the precision of the first ``i``; averaged
  over the queries with ``R > 0``.
* Within-group Recall@K: Recall@K where each query's neighbours are searched
  only among the items of its own group (its coarse class).
* kNN top-1: the InstDisc (Wu et al., 2018) weighted kNN classifier.
* Linear probe top-1: a softmax-regression classifier trained on frozen
  features.

It is over 600 lines (about 800) because every metric is built on the one
neighbour primitive above and tested against a NumPy reference in
tests/test_evaluation.py; splitting them would split that primitive's users,
not its concerns.
"""

from __future__ import annotations

import functools
from typing import Any, Iterator, Sequence

import jax
import jax.numpy as jnp
import numpy as np
import optax

DEFAULT_KS = (1, 2, 5, 10, 50, 100)
# The linear-probe budget of `retrieval_report`: Adam with a cosine-decayed
# learning rate; converges on standardised features of the datasets here.
PROBE_DEFAULTS = dict(epochs=30, batch_size=256, learning_rate=1e-2, seed=0)


def l2_normalize_np(x: np.ndarray, eps: float = 1e-12) -> np.ndarray:
  """Rows of ``x`` scaled to unit L2 norm (zero rows stay zero), float32."""
  x = np.asarray(x, np.float32)
  return x / np.maximum(np.linalg.norm(x, axis=-1, keepdims=True), eps)


# ---------------------------------------------------------------------------
# Nearest neighbours.
# ---------------------------------------------------------------------------


@functools.partial(jax.jit, static_argnames=("k",))
def _chunk_top_k(
    queries_CxD, query_ids_C, query_groups_C, bank_NxD, bank_groups_N, *, k
):
  """Similarities and indices of each query's k nearest bank items."""
  # HIGHEST: GPUs would otherwise use TF32 and reorder near-ties.
  sims_CxN = jnp.matmul(
      queries_CxD, bank_NxD.T, precision=jax.lax.Precision.HIGHEST
  )
  # Excluded items get -inf so top_k puts them last; masking the query's own
  # index (rather than dropping the first column, as the official code does)
  # stays right when duplicates tie with the query.
  excluded = (
      query_ids_C[:, None] == jnp.arange(bank_NxD.shape[0])[None, :]
  ) | (query_groups_C[:, None] != bank_groups_N[None, :])
  sims_CxN = jnp.where(excluded, -jnp.inf, sims_CxN)
  # top_k is stable: equal values keep the lower index first.
  return jax.lax.top_k(sims_CxN, k)


def iter_neighbours(
    queries_QxD,
    bank_NxD=None,
    k: int = 1,
    *,
    query_groups_Q=None,
    bank_groups_N=None,
    chunk_size: int = 1024,
) -> Iterator[tuple[slice, np.ndarray, np.ndarray]]:
  """Sorted nearest neighbours of the queries, one chunk of queries at a time.

  Both sets are L2-normalised, so neighbours are ranked by cosine similarity,
  highest first, ties towards the lower bank index. The last chunk is padded
  to ``chunk_size`` so only one program is compiled per shape.

  Args:
    queries_QxD: ``(Q, D)`` query embeddings.
    bank_NxD: ``(N, D)`` bank embeddings; None searches the queries
      themselves and excludes each query from its own neighbours.
    k: neighbours per query, clipped to the bank size.
    query_groups_Q: optional ``(Q,)`` int group of each query; with
      ``bank_groups_N``, only bank items of the query's group are neighbours.
    bank_groups_N: ``(N,)`` int group of each bank item (the query groups when
      ``bank_NxD`` is None).
    chunk_size: queries per chunk.

  Yields:
    ``(rows, neighbours_CxK, similarities_CxK)``: ``rows`` is the slice of
    query indices of the chunk; ``neighbours`` are int bank indices, -1 where
    fewer than K items were eligible (``similarities`` is then -inf).
  """
  queries = jnp.asarray(l2_normalize_np(queries_QxD))
  self_search = bank_NxD is None
  bank = queries if self_search else jnp.asarray(l2_normalize_np(bank_NxD))
  q, n = queries.shape[0], bank.shape[0]
  if self_search and bank_groups_N is None:
    bank_groups_N = query_groups_Q
  if (query_groups_Q is None) != (bank_groups_N is None):
    raise ValueError("Pass both query_groups_Q and bank_groups_N, or neither.")
  if query_groups_Q is None:
    query_groups = np.zeros(q, np.int32)
    bank_groups = jnp.zeros(n, jnp.int32)
  else:
    query_groups = np.asarray(query_groups_Q, np.int32)
    bank_groups = jnp.asarray(np.asarray(bank_groups_N, np.int32))
  k = max(1, min(k, n))
  chunk_size = max(1, min(chunk_size, q))
  for start in range(0, q, chunk_size):
    stop = min(start + chunk_size, q)
    ids = np.arange(start, start + chunk_size)
    rows = np.minimum(ids, q - 1)  # Padding repeats the last query.
    # -1 matches no bank index: no self-exclusion against a separate bank.
    exclude = (
        np.where(ids < q, ids, -1) if self_search else np.full_like(ids, -1)
    )
    sims, idx = _chunk_top_k(
        queries[rows],
        jnp.asarray(exclude, jnp.int32),
        jnp.asarray(query_groups[rows]),
        bank,
        bank_groups,
        k=k,
    )
    sims = np.asarray(sims)[: stop - start]
    idx = np.where(np.isfinite(sims), np.asarray(idx)[: stop - start], -1)
    yield slice(start, stop), idx, sims


def _label_hits(
    neighbours_CxK: np.ndarray,
    bank_labels_N: np.ndarray,
    query_labels_C: np.ndarray,
) -> np.ndarray:
  """Whether each neighbour has its query's label (False for missing ones)."""
  found = bank_labels_N[np.maximum(neighbours_CxK, 0)]
  return (found == query_labels_C[:, None]) & (neighbours_CxK >= 0)


_NO_HIT = np.iinfo(np.int64).max


def _first_hit(hits_CxK: np.ndarray) -> np.ndarray:
  """0-based rank of each query's first hit; a huge sentinel where none.

  The sentinel (not K) keeps "no hit" a miss for every K, including K values
  beyond the neighbours searched.
  """
  return np.where(hits_CxK.any(-1), hits_CxK.argmax(-1), _NO_HIT)


def _precision_at(hits_CxK: np.ndarray, ks: Sequence[int]) -> np.ndarray:
  """``(C, len(ks))`` fraction of hits among each query's first k, per k."""
  cum_hits = np.cumsum(hits_CxK, axis=1)
  return np.stack([cum_hits[:, k - 1] / k for k in ks], axis=1)


def _average_precision_at_r(
    hits_CxK: np.ndarray, r_C: np.ndarray
) -> np.ndarray:
  """AP@R of each query from its sorted hits; NaN where R == 0."""
  ranks = np.arange(1, hits_CxK.shape[1] + 1)
  within_r = ranks[None, :] <= r_C[:, None]
  hits = hits_CxK & within_r
  precision_at_i = np.cumsum(hits, axis=1) / ranks[None, :]
  total = np.sum(precision_at_i * hits, axis=1)
  with np.errstate(invalid="ignore", divide="ignore"):
    return np.where(r_C > 0, total / r_C, np.nan)


def _as_labels(labels) -> np.ndarray:
  return np.asarray(labels).astype(np.int64)


def _check_self_search(embeddings_NxD, labels_N) -> int:
  n = len(embeddings_NxD)
  if n < 2:
    raise ValueError(f"Retrieval metrics need at least 2 items, got {n}.")
  if len(labels_N) != n:
    raise ValueError(f"{n} embeddings but {len(labels_N)} labels.")
  return n


# ---------------------------------------------------------------------------
# Retrieval metrics.
# ---------------------------------------------------------------------------


def recall_at_k(
    embeddings_NxD,
    labels_N,
    ks: Sequence[int] = DEFAULT_KS,
    *,
    chunk_size: int = 1024,
) -> dict[int, float]:
  """Recall@K of every item against all others, for each K in ``ks``.

  Recall@K is the fraction of queries with at least one item of their label
  among their K nearest neighbours (cosine similarity, query excluded, ties to
  the lower index). Each K is clipped to ``N - 1``.

  Args:
    embeddings_NxD: ``(N, D)`` embeddings.
    labels_N: ``(N,)`` integer labels.
    ks: the K values.
    chunk_size: queries per chunk; memory is O(chunk_size x N).

  Returns:
    ``{K: recall}`` with recall in [0, 1], keyed by the requested K.
  """
  n = _check_self_search(embeddings_NxD, labels_N)
  labels = _as_labels(labels_N)
  k_max = min(max(ks), n - 1)
  first = np.empty(n, np.int64)
  for rows, nn, _ in iter_neighbours(
      embeddings_NxD, k=k_max, chunk_size=chunk_size
  ):
    first[rows] = _first_hit(_label_hits(nn, labels, labels[rows]))
  return {k: float(np.mean(first < min(k, n - 1))) for k in ks}


def precision_at_k(
    embeddings_NxD,
    labels_N,
    ks: Sequence[int] = DEFAULT_KS,
    *,
    chunk_size: int = 1024,
) -> dict[int, float]:
  """Precision@K of every item against all others, for each K in ``ks``.

  Precision@K is the mean over queries of the fraction of their K nearest
  neighbours (cosine similarity, query excluded, ties to the lower index)
  that have the query's label. Each K is clipped to ``N - 1``, so a K larger
  than a label's class size simply caps that query's precision below 1.

  Args:
    embeddings_NxD: ``(N, D)`` embeddings.
    labels_N: ``(N,)`` integer labels.
    ks: the K values.
    chunk_size: queries per chunk; memory is O(chunk_size x N).

  Returns:
    ``{K: precision}`` in [0, 1], keyed by the requested K.
  """
  n = _check_self_search(embeddings_NxD, labels_N)
  labels = _as_labels(labels_N)
  clipped = [min(k, n - 1) for k in ks]
  precision = np.empty((n, len(ks)))
  for rows, nn, _ in iter_neighbours(
      embeddings_NxD, k=max(clipped), chunk_size=chunk_size
  ):
    precision[rows] = _precision_at(
        _label_hits(nn, labels, labels[rows]), clipped
    )
  return {k: float(np.mean(precision[:, i])) for i, k in enumerate(ks)}


def map_at_r(embeddings_NxD, labels_N, *, chunk_size: int = 1024) -> float:
  """MAP@R (Musgrave et al., 2020) of every item against all others.

  For a query with R other items of its label, ``AP@R = (1/R) sum_{i=1..R}
  P(i) rel(i)`` over its first R neighbours (cosine similarity, query
  excluded, ties to the lower index): ``rel(i)`` is 1 when neighbour ``i`` has
  the query's label and ``P(i)`` is the fraction of the first ``i`` that do.
  MAP@R is the mean AP@R over queries with ``R > 0``; queries alone in their
  class are excluded.

  Args:
    embeddings_NxD: ``(N, D)`` embeddings.
    labels_N: ``(N,)`` integer labels.
    chunk_size: queries per chunk; memory is O(chunk_size x N).

  Returns:
    MAP@R in [0, 1]; NaN when every query is alone in its class.
  """
  _check_self_search(embeddings_NxD, labels_N)
  labels = _as_labels(labels_N)
  ap = _map_at_r_per_query(embeddings_NxD, labels, chunk_size)
  return float(np.nanmean(ap)) if np.any(np.isfinite(ap)) else float("nan")


def _map_at_r_per_query(
    embeddings_NxD, labels: np.ndarray, chunk_size: int
) -> np.ndarray:
  _, inverse, counts = np.unique(
      labels, return_inverse=True, return_counts=True
  )
  r = counts[inverse] - 1
  ap = np.full(len(labels), np.nan)
  if r.max() == 0:
    return ap
  for rows, nn, _ in iter_neighbours(
      embeddings_NxD, k=int(r.max()), chunk_size=chunk_size
  ):
    ap[rows] = _average_precision_at_r(
        _label_hits(nn, labels, labels[rows]), r[rows]
    )
  return ap


def within_group_recall_at_k(
    embeddings_NxD,
    fine_labels_N,
    coarse_labels_N,
    ks: Sequence[int] = DEFAULT_KS,
    *,
    chunk_size: int = 1024,
) -> dict[int, float]:
  """Fine Recall@K, neighbours searched only within the query's coarse class.

  The fraction of queries with an item of their fine label among their K
  nearest neighbours, where the candidates are the other items of the
  query's coarse class (cosine similarity, ties to the lower index). This
  isolates the fine-grained ranking inside each coarse class, which is what
  coarse labels cannot supervise. A query whose coarse class has fewer than
  K other items uses all of them; one alone in its coarse class is a miss.

  Args:
    embeddings_NxD: ``(N, D)`` embeddings.
    fine_labels_N: ``(N,)`` integer fine labels (what must match).
    coarse_labels_N: ``(N,)`` integer coarse labels (the search groups).
    ks: the K values.
    chunk_size: queries per chunk; memory is O(chunk_size x N).

  Returns:
    ``{K: recall}`` in [0, 1], keyed by the requested K.
  """
  n = _check_self_search(embeddings_NxD, fine_labels_N)
  fine, coarse = _as_labels(fine_labels_N), _as_labels(coarse_labels_N)
  first = _within_group_first_hit(
      embeddings_NxD, fine, coarse, max(ks), chunk_size
  )
  return {k: float(np.mean(first < min(k, n - 1))) for k in ks}


def _within_group_first_hit(
    embeddings_NxD,
    fine: np.ndarray,
    coarse: np.ndarray,
    k: int,
    chunk_size: int,
) -> np.ndarray:
  largest_group = int(np.unique(coarse, return_counts=True)[1].max())
  k_max = max(1, min(k, largest_group - 1))
  first = np.empty(len(fine), np.int64)
  for rows, nn, _ in iter_neighbours(
      embeddings_NxD, k=k_max, query_groups_Q=coarse, chunk_size=chunk_size
  ):
    first[rows] = _first_hit(_label_hits(nn, fine, fine[rows]))
  return first


def per_group_recall_at_1(
    embeddings_NxD, fine_labels_N, coarse_labels_N, *, chunk_size: int = 1024
) -> dict[int, float]:
  """Fine Recall@1 of the queries of each coarse class.

  Neighbours are searched among all items (as in `recall_at_k`); only the
  averaging is per coarse class: entry ``c`` is the fraction of queries of
  coarse class ``c`` whose nearest neighbour has their fine label.

  Args:
    embeddings_NxD: ``(N, D)`` embeddings.
    fine_labels_N: ``(N,)`` integer fine labels.
    coarse_labels_N: ``(N,)`` integer coarse labels.
    chunk_size: queries per chunk; memory is O(chunk_size x N).

  Returns:
    ``{coarse_id: recall}`` for each coarse id present, in increasing order.
  """
  _check_self_search(embeddings_NxD, fine_labels_N)
  fine, coarse = _as_labels(fine_labels_N), _as_labels(coarse_labels_N)
  hit = np.empty(len(fine), bool)
  for rows, nn, _ in iter_neighbours(
      embeddings_NxD, k=1, chunk_size=chunk_size
  ):
    hit[rows] = _label_hits(nn, fine, fine[rows])[:, 0]
  return _group_means(hit, coarse)


def _group_means(values: np.ndarray, groups: np.ndarray) -> dict[int, float]:
  return {
      int(g): float(np.mean(values[groups == g])) for g in np.unique(groups)
  }


# ---------------------------------------------------------------------------
# Classifiers on frozen embeddings.
# ---------------------------------------------------------------------------


def knn_predict(
    bank_NxD,
    bank_labels_N,
    queries_QxD=None,
    *,
    k: int = 20,
    temperature: float = 0.07,
    num_classes: int | None = None,
    chunk_size: int = 1024,
) -> np.ndarray:
  """Weighted-kNN class predictions (InstDisc, Wu et al. 2018).

  Each of a query's k nearest bank items (cosine similarity ``s``) votes for
  its label with weight ``exp(s / temperature)``; the prediction is the class
  with the largest total weight, ties to the lower class id.

  Args:
    bank_NxD: ``(N, D)`` labelled embeddings.
    bank_labels_N: ``(N,)`` integer labels.
    queries_QxD: ``(Q, D)`` embeddings to classify; None classifies the bank
      itself leave-one-out (each item excluded from its own neighbours).
    k: neighbours that vote, clipped to the candidates available.
    temperature: the softness of the vote; large values approach a majority
      vote.
    num_classes: the number of classes; by default ``max(label) + 1``.
    chunk_size: queries per chunk; memory is O(chunk_size x N).

  Returns:
    ``(Q,)`` int predictions.
  """
  labels = _as_labels(bank_labels_N)
  num_classes = num_classes or int(labels.max()) + 1
  leave_one_out = queries_QxD is None
  if leave_one_out:
    queries_QxD, bank_NxD = bank_NxD, None
  k = min(k, len(labels) - 1 if leave_one_out else len(labels))
  if k < 1:
    raise ValueError("kNN needs at least one candidate neighbour.")
  predictions = np.empty(len(queries_QxD), np.int64)
  for rows, nn, sims in iter_neighbours(
      queries_QxD, bank_NxD, k, chunk_size=chunk_size
  ):
    # Subtracting the best similarity leaves the argmax unchanged and keeps
    # exp() finite for small temperatures.
    weights = np.exp((sims.astype(np.float64) - sims[:, :1]) / temperature)
    weights = np.where(nn >= 0, weights, 0.0)
    votes = np.zeros((len(nn), num_classes))
    np.add.at(
        votes, (np.arange(len(nn))[:, None], labels[np.maximum(nn, 0)]), weights
    )
    predictions[rows] = votes.argmax(-1)
  return predictions


def knn_classify(
    bank_emb,
    bank_labels,
    query_emb=None,
    query_labels=None,
    *,
    k: int = 20,
    temperature: float = 0.07,
    num_classes: int | None = None,
    chunk_size: int = 1024,
) -> float:
  """Top-1 accuracy of the weighted kNN classifier of `knn_predict`.

  Args:
    bank_emb: ``(N, D)`` labelled embeddings (e.g. the training split).
    bank_labels: ``(N,)`` integer labels.
    query_emb: ``(Q, D)`` embeddings to classify; None scores the bank
      leave-one-out.
    query_labels: ``(Q,)`` true labels (ignored when ``query_emb`` is None).
    k: neighbours that vote (20, as InstDisc and MoCo's kNN monitor).
    temperature: vote temperature (0.07, as InstDisc).
    num_classes: the number of classes; by default the largest label + 1.
    chunk_size: queries per chunk; memory is O(chunk_size x N).

  Returns:
    Top-1 accuracy in [0, 1].
  """
  if query_emb is None:
    query_labels = bank_labels
  elif query_labels is None:
    raise ValueError("query_labels are needed with query_emb.")
  predictions = knn_predict(
      bank_emb,
      bank_labels,
      query_emb,
      k=k,
      temperature=temperature,
      num_classes=num_classes,
      chunk_size=chunk_size,
  )
  return float(np.mean(predictions == _as_labels(query_labels)))


def standardize_features(train_NxD, *others):
  """L2-normalises, then standardises every set with the train statistics.

  Returns:
    The transformed train set followed by each of ``others``, float32.
  """
  train = l2_normalize_np(train_NxD)
  mean = train.mean(0)
  std = np.maximum(train.std(0), 1e-6)  # Constant dimensions stay at zero.
  return (
      (train - mean) / std,
      *((l2_normalize_np(x) - mean) / std for x in others),
  )


@functools.partial(
    jax.jit, static_argnames=("epochs", "batch_size", "num_classes")
)
def _train_probe(
    feats_NxD, labels_N, rng, learning_rate, *, epochs, batch_size, num_classes
):
  """Softmax-regression parameters after ``epochs`` shuffled Adam passes."""
  n, d = feats_NxD.shape
  steps = n // batch_size
  optimizer = optax.adam(
      optax.cosine_decay_schedule(learning_rate, max(epochs * steps, 1))
  )
  params = {"w": jnp.zeros((d, num_classes)), "b": jnp.zeros((num_classes,))}

  def loss_fn(params, x, y):
    logits = x @ params["w"] + params["b"]
    return optax.softmax_cross_entropy_with_integer_labels(logits, y).mean()

  def step(carry, ids):
    params, opt_state = carry
    grads = jax.grad(loss_fn)(params, feats_NxD[ids], labels_N[ids])
    updates, opt_state = optimizer.update(grads, opt_state, params)
    return (optax.apply_updates(params, updates), opt_state), None

  def epoch(carry, epoch_rng):
    order = jax.random.permutation(epoch_rng, n)[: steps * batch_size]
    return jax.lax.scan(step, carry, order.reshape(steps, batch_size))[0], None

  (params, _), _ = jax.lax.scan(
      epoch, (params, optimizer.init(params)), jax.random.split(rng, epochs)
  )
  return params


def linear_probe(
    train_feats,
    train_labels,
    test_feats,
    test_labels,
    *,
    num_classes: int | None = None,
    epochs: int = PROBE_DEFAULTS["epochs"],
    batch_size: int = PROBE_DEFAULTS["batch_size"],
    learning_rate: float = PROBE_DEFAULTS["learning_rate"],
    seed: int = PROBE_DEFAULTS["seed"],
) -> float:
  """Top-1 test accuracy of a linear classifier on frozen features.

  Features are L2-normalised (the geometry retrieval uses), then standardised
  per dimension with the training set's mean and standard deviation, so one
  learning rate suits any backbone. A softmax-regression layer, initialised at
  zero, is trained with cross-entropy by Adam with a cosine-decayed learning
  rate for ``epochs`` passes over a seeded shuffle (the last partial batch of
  each pass is dropped). The result is a deterministic function of the inputs
  and ``seed``.

  Args:
    train_feats: ``(N, D)`` training features.
    train_labels: ``(N,)`` integer labels in ``[0, num_classes)``.
    test_feats: ``(M, D)`` test features.
    test_labels: ``(M,)`` integer labels.
    num_classes: the number of classes; by default the largest label + 1.
    epochs: passes over the training set.
    batch_size: examples per step, clipped to ``N``.
    learning_rate: Adam's peak learning rate.
    seed: seeds the shuffle.

  Returns:
    Top-1 accuracy on the test set, in [0, 1].
  """
  train_labels = _as_labels(train_labels)
  test_labels = _as_labels(test_labels)
  if num_classes is None:
    num_classes = int(max(train_labels.max(), test_labels.max())) + 1
  train_x, test_x = standardize_features(train_feats, test_feats)
  batch_size = max(1, min(batch_size, len(train_x)))
  params = _train_probe(
      jnp.asarray(train_x),
      jnp.asarray(train_labels, jnp.int32),
      jax.random.key(seed),
      jnp.float32(learning_rate),
      epochs=epochs,
      batch_size=batch_size,
      num_classes=num_classes,
  )
  logits = test_x @ np.asarray(params["w"]) + np.asarray(params["b"])
  return float(np.mean(logits.argmax(-1) == test_labels))


# ---------------------------------------------------------------------------
# Everything for one split.
# ---------------------------------------------------------------------------


def retrieval_report(
    features_NxD,
    fine_labels_N,
    coarse_labels_N,
    *,
    coarse_names: Sequence[str] | None = None,
    bank_features=None,
    bank_fine_labels=None,
    num_fine: int | None = None,
    ks: Sequence[int] = DEFAULT_KS,
    knn_k: int = 20,
    knn_temperature: float = 0.07,
    probe: dict[str, Any] | None = None,
    chunk_size: int = 1024,
) -> dict[str, float]:
  """All metrics of one split in one flat dict.

  Retrieval metrics search the split against itself. K values above ``N - 1``
  (the candidates a query has) are left out rather than clipped, so no key
  claims a K it could not measure. Keys:

  * ``fine_recall@K``, ``coarse_recall@K``: `recall_at_k` on each level.
  * ``fine_precision@K``: `precision_at_k`.
  * ``fine_map@r``: `map_at_r` (NaN if no fine class has two items).
  * ``fine_within_coarse_recall@K``: `within_group_recall_at_k`.
  * ``fine_recall@1/coarse=<name>``: `per_group_recall_at_1`.
  * ``knn_fine_top1``: `knn_classify` with the bank as labelled set.
  * ``linear_probe_fine_top1``: `linear_probe` trained on the bank.

  One neighbour search serves recall, precision, MAP@R and the per-group
  Recall@1.

  Args:
    features_NxD: ``(N, D)`` embeddings of the split.
    fine_labels_N: ``(N,)`` fine labels.
    coarse_labels_N: ``(N,)`` coarse labels.
    coarse_names: name of each coarse id, for the per-group keys; the id
      itself if None.
    bank_features: ``(M, D)`` labelled embeddings for kNN and the probe
      (normally the training split). None uses the split itself: kNN
      leave-one-out and a probe trained and scored on the same items.
    bank_fine_labels: ``(M,)`` fine labels of the bank.
    num_fine: number of fine classes; by default the largest label + 1.
    ks: the K values.
    knn_k: neighbours that vote in kNN.
    knn_temperature: the kNN vote temperature.
    probe: keyword arguments for `linear_probe` (``PROBE_DEFAULTS`` if None).
    chunk_size: queries per chunk; memory is O(chunk_size x N).

  Returns:
    ``{name: value}`` with every value a float in [0, 1] (or NaN).
  """
  n = _check_self_search(features_NxD, fine_labels_N)
  fine, coarse = _as_labels(fine_labels_N), _as_labels(coarse_labels_N)
  ks = sorted(k for k in set(ks) if 1 <= k <= n - 1) or [1]
  if bank_features is None:
    bank_features, bank_fine = features_NxD, fine
  else:
    if bank_fine_labels is None:
      raise ValueError("bank_fine_labels are needed with bank_features.")
    bank_fine = _as_labels(bank_fine_labels)
  if num_fine is None:
    num_fine = int(max(fine.max(), bank_fine.max())) + 1

  # One global search, deep enough for the largest K and the largest R.
  _, inverse, counts = np.unique(fine, return_inverse=True, return_counts=True)
  r = counts[inverse] - 1
  k_max = min(n - 1, max(max(ks), int(r.max())))
  first_fine = np.empty(n, np.int64)
  first_coarse = np.empty(n, np.int64)
  precision = np.empty((n, len(ks)))
  ap = np.full(n, np.nan)
  for rows, nn, _ in iter_neighbours(
      features_NxD, k=k_max, chunk_size=chunk_size
  ):
    hits = _label_hits(nn, fine, fine[rows])
    first_fine[rows] = _first_hit(hits)
    first_coarse[rows] = _first_hit(_label_hits(nn, coarse, coarse[rows]))
    precision[rows] = _precision_at(hits, ks)
    ap[rows] = _average_precision_at_r(hits, r[rows])

  report: dict[str, float] = {}
  for k in ks:
    report[f"fine_recall@{k}"] = float(np.mean(first_fine < k))
  for k in ks:
    report[f"coarse_recall@{k}"] = float(np.mean(first_coarse < k))
  report["fine_map@r"] = (
      float(np.nanmean(ap)) if np.any(np.isfinite(ap)) else float("nan")
  )
  for i, k in enumerate(ks):
    report[f"fine_precision@{k}"] = float(np.mean(precision[:, i]))
  within = _within_group_first_hit(
      features_NxD, fine, coarse, max(ks), chunk_size
  )
  for k in ks:
    report[f"fine_within_coarse_recall@{k}"] = float(np.mean(within < k))
  for c, value in _group_means(first_fine < 1, coarse).items():
    name = coarse_names[c] if coarse_names is not None else str(c)
    report[f"fine_recall@1/coarse={name}"] = value

  same_set = bank_features is features_NxD
  report["knn_fine_top1"] = knn_classify(
      bank_features,
      bank_fine,
      None if same_set else features_NxD,
      fine,
      k=knn_k,
      temperature=knn_temperature,
      num_classes=num_fine,
      chunk_size=chunk_size,
  )
  report["linear_probe_fine_top1"] = linear_probe(
      bank_features,
      bank_fine,
      features_NxD,
      fine,
      num_classes=num_fine,
      **{**PROBE_DEFAULTS, **(probe or {})},
  )
  return report


# ---------------------------------------------------------------------------
# What MaskCon's soft target points at.
# ---------------------------------------------------------------------------


def soft_target_diagnostics(
    keys_NxD,
    fine_N,
    coarse_N,
    queue_KxD,
    queue_fine_K,
    queue_coarse_K,
    *,
    t: float,
) -> dict[str, float]:
  """How much of MaskCon's neighbour target lands on the query's fine class.

  For each key ``k_i`` the MaskCon target spreads weight over the same-coarse
  queue entries in proportion to ``r_ij = exp((k_i.Q_j - max_l k_i.Q_l) / t)``
  (`losses.maskcon_targets`; the positive key's share is left out here, it is
  the same instance by construction). Coarse labels alone (grafit's target)
  spread it uniformly over the same entries. With ``p_ij = r_ij / sum_l r_il``
  over same-coarse ``j``:

  * ``target_fine_share``: mean over keys of ``sum_j p_ij [fine_j = fine_i]``,
    the share of the neighbour target on items of the key's own fine class;
  * ``target_fine_share_uniform``: the same for the uniform target, i.e. the
    fraction of same-coarse queue entries that share the fine class;
  * ``target_entropy``: mean ``-sum_j p_ij log p_ij`` (nats);
  * ``target_entropy_uniform``: mean ``log(#same-coarse entries)``.

  Keys whose coarse class has no queue entry are left out.

  Args:
    keys_NxD: L2-normalised key-encoder projections of the queries.
    fine_N, coarse_N: their fine and coarse labels.
    queue_KxD: L2-normalised key projections standing in for the queue.
    queue_fine_K, queue_coarse_K: the queue entries' labels.
    t: MaskCon's target temperature.

  Returns:
    The four numbers above as floats (NaN where no key has a same-coarse
    queue entry).
  """
  keys = np.asarray(keys_NxD, np.float64)
  queue = np.asarray(queue_KxD, np.float64)
  fine, coarse = np.asarray(fine_N), np.asarray(coarse_N)
  queue_fine, queue_coarse = np.asarray(queue_fine_K), np.asarray(
      queue_coarse_K
  )
  mask_NxK = coarse[:, None] == queue_coarse[None, :]
  has_entry = mask_NxK.any(axis=1)
  if not has_entry.any():
    nan = float("nan")
    return {
        "target_fine_share": nan,
        "target_fine_share_uniform": nan,
        "target_entropy": nan,
        "target_entropy_uniform": nan,
    }
  keys, fine, mask_NxK = keys[has_entry], fine[has_entry], mask_NxK[has_entry]
  sim_NxK = np.where(mask_NxK, keys @ queue.T / t, -np.inf)
  logits = sim_NxK - sim_NxK.max(axis=1, keepdims=True)
  weights = np.where(mask_NxK, np.exp(logits), 0.0)
  p_NxK = weights / weights.sum(axis=1, keepdims=True)
  same_fine_NxK = fine[:, None] == queue_fine[None, :]
  counts_N = mask_NxK.sum(axis=1)
  log_p = np.log(np.where(p_NxK > 0, p_NxK, 1.0))
  return {
      "target_fine_share": float(np.mean(np.sum(p_NxK * same_fine_NxK, 1))),
      "target_fine_share_uniform": float(
          np.mean(np.sum(mask_NxK & same_fine_NxK, axis=1) / counts_N)
      ),
      "target_entropy": float(np.mean(-np.sum(p_NxK * log_p, axis=1))),
      "target_entropy_uniform": float(np.mean(np.log(counts_N))),
  }
