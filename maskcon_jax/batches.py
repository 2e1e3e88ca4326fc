"""Batch sources: the training batches of every step, in a replayable order.

A batch source has ``batch(step, steps_per_epoch)``, which returns the
global batch ``{"image": uint8 images, "coarse_label": int32}`` of training
step ``step``, sharded over the mesh's ``data`` axis. `DeviceBatches` keeps
the training set on the devices as uint8 arrays: every epoch is a
device-side permutation and every step gathers its batch there (the jitted
step then makes both views). `StreamedBatches` reads datasets too big for
memory from the host. Either way the order is a function of (seed, step)
alone, so resuming from a checkpoint at step s replays exactly what an
uninterrupted run does.
"""

from __future__ import annotations

import functools

import jax
from jax.sharding import NamedSharding, PartitionSpec as P
import numpy as np

from maskcon_jax import input_pipeline


def steps_per_epoch(num_train: int, batch_size: int) -> int:
  """Full batches per epoch (the official loader drops the last one)."""
  return num_train // batch_size


def epoch_permutation(seed: int, epoch: int, num_examples: int) -> jax.Array:
  """The order of the training set in ``epoch``: a function of (seed, epoch)."""
  rng = jax.random.fold_in(jax.random.key(seed), epoch)
  return jax.random.permutation(rng, num_examples)


def _gather_batch(images, coarse, permutation, index, *, batch_size):
  ids = jax.lax.dynamic_slice_in_dim(
      permutation, index * batch_size, batch_size
  )
  return {"image": images[ids], "coarse_label": coarse[ids]}


class DeviceBatches:
  """Training set resident on the devices, replicated."""

  def __init__(
      self, dataset: input_pipeline.Dataset, mesh, batch_size: int, seed: int
  ):
    replicated = NamedSharding(mesh, P())
    self.images = jax.device_put(dataset.train_images, replicated)
    self.coarse = jax.device_put(
        dataset.train_coarse.astype(np.int32), replicated
    )
    self.num = dataset.num_train
    self.batch_size = batch_size
    self.seed = seed
    self.batch_sharding = NamedSharding(mesh, P("data"))
    self._epoch, self._perm = None, None
    # The gather runs on the devices and leaves the batch already split
    # across them, on every host alike (the data and order are replicated).
    self._gather = jax.jit(
        functools.partial(_gather_batch, batch_size=batch_size),
        out_shardings=self.batch_sharding,
    )

  def batch(self, step: int, spe: int) -> dict[str, jax.Array]:
    epoch, index = divmod(step, spe)
    if epoch != self._epoch:
      self._epoch, self._perm = epoch, epoch_permutation(
          self.seed, epoch, self.num
      )
    return self._gather(self.images, self.coarse, self._perm, index)


class StreamedBatches:
  """Training batches streamed from the host (datasets too big for memory).

  Each process reads its own shard; the global batch is assembled from the
  process-local pieces. The order is a function of (seed, epoch, step), and
  resuming mid-epoch skips the batches already seen without decoding them.
  """

  def __init__(self, dataset, mesh, batch_size: int, seed: int):
    self.dataset = dataset
    self.local_batch = batch_size // jax.process_count()
    self.seed = seed
    self.batch_sharding = NamedSharding(mesh, P("data"))
    self._epoch, self._next_index, self._iter = None, None, None

  def batch(self, step: int, spe: int) -> dict[str, jax.Array]:
    epoch, index = divmod(step, spe)
    if (epoch, index) != (self._epoch, self._next_index):
      self._iter = self.dataset.train_batches(
          self.local_batch,
          seed=self.seed,
          epoch=epoch,
          process_index=jax.process_index(),
          process_count=jax.process_count(),
          start_step=index,
      )
      self._epoch = epoch
    local = next(self._iter)
    self._next_index = index + 1
    return {
        k: jax.make_array_from_process_local_data(self.batch_sharding, local[k])
        for k in ("image", "coarse_label")
    }


def for_experiment(exp) -> DeviceBatches | StreamedBatches:
  """The training batch source of ``exp``: device-resident or streamed.

  ``exp`` is a `trainer.Experiment`; only its ``dataset``, ``mesh`` and
  ``config`` (``batch_size``, ``seed``) are read.
  """
  if isinstance(exp.dataset, input_pipeline.StreamingDataset):
    return StreamedBatches(
        exp.dataset, exp.mesh, exp.config.batch_size, exp.config.seed
    )
  return DeviceBatches(
      exp.dataset, exp.mesh, exp.config.batch_size, exp.config.seed
  )
