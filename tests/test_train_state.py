"""Queue, EMA, learning-rate schedule and optimizer semantics."""

import glob
import os

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
import pytest

from maskcon_jax import losses
from maskcon_jax import train_state as ts
from tests.conftest import GOLDEN_DIR


@pytest.mark.slow
def test_enqueue_matches_official_golden():
  for path in sorted(glob.glob(os.path.join(GOLDEN_DIR, "*.npz"))):
    g = np.load(path)
    keys = losses.l2_normalize(jnp.asarray(g["k_raw"]))
    labels = jnp.asarray(g["labels"], jnp.int32)
    queue_labels = jnp.asarray(g["queue_labels"], jnp.int32)
    q, ql, ptr = ts.enqueue(
        jnp.asarray(g["queue"]), queue_labels, jnp.int32(0), keys, labels
    )
    np.testing.assert_allclose(np.asarray(q), g["queue_after"], atol=1e-6)
    assert int(ptr) == int(g["ptr_after"])
    np.testing.assert_array_equal(np.asarray(ql[: len(labels)]), g["labels"])


def test_enqueue_wraps_around_when_queue_is_not_a_multiple_of_batch():
  k, b, d = 10, 4, 3
  queue = jnp.zeros((k, d))
  labels = -jnp.ones((k,), jnp.int32)
  ptr = jnp.int32(0)
  written = []
  for step in range(4):  # 16 keys into 10 rows: wraps once, mid-batch.
    keys = jnp.full((b, d), float(step + 1)) + jnp.arange(b)[:, None] / 10
    queue, labels, ptr = ts.enqueue(
        queue, labels, ptr, keys, jnp.arange(b, dtype=jnp.int32) + 10 * step
    )
    written.extend(np.asarray(keys))
  assert int(ptr) == 16 % k
  # Row r holds the last key written to it: key index i with i % k == r.
  expected = np.zeros((k, d))
  for i, key in enumerate(written):
    expected[i % k] = key
  np.testing.assert_allclose(np.asarray(queue), expected)
  # Key i (batch i // b, row i % b) carries label (i % b) + 10 * (i // b).
  expected_labels = np.zeros(k)
  for i in range(16):
    expected_labels[i % k] = i % b + 10 * (i // b)
  np.testing.assert_array_equal(np.asarray(labels), expected_labels)


def test_enqueue_jits_with_traced_pointer():
  fn = jax.jit(ts.enqueue)
  q, l, p = fn(
      jnp.zeros((6, 2)),
      jnp.zeros((6,), jnp.int32),
      jnp.int32(4),
      jnp.ones((4, 2)),
      jnp.ones((4,), jnp.int32),
  )
  np.testing.assert_array_equal(np.asarray(q)[:, 0], [1, 1, 0, 0, 1, 1])
  assert int(p) == 2


def test_ema_update():
  target = {"a": jnp.array([1.0, 2.0]), "b": {"c": jnp.array(3.0)}}
  online = {"a": jnp.array([3.0, 0.0]), "b": {"c": jnp.array(-1.0)}}
  out = ts.ema_update(target, online, 0.99)
  np.testing.assert_allclose(out["a"], [0.99 * 1 + 0.01 * 3, 0.99 * 2])
  np.testing.assert_allclose(out["b"]["c"], 0.99 * 3 - 0.01)


def _official_lr(step, lr0, warmup_epochs, epochs, iters):
  """The official per-iteration schedule (utils.py: adjust_learning_rate)."""
  if step < warmup_epochs * iters:
    return lr0 * step / (warmup_epochs * iters)
  t = step - warmup_epochs * iters
  return (
      0.5 * lr0 * (1 + np.cos(np.pi * t / ((epochs - warmup_epochs) * iters)))
  )


@pytest.mark.parametrize("warmup", [0, 2, 5])
def test_learning_rate_schedule_matches_official(warmup):
  config = ml_collections.ConfigDict(
      dict(num_epochs=20, warmup_epochs=warmup, learning_rate=0.02)
  )
  iters = 7
  schedule = ts.learning_rate_schedule(config, iters)
  for step in [0, 1, 3, warmup * iters, warmup * iters + 1, 70, 139, 140]:
    want = _official_lr(step, 0.02, warmup, 20, iters)
    assert float(schedule(step)) == pytest.approx(want, abs=1e-7), step
  assert float(schedule(0)) == (0.0 if warmup else pytest.approx(0.02))
  assert float(schedule(20 * iters)) == pytest.approx(0.0, abs=1e-9)


def test_sgd_matches_torch_semantics():
  """Weight decay coupled into the gradient, momentum buffer starting at g."""
  config = ml_collections.ConfigDict(dict(weight_decay=5e-4, momentum=0.9))
  lr = 0.1
  tx = ts.make_optimizer(config, optax.constant_schedule(lr))
  p = jnp.array([1.0, -2.0])
  opt_state = tx.init(p)
  p_ref, buf = np.array([1.0, -2.0]), None
  for g in ([0.5, 0.1], [-0.2, 0.3], [0.0, 1.0]):
    g = np.array(g)
    d = g + 5e-4 * p_ref
    buf = d if buf is None else 0.9 * buf + d
    p_ref = p_ref - lr * buf
    updates, opt_state = tx.update(jnp.asarray(g, jnp.float32), opt_state, p)
    p = optax.apply_updates(p, updates)
  np.testing.assert_allclose(np.asarray(p), p_ref, rtol=1e-6)


def test_random_queue_rows_are_unit_norm():
  q, l = ts.random_queue(jax.random.key(0), 50, 8, 3)
  np.testing.assert_allclose(
      np.linalg.norm(np.asarray(q), axis=1), 1, rtol=1e-5
  )
  assert set(np.unique(np.asarray(l))) <= {0, 1, 2}
