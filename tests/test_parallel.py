"""Data parallelism on 8 fake CPU devices (tests/conftest.py sets them up)."""

import jax
import jax.numpy as jnp
import numpy as np
import orbax.checkpoint as ocp
import pytest

from configs import tiny
from maskcon_jax import batches
from maskcon_jax import checkpoints
from maskcon_jax import train_step as steps
from maskcon_jax import trainer

pytestmark = [
    pytest.mark.skipif(
        jax.device_count() < 8, reason="needs 8 (fake) devices; see conftest.py"
    ),
    pytest.mark.slow,
]


def _experiment(num_devices, **overrides):
  config = tiny.get_config()
  config.num_devices = num_devices
  config.update(overrides)
  return trainer.build_experiment(config)


def _batch(exp, step=0):
  data = batches.DeviceBatches(
      exp.dataset, exp.mesh, exp.config.batch_size, exp.config.seed
  )
  return data.batch(step, exp.steps_per_epoch)


def _to_numpy(tree):
  return jax.tree.map(lambda x: np.asarray(jax.device_get(x)), tree)


def _assert_trees_close(a, b, atol):
  for (path, x), y in zip(
      jax.tree_util.tree_flatten_with_path(a)[0], jax.tree.leaves(b)
  ):
    np.testing.assert_allclose(
        x, y, atol=atol, rtol=atol, err_msg=jax.tree_util.keystr(path)
    )


def test_global_bn_step_on_8_devices_equals_1_device():
  results = {}
  for n in (1, 8):
    exp = _experiment(n, key_bn="global", query_bn="global")
    assert exp.mesh.size == n
    state, metrics = trainer.make_train_step(exp)(exp.state, _batch(exp))
    results[n] = _to_numpy(
        (
            state.params,
            state.batch_stats,
            state.target_batch_stats,
            state.queue_KxD,
            state.queue_labels_K,
            state.queue_ptr,
            metrics["loss"],
        )
    )
  _assert_trees_close(results[8], results[1], atol=1e-5)


def test_shuffle_bn_on_8_devices_equals_split_bn_with_same_permutation():
  exp8 = _experiment(8)
  exp1 = _experiment(1)
  state8, state1 = exp8.state, exp1.state
  # 8 rows per device: BN over 2 rows would amplify rounding differences.
  views = jax.random.normal(jax.random.key(0), (64, 8, 8, 3))
  perm = jax.random.permutation(jax.random.key(1), 64)
  keys8, stats8 = jax.jit(
      lambda v, p: steps.encode_keys(
          state8.apply_fn,
          state8.target_params,
          state8.target_batch_stats,
          v,
          bn_mode="shuffle",
          permutation=p,
          mesh=exp8.mesh,
      )
  )(views, perm)
  # split on one device, fed the permuted batch, un-permuted by hand.
  keys1, stats1 = jax.jit(
      lambda v: steps.encode_keys(
          state1.apply_fn,
          state1.target_params,
          state1.target_batch_stats,
          v,
          bn_mode="split",
          bn_splits=8,
      )
  )(views[perm])
  keys1 = keys1[jnp.argsort(perm)]
  _assert_trees_close(
      _to_numpy((keys8, stats8)), _to_numpy((keys1, stats1)), atol=1e-5
  )
  # And shuffling really changes the statistics relative to global BN.
  keys_global, _ = steps.encode_keys(
      state1.apply_fn, state1.target_params, state1.target_batch_stats, views
  )
  assert np.max(np.abs(np.asarray(keys_global) - np.asarray(keys8))) > 1e-3


def test_queue_identical_on_all_devices_after_several_steps():
  exp = _experiment(8)
  step_fn = trainer.make_train_step(exp)
  state = exp.state
  for step in range(3):
    state, _ = step_fn(state, _batch(exp, step))
  for array in (state.queue_KxD, state.queue_labels_K, state.queue_ptr):
    shards = [np.asarray(s.data) for s in array.addressable_shards]
    assert len(shards) == 8
    for shard in shards[1:]:
      np.testing.assert_array_equal(shard, shards[0])
  assert int(state.queue_ptr) == (3 * 16) % exp.config.queue_size


@pytest.mark.parametrize("save_on,restore_on", [(8, 1), (1, 8)])
def test_checkpoint_moves_between_device_counts(tmp_path, save_on, restore_on):
  exp_a = _experiment(save_on)
  state, _ = trainer.make_train_step(exp_a)(exp_a.state, _batch(exp_a))
  mngr = ocp.CheckpointManager(tmp_path / "ckpt")
  mngr.save(1, args=ocp.args.StandardSave(state))
  mngr.wait_until_finished()

  exp_b = _experiment(restore_on)
  restored = checkpoints.restore_state(exp_b, mngr, 1)
  assert restored.queue_KxD.sharding.mesh.size == restore_on
  _assert_trees_close(
      _to_numpy((restored.params, restored.queue_KxD)),
      _to_numpy((state.params, state.queue_KxD)),
      atol=0,
  )
  # It keeps training on the new device count.
  after, metrics = trainer.make_train_step(exp_b)(restored, _batch(exp_b, 1))
  assert int(after.step) == 2 and np.isfinite(float(metrics["loss"]))
  mngr.close()
