"""WCL, SelfCon and saliency masking: losses, weak labels, masks and models.

The NumPy references are written from the papers' formulas, term by term,
and never call the JAX code; scipy's connected components is the reference
for the weak labels.
"""

import functools
import importlib

import hypothesis
from hypothesis import strategies as st
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest
from scipy.sparse import csr_matrix
from scipy.sparse.csgraph import connected_components

from maskcon_jax import configuration
from maskcon_jax import filters
from maskcon_jax import losses
from maskcon_jax import methods
from maskcon_jax import models
from maskcon_jax.methods import saliency as saliency_lib
from maskcon_jax.errors import ConfigError

SETTINGS = hypothesis.settings(
    max_examples=12,
    deadline=None,
    suppress_health_check=list(hypothesis.HealthCheck),
)


def _unit_rows(rng, n, d):
  x = rng.normal(size=(n, d))
  return (x / np.linalg.norm(x, axis=-1, keepdims=True)).astype(np.float32)


# ---------------------------------------------------------------------------
# NumPy references, from the formulas.
# ---------------------------------------------------------------------------


def np_nt_xent(z1, z2, tau):
  """SimCLR: -log exp(s_ip / tau) / sum_{a != i} exp(s_ia / tau), mean 2N."""
  z = np.concatenate([z1, z2]).astype(np.float64)
  n2 = len(z)
  total = 0.0
  for i in range(n2):
    partner = (i + n2 // 2) % n2
    denom = sum(np.exp(z[i] @ z[a] / tau) for a in range(n2) if a != i)
    total += -np.log(np.exp(z[i] @ z[partner] / tau) / denom)
  return total / n2


def np_supcon(z, positives, tau, tau_b=None):
  """SupCon: mean over anchors with positives of
  -(tau / tau_b) / |P_i| sum_p log exp(s_ip / tau) / sum_{a != i} exp(s_ia / tau).
  """
  z = np.asarray(z, np.float64)
  scale = 1.0 if tau_b is None else tau / tau_b
  per_anchor = []
  for i in range(len(z)):
    pos = [p for p in range(len(z)) if p != i and positives[i, p]]
    if not pos:
      continue
    denom = sum(np.exp(z[i] @ z[a] / tau) for a in range(len(z)) if a != i)
    logs = [np.log(np.exp(z[i] @ z[p] / tau) / denom) for p in pos]
    per_anchor.append(-scale * np.mean(logs))
  return float(np.mean(per_anchor))


def np_components(adjacency):
  """scipy's undirected connected components as a same-component matrix."""
  _, labels = connected_components(
      csr_matrix(np.asarray(adjacency, float)), directed=False
  )
  return labels


def np_nn_adjacency(z, allowed=None):
  """Edges (i, argmax_{j != i, allowed} z_i.z_j), as the WCL code builds."""
  z = np.asarray(z, np.float64)
  n = len(z)
  sim = z @ z.T
  ok = ~np.eye(n, dtype=bool)
  if allowed is not None:
    ok &= allowed
  adjacency = np.zeros((n, n), bool)
  for i in range(n):
    if ok[i].any():
      adjacency[i, np.flatnonzero(ok[i])[np.argmax(sim[i, ok[i]])]] = True
  return adjacency


def np_hard_negative_logits(q, k, queue, t, t0, alpha):
  rows = []
  for i in range(len(q)):
    row = [q[i] @ k[i]] + [q[i] @ e for e in queue]
    row += [alpha * (q[i] @ t[i, m]) for m in range(t.shape[1])]
    rows.append(np.asarray(row) / t0)
  return np.asarray(rows)


def _same(labels):
  labels = np.asarray(labels)
  return labels[:, None] == labels[None, :]


# ---------------------------------------------------------------------------
# Losses.
# ---------------------------------------------------------------------------


@pytest.mark.parametrize("seed", range(3))
def test_nt_xent_matches_formula(seed):
  rng = np.random.default_rng(seed)
  z1, z2 = _unit_rows(rng, 6, 8), _unit_rows(rng, 6, 8)
  got = losses.nt_xent_loss(z1, z2, temperature=0.1)
  np.testing.assert_allclose(float(got), np_nt_xent(z1, z2, 0.1), rtol=1e-5)


@pytest.mark.parametrize("tau_b", [None, 0.07])
@pytest.mark.parametrize("seed", range(2))
def test_supcon_matches_formula(seed, tau_b):
  rng = np.random.default_rng(seed)
  z = _unit_rows(rng, 10, 8)
  labels = rng.integers(0, 3, 10)
  got = losses.supcon_loss(
      z,
      losses.label_positives(jnp.asarray(labels)),
      temperature=0.1,
      base_temperature=tau_b,
  )
  np.testing.assert_allclose(
      float(got), np_supcon(z, _same(labels), 0.1, tau_b), rtol=1e-5
  )


def test_supcon_temperature_ratio_scales_the_loss():
  rng = np.random.default_rng(3)
  z = _unit_rows(rng, 8, 4)
  pos = losses.label_positives(jnp.asarray(rng.integers(0, 2, 8)))
  plain = losses.supcon_loss(z, pos, temperature=0.1)
  scaled = losses.supcon_loss(z, pos, temperature=0.1, base_temperature=0.07)
  np.testing.assert_allclose(
      float(scaled), float(plain) * 0.1 / 0.07, rtol=1e-6
  )


@pytest.mark.slow
def test_supcon_drops_anchors_without_positives_and_has_finite_grads():
  rng = np.random.default_rng(4)
  z = _unit_rows(rng, 7, 5)
  labels = np.array([0, 0, 1, 1, 1, 2, 3])  # 2 and 3 have no positive.
  pos = losses.label_positives(jnp.asarray(labels))
  got = losses.supcon_loss(z, pos, temperature=0.2)
  np.testing.assert_allclose(
      float(got), np_supcon(z, _same(labels), 0.2), rtol=1e-5
  )
  grad = jax.grad(
      lambda x: losses.supcon_loss(losses.l2_normalize(x), pos, temperature=0.2)
  )(jnp.asarray(z))
  assert np.all(np.isfinite(np.asarray(grad)))
  assert np.any(np.asarray(grad) != 0)


@SETTINGS
@hypothesis.given(
    seed=st.integers(0, 2**31 - 1), tau=st.sampled_from([0.05, 0.1, 0.5])
)
def test_supcon_with_distinct_labels_over_two_views_is_nt_xent(seed, tau):
  rng = np.random.default_rng(seed)
  z1, z2 = _unit_rows(rng, 5, 6), _unit_rows(rng, 5, 6)
  ids = jnp.tile(jnp.arange(5), 2)
  supcon = losses.supcon_loss(
      jnp.concatenate([z1, z2]), losses.label_positives(ids), temperature=tau
  )
  np.testing.assert_allclose(
      float(supcon),
      float(losses.nt_xent_loss(z1, z2, temperature=tau)),
      rtol=1e-5,
  )


@pytest.mark.parametrize("seed", range(2))
def test_wcl_graph_loss_uses_the_other_views_labels(seed):
  rng = np.random.default_rng(seed)
  g1, g2 = _unit_rows(rng, 9, 6), _unit_rows(rng, 9, 6)
  lab1 = rng.integers(0, 3, 9)
  lab2 = rng.integers(0, 3, 9)
  got = losses.wcl_graph_loss(
      g1,
      g2,
      jnp.asarray(_same(lab1)),
      jnp.asarray(_same(lab2)),
      temperature=0.1,
  )
  swapped = 0.5 * (
      np_supcon(g1, _same(lab2), 0.1) + np_supcon(g2, _same(lab1), 0.1)
  )
  unswapped = 0.5 * (
      np_supcon(g1, _same(lab1), 0.1) + np_supcon(g2, _same(lab2), 0.1)
  )
  np.testing.assert_allclose(float(got), swapped, rtol=1e-5)
  assert abs(swapped - unswapped) > 1e-3


def test_wcl_graph_loss_on_its_own_weak_labels():
  """End to end from embeddings: 1-NN components of each view, swapped."""
  rng = np.random.default_rng(7)
  g1, g2 = _unit_rows(rng, 12, 4), _unit_rows(rng, 12, 4)
  comp1 = np_components(np_nn_adjacency(g1))
  comp2 = np_components(np_nn_adjacency(g2))
  want = 0.5 * (
      np_supcon(g1, _same(comp2), 0.1) + np_supcon(g2, _same(comp1), 0.1)
  )
  same1 = losses.label_positives(losses.nn_component_labels(jnp.asarray(g1)))
  same2 = losses.label_positives(losses.nn_component_labels(jnp.asarray(g2)))
  got = losses.wcl_graph_loss(g1, g2, same1, same2, temperature=0.1)
  np.testing.assert_allclose(float(got), want, rtol=1e-5)


@pytest.mark.parametrize("seed", range(2))
def test_hard_negative_logits_and_loss_match_formula(seed):
  rng = np.random.default_rng(seed)
  q, k = _unit_rows(rng, 4, 8), _unit_rows(rng, 4, 8)
  queue = _unit_rows(rng, 10, 8)
  t = _unit_rows(rng, 8, 8).reshape(4, 2, 8)
  want = np_hard_negative_logits(q, k, queue, t, 0.2, 2.0)
  got = losses.hard_negative_logits(q, k, queue, t, t0=0.2, alpha=2.0)
  assert got.shape == (4, 1 + 10 + 2)
  np.testing.assert_allclose(np.asarray(got), want, rtol=1e-5, atol=1e-5)
  want_loss = np.mean([-(row[0] - np.log(np.exp(row).sum())) for row in want])
  got_loss = losses.hard_negative_moco_loss(q, k, queue, t, t0=0.2, alpha=2.0)
  np.testing.assert_allclose(float(got_loss), want_loss, rtol=1e-5)
  # Keys, queue and hard negatives are constants.
  grads = jax.grad(
      lambda kk, tt: losses.hard_negative_moco_loss(
          q, kk, queue, tt, t0=0.2, alpha=2.0
      ),
      argnums=(0, 1),
  )(jnp.asarray(k), jnp.asarray(t))
  for g in grads:
    np.testing.assert_array_equal(np.asarray(g), 0.0)


# ---------------------------------------------------------------------------
# Weak labels: connected components.
# ---------------------------------------------------------------------------


def _edges_to_adjacency(n, edges):
  adjacency = np.zeros((n, n), bool)
  for i, j in edges:
    adjacency[i, j] = True
  return adjacency


def _assert_components_match(adjacency):
  labels = np.asarray(losses.connected_component_labels(jnp.asarray(adjacency)))
  reference = np_components(adjacency)
  np.testing.assert_array_equal(_same(labels), _same(reference))
  # The label is the smallest node index of the component.
  for i in range(len(labels)):
    assert labels[i] == np.flatnonzero(reference == reference[i]).min()


@pytest.mark.parametrize(
    "name,n,edges",
    [
        # Directed one way, as a 1-NN graph: i -> i + 1, longer than log2(n).
        ("chain", 16, [(i, i + 1) for i in range(15)]),
        ("reversed_chain", 16, [(i + 1, i) for i in range(15)]),
        ("star", 9, [(i, 0) for i in range(1, 9)]),
        ("disjoint_pairs", 10, [(2 * i, 2 * i + 1) for i in range(5)]),
        ("isolated_nodes", 5, []),
        ("two_chains_interleaved", 12, [(i, i + 2) for i in range(10)]),
    ],
)
def test_connected_components_on_hand_built_graphs(name, n, edges):
  del name
  _assert_components_match(_edges_to_adjacency(n, edges))


@SETTINGS
@hypothesis.given(
    edges=st.lists(
        st.tuples(st.integers(0, 11), st.integers(0, 11)), max_size=14
    )
)
def test_connected_components_match_scipy_on_random_graphs(edges):
  _assert_components_match(_edges_to_adjacency(12, edges))


@pytest.mark.parametrize("seed", range(3))
def test_nn_components_match_scipy(seed):
  rng = np.random.default_rng(seed)
  z = _unit_rows(rng, 24, 3)
  labels = losses.nn_component_labels(jnp.asarray(z))
  reference = np_components(np_nn_adjacency(z))
  np.testing.assert_array_equal(_same(np.asarray(labels)), _same(reference))
  # Every component of a 1-NN graph has at least two nodes.
  assert np.all(np.bincount(reference) >= 2)


def test_nn_components_restricted_to_same_coarse_class():
  rng = np.random.default_rng(11)
  z = _unit_rows(rng, 15, 3)
  coarse = np.array([0] * 7 + [1] * 7 + [2])  # Sample 14 is alone.
  allowed = _same(coarse)
  labels = np.asarray(
      losses.nn_component_labels(jnp.asarray(z), jnp.asarray(allowed))
  )
  reference = np_components(np_nn_adjacency(z, allowed))
  np.testing.assert_array_equal(_same(labels), _same(reference))
  # Components never cross coarse classes; the lone sample is a singleton.
  assert np.all(_same(coarse)[_same(labels)])
  assert np.sum(labels == labels[14]) == 1
  # Unrestricted, some neighbour crosses the classes on this draw.
  free = np.asarray(losses.nn_component_labels(jnp.asarray(z)))
  assert not np.all(_same(coarse)[_same(free)])


def test_components_run_under_jit():
  adjacency = jnp.asarray(
      _edges_to_adjacency(16, [(i, i + 1) for i in range(15)])
  )
  labels = jax.jit(losses.connected_component_labels)(adjacency)
  np.testing.assert_array_equal(np.asarray(labels), 0)


# ---------------------------------------------------------------------------
# Saliency masks.
# ---------------------------------------------------------------------------


def np_foreground(saliency):
  """The official get_FG_idx: >= mean, or below it by at most 0.6 std."""
  mean, std = saliency.mean(), saliency.std()
  return (saliency >= mean) | (
      (saliency < mean) & (np.abs(saliency - mean) <= 0.6 * std)
  )


@pytest.mark.parametrize("seed", range(3))
def test_foreground_rule_matches_official(seed):
  saliency = np.random.default_rng(seed).gamma(2.0, size=(7, 7))
  got = saliency_lib.foreground_patches(jnp.asarray(saliency, jnp.float32))
  np.testing.assert_array_equal(
      np.asarray(got), np_foreground(saliency.astype(np.float32))
  )


def np_official_foreground(mask):
  """The official localize.py, line by line: get_FG_idx on np.sort(mask)
  (rows sorted) at the flattened argsort's (i, j) positions."""
  size = mask.shape[0]
  index = np.dstack(np.unravel_index(np.argsort(-mask.ravel()), (size, size)))[
      0
  ]
  sorted_mask = np.sort(mask)
  mean, std = sorted_mask.mean(), np.std(sorted_mask)
  fg = np.zeros(mask.shape, bool)
  for i, j in index:
    if sorted_mask[i, j] >= mean:
      fg[i, j] = True
    elif sorted_mask[i, j] < mean and abs(sorted_mask[i, j] - mean) <= (
        0.6 * std
    ):
      fg[i, j] = True
  return fg


@pytest.mark.parametrize("seed", range(3))
def test_official_foreground_rule_matches_localize_py(seed):
  saliency = (
      np.random.default_rng(seed).gamma(2.0, size=(7, 7)).astype(np.float32)
  )
  got = np.asarray(
      saliency_lib.foreground_patches(jnp.asarray(saliency), rule="official")
  )
  np.testing.assert_array_equal(got, np_official_foreground(saliency))
  # It is a different rule: positions follow the columns, not the saliency.
  assert not np.array_equal(got, np_foreground(saliency))
  assert got.sum() == np_foreground(saliency).sum()


def test_saliency_grid_map_sums_channels_and_resizes():
  fmap = jnp.arange(4 * 4 * 3, dtype=jnp.float32).reshape(4, 4, 3)
  np.testing.assert_allclose(
      np.asarray(saliency_lib.saliency_grid_map(fmap, 4)),
      np.asarray(fmap).sum(-1),
  )
  assert saliency_lib.saliency_grid_map(fmap, 7).shape == (7, 7)


def _counts(mask, fg):
  mask, fg = np.asarray(mask), np.asarray(fg)
  return int(np.sum(mask & fg)), int(np.sum(mask & ~fg))


@pytest.mark.slow
@pytest.mark.parametrize("grid", [4, 7])
@pytest.mark.parametrize("seed", range(4))
def test_query_mask_hides_balanced_fg_and_bg_counts(grid, seed):
  rng = np.random.default_rng(seed)
  fg = rng.random((grid, grid)) < rng.uniform(0.3, 0.8)
  uniforms = rng.random(1 + grid * grid).astype(np.float32)
  mask = saliency_lib.sample_patch_mask(
      jnp.asarray(uniforms), jnp.asarray(fg), (0.05, 0.25), background=True
  )
  ratio = np.float32(0.05) + np.float32(0.2) * uniforms[0]
  patches, num_fg = grid * grid, int(fg.sum())
  want_fg = min(int(np.round(ratio * num_fg / patches * patches)), num_fg)
  want_bg = int(
      np.clip(int(np.floor(patches * ratio)) - want_fg, 0, patches - num_fg)
  )
  assert _counts(mask, fg) == (want_fg, want_bg)


@pytest.mark.parametrize("cap", [None, 0.55])
@pytest.mark.parametrize("seed", range(4))
def test_negative_mask_hides_only_foreground(seed, cap):
  rng = np.random.default_rng(seed)
  fg = rng.random((7, 7)) < 0.9
  uniforms = rng.random(50).astype(np.float32)
  mask = saliency_lib.sample_patch_mask(
      jnp.asarray(uniforms),
      jnp.asarray(fg),
      (0.4, 0.7),
      background=False,
      fg_cap=cap,
  )
  ratio = np.float32(0.4) + np.float32(0.3) * uniforms[0]
  share = ratio * fg.sum() / 49
  if cap is not None:
    share = min(share, cap)
  assert _counts(mask, fg) == (int(np.round(share * 49)), 0)


def test_mask_counts_never_exceed_what_exists():
  fg = jnp.ones((4, 4), bool)
  num_fg, num_bg = saliency_lib.patch_mask_counts(
      fg, jnp.float32(0.99), background=True
  )
  assert int(num_fg) == 16 and int(num_bg) == 0


@pytest.mark.parametrize("size,grid", [(28, 4), (28, 7), (32, 4), (30, 4)])
def test_patch_mask_to_pixels(size, grid):
  mask = np.random.default_rng(0).random((grid, grid)) < 0.5
  pixels = np.asarray(
      saliency_lib.patch_mask_to_pixels(jnp.asarray(mask), size, size)
  )
  ys = np.arange(size) * grid // size
  np.testing.assert_array_equal(pixels, mask[ys][:, ys])
  if size % grid == 0:
    assert pixels.sum() == mask.sum() * (size // grid) ** 2


@pytest.mark.slow
@pytest.mark.parametrize("strategy", ["mean", "blur", "hp"])
def test_masked_views_fill_hidden_patches(strategy):
  rng = np.random.default_rng(1)
  views = jnp.asarray(rng.normal(size=(3, 28, 28, 3)), jnp.float32)
  saliency = jnp.asarray(rng.random((3, 4, 4)), jnp.float32)
  masked, pixels = saliency_lib.saliency_masked_views(
      jax.random.key(0),
      views,
      saliency,
      strategy=strategy,
      ratio_range=(0.4, 0.7),
      background=False,
      noise_std=0.14,
      fg_std=0.6,
      blur=(1.25, 5),
  )
  masked, pixels, views = map(np.asarray, (masked, pixels, views))
  assert pixels.any() and not pixels.all()
  np.testing.assert_array_equal(masked[~pixels], views[~pixels])
  if strategy == "mean":
    for b in range(3):
      np.testing.assert_allclose(
          masked[b][pixels[b]],
          np.broadcast_to(views[b].mean((0, 1)), masked[b][pixels[b]].shape),
          rtol=1e-5,
          atol=1e-6,
      )
  elif strategy == "blur":
    blurred = np.asarray(
        jax.vmap(lambda x: filters.gaussian_blur(x, 1.25, 5))(
            jnp.asarray(views)
        )
    )
    np.testing.assert_allclose(
        masked[pixels], blurred[pixels], rtol=1e-5, atol=1e-6
    )
  else:
    assert abs(np.std(masked[pixels]) - 0.14) < 0.03


# ---------------------------------------------------------------------------
# Models.
# ---------------------------------------------------------------------------


def _model_config(**overrides):
  base = dict(
      arch="resnet18",
      width=4,
      image_size=16,
      embed_dim=8,
      proj_hidden_dim=16,
      precision="float32",
  )
  base.update(overrides)
  return ml_collections.ConfigDict(base)


def _init(model, x):
  return model.init(jax.random.key(0), x, train=False)


def test_queue_modes_keep_the_plain_encoder():
  x = jnp.ones((2, 16, 16, 3))
  plain_model = methods.build_encoder(_model_config(), 3)
  plain = jax.eval_shape(functools.partial(_init, plain_model), x)
  assert set(plain["params"]) == {"backbone", "projector", "classifier"}
  for mode in ("maskcon", "grafit", "coins", "moco"):
    model = methods.build_encoder(_model_config(mode=mode), 3)
    assert type(model) is models.Encoder
    assert (
        model.head,
        model.second_head,
        model.return_feature_map,
        model.input_highpass,
    ) == ("mlp", False, False, None)
    same = jax.eval_shape(functools.partial(_init, model), x)
    assert jax.tree.structure(same) == jax.tree.structure(plain)
    assert jax.tree.map(lambda a: a.shape, same) == jax.tree.map(
        lambda a: a.shape, plain
    )


@pytest.mark.slow
def test_wcl_encoder_has_two_bn_heads():
  model = methods.build_encoder(_model_config(mode="wcl"), 3)
  x = jnp.ones((4, 16, 16, 3))
  variables = _init(model, x)
  for head in ("projector", "projector2"):
    assert set(variables["params"][head]) == {"fc1", "bn1", "fc2", "bn2", "fc3"}
    assert variables["params"][head]["fc1"]["kernel"].shape == (32, 16)
    assert set(variables["batch_stats"][head]) == {"bn1", "bn2"}
  out, _ = model.apply(variables, x, train=True, mutable=["batch_stats"])
  assert out["projection"].shape == out["projection2"].shape == (4, 8)


@pytest.mark.slow
@pytest.mark.parametrize("size", ["fc", "small", "same"])
@pytest.mark.parametrize("position", [1, 2, 3])
def test_selfcon_exits(position, size):
  model = methods.build_encoder(
      _model_config(mode="selfcon", selfcon=dict(position=position, size=size)),
      3,
  )
  x = jnp.ones((2, 16, 16, 3))
  variables = jax.eval_shape(functools.partial(_init, model), x)
  out = jax.eval_shape(lambda v: model.apply(v, x, train=False), variables)
  assert out["features"].shape == (2, 32)
  assert out["exit_features"].shape == (2, 1, 32)
  assert out["exit_projections"].shape == (2, 1, 8)
  params = variables["params"]
  assert params[f"exit{position}_projector"]["fc1"]["kernel"].shape == (32, 32)
  assert params["projector"]["fc1"]["kernel"].shape == (32, 32)
  if size == "fc":
    assert params[f"exit{position}_fc"]["kernel"].shape == (
        4 * 2 ** (position - 1),
        32,
    )
  else:
    blocks = {k for k in params[f"exit{position}_net"]}
    stages = range(position + 1, 5)
    per_stage = 2 if size == "same" else 1
    assert blocks == {f"layer{s}_{b}" for s in stages for b in range(per_stage)}


@pytest.mark.slow
def test_selfcon_ensemble_features():
  x = jax.random.normal(jax.random.key(1), (3, 16, 16, 3))
  plain = methods.build_encoder(_model_config(mode="selfcon"), 3)
  ensemble = methods.build_encoder(
      _model_config(mode="selfcon", selfcon=dict(eval_exit_ensemble=True)), 3
  )
  variables = _init(plain, x)
  out = plain.apply(variables, x, train=False)
  ens = ensemble.apply(variables, x, train=False)  # Same parameters.
  np.testing.assert_array_equal(
      np.asarray(out["features"]), np.asarray(ens["backbone_features"])
  )
  feats = np.asarray(ens["features"])
  assert feats.shape == (3, 64)
  np.testing.assert_allclose(
      np.linalg.norm(feats[:, :32], axis=-1), 1.0, rtol=1e-5
  )
  exit_feats = np.asarray(out["exit_features"][:, 0])
  np.testing.assert_allclose(
      feats[:, 32:],
      exit_feats / np.linalg.norm(exit_feats, axis=-1, keepdims=True),
      rtol=1e-5,
  )


@pytest.mark.slow
def test_saliency_encoder_returns_feature_map_and_highpasses():
  config = _model_config(mode="saliency", saliency=dict(strategy="hp"))
  model = methods.build_encoder(config, 3)
  assert model.input_highpass == saliency_lib.highpass_filter(
      methods.get("saliency").options(config), config.image_size
  )
  x = jax.random.normal(jax.random.key(2), (2, 16, 16, 3))
  variables = _init(model, x)
  out = model.apply(variables, x, train=False)
  assert out["feature_map"].shape == (2, 2, 2, 32)
  # A per-channel constant has no high frequencies: the encoder ignores it.
  shifted = model.apply(
      variables, x + jnp.asarray([0.5, -1.0, 2.0]), train=False
  )
  np.testing.assert_allclose(
      np.asarray(shifted["features"]),
      np.asarray(out["features"]),
      rtol=1e-4,
      atol=1e-5,
  )
  mean_model = methods.build_encoder(
      _model_config(mode="saliency", saliency=dict(strategy="mean")), 3
  )
  assert mean_model.input_highpass is None


def test_filters_scale_from_224_px():
  defaults = methods.get("saliency").options(_model_config())
  assert saliency_lib.highpass_filter(defaults, 224) == (5.0, 11)
  assert saliency_lib.blur_filter(defaults, 224) == (10.0, 31)
  assert saliency_lib.highpass_filter(defaults, 28) == (0.625, 3)
  assert saliency_lib.blur_filter(defaults, 28) == (1.25, 5)


@pytest.mark.parametrize(
    "override,message",
    [
        (
            dict(mode="selfcon", selfcon=dict(position=4)),
            "config.selfcon.position=4",
        ),
        (
            dict(mode="selfcon", selfcon=dict(size="large")),
            "config.selfcon.size='large' is not supported",
        ),
        (
            dict(mode="saliency", saliency=dict(strategy="noise")),
            "config.saliency.strategy='noise' is not supported",
        ),
        (
            dict(mode="saliency", saliency=dict(fg_rule="sorted")),
            "config.saliency.fg_rule='sorted' is not supported",
        ),
        (
            dict(mode="saliency", saliency=dict(num_hard_negatives=-1)),
            "config.saliency.num_hard_negatives=-1 must be an integer >= 0",
        ),
        (
            dict(mode="saliency", saliency=dict(query_ratio=(0.5, 0.2))),
            "config.saliency.query_ratio=(0.5, 0.2) must be a pair",
        ),
        (
            dict(mode="wcl", wcl=dict(same_coarse_nn=1)),
            "config.wcl.same_coarse_nn=1 must be True or False",
        ),
        # One rule for numbers everywhere: NaN is not one.
        (
            dict(mode="wcl", wcl=dict(graph_weight=float("nan"))),
            "config.wcl.graph_weight=nan must be a number >= 0",
        ),
        (
            dict(mode="saliency", saliency=dict(hp_sigma=float("inf"))),
            "config.saliency.hp_sigma=inf must be a number > 0",
        ),
        (
            dict(mode="wcl", wcl=dict(graph_wieght=2.0)),
            "config.wcl.graph_wieght is not a field of the wcl block",
        ),
        (dict(mode="wcl", wcl=2.0), "config.wcl=2.0 must be a block of fields"),
    ],
)
def test_bad_method_fields_stop_with_one_line(override, message):
  with pytest.raises(ConfigError, match=None) as err:
    methods.build_encoder(_model_config(**override), 3)
  assert message in str(err.value) and "\n" not in str(err.value)


@pytest.mark.parametrize(
    "name,mode",
    [("wcl", "wcl"), ("selfcon", "selfcon"), ("saliency", "saliency")],
)
def test_method_configs(name, mode):
  config = importlib.import_module(f"configs.{name}").get_config()
  assert config.mode == mode and config.dataset == "fashion_mnist"
  configuration.validate_config(config)
  assert mode in methods.MODES
  # Every field of the mode's block is spelled out in its config, with the
  # method's default.
  method = methods.get(mode)
  assert set(config[mode].keys()) == set(method.config_block().keys())
  assert method.options(config) == method.options({})


@pytest.mark.slow
def test_saliency_step_without_hard_negatives_is_moco_on_the_masked_query():
  """num_hard_negatives=0 (an ablation): the loss is MoCo's InfoNCE on the
  masked query, and the step trains and reports no hard-negative metrics."""
  rng = np.random.default_rng(0)
  q, k = (jnp.asarray(rng.normal(size=(4, 8)), jnp.float32) for _ in range(2))
  q, k = losses.l2_normalize(q), losses.l2_normalize(k)
  queue = losses.l2_normalize(
      jnp.asarray(rng.normal(size=(16, 8)), jnp.float32)
  )
  none = jnp.zeros((4, 0, 8), jnp.float32)
  np.testing.assert_allclose(
      losses.hard_negative_moco_loss(q, k, queue, none, t0=0.2, alpha=2.0),
      losses.moco_loss(q, k, queue, t0=0.2),
      rtol=1e-6,
  )

  from configs import tiny
  from maskcon_jax import trainer

  config = tiny.get_config()
  config.mode = "saliency"
  config.saliency = dict(num_hard_negatives=0)
  config.strong_policy = "weak"
  exp = trainer.build_experiment(config)
  step = jax.jit(
      methods.step_for_config(
          config, mean=exp.dataset.mean, std=exp.dataset.std, mesh=exp.mesh
      )
  )
  batch = {
      "image": jnp.asarray(exp.dataset.train_images[:16]),
      "coarse_label": jnp.asarray(exp.dataset.train_coarse[:16]),
  }
  state, metrics = step(exp.state, batch)
  assert int(state.step) == 1 and np.isfinite(float(metrics["loss"]))
  assert "hard_negative_similarity" not in metrics
