r"""Embeds any images with a trained run: features, projections and paths.

  python -m maskcon_jax.embed --workdir runs/default --images photos/ \
      --out emb.npz
  python -m maskcon_jax.embed --workdir runs/default --images list.csv \
      --out emb.npz --skip_bad

``--images`` is a folder (searched recursively for .png, .jpg, .jpeg, .bmp
and .gif files, in sorted path order), a CSV whose first column is an image
path (relative paths are relative to the CSV's folder; a header starting with
``path`` is skipped; the dataset CSVs of ``dataset='csv'`` work as they are)
or one image file. Images are read as the run's dataset reads files (tf.data
decoding, RGB, squashed to ``config.image_size`` with antialiased bilinear
resizing), converted to the run's channels (gray as PIL's ``convert('L')``)
and embedded by the query encoder in eval mode after the dataset's
normalisation, in batches of ``config.eval_batch_size`` with a progress line
on stderr.

The ``.npz`` holds ``features`` (backbone, what retrieval uses; not
normalised), ``projections`` (the contrastive head's output), ``paths``
(absolute), ``step``, ``workdir`` (absolute), ``fingerprint`` (of the
encoder's weights, so that `maskcon_jax.search` can tell an index from another
run), ``image_size``, ``channels`` and ``skipped`` (the files left out by
``--skip_bad``). Names are unicode arrays: ``np.load`` needs no
``allow_pickle``.

An image that can't be read or decoded stops the run with a one-line error
naming the file, unless ``--skip_bad`` lists and skips such files.
"""

from __future__ import annotations

import csv
import dataclasses
import os
import re
import sys
import time
from typing import Any, Callable, Iterator, Sequence

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

from absl import app  # noqa: E402
from absl import flags  # noqa: E402
from absl import logging  # noqa: E402
import jax  # noqa: E402
from jax.sharding import NamedSharding, PartitionSpec as P  # noqa: E402
import ml_collections  # noqa: E402
import numpy as np  # noqa: E402

import maskcon_jax  # noqa: E402
from maskcon_jax import embedding  # noqa: E402
from maskcon_jax import input_pipeline  # noqa: E402
from maskcon_jax import methods  # noqa: E402
from maskcon_jax import pretrained  # noqa: E402
from maskcon_jax import trainer  # noqa: E402
from maskcon_jax.datasets import files as dataset_files  # noqa: E402
from maskcon_jax.errors import DataError, UserError  # noqa: E402

# The dataset folders' image types, plus the other two that tf.data decodes.
IMAGE_EXTENSIONS = dataset_files.IMAGE_EXTENSIONS + (".bmp", ".gif")
# How many skipped files a message names before "...".
_SHOW = 5


# ---------------------------------------------------------------------------
# A run's encoder.
# ---------------------------------------------------------------------------


def input_statistics(
    config: ml_collections.ConfigDict,
) -> tuple[tuple[float, ...], tuple[float, ...], int]:
  """``(mean, std, channels)`` the run's dataset normalises images with.

  The dataset is loaded as the run loaded it (coarse map and
  ``image_channels`` included) but with one example per split, so only its
  statistics are computed, not its images read.

  Raises:
    UserError: the dataset can't be opened (e.g. its folder moved).
  """
  light = ml_collections.ConfigDict(config.to_dict())
  with light.unlocked():
    light.max_train_examples = 1
    light.max_test_examples = 1
    light.subset_seed = None
  try:
    dataset = input_pipeline.load_dataset(light)
  except UserError as e:
    raise UserError(
        f"the run's dataset ({config.get('dataset')!r}) gives the "
        f"image statistics and can't be opened: {e}"
    ) from e
  return tuple(dataset.mean), tuple(dataset.std), dataset.image_shape[-1]


@dataclasses.dataclass(frozen=True)
class RunEncoder:
  """A trained run's query encoder, ready to embed uint8 images.

  Attributes:
    workdir: the run's directory (absolute).
    step: the checkpoint's step.
    config: the run's config.
    fingerprint: `pretrained.RunWeights.fingerprint` of the weights.
    image_size: side of the square images `embed` takes.
    channels: their channels (1 or 3).
    mean, std: the normalisation of the run's dataset.
    embedder: the `embedding.Embedder` training's evaluation uses too.
    variables: ``{"params": ..., "batch_stats": ...}``, replicated over the
      embedder's mesh.
  """

  workdir: str
  step: int
  config: ml_collections.ConfigDict
  fingerprint: str
  image_size: int
  channels: int
  mean: tuple[float, ...]
  std: tuple[float, ...]
  embedder: embedding.Embedder
  variables: dict[str, Any]

  @property
  def apply(self) -> Callable[..., Any]:
    """``(variables, images) -> {"features", "projection"}``, not jitted
    (`train_step.embed_step` with the run's normalisation)."""
    return self.embedder.apply

  @property
  def batch_size(self) -> int:
    """Images per program call: the run's ``eval_batch_size`` rounded up to
    a multiple of the devices (`embedding.Embedder`), so reading files in
    batches of it feeds the program whole batches."""
    return self.embedder.batch_size

  def check_images(self, images: np.ndarray, what: str = "images") -> None:
    """Raises `UserError` unless ``images`` is uint8 ``(N, S, S, C)``."""
    want = f"(N, {self.image_size}, {self.image_size}, {self.channels}) uint8"
    shape = getattr(images, "shape", None)
    if shape is None or len(shape) != 4:
      raise UserError(f"{what} must be an array {want}, got shape {shape}.")
    if tuple(shape[1:3]) != (self.image_size, self.image_size):
      raise UserError(
          f"{what} are {shape[1]}x{shape[2]} px, the run embeds "
          f"{self.image_size}x{self.image_size}: resize them "
          "(read_images does)."
      )
    if shape[3] != self.channels:
      raise UserError(
          f"{what} have {shape[3]} channels, the run's have "
          f"{self.channels}: convert them (read_images does)."
      )
    if np.asarray(images).dtype != np.uint8:
      raise UserError(
          f"{what} are {np.asarray(images).dtype}, the run embeds "
          "uint8 pixels (0-255)."
      )

  def embed(self, images: np.ndarray) -> dict[str, np.ndarray]:
    """``features`` and ``projection`` of uint8 ``(N, S, S, C)`` images.

    Batches of `batch_size` (`embedding.Embedder.arrays`).
    """
    self.check_images(images)
    return self.embedder.arrays(self.variables, images)


def load_run_encoder(workdir: str, checkpoint: int | None = None) -> RunEncoder:
  """The query encoder of a checkpoint of ``workdir`` (the newest if None).

  Reads the weights without the training data (`pretrained.read_run`); the
  dataset is only opened for its normalisation (`input_statistics`).

  Raises:
    UserError: no run, no such checkpoint, or a dataset that can't be opened.
  """
  weights = pretrained.read_run(workdir, checkpoint)
  config = weights.config
  mean, std, channels = input_statistics(config)
  if channels != weights.channels:
    raise UserError(
        f"{workdir}'s encoder takes {weights.channels}-channel "
        f"images but its dataset now gives {channels}: was "
        "config.json edited?"
    )
  model = methods.build_encoder(config, weights.num_coarse)
  mesh = trainer.make_mesh()
  embedder = embedding.Embedder(
      model.apply,
      image_size=config.image_size,
      mean=mean,
      std=std,
      mesh=mesh,
      batch_size=config.eval_batch_size,
  )
  variables = jax.device_put(
      {"params": weights.params, "batch_stats": weights.batch_stats},
      NamedSharding(mesh, P()),
  )
  return RunEncoder(
      workdir=os.path.abspath(workdir),
      step=weights.step,
      config=config,
      fingerprint=weights.fingerprint(),
      image_size=int(config.image_size),
      channels=channels,
      mean=mean,
      std=std,
      embedder=embedder,
      variables=variables,
  )


# ---------------------------------------------------------------------------
# Finding and reading image files.
# ---------------------------------------------------------------------------


def _is_image(name: str) -> bool:
  return name.lower().endswith(IMAGE_EXTENSIONS)


def _read_csv_paths(path: str, flag: str) -> list[str]:
  base = os.path.dirname(os.path.abspath(path))
  try:
    with open(path, newline="", encoding="utf-8") as f:
      rows = [row for row in csv.reader(f) if row and row[0].strip()]
  except (OSError, UnicodeDecodeError, csv.Error) as e:
    raise UserError(
        f"cannot read {flag}={path!r} as CSV ({e}): save it as "
        "UTF-8 text with the image path in the first column."
    )
  if rows and rows[0][0].strip().lower() == "path":
    rows = rows[1:]
  if not rows:
    raise UserError(
        f"{flag}={path!r} lists no images: put one image path per "
        "row, in the first column."
    )
  return [
      os.path.join(base, os.path.expanduser(row[0].strip())) for row in rows
  ]


def list_images(path: str, flag: str = "--images") -> list[str]:
  """The image files ``path`` names: a folder, a CSV list or one image.

  Args:
    path: a folder (searched recursively, sorted by path), a ``.csv`` whose
      first column holds image paths, or one image file.
    flag: the flag's name, for messages.

  Returns:
    Absolute paths.

  Raises:
    UserError: ``path`` is missing, or a folder or CSV holds no images.
  """
  if not path or not os.path.exists(path):
    raise UserError(
        f"{flag}={path!r} does not exist: give a folder of images, "
        "a CSV list of image paths or one image."
    )
  if os.path.isdir(path):
    found = []
    for root, dirs, names in os.walk(path, followlinks=True):
      dirs.sort()
      found += [os.path.join(root, n) for n in sorted(names) if _is_image(n)]
    if not found:
      raise UserError(
          f"{flag}={path!r} holds no images "
          f"({', '.join(IMAGE_EXTENSIONS)}), even in subfolders."
      )
    return [os.path.abspath(p) for p in found]
  if path.lower().endswith(".csv"):
    return [os.path.abspath(p) for p in _read_csv_paths(path, flag)]
  if _is_image(path):
    return [os.path.abspath(path)]
  raise UserError(
      f"{flag}={path!r} is neither a folder, a .csv list nor an "
      f"image ({', '.join(IMAGE_EXTENSIONS)})."
  )


def _decode_problem(tf, path: str) -> str:
  """Why ``path`` can't be read or decoded, in a few words."""
  try:
    tf.io.decode_image(
        tf.io.read_file(path), channels=3, expand_animations=False
    )
  except tf.errors.NotFoundError:
    return "no such file"
  except (tf.errors.OpError, ValueError) as e:
    text = getattr(e, "message", None) or str(e)
    # TF wraps the reason in the op's name and node: keep the reason.
    text = re.sub(r"\{\{.*?\}\}|\[Op:.*", "", text).strip()
    return (text.splitlines() or [type(e).__name__])[0].rstrip(".")
  return "unreadable"


def bad_image_error(tf, path: str) -> DataError:
  return DataError(
      f"cannot decode image {path!r} ({_decode_problem(tf, path)}"
      "): delete or replace it, or pass --skip_bad to skip such "
      "files."
  )


def read_images(
    paths: Sequence[str],
    *,
    image_size: int,
    channels: int,
    batch_size: int,
    skip_bad: bool = False,
    skipped: list[str] | None = None,
) -> Iterator[tuple[np.ndarray, np.ndarray]]:
  """Decodes ``paths`` as the run's dataset decodes files, batch by batch.

  tf.data reads and decodes in parallel, in order; RGB, squashed to
  ``image_size`` (`maskcon_jax.datasets.core`'s decoder), then converted to
  ``channels`` (1: `input_pipeline.rgb_to_luma`).

  Args:
    paths: image files.
    image_size: the side of the output images.
    channels: 1 or 3.
    batch_size: images per yielded batch (the last may hold fewer).
    skip_bad: leave out files that can't be read or decoded (appended to
      ``skipped``) instead of raising.
    skipped: a list that receives the skipped paths.

  Yields:
    ``(indices, images)``: positions in ``paths`` and uint8 ``(B, S, S, C)``.

  Raises:
    DataError: a file can't be read or decoded and ``skip_bad`` is False.
  """
  # pylint: disable-next=g-import-not-at-top
  from maskcon_jax.datasets import core

  tf = core.import_tf()
  # The decoder of every file dataset, so images match what training saw.
  decode = core._decode_and_resize(tf, image_size)  # pylint: disable=protected-access
  ds = tf.data.Dataset.from_tensor_slices(
      (np.arange(len(paths), dtype=np.int64), np.asarray(paths, dtype=str))
  )
  ds = ds.map(
      lambda i, p: (i, decode(tf.io.read_file(p))),
      num_parallel_calls=tf.data.AUTOTUNE,
      deterministic=True,
  )
  # A failed read or decode drops the element; its index goes missing below.
  ds = ds.ignore_errors().batch(batch_size).prefetch(tf.data.AUTOTUNE)
  expected = 0
  for indices, images in ds.as_numpy_iterator():
    for index in indices:
      for missing in range(expected, int(index)):
        if not skip_bad:
          raise bad_image_error(tf, paths[missing])
        if skipped is not None:
          skipped.append(paths[missing])
      expected = int(index) + 1
    if channels == 1:
      images = input_pipeline.rgb_to_luma(images)
    yield indices, images
  for missing in range(expected, len(paths)):
    if not skip_bad:
      raise bad_image_error(tf, paths[missing])
    if skipped is not None:
      skipped.append(paths[missing])


class Progress:
  """A progress line on stderr, redrawn at most once a second.

  Silent unless ``total`` exceeds ``min_total`` (short inputs finish before
  a bar would say anything).
  """

  def __init__(
      self,
      total: int,
      what: str = "images",
      *,
      min_total: int = 0,
      stream=None,
      interval_s: float = 1.0,
  ):
    self.total, self.what = total, what
    self.enabled = total > min_total
    self.stream = stream or sys.stderr
    self.interval_s = interval_s
    self.start = self.last = time.time()
    self.done = 0

  def update_to(self, done: int) -> None:
    """Sets how many items are done and redraws if a second has passed."""
    self.done = done
    now = time.time()
    if self.enabled and (
        now - self.last >= self.interval_s or self.done >= self.total
    ):
      self.last = now
      rate = self.done / max(now - self.start, 1e-9)
      eta = (self.total - self.done) / max(rate, 1e-9)
      print(
          f"\r{self.done:,}/{self.total:,} {self.what} "
          f"({100 * self.done / max(self.total, 1):.0f}%, {rate:.0f}/s, "
          f"ETA {int(eta) // 60}m{int(eta) % 60:02d}s)",
          end="",
          file=self.stream,
          flush=True,
      )

  def close(self) -> None:
    if self.enabled:
      print(file=self.stream, flush=True)


def embed_files(
    encoder: RunEncoder,
    paths: Sequence[str],
    *,
    skip_bad: bool = False,
    progress: bool = True,
) -> dict[str, Any]:
  """Reads and embeds image files with ``encoder``.

  Returns:
    ``features`` and ``projections`` (float32, one row per embedded file),
    ``paths`` (those embedded, in order) and ``skipped``.

  Raises:
    DataError: an unreadable file without ``skip_bad``, or no file readable.
  """
  skipped: list[str] = []
  bar = Progress(
      len(paths), min_total=encoder.batch_size if progress else len(paths)
  )
  kept, features, projections = [], [], []
  try:
    for indices, images in read_images(
        paths,
        image_size=encoder.image_size,
        channels=encoder.channels,
        batch_size=encoder.batch_size,
        skip_bad=skip_bad,
        skipped=skipped,
    ):
      out = encoder.embed(images)
      features.append(out["features"])
      projections.append(out["projection"])
      kept += [paths[i] for i in indices]
      bar.update_to(int(indices[-1]) + 1)
    bar.update_to(len(paths))
  finally:
    bar.close()
  if not kept:
    raise DataError(
        f"none of the {len(paths)} images could be decoded (e.g. "
        f"{skipped[0]!r}): give PNG, JPEG, GIF or BMP files."
    )
  return {
      "features": np.concatenate(features),
      "projections": np.concatenate(projections),
      "paths": kept,
      "skipped": skipped,
  }


def write_npz(out: str, arrays: dict[str, Any]) -> None:
  """Writes ``arrays`` to ``out`` atomically, creating its folder.

  Raises:
    UserError: the folder can't be created or the file written.
  """
  directory = os.path.dirname(os.path.abspath(out))
  try:
    os.makedirs(directory, exist_ok=True)
    tmp = out + ".tmp"
    # A file object keeps numpy from appending ".npz" to the name.
    with open(tmp, "wb") as f:
      np.savez(f, **arrays)
    os.replace(tmp, out)
  except OSError as e:
    raise UserError(
        f"cannot write --out={out}: {e.strerror}; choose a writable path."
    ) from e


def run_embed(
    workdir: str,
    images: str,
    out: str,
    *,
    checkpoint: int | None = None,
    skip_bad: bool = False,
    progress: bool = True,
) -> dict[str, np.ndarray]:
  """Embeds the images ``images`` names with ``workdir``'s run into ``out``.

  Args:
    workdir: a directory written by ``maskcon_jax.train``.
    images: a folder, a CSV list or one image (`list_images`).
    out: the ``.npz`` to write (no suffix is added).
    checkpoint: the checkpoint step; the newest if None.
    skip_bad: skip files that can't be decoded (listed in ``skipped``).
    progress: show a progress line on stderr for inputs over one batch.

  Returns:
    The arrays written (see the module doc).

  Raises:
    UserError: one line saying what to fix.
  """
  paths = list_images(images)
  encoder = load_run_encoder(workdir, checkpoint)
  result = embed_files(encoder, paths, skip_bad=skip_bad, progress=progress)
  arrays = {
      "features": result["features"],
      "projections": result["projections"],
      "paths": np.asarray(result["paths"], dtype=str),
      "step": np.asarray(encoder.step, np.int64),
      "workdir": np.asarray(encoder.workdir, dtype=str),
      "fingerprint": np.asarray(encoder.fingerprint, dtype=str),
      "image_size": np.asarray(encoder.image_size, np.int64),
      "channels": np.asarray(encoder.channels, np.int64),
      "skipped": np.asarray(result["skipped"], dtype=str).reshape(-1),
  }
  write_npz(out, arrays)
  if result["skipped"]:
    logging.warning(
        "Skipped %d files that could not be decoded: %s",
        len(result["skipped"]),
        ", ".join(result["skipped"]),
    )
  return arrays


def skipped_line(skipped: Sequence[str]) -> str:
  """``"skipped N undecodable files: a, b, ..."``."""
  shown = ", ".join(skipped[:_SHOW]) + (", ..." if len(skipped) > _SHOW else "")
  return f"skipped {len(skipped)} undecodable file(s): {shown}"


def define_flags() -> None:
  """Defines the command-line flags (only when run as a program)."""
  flags.DEFINE_string(
      "workdir", None, "A directory written by maskcon_jax.train."
  )
  flags.DEFINE_string(
      "images",
      None,
      "A folder of images (recursive), a CSV "
      "whose first column lists image paths, or one image.",
  )
  flags.DEFINE_string("out", None, "The .npz file to write.")
  flags.DEFINE_integer(
      "checkpoint",
      None,
      "The checkpoint step to embed with; the latest if unset.",
  )
  flags.DEFINE_boolean(
      "skip_bad",
      False,
      "Skip (and list) files that can't "
      "be decoded instead of stopping at the first.",
  )
  flags.mark_flags_as_required(["workdir", "images", "out"])


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"Unexpected arguments: {' '.join(argv[1:])}")
  logging.set_verbosity(logging.ERROR)  # The lines below are the output.
  flag = flags.FLAGS
  try:
    arrays = run_embed(
        flag.workdir,
        flag.images,
        flag.out,
        checkpoint=flag.checkpoint,
        skip_bad=flag.skip_bad,
    )
  except UserError as e:
    print(f"error: {e}", file=sys.stderr, flush=True)
    sys.exit(2)
  if len(arrays["skipped"]):
    print(skipped_line(list(arrays["skipped"])), file=sys.stderr, flush=True)
  print(
      f"wrote {flag.out}: {len(arrays['paths'])} images, features "
      f"{arrays['features'].shape[1]}-d, projections "
      f"{arrays['projections'].shape[1]}-d (step {int(arrays['step'])})",
      flush=True,
  )


if __name__ == "__main__":
  maskcon_jax.prefer_eigen_cpu_convolutions()  # Before JAX starts.
  define_flags()
  app.run(main)
