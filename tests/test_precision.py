"""Mixed precision: what runs in bfloat16 and what must stay float32.

``precision="bfloat16"`` should put the convolutions and matmuls of the
encoder in bfloat16 while parameters, BatchNorm statistics, the projection,
the logits, the softmax and the loss stay float32. These tests check that
split on the traced programs, bound what bfloat16 embeddings do to the losses
on the golden vectors of the official code, and run a bfloat16 train step.
"""

import functools
import glob
import os

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
import pytest

from maskcon_jax import losses
from maskcon_jax import methods
from maskcon_jax import train_state as train_state_lib
from maskcon_jax import train_step as steps
from tests.conftest import GOLDEN_DIR

# Trains or runs whole programs: out of the fast subset (`-m "not slow"`).
pytestmark = pytest.mark.slow

GOLDEN_FILES = sorted(glob.glob(os.path.join(GOLDEN_DIR, "*.npz")))

# Rounding q and k to bfloat16 (8 significant bits, relative error <= 2^-9)
# moves the golden losses by at most 2.3e-4 relative and their query
# gradients by at most 1.2e-2 of the largest gradient entry; the bounds leave
# about 4x and 2.5x headroom.
LOSS_REL_BOUND = 1e-3
GRAD_REL_BOUND = 3e-2


def _bf16_round_trip(x):
  return x.astype(jnp.bfloat16).astype(jnp.float32)


def _golden_losses(g):
  """Each mode's loss as a function of (q, k), both L2-normalised."""
  queue = jnp.asarray(g["queue"])
  qlab = jnp.asarray(g["queue_labels"], jnp.int32)
  lab = jnp.asarray(g["labels"], jnp.int32)
  cls = jnp.asarray(g["cls"])
  t0, t, w = float(g["t0"]), float(g["t"]), float(g["w"])
  return {
      "maskcon": lambda q, k: losses.maskcon_loss(
          q, k, queue, qlab, lab, t0=t0, t=t, w=w
      ),
      "grafit": lambda q, k: losses.grafit_loss(
          q, k, queue, qlab, lab, t0=t0, w=w
      ),
      "coins": lambda q, k: losses.coins_loss(
          q, k, cls, queue, lab, t0=t0, w=w
      ),
  }


@pytest.mark.parametrize(
    "path", GOLDEN_FILES, ids=[os.path.basename(p) for p in GOLDEN_FILES]
)
def test_bfloat16_embeddings_move_golden_losses_little(path):
  """q and k cast to bfloat16 and back: loss and gradient stay close."""
  g = dict(np.load(path))
  q_raw = jnp.asarray(g["q_raw"])
  k = losses.l2_normalize(jnp.asarray(g["k_raw"]))
  for mode, loss_fn in _golden_losses(g).items():
    exact = float(loss_fn(losses.l2_normalize(q_raw), k))
    # The float32 path reproduces the official value.
    np.testing.assert_allclose(exact, float(g[f"loss_{mode}"]), rtol=1e-5)
    rounded = loss_fn(
        _bf16_round_trip(losses.l2_normalize(q_raw)), _bf16_round_trip(k)
    )
    assert rounded.dtype == jnp.float32
    assert abs(float(rounded) - exact) <= LOSS_REL_BOUND * abs(exact), mode

    grad = jax.grad(lambda q: loss_fn(losses.l2_normalize(q), k))(q_raw)
    grad_bf16 = jax.grad(
        lambda q: loss_fn(
            _bf16_round_trip(losses.l2_normalize(q)), _bf16_round_trip(k)
        )
    )(q_raw)
    scale = float(jnp.max(jnp.abs(grad)))
    if scale == 0.0:  # coins with w = 1 has no gradient through q.
      assert float(jnp.max(jnp.abs(grad_bf16))) == 0.0
      continue
    err = float(jnp.max(jnp.abs(grad_bf16 - grad))) / scale
    assert err <= GRAD_REL_BOUND, (mode, err)


def _tiny_encoder(precision):
  config = ml_collections.ConfigDict(
      dict(
          arch="resnet10",
          width=4,
          image_size=8,
          embed_dim=8,
          proj_hidden_dim=16,
          precision=precision,
      )
  )
  return methods.build_encoder(config, num_coarse=3)


def _eqns(jaxpr):
  """Every equation of a jaxpr, including those of nested sub-jaxprs."""
  for eqn in jaxpr.eqns:
    yield eqn
    for value in eqn.params.values():
      for sub in value if isinstance(value, (tuple, list)) else (value,):
        inner = getattr(sub, "jaxpr", sub)
        if hasattr(inner, "eqns"):
          yield from _eqns(inner)


def _compute_dtypes(jaxpr, primitive):
  """Input dtypes of every ``primitive`` equation in ``jaxpr``."""
  return [
      tuple(v.aval.dtype for v in eqn.invars)
      for eqn in _eqns(jaxpr)
      if eqn.primitive.name == primitive
  ]


def test_bfloat16_encoder_runs_convs_and_matmuls_in_bfloat16():
  model = _tiny_encoder("bfloat16")
  x = jnp.ones((4, 8, 8, 3), jnp.float32)
  variables = jax.jit(functools.partial(model.init, train=False))(
      jax.random.key(0), x
  )
  apply = functools.partial(model.apply, train=True, mutable=["batch_stats"])
  closed = jax.make_jaxpr(apply)(variables, x)
  convs = _compute_dtypes(closed.jaxpr, "conv_general_dilated")
  dots = _compute_dtypes(closed.jaxpr, "dot_general")
  assert convs and dots
  assert all(d == (jnp.bfloat16, jnp.bfloat16) for d in convs), convs
  assert all(d == (jnp.bfloat16, jnp.bfloat16) for d in dots), dots

  out, updates = jax.jit(apply)(variables, x)
  # Parameters and BN statistics float32; outputs float32.
  assert all(p.dtype == jnp.float32 for p in jax.tree.leaves(variables))
  assert all(
      s.dtype == jnp.float32 for s in jax.tree.leaves(updates["batch_stats"])
  )
  assert all(v.dtype == jnp.float32 for v in out.values())

  # The backward pass is in bfloat16 too, and the gradients land in float32.
  def loss(params):
    out, _ = model.apply(
        {**variables, "params": params}, x, train=True, mutable=["batch_stats"]
    )
    return jnp.sum(out["projection"] ** 2)

  grad_jaxpr = jax.make_jaxpr(jax.grad(loss))(variables["params"])
  grad_convs = _compute_dtypes(grad_jaxpr.jaxpr, "conv_general_dilated")
  assert len(grad_convs) > len(convs)
  assert all(d == (jnp.bfloat16, jnp.bfloat16) for d in grad_convs)
  grads = jax.jit(jax.grad(loss))(variables["params"])
  assert all(g.dtype == jnp.float32 for g in jax.tree.leaves(grads))


@functools.lru_cache(maxsize=None)
def _state_and_step(precision, batch_size=8, queue_size=40):
  """A tiny state, its jitted step and a batch (cached: compiling is slow)."""
  model = _tiny_encoder(precision)
  tx = optax.chain(
      optax.add_decayed_weights(5e-4), optax.sgd(0.02, momentum=0.9)
  )
  state = train_state_lib.create_train_state(
      jax.random.key(0),
      model=model,
      tx=tx,
      image_shape=(8, 8, 3),
      queue_size=queue_size,
      embed_dim=8,
      num_coarse=3,
  )
  step = jax.jit(
      functools.partial(
          steps.train_step,
          method=methods.get("maskcon"),
          options={},
          settings=steps.StepSettings(
              t0=0.1,
              t=0.05,
              w=0.5,
              ema_momentum=0.99,
              image_size=8,
              mean=(0.5,) * 3,
              std=(0.25,) * 3,
          ),
      )
  )
  rng = np.random.default_rng(0)
  batch = {
      "image": jnp.asarray(
          rng.integers(0, 256, (batch_size, 8, 8, 3), np.uint8)
      ),
      "coarse_label": jnp.asarray(rng.integers(0, 3, (batch_size,)), jnp.int32),
  }
  return state, step, batch


def test_bfloat16_train_step_end_to_end():
  """Finite loss; params, BN statistics, optimizer state and queue float32."""
  state, step, batch = _state_and_step("bfloat16")
  for _ in range(2):
    state, metrics = step(state, batch)
  assert np.isfinite(float(metrics["loss"]))
  assert metrics["loss"].dtype == jnp.float32
  for tree in (
      state.params,
      state.batch_stats,
      state.target_params,
      state.target_batch_stats,
      state.opt_state,
      state.queue_KxD,
  ):
    for leaf in jax.tree.leaves(tree):
      if jnp.issubdtype(leaf.dtype, jnp.floating):
        assert leaf.dtype == jnp.float32

  # Inside the step: the encoder's convolutions are bfloat16, the loss's
  # logits and softmax are float32.
  closed = jax.make_jaxpr(step)(state, batch)
  convs = _compute_dtypes(closed.jaxpr, "conv_general_dilated")
  assert convs and all(d == (jnp.bfloat16, jnp.bfloat16) for d in convs)
  # The queue logits q @ queue.T and the soft-label similarities k @ queue.T
  # (and the logits' backward) are the products with the (40, 8) queue; no
  # other array has a dimension of 40.
  queue_dots = [
      eqn
      for eqn in _eqns(closed.jaxpr)
      if eqn.primitive.name == "dot_general"
      and any(40 in v.aval.shape for v in eqn.invars)
  ]
  assert queue_dots
  assert all(
      v.aval.dtype == jnp.float32
      for eqn in queue_dots
      for v in (*eqn.invars, *eqn.outvars)
  )
  softmax_ins = [
      eqn.invars[0].aval.dtype
      for eqn in _eqns(closed.jaxpr)
      if eqn.primitive.name in ("exp", "log")
  ]
  assert softmax_ins and all(d == jnp.float32 for d in softmax_ins)


def test_bfloat16_step_tracks_float32_step():
  """Same init and batch: the bfloat16 step's loss is close to float32's."""
  results = {}
  for precision in ("float32", "bfloat16"):
    state, step, batch = _state_and_step(precision)
    _, metrics = step(state, batch)
    results[precision] = float(metrics["loss"])
  assert abs(results["bfloat16"] - results["float32"]) <= 0.05 * abs(
      results["float32"]
  ), results
