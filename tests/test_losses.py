"""Loss tests: golden vectors from the official PyTorch code, and a NumPy
reference written from the paper's equations for what the goldens don't cover.
"""

import glob
import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from maskcon_jax import losses
from tests.conftest import GOLDEN_DIR

GOLDEN_FILES = sorted(glob.glob(os.path.join(GOLDEN_DIR, "*.npz")))


def _np_normalize(x):
  return x / np.maximum(np.linalg.norm(x, axis=-1, keepdims=True), 1e-12)


def _np_log_softmax(x):
  x = x - x.max(-1, keepdims=True)
  return x - np.log(np.exp(x).sum(-1, keepdims=True))


def np_maskcon_loss(q, k, queue, queue_labels, labels, t0, t, w):
  """MaskCon as the paper / official code writes it, step by step (§1.2),
  with the no-same-coarse guard (fall back to the self target)."""
  q, k, queue = (np.asarray(a, np.float64) for a in (q, k, queue))
  mask = (labels[:, None] == queue_labels[None, :]).astype(np.float64)
  s = (k @ queue.T) / t
  s = s * mask
  s = s - s.max(-1, keepdims=True)
  p = np.exp(s) * mask
  denom = p.sum(-1, keepdims=True)
  has = denom[:, 0] > 0
  p = np.where(has[:, None], p / np.where(has[:, None], denom, 1.0), 0.0)
  pmax = p.max(-1, keepdims=True)
  r = np.where(has[:, None], p / np.where(pmax > 0, pmax, 1.0), 0.0)
  z = np.concatenate([np.ones((len(q), 1)), r], -1)
  z = z / z.sum(-1, keepdims=True)
  e0 = np.zeros_like(z)
  e0[:, 0] = 1
  y = w * z + (1 - w) * e0
  logits = (
      np.concatenate([(q * k).sum(-1, keepdims=True), q @ queue.T], -1) / t0
  )
  return float(-(y * _np_log_softmax(logits)).sum(-1).mean())


def np_moco_loss(q, k, queue, t0):
  logits = (
      np.concatenate([(q * k).sum(-1, keepdims=True), q @ queue.T], -1) / t0
  )
  return float(-_np_log_softmax(np.asarray(logits, np.float64))[:, 0].mean())


def _golden(path):
  g = dict(np.load(path))
  for key in ("t0", "t", "w"):
    g[key] = float(g[key])
  return g


def _loss_fns(g):
  """Each mode's loss as a function of (q_raw, cls), normalising inside."""
  k = losses.l2_normalize(jnp.asarray(g["k_raw"]))
  queue = jnp.asarray(g["queue"])
  qlab = jnp.asarray(g["queue_labels"], jnp.int32)
  lab = jnp.asarray(g["labels"], jnp.int32)
  norm = losses.l2_normalize
  return {
      "maskcon": lambda q, c: losses.maskcon_loss(
          norm(q), k, queue, qlab, lab, t0=g["t0"], t=g["t"], w=g["w"]
      ),
      "grafit": lambda q, c: losses.grafit_loss(
          norm(q), k, queue, qlab, lab, t0=g["t0"], w=g["w"]
      ),
      "coins": lambda q, c: losses.coins_loss(
          norm(q), k, c, queue, lab, t0=g["t0"], w=g["w"]
      ),
  }


def _assert_grad_close(got, want):
  """Max abs error relative to the max abs reference gradient (README.md)."""
  got = np.asarray(got)
  scale = np.max(np.abs(want))
  if scale == 0:  # e.g. coins with w = 1: no gradient reaches the query.
    np.testing.assert_allclose(got, 0.0, atol=1e-7)
    return
  err = np.max(np.abs(got - want)) / scale
  assert err <= 1e-4, err


def test_golden_files_present():
  assert len(GOLDEN_FILES) >= 4, f"golden vectors missing under {GOLDEN_DIR}"


@pytest.mark.parametrize("path", GOLDEN_FILES, ids=os.path.basename)
@pytest.mark.parametrize("mode", ["maskcon", "grafit", "coins"])
def test_matches_official_golden(path, mode):
  g = _golden(path)
  fn = _loss_fns(g)[mode]
  q_raw, cls = jnp.asarray(g["q_raw"]), jnp.asarray(g["cls"])
  loss, (grad_q, grad_cls) = jax.value_and_grad(fn, argnums=(0, 1))(q_raw, cls)
  assert loss.dtype == jnp.float32 and loss.shape == ()
  want = g[f"loss_{mode}"]
  assert abs(float(loss) - want) / abs(want) <= 1e-5
  _assert_grad_close(grad_q, g[f"grad_q_raw_{mode}"])
  if mode == "coins":
    _assert_grad_close(grad_cls, g["grad_cls_coins"])
  else:
    # Only the query carries gradient in the contrastive modes.
    np.testing.assert_array_equal(np.asarray(grad_cls), 0.0)


@pytest.mark.parametrize("path", GOLDEN_FILES, ids=os.path.basename)
def test_numpy_reference_agrees_with_golden(path):
  """Guards the NumPy reference used by the tests below."""
  g = _golden(path)
  got = np_maskcon_loss(
      _np_normalize(g["q_raw"]),
      _np_normalize(g["k_raw"]),
      g["queue"],
      g["queue_labels"],
      g["labels"],
      g["t0"],
      g["t"],
      g["w"],
  )
  assert abs(got - g["loss_maskcon"]) / g["loss_maskcon"] <= 1e-5


def _random_inputs(seed, n=8, d=16, k=40, num_coarse=3):
  rng = np.random.default_rng(seed)
  q = _np_normalize(rng.normal(size=(n, d))).astype(np.float32)
  key = _np_normalize(q + 0.3 * rng.normal(size=(n, d))).astype(np.float32)
  queue = _np_normalize(rng.normal(size=(k, d))).astype(np.float32)
  labels = rng.integers(0, num_coarse, n).astype(np.int32)
  queue_labels = rng.integers(0, num_coarse, k).astype(np.int32)
  return q, key, queue, queue_labels, labels


@pytest.mark.slow
def test_missing_coarse_class_falls_back_to_self_target():
  q, k, queue, queue_labels, labels = _random_inputs(0)
  queue_labels = np.where(queue_labels == 2, 1, queue_labels)  # no class 2
  labels[:3] = 2
  loss = losses.maskcon_loss(
      q, k, queue, queue_labels, labels, t0=0.1, t=0.05, w=0.7
  )
  assert np.isfinite(float(loss))
  np.testing.assert_allclose(
      float(loss),
      np_maskcon_loss(q, k, queue, queue_labels, labels, 0.1, 0.05, 0.7),
      rtol=1e-5,
  )
  targets = losses.maskcon_targets(
      k, queue, queue_labels, labels, t=0.05, w=0.7
  )
  np.testing.assert_array_equal(
      np.asarray(targets[:3]), np.eye(1, queue.shape[0] + 1).repeat(3, 0)
  )
  # The fallback rows alone give exactly the MoCo loss of those rows.
  only = losses.maskcon_loss(
      q[:3], k[:3], queue, queue_labels, labels[:3], t0=0.1, t=0.05, w=0.7
  )
  np.testing.assert_allclose(
      float(only), np_moco_loss(q[:3], k[:3], queue, 0.1), rtol=1e-5
  )
  grad = jax.grad(
      lambda x: losses.maskcon_loss(
          x, k, queue, queue_labels, labels, t0=0.1, t=0.05, w=0.7
      )
  )(jnp.asarray(q))
  assert np.all(np.isfinite(np.asarray(grad)))


@pytest.mark.parametrize("seed", range(3))
def test_maskcon_with_w0_is_moco(seed):
  q, k, queue, queue_labels, labels = _random_inputs(seed)
  a = losses.maskcon_loss(
      q, k, queue, queue_labels, labels, t0=0.2, t=0.1, w=0.0
  )
  b = losses.moco_loss(q, k, queue, t0=0.2)
  np.testing.assert_allclose(float(a), float(b), rtol=1e-6)
  np.testing.assert_allclose(
      float(b), np_moco_loss(q, k, queue, 0.2), rtol=1e-5
  )


@pytest.mark.parametrize("w", [0.3, 1.0])
def test_maskcon_large_t_is_grafit(w):
  """t -> inf makes the soft labels uniform over same-coarse entries."""
  q, k, queue, queue_labels, labels = _random_inputs(4)
  a = losses.maskcon_loss(q, k, queue, queue_labels, labels, t0=0.1, t=1e6, w=w)
  b = losses.grafit_loss(q, k, queue, queue_labels, labels, t0=0.1, w=w)
  np.testing.assert_allclose(float(a), float(b), rtol=1e-5)


def test_maskcon_small_t_targets_nearest_same_coarse_neighbour():
  q, k, queue, queue_labels, labels = _random_inputs(5)
  y = np.asarray(
      losses.maskcon_targets(k, queue, queue_labels, labels, t=1e-4, w=1.0)
  )
  sims = k @ queue.T
  for i in range(len(k)):
    same = np.flatnonzero(queue_labels == labels[i])
    nearest = same[np.argmax(sims[i, same])]
    want = np.zeros(queue.shape[0] + 1)
    want[0] = want[1 + nearest] = 0.5
    np.testing.assert_allclose(y[i], want, atol=1e-6)


@pytest.mark.parametrize("seed", range(3))
def test_maskcon_matches_numpy_reference_on_random_inputs(seed):
  q, k, queue, queue_labels, labels = _random_inputs(seed + 10)
  got = losses.maskcon_loss(
      q, k, queue, queue_labels, labels, t0=0.1, t=0.05, w=0.5
  )
  want = np_maskcon_loss(q, k, queue, queue_labels, labels, 0.1, 0.05, 0.5)
  np.testing.assert_allclose(float(got), want, rtol=1e-5)


def test_targets_are_row_stochastic():
  q, k, queue, queue_labels, labels = _random_inputs(7)
  for y in (
      losses.maskcon_targets(k, queue, queue_labels, labels, t=0.1, w=0.6),
      losses.supcon_targets(queue_labels, labels, w=0.6),
  ):
    np.testing.assert_allclose(np.asarray(y).sum(-1), 1.0, rtol=1e-6)
    assert np.all(np.asarray(y) >= 0)


def test_no_gradient_through_keys_or_queue():
  q, k, queue, queue_labels, labels = _random_inputs(8)
  grads = jax.grad(
      lambda kk, qq: losses.maskcon_loss(
          q, kk, qq, queue_labels, labels, t0=0.1, t=0.05, w=0.5
      ),
      argnums=(0, 1),
  )(jnp.asarray(k), jnp.asarray(queue))
  for gr in grads:
    np.testing.assert_array_equal(np.asarray(gr), 0.0)


def test_losses_jit():
  q, k, queue, queue_labels, labels = _random_inputs(9)
  fn = jax.jit(lambda *a: losses.maskcon_loss(*a, t0=0.1, t=0.05, w=0.5))
  np.testing.assert_allclose(
      float(fn(q, k, queue, queue_labels, labels)),
      float(
          losses.maskcon_loss(
              q, k, queue, queue_labels, labels, t0=0.1, t=0.05, w=0.5
          )
      ),
      rtol=1e-6,
  )
