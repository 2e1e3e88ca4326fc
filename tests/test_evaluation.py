"""Recall@K against a brute-force NumPy reference."""

from hypothesis import given, settings, strategies as st
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
    hits += any(labels[j] == labels[i] for j in order[: min(k, n - 1)])
  return hits / n


@pytest.mark.parametrize(
    "seed,n,chunk", [(0, 50, 7), (1, 64, 64), (2, 33, 1000)]
)
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


# ---------------------------------------------------------------------------
# Brute-force references: every query ranks its candidates one at a time.
# ---------------------------------------------------------------------------


def _unit(emb):
  emb = np.asarray(emb, np.float64)
  return emb / np.linalg.norm(emb, axis=1, keepdims=True)


def _ranked(emb, i, candidates):
  """Candidates sorted by cosine similarity to item i, ties to lower index."""
  sims = _unit(emb) @ _unit(emb)[i]
  return sorted(candidates, key=lambda j: (-sims[j], j))


def _others(n, i):
  return [j for j in range(n) if j != i]


def brute_precision(emb, labels, k):
  n = len(emb)
  k = min(k, n - 1)
  return np.mean(
      [
          np.mean(
              [
                  labels[j] == labels[i]
                  for j in _ranked(emb, i, _others(n, i))[:k]
              ]
          )
          for i in range(n)
      ]
  )


def brute_map_at_r(emb, labels):
  n = len(emb)
  aps = []
  for i in range(n):
    r = sum(labels[j] == labels[i] for j in _others(n, i))
    if r == 0:
      continue
    rel = [labels[j] == labels[i] for j in _ranked(emb, i, _others(n, i))[:r]]
    aps.append(sum(np.mean(rel[: m + 1]) for m in range(r) if rel[m]) / r)
  return np.mean(aps)


def brute_within_recall(emb, fine, coarse, k):
  n = len(emb)
  hits = 0
  for i in range(n):
    group = [j for j in _others(n, i) if coarse[j] == coarse[i]]
    hits += any(fine[j] == fine[i] for j in _ranked(emb, i, group)[:k])
  return hits / n


def brute_per_group_r1(emb, fine, coarse):
  n = len(emb)
  hit = np.array(
      [fine[_ranked(emb, i, _others(n, i))[0]] == fine[i] for i in range(n)]
  )
  return {int(c): float(hit[coarse == c].mean()) for c in np.unique(coarse)}


def brute_knn(bank, bank_labels, queries, k, temperature):
  """InstDisc vote: neighbour j adds exp(s_j / T) to its class."""
  everything = np.concatenate([bank, queries])
  preds = []
  for q in range(len(queries)):
    i = len(bank) + q
    order = _ranked(everything, i, range(len(bank)))[:k]
    sims = _unit(everything) @ _unit(everything)[i]
    votes = {}
    for j in order:
      votes[bank_labels[j]] = votes.get(bank_labels[j], 0.0) + np.exp(
          sims[j] / temperature
      )
    preds.append(max(sorted(votes), key=lambda c: votes[c]))
  return np.array(preds)


def _tied_embeddings(rng, n, dim=3):
  """Rows drawn from the 2*dim signed axes: exact similarities, many ties."""
  axes = np.concatenate([np.eye(dim), -np.eye(dim)]).astype(np.float32)
  return axes[rng.integers(0, 2 * dim, n)]


# ---------------------------------------------------------------------------
# Neighbours.
# ---------------------------------------------------------------------------


@pytest.mark.parametrize("tied", [False, True])
def test_iter_neighbours_matches_brute_force_order(tied):
  rng = np.random.default_rng(4)
  n = 23
  emb = (
      _tied_embeddings(rng, n)
      if tied
      else rng.normal(size=(n, 5)).astype(np.float32)
  )
  groups = rng.integers(0, 3, n)
  k = 9
  seen = []
  for rows, nn, sims in evaluation.iter_neighbours(
      emb, k=k, query_groups_Q=groups, chunk_size=5
  ):
    assert nn.shape == sims.shape == (rows.stop - rows.start, k)
    for row, i in enumerate(range(rows.start, rows.stop)):
      seen.append(i)
      want = _ranked(
          emb, i, [j for j in _others(n, i) if groups[j] == groups[i]]
      )[:k]
      assert list(nn[row, : len(want)]) == want
      # Missing neighbours (small group) are -1 with similarity -inf.
      assert np.all(nn[row, len(want) :] == -1)
      assert np.all(np.isneginf(sims[row, len(want) :]))
      assert np.all(np.diff(sims[row, : len(want)]) <= 0)
  assert seen == list(range(n))


def test_iter_neighbours_against_separate_bank_keeps_identical_items():
  bank = np.eye(3, dtype=np.float32)
  rows, nn, sims = next(evaluation.iter_neighbours(bank[:2], bank, k=3))
  assert rows == slice(0, 2)
  np.testing.assert_array_equal(nn[:, 0], [0, 1])  # No self-exclusion.
  np.testing.assert_allclose(sims[:, 0], 1.0)


# ---------------------------------------------------------------------------
# Retrieval metrics against the references.
# ---------------------------------------------------------------------------


@pytest.mark.parametrize("seed,tied", [(0, False), (1, True), (2, True)])
def test_metrics_match_brute_force(seed, tied):
  rng = np.random.default_rng(seed)
  n = 30
  emb = (
      _tied_embeddings(rng, n)
      if tied
      else rng.normal(size=(n, 6)).astype(np.float32)
  )
  fine = rng.integers(0, 6, n)
  fine[-1] = 99  # A class with a single member: excluded from MAP@R.
  coarse = fine % 2
  ks = (1, 3, 7, 12, 40)  # 12 and 40 exceed most class sizes; 40 > N - 1.
  got_p = evaluation.precision_at_k(emb, fine, ks, chunk_size=8)
  got_r = evaluation.recall_at_k(emb, fine, ks, chunk_size=8)
  got_w = evaluation.within_group_recall_at_k(
      emb, fine, coarse, ks, chunk_size=8
  )
  for k in ks:
    assert got_p[k] == pytest.approx(brute_precision(emb, fine, k), abs=1e-9)
    assert got_r[k] == pytest.approx(brute_force_recall(emb, fine, k), abs=1e-9)
    assert got_w[k] == pytest.approx(
        brute_within_recall(emb, fine, coarse, k), abs=1e-9
    )
    # Fine classes nest in coarse ones, so restricting the search can only
    # move a fine match up.
    assert got_w[k] >= got_r[k]
  assert evaluation.map_at_r(emb, fine, chunk_size=8) == pytest.approx(
      brute_map_at_r(emb, fine), abs=1e-9
  )
  assert evaluation.per_group_recall_at_1(emb, fine, coarse) == pytest.approx(
      brute_per_group_r1(emb, fine, coarse)
  )


@pytest.mark.slow
@settings(max_examples=10, deadline=None)
@given(st.integers(0, 2**31 - 1), st.integers(2, 12))
def test_tied_metrics_property(seed, n):
  # Few signed axes and few labels: exact ties everywhere, tiny classes.
  rng = np.random.default_rng(seed)
  emb = _tied_embeddings(rng, n, dim=2)
  fine = rng.integers(0, 3, n)
  coarse = fine // 2
  ks = (1, 3, 20)
  report = evaluation.retrieval_report(
      emb, fine, coarse, ks=ks, num_fine=3, probe=dict(epochs=1), chunk_size=4
  )
  for k in ks:
    if k > n - 1:
      assert f"fine_recall@{k}" not in report
      continue
    assert report[f"fine_recall@{k}"] == pytest.approx(
        brute_force_recall(emb, fine, k)
    )
    assert report[f"fine_precision@{k}"] == pytest.approx(
        brute_precision(emb, fine, k)
    )
    assert report[f"fine_within_coarse_recall@{k}"] == pytest.approx(
        brute_within_recall(emb, fine, coarse, k)
    )
  if any(np.sum(fine == f) > 1 for f in fine):
    assert report["fine_map@r"] == pytest.approx(brute_map_at_r(emb, fine))
  else:
    assert np.isnan(report["fine_map@r"])


def test_hand_built_line():
  # Points on the unit circle at these angles (radians), labels A B A A.
  # Query 0 ranks 1 2 3, query 2 ranks 1 0 3, query 3 ranks 2 1 0; B is alone.
  angles = np.array([0.0, 0.1, 0.3, 0.7])
  emb = np.stack([np.cos(angles), np.sin(angles)], 1)
  labels = np.array([0, 1, 0, 0])
  # AP@R: q0 [B, A] -> 1/4; q2 [B, A] -> 1/4; q3 [A, B] -> 1/2; q1 excluded.
  assert evaluation.map_at_r(emb, labels) == pytest.approx(1 / 3)
  assert evaluation.recall_at_k(emb, labels, (1,))[1] == 0.25
  # P@2: q0 1/2, q1 0, q2 1/2, q3 1/2.
  assert evaluation.precision_at_k(emb, labels, (2,))[2] == pytest.approx(0.375)


def test_hand_built_within_group():
  # Each item's global nearest neighbour is in the other coarse class; inside
  # its own coarse class the only candidate has its fine label.
  angles = np.array([0.0, 0.1, 0.3, 0.35])
  emb = np.stack([np.cos(angles), np.sin(angles)], 1)
  fine, coarse = np.array([0, 1, 0, 1]), np.array([0, 1, 0, 1])
  assert evaluation.recall_at_k(emb, fine, (1,))[1] == 0.0
  assert evaluation.within_group_recall_at_k(emb, fine, coarse, (1, 5)) == {
      1: 1.0,
      5: 1.0,
  }
  assert evaluation.per_group_recall_at_1(emb, fine, coarse) == {0: 0.0, 1: 0.0}


def test_within_group_query_alone_in_its_group_is_a_miss():
  emb = np.eye(3, dtype=np.float32)
  got = evaluation.within_group_recall_at_k(
      emb, np.array([0, 0, 1]), np.array([0, 0, 1]), (1,)
  )
  assert got[1] == pytest.approx(2 / 3)


@pytest.mark.slow
def test_perfect_clusters_every_metric():
  rng = np.random.default_rng(5)
  labels = np.repeat(np.arange(4), 5)
  emb = rng.normal(size=(4, 8))[labels] + 1e-3 * rng.normal(size=(20, 8))
  assert evaluation.map_at_r(emb, labels) == pytest.approx(1.0)
  # A query has 4 same-class neighbours: P@8 = 4/8.
  assert evaluation.precision_at_k(emb, labels, (4, 8)) == pytest.approx(
      {4: 1.0, 8: 0.5}
  )
  assert evaluation.knn_classify(emb, labels) == 1.0
  assert (
      evaluation.linear_probe(
          emb,
          labels,
          emb,
          labels,
          epochs=20,
          batch_size=8,
          learning_rate=0.1,
          seed=0,
      )
      == 1.0
  )


def test_map_at_r_without_any_pair_is_nan():
  assert np.isnan(evaluation.map_at_r(np.eye(3), np.array([0, 1, 2])))


# ---------------------------------------------------------------------------
# Classifiers.
# ---------------------------------------------------------------------------


@pytest.mark.parametrize("k,temperature", [(5, 0.07), (20, 0.5), (1, 1.0)])
def test_knn_matches_brute_force(k, temperature):
  rng = np.random.default_rng(k)
  bank = rng.normal(size=(40, 4)).astype(np.float32)
  bank_labels = rng.integers(0, 4, 40)
  queries = rng.normal(size=(17, 4)).astype(np.float32)
  want = brute_knn(bank, bank_labels, queries, k, temperature)
  got = evaluation.knn_predict(
      bank, bank_labels, queries, k=k, temperature=temperature, chunk_size=6
  )
  np.testing.assert_array_equal(got, want)
  query_labels = rng.integers(0, 4, 17)
  assert evaluation.knn_classify(
      bank, bank_labels, queries, query_labels, k=k, temperature=temperature
  ) == (pytest.approx(np.mean(want == query_labels)))


def test_knn_vote_is_weighted_by_similarity():
  # One very close item of class 1 against three farther ones of class 0:
  # at T=0.07 exp(1/T) outweighs 3 exp(cos(0.5)/T); a near-majority vote
  # (large T) picks class 0.
  query = np.array([[1.0, 0.0]])
  far = [np.cos(0.5), np.sin(0.5)]
  bank = np.array([[1.0, 0.0], far, far, far])
  labels = np.array([1, 0, 0, 0])
  assert (
      evaluation.knn_predict(bank, labels, query, k=4, temperature=0.07)[0] == 1
  )
  assert (
      evaluation.knn_predict(bank, labels, query, k=4, temperature=100.0)[0]
      == 0
  )


def test_knn_tied_vote_goes_to_lower_class_and_leave_one_out():
  bank = np.array([[0.0, 1.0], [0.0, 1.0]])
  query = np.array([[1.0, 0.0]])
  assert evaluation.knn_predict(bank, np.array([3, 2]), query, k=2)[0] == 2
  # Leave-one-out: each duplicate sees only the other, of another class.
  assert evaluation.knn_classify(bank, np.array([0, 1]), k=5) == 0.0


def test_linear_probe_is_deterministic_and_learns():
  rng = np.random.default_rng(6)
  centres = rng.normal(size=(3, 10))
  train_y, test_y = rng.integers(0, 3, 90), rng.integers(0, 3, 30)
  train_x = centres[train_y] + 0.3 * rng.normal(size=(90, 10))
  test_x = centres[test_y] + 0.3 * rng.normal(size=(30, 10))
  kwargs = dict(num_classes=3, epochs=15, batch_size=16, learning_rate=0.05)
  first = evaluation.linear_probe(
      train_x, train_y, test_x, test_y, seed=1, **kwargs
  )
  assert first == evaluation.linear_probe(
      train_x, train_y, test_x, test_y, seed=1, **kwargs
  )
  assert first >= 0.9
  # Random labels carry no signal: the probe cannot beat chance by much.
  shuffled = rng.permutation(test_y)
  assert (
      evaluation.linear_probe(
          train_x, train_y, test_x, shuffled, seed=1, **kwargs
      )
      < 0.7
  )


# ---------------------------------------------------------------------------
# The report.
# ---------------------------------------------------------------------------


@pytest.mark.slow
def test_retrieval_report_keys_and_consistency():
  rng = np.random.default_rng(7)
  n = 24
  fine = np.arange(n) % 6
  coarse = fine // 3
  emb = rng.normal(size=(6, 8))[fine] + 0.8 * rng.normal(size=(n, 8))
  bank_fine = np.arange(36) % 6
  bank = rng.normal(size=(36, 8))
  report = evaluation.retrieval_report(
      emb,
      fine,
      coarse,
      coarse_names=("tops", "shoes"),
      bank_features=bank,
      bank_fine_labels=bank_fine,
      num_fine=6,
      ks=(1, 2, 5, 10, 50, 100),
      probe=dict(epochs=3),
  )
  ks = (1, 2, 5, 10)  # 50 and 100 exceed the 23 candidates of a query.
  expected = (
      [f"fine_recall@{k}" for k in ks]
      + [f"coarse_recall@{k}" for k in ks]
      + ["fine_map@r"]
      + [f"fine_precision@{k}" for k in ks]
      + [f"fine_within_coarse_recall@{k}" for k in ks]
      + [
          "fine_recall@1/coarse=tops",
          "fine_recall@1/coarse=shoes",
          "knn_fine_top1",
          "linear_probe_fine_top1",
      ]
  )
  assert list(report) == expected
  assert all(0.0 <= v <= 1.0 for v in report.values())
  recall = evaluation.recall_at_k(emb, fine, ks)
  precision = evaluation.precision_at_k(emb, fine, ks)
  within = evaluation.within_group_recall_at_k(emb, fine, coarse, ks)
  coarse_recall = evaluation.recall_at_k(emb, coarse, ks)
  for k in ks:
    assert report[f"fine_recall@{k}"] == recall[k]
    assert report[f"coarse_recall@{k}"] == coarse_recall[k]
    assert report[f"fine_precision@{k}"] == pytest.approx(precision[k])
    assert report[f"fine_within_coarse_recall@{k}"] == within[k]
  assert report["fine_map@r"] == pytest.approx(evaluation.map_at_r(emb, fine))
  groups = evaluation.per_group_recall_at_1(emb, fine, coarse)
  assert report["fine_recall@1/coarse=tops"] == groups[0]
  assert report["fine_recall@1/coarse=shoes"] == groups[1]
  assert report["knn_fine_top1"] == evaluation.knn_classify(
      bank, bank_fine, emb, fine, num_classes=6
  )
  assert report["linear_probe_fine_top1"] == evaluation.linear_probe(
      bank,
      bank_fine,
      emb,
      fine,
      num_classes=6,
      **{**evaluation.PROBE_DEFAULTS, "epochs": 3},
  )


def test_retrieval_report_without_bank_is_leave_one_out():
  labels = np.array([0, 0, 1, 1])
  emb = np.array([[1.0, 0.0], [0.9, 0.1], [0.0, 1.0], [0.1, 0.9]])
  report = evaluation.retrieval_report(
      emb, labels, labels, probe=dict(epochs=2)
  )
  assert report["knn_fine_top1"] == 1.0
  assert "fine_recall@1/coarse=0" in report
  assert "fine_recall@2" in report and "fine_recall@5" not in report


# ---------------------------------------------------------------------------
# soft_target_diagnostics
# ---------------------------------------------------------------------------


def _unit_rows(rng, n, d):
  x = rng.normal(size=(n, d))
  return x / np.linalg.norm(x, axis=1, keepdims=True)


def test_soft_target_diagnostics_against_maskcon_targets():
  """The neighbour distribution is MaskCon's target (the golden-tested
  `losses.maskcon_targets`) without its positive column, renormalised."""
  import jax.numpy as jnp
  from maskcon_jax import losses

  rng = np.random.default_rng(0)
  keys, queue = _unit_rows(rng, 40, 8), _unit_rows(rng, 64, 8)
  fine, queue_fine = rng.integers(0, 6, 40), rng.integers(0, 6, 64)
  coarse, queue_coarse = fine // 3, queue_fine // 3
  t = 0.1
  got = evaluation.soft_target_diagnostics(
      keys, fine, coarse, queue, queue_fine, queue_coarse, t=t
  )
  z = np.asarray(
      losses.maskcon_targets(
          jnp.asarray(keys, jnp.float32),
          jnp.asarray(queue, jnp.float32),
          jnp.asarray(queue_coarse),
          jnp.asarray(coarse),
          t=t,
          w=1.0,
      ),
      np.float64,
  )[:, 1:]
  p = z / z.sum(axis=1, keepdims=True)
  same = fine[:, None] == queue_fine[None, :]
  mask = coarse[:, None] == queue_coarse[None, :]
  np.testing.assert_allclose(
      got["target_fine_share"], np.mean(np.sum(p * same, axis=1)), rtol=1e-5
  )
  np.testing.assert_allclose(
      got["target_entropy"],
      np.mean(
          -np.sum(np.where(p > 0, p * np.log(np.where(p > 0, p, 1)), 0), axis=1)
      ),
      rtol=1e-5,
  )
  np.testing.assert_allclose(
      got["target_fine_share_uniform"],
      np.mean((mask & same).sum(1) / mask.sum(1)),
  )
  np.testing.assert_allclose(
      got["target_entropy_uniform"], np.mean(np.log(mask.sum(1)))
  )


def test_soft_target_diagnostics_by_hand():
  """One key, two same-coarse entries at cosines 1 and 0, t = 1: weights
  e^0 and e^-1; the nearer one has the key's fine class."""
  keys = np.array([[1.0, 0.0]])
  queue = np.array([[1.0, 0.0], [0.0, 1.0], [1.0, 0.0]])
  got = evaluation.soft_target_diagnostics(
      keys,
      np.array([5]),
      np.array([0]),
      queue,
      np.array([5, 6, 5]),
      np.array([0, 0, 1]),
      t=1.0,
  )
  p_near = 1 / (1 + np.exp(-1))
  assert got["target_fine_share"] == pytest.approx(p_near)
  assert got["target_fine_share_uniform"] == pytest.approx(0.5)
  entropy = -(p_near * np.log(p_near) + (1 - p_near) * np.log(1 - p_near))
  assert got["target_entropy"] == pytest.approx(entropy)
  assert got["target_entropy_uniform"] == pytest.approx(np.log(2))
  # No same-coarse queue entry: nothing to report.
  empty = evaluation.soft_target_diagnostics(
      keys,
      np.array([5]),
      np.array([3]),
      queue,
      np.array([5, 6, 5]),
      np.array([0, 0, 1]),
      t=1.0,
  )
  assert np.isnan(empty["target_fine_share"])
