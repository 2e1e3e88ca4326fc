"""One embedding path: a run's encoder over images in memory or streamed.

Training's evaluation, the online monitors, ``maskcon_jax.evaluate``,
``maskcon_jax.export`` and `embed.RunEncoder` all embed through `Embedder`:
test views (`augment.test_view_batch`), BN in eval mode, batches split over
the mesh's ``data`` axis, the last batch zero-padded so one program is
compiled per embedder.

With several processes every process gets every embedding: the program's
outputs are replicated over the mesh (an all-gather of ``(B, D)`` rows inside
the program, small next to the forward pass), so each process can evaluate
on its own and the numbers agree everywhere.

* In-memory data (`input_pipeline.Dataset`) is loaded by every process, so
  each feeds its devices' rows of the same global batch.
* Streamed data (`input_pipeline.StreamingDataset`) is read once in all:
  process ``i`` reads the ``i``-th contiguous share of the split; rows come
  back with their index in the split and are put in stored order, so the
  result does not depend on the number of processes.
"""

from __future__ import annotations

import functools
import math
from typing import Any, Sequence

import jax
from jax.experimental import multihost_utils
from jax.sharding import NamedSharding, PartitionSpec as P
import numpy as np

from maskcon_jax import input_pipeline
from maskcon_jax import train_step as steps
from maskcon_jax.errors import UserError

SPLITS = ("test", "train")


class Embedder:
  """A jitted embedding program for one model, normalisation and mesh.

  Build it once per run (the program compiles on first use and is reused);
  `variables` may change between calls (the trainer embeds with the current
  state at every evaluation).
  """

  def __init__(
      self,
      apply_fn,
      *,
      image_size: int,
      mean: Sequence[float],
      std: Sequence[float],
      mesh: jax.sharding.Mesh,
      batch_size: int,
  ):
    """Initialises the embedder.

    Args:
      apply_fn: the encoder's ``apply`` (``(variables, x, train=) -> dict``
        with ``features`` and ``projection``).
      image_size: side of the square test view.
      mean: per-channel normalisation mean of the run's dataset.
      std: per-channel normalisation standard deviation.
      mesh: the mesh whose ``data`` axis splits each batch.
      batch_size: images per program call, over all processes; rounded up to
        a multiple of the mesh's device count.
    """
    self.mesh = mesh
    self.batch_size = int(math.ceil(batch_size / mesh.size) * mesh.size)
    self._batch_sharding = NamedSharding(mesh, P("data"))
    # Replicated outputs: every process can read every embedding.
    self.apply = functools.partial(
        steps.embed_step,
        apply_fn=apply_fn,
        image_size=int(image_size),
        mean=tuple(float(m) for m in mean),
        std=tuple(float(s) for s in std),
    )
    self._program = jax.jit(self.apply, out_shardings=NamedSharding(mesh, P()))

  @classmethod
  def for_run(cls, apply_fn, config, dataset, mesh) -> "Embedder":
    """The embedder of a run: its config's image size and eval batch size,
    its dataset's normalisation."""
    return cls(
        apply_fn,
        image_size=config.image_size,
        mean=dataset.mean,
        std=dataset.std,
        mesh=mesh,
        batch_size=config.eval_batch_size,
    )

  def _run(self, variables, batch_BxSxSxC: jax.Array) -> dict[str, np.ndarray]:
    out = self._program(variables, batch_BxSxSxC)
    return {k: np.asarray(v, np.float32) for k, v in out.items()}

  def arrays(
      self, variables, images_NxSxSxC: np.ndarray
  ) -> dict[str, np.ndarray]:
    """``features`` and ``projection`` of uint8 images held by every process.

    With several processes every process must pass the same images.
    """
    n, bs = len(images_NxSxSxC), self.batch_size
    out = {"features": [], "projection": []}
    for start in range(0, max(n, 1), bs):
      chunk = np.asarray(images_NxSxSxC[start : start + bs])
      valid = len(chunk)
      if valid < bs:  # Pad the last batch so only one program is compiled.
        chunk = np.concatenate(
            [chunk, np.zeros((bs - valid, *chunk.shape[1:]), chunk.dtype)]
        )
      batch = jax.make_array_from_callback(
          chunk.shape, self._batch_sharding, lambda index, c=chunk: c[index]
      )
      for key, value in self._run(variables, batch).items():
        out[key].append(value[:valid])
    return {key: np.concatenate(v) for key, v in out.items()}

  def split(self, variables, dataset, split: str) -> dict[str, Any]:
    """Embeddings and labels of ``split`` ("test" or "train"), stored order.

    Returns:
      ``features``, ``projection``, ``coarse`` and ``fine`` (None for data
      without fine labels).
    """
    check_split(split)
    if not isinstance(dataset, input_pipeline.StreamingDataset):
      out = self.arrays(variables, getattr(dataset, f"{split}_images"))
      fine = getattr(dataset, f"{split}_fine")
      return {
          **out,
          "coarse": getattr(dataset, f"{split}_coarse"),
          "fine": fine if dataset.has_fine_labels else None,
      }
    return self._streamed_split(variables, dataset, split)

  def _streamed_split(self, variables, dataset, split: str) -> dict[str, Any]:
    pid, count = jax.process_index(), jax.process_count()
    local_bs = self.batch_size // count
    batches = dataset.split_batches(
        split, local_bs, process_index=pid, process_count=count, pad=True
    )
    keys = ["coarse_label"] + (
        ["fine_label"] if dataset.has_fine_labels else []
    )
    parts = {k: [] for k in ["features", "projection", "index"] + keys}
    for batch in batches:
      images = jax.make_array_from_process_local_data(
          self._batch_sharding, batch["image"]
      )
      # "index": where each row sits in the split; -1 on padding.
      local = {k: batch[k] for k in keys + ["index"]}
      labels = multihost_utils.process_allgather(local, tiled=True)
      for key, value in self._run(variables, images).items():
        parts[key].append(value)
      for key, value in labels.items():
        parts[key].append(np.asarray(value))
    columns = {k: np.concatenate(v) for k, v in parts.items()}
    index = columns.pop("index")
    valid = index >= 0
    order = np.argsort(index[valid], kind="stable")
    columns = {k: v[valid][order] for k, v in columns.items()}
    return {
        "features": columns["features"],
        "projection": columns["projection"],
        "coarse": columns["coarse_label"].astype(np.int32),
        "fine": (
            columns["fine_label"].astype(np.int32)
            if "fine_label" in columns
            else None
        ),
    }


def check_split(split: str) -> None:
  """Raises `UserError` unless ``split`` is one of `SPLITS`."""
  if split not in SPLITS:
    raise UserError(
        f"--split={split!r} is not a split; use one of: {', '.join(SPLITS)}."
    )


def read_images(dataset, split: str, indices: Sequence[int]) -> np.ndarray:
  """uint8 images at ``indices`` (stored order) of ``split``, in that order.

  In memory this is indexing; streamed data is read once, in this process,
  keeping only those rows (for figures that show a few images).
  """
  check_split(split)
  indices = np.asarray(indices, np.int64)
  if not isinstance(dataset, input_pipeline.StreamingDataset):
    return np.asarray(getattr(dataset, f"{split}_images"))[indices]
  wanted = {int(i): None for i in indices}
  for batch in dataset.split_batches(split, 256):
    for row, index in enumerate(batch["index"]):
      if int(index) in wanted:
        wanted[int(index)] = batch["image"][row]
  missing = [i for i, image in wanted.items() if image is None]
  if missing:
    raise IndexError(f"{split} split has no images at {missing[:5]}.")
  return np.stack([wanted[int(i)] for i in indices])
