"""What of `maskcon_jax.checkpoints` no run in the other tests reaches: the
log filter of the command-line tools, setting a checkpoint aside twice, and
writing replicated arrays from one replica.
Restoring is tested through whole runs (tests/test_reliability.py,
tests/test_legacy_workdirs.py, tests/test_parallel.py)."""

import logging
import os

import jax
import jax.numpy as jnp
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as P
import numpy as np
import orbax.checkpoint as ocp
import pytest

from maskcon_jax import checkpoints


def _record(level, pathname):
  return logging.LogRecord("absl", level, pathname, 1, "message", None, None)


def test_hide_checkpoint_chatter_drops_only_orbax_info():
  keep = checkpoints.HideCheckpointChatter().filter
  orbax = "/site-packages/orbax/checkpoint/checkpoint_manager.py"
  assert not keep(_record(logging.INFO, orbax))
  assert keep(_record(logging.WARNING, orbax))
  assert keep(_record(logging.INFO, "/repo/maskcon_jax/trainer.py"))


def test_set_aside_keeps_an_earlier_copy(tmp_path):
  """A step set aside before (a run that failed again) keeps its copy: the
  new one gets a timestamp."""
  for _ in range(2):
    os.makedirs(tmp_path / checkpoints.CHECKPOINT_DIR / "8")
    checkpoints.set_aside(str(tmp_path), [8])
  names = sorted(os.listdir(tmp_path / checkpoints.CORRUPT_DIR))
  assert names[0] == "8" and names[1].startswith("8.") and len(names) == 2
  assert os.listdir(tmp_path / checkpoints.CHECKPOINT_DIR) == []


@pytest.mark.parametrize("ours", [False, True])
def test_replicated_arrays_are_written_from_one_replica(
    tmp_path, monkeypatch, ours
):
  """orbax's default on CPU slices each replicated array across the replicas
  (a program per slice); the run's manager writes it whole from one, and
  restores the same values. The default's count shows the probe sees it."""
  if jax.device_count() < 2:
    pytest.skip("needs several (fake) devices; see conftest.py")
  mesh = jax.sharding.Mesh(np.array(jax.devices()), ("data",))
  replicated = NamedSharding(mesh, P())
  state = {
      "kernel": jax.device_put(
          jnp.arange(4096, dtype=jnp.float32).reshape(64, 64), replicated
      ),
      "step": jax.device_put(jnp.asarray(3, jnp.int32), replicated),
  }
  slices = []
  slice_in_dim = jax.lax.slice_in_dim

  def counting_slice_in_dim(*args, **kwargs):
    slices.append(args[0].shape)
    return slice_in_dim(*args, **kwargs)

  monkeypatch.setattr(jax.lax, "slice_in_dim", counting_slice_in_dim)
  if ours:
    mngr = checkpoints.manager(str(tmp_path))
  else:
    mngr = ocp.CheckpointManager(
        str(tmp_path / checkpoints.CHECKPOINT_DIR),
        item_handlers=ocp.StandardCheckpointHandler(),
    )
  mngr.save(1, args=ocp.args.StandardSave(state))
  mngr.wait_until_finished()
  abstract = jax.tree.map(
      lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=replicated),
      state,
  )
  restored = mngr.restore(1, args=ocp.args.StandardRestore(abstract))
  mngr.close()
  assert bool(slices) != ours, slices
  for name, value in state.items():
    np.testing.assert_array_equal(restored[name], value)
    assert restored[name].sharding == replicated
