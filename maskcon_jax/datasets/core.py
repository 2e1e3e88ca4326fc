"""Label hierarchies, dataset containers and the tf.data image machinery.

Two containers hold a train/test image dataset:

* `Dataset`: every image in host memory as one uint8 array per split. Right
  for 32-pixel data and small custom sets.
* `StreamingDataset`: the same labels and statistics, but images are read,
  decoded and resized batch by batch with tf.data. Right for 224-pixel data
  (Cars196, Stanford Online Products), whose uint8 arrays would not fit in
  accelerator memory.

Both get their examples from an `ImageSource`: either a prepared TFDS split
(`TfdsSource`) or a list of image files (`FileSource`). TensorFlow is imported
only when images are actually read.

It is over 600 lines (about 1,100) because the two containers share the
machinery below them (sources, decoding, sharded and padded batching, the
label hierarchy); the dataset-specific loaders are in the sibling modules.
"""

from __future__ import annotations

import abc
import dataclasses
import math
from typing import Any, Callable, Iterator, Sequence

import numpy as np

from maskcon_jax import fingerprint
from maskcon_jax.errors import DataError

# Examples whose encoded bytes tf.data keeps in memory to shuffle a TFDS split.
# Cars196 (8,144 train images) fits whole, so its shuffle is exact; for SOP
# (59,551) it mixes 16k-example windows of a file-shuffled order.
DEFAULT_SHUFFLE_BUFFER = 16384
# Batch size for reading whole splits into memory; only affects speed.
_READ_BATCH = 256


def import_tf() -> Any:
  """Imports TensorFlow with it kept off the GPUs.

  TensorFlow only reads and decodes images here; left alone it would reserve
  most of the accelerator memory that JAX needs.
  """
  import tensorflow as tf  # pylint: disable=g-import-not-at-top

  try:
    tf.config.set_visible_devices([], "GPU")
  except (RuntimeError, ValueError):
    # Already initialised (e.g. by another library): nothing more to do.
    pass
  return tf


def import_tfds() -> Any:
  """Imports tensorflow_datasets (after `import_tf`, for the same reason)."""
  import_tf()
  import tensorflow_datasets as tfds  # pylint: disable=g-import-not-at-top

  return tfds


# ---------------------------------------------------------------------------
# Label hierarchy.
# ---------------------------------------------------------------------------


def _check_level(
    parents: tuple[int, ...], num_parents: int, what: str, child: str
) -> None:
  """Checks that ``parents`` ids lie in range and every parent has a child."""
  bad = [c for c in parents if not 0 <= c < num_parents]
  if bad:
    raise ValueError(
        f"LabelHierarchy {what} ids {sorted(set(bad))} are "
        f"outside [0, {num_parents})."
    )
  unused = sorted(set(range(num_parents)) - set(parents))
  if unused:
    # An empty class would never appear in training data and would silently
    # skew per-class metrics, so it is a construction error.
    raise ValueError(
        f"LabelHierarchy {what} classes {unused} have no " f"{child} class."
    )


@dataclasses.dataclass(frozen=True)
class LabelHierarchy:
  """Maps each fine class to exactly one coarse class, and optionally further.

  The two-level form (fine -> coarse) is what every method trains with. Deeper
  hierarchies add levels above the coarse one: ``upper_levels[0][c]`` is the
  level-2 parent of coarse class ``c``, ``upper_levels[1][p]`` the level-3
  parent of level-2 class ``p``, and so on. Level 0 is fine, level 1 coarse.

  Attributes:
    fine_to_coarse: ``fine_to_coarse[f]`` is the coarse id of fine class ``f``.
    fine_names: Human-readable name of each fine class.
    coarse_names: Human-readable name of each coarse class.
    upper_levels: Parent tables of the levels above coarse (may be empty).
    upper_names: Class names of each level above coarse, one tuple per entry
      of ``upper_levels``.
  """

  fine_to_coarse: tuple[int, ...]
  fine_names: tuple[str, ...]
  coarse_names: tuple[str, ...]
  upper_levels: tuple[tuple[int, ...], ...] = ()
  upper_names: tuple[tuple[str, ...], ...] = ()

  def __post_init__(self):
    # Normalise lists/numpy ints to plain tuples so instances stay hashable
    # and compare equal regardless of how they were built.
    object.__setattr__(
        self, "fine_to_coarse", tuple(int(c) for c in self.fine_to_coarse)
    )
    object.__setattr__(
        self, "fine_names", tuple(str(n) for n in self.fine_names)
    )
    object.__setattr__(
        self, "coarse_names", tuple(str(n) for n in self.coarse_names)
    )
    object.__setattr__(
        self,
        "upper_levels",
        tuple(tuple(int(p) for p in level) for level in self.upper_levels),
    )
    object.__setattr__(
        self,
        "upper_names",
        tuple(tuple(str(n) for n in names) for names in self.upper_names),
    )
    if not self.fine_to_coarse:
      raise ValueError("LabelHierarchy needs at least one fine class.")
    if len(self.fine_names) != len(self.fine_to_coarse):
      raise ValueError(
          f"LabelHierarchy has {len(self.fine_to_coarse)} fine classes in "
          f"fine_to_coarse but {len(self.fine_names)} fine_names."
      )
    if not self.coarse_names:
      raise ValueError("LabelHierarchy needs at least one coarse class.")
    _check_level(self.fine_to_coarse, self.num_coarse, "coarse", "fine")
    if len(self.upper_levels) != len(self.upper_names):
      raise ValueError(
          f"LabelHierarchy has {len(self.upper_levels)} "
          f"upper_levels but {len(self.upper_names)} "
          "upper_names."
      )
    num_children = self.num_coarse
    for i, (parents, names) in enumerate(
        zip(self.upper_levels, self.upper_names)
    ):
      if len(parents) != num_children:
        raise ValueError(
            f"LabelHierarchy upper_levels[{i}] has "
            f"{len(parents)} entries; level {i + 1} has "
            f"{num_children} classes."
        )
      if not names:
        raise ValueError(
            f"LabelHierarchy level {i + 2} needs at least one class."
        )
      _check_level(parents, len(names), f"level-{i + 2}", "child")
      num_children = len(names)

  @property
  def num_fine(self) -> int:
    return len(self.fine_to_coarse)

  @property
  def num_coarse(self) -> int:
    return len(self.coarse_names)

  @property
  def num_levels(self) -> int:
    """2 for fine -> coarse, plus one per upper level."""
    return 2 + len(self.upper_levels)

  def level_names(self, level: int) -> tuple[str, ...]:
    """Class names of ``level`` (0 fine, 1 coarse, 2+ upper levels)."""
    self._check_level_index(level)
    if level == 0:
      return self.fine_names
    if level == 1:
      return self.coarse_names
    return self.upper_names[level - 2]

  def coarse_of(self, fine_labels: np.ndarray) -> np.ndarray:
    """Returns the int32 coarse label of each fine label (any shape).

    Raises:
      ValueError: if a fine label is outside ``[0, num_fine)``; numpy would
        otherwise wrap negative labels around silently.
    """
    fine = np.asarray(fine_labels)
    if fine.size and (fine.min() < 0 or fine.max() >= self.num_fine):
      raise ValueError(
          f"Fine labels must lie in [0, {self.num_fine}), got values in "
          f"[{fine.min()}, {fine.max()}]."
      )
    table = np.asarray(self.fine_to_coarse, dtype=np.int32)
    return table[fine.astype(np.int64)]

  def labels_at(self, fine_labels: np.ndarray, level: int) -> np.ndarray:
    """Returns the int32 level-``level`` ancestor of each fine label."""
    self._check_level_index(level)
    labels = np.asarray(fine_labels)
    if level == 0:
      self.coarse_of(labels)  # Range check only.
      return labels.astype(np.int32)
    labels = self.coarse_of(labels)
    for parents in self.upper_levels[: level - 1]:
      labels = np.asarray(parents, np.int32)[labels]
    return labels

  def _check_level_index(self, level: int) -> None:
    if not 0 <= level < self.num_levels:
      raise ValueError(f"Level {level} is outside [0, {self.num_levels}).")


def identity_hierarchy(coarse_names: Sequence[str]) -> LabelHierarchy:
  """One stand-in fine class per coarse class, for data without fine labels."""
  return LabelHierarchy(
      fine_to_coarse=tuple(range(len(coarse_names))),
      fine_names=tuple(coarse_names),
      coarse_names=tuple(coarse_names),
  )


# ---------------------------------------------------------------------------
# In-memory dataset.
# ---------------------------------------------------------------------------


# `eq=False`: comparing or hashing large arrays field by field is never what a
# caller wants; identity semantics are the useful ones here.
@dataclasses.dataclass(frozen=True, eq=False)
class Dataset:
  """A train/test image dataset held in memory.

  Attributes:
    name: The ``config.dataset`` it was loaded as.
    train_images: uint8 ``(N, H, W, C)``.
    train_fine: int32 ``(N,)`` fine labels, or None when the data has no fine
      labels (see `has_fine_labels`).
    train_coarse: int32 ``(N,)`` coarse labels.
    test_images: uint8 ``(M, H, W, C)``.
    test_fine: int32 ``(M,)`` fine labels, or None (as ``train_fine``).
    test_coarse: int32 ``(M,)`` coarse labels.
    hierarchy: The fine -> coarse mapping. Without fine labels it has one
      stand-in fine class per coarse class.
    mean: Per-channel mean of the images scaled to [0, 1], for normalisation.
    std: Per-channel standard deviation of the images scaled to [0, 1].
    files: For data read from image files, ``{'train': ..., 'test': ...}``:
      a hash of each split's sorted file list
      (`maskcon_jax.fingerprint.files_digest`); None otherwise.
  """

  name: str
  train_images: np.ndarray
  train_fine: np.ndarray | None
  train_coarse: np.ndarray
  test_images: np.ndarray
  test_fine: np.ndarray | None
  test_coarse: np.ndarray
  hierarchy: LabelHierarchy
  mean: tuple[float, ...]
  std: tuple[float, ...]
  files: dict[str, str] | None = None

  def __post_init__(self):
    object.__setattr__(self, "mean", tuple(float(m) for m in self.mean))
    object.__setattr__(self, "std", tuple(float(s) for s in self.std))
    if (self.train_fine is None) != (self.test_fine is None):
      raise ValueError(
          "train_fine and test_fine must both be arrays or both be None."
      )
    for split in ("train", "test"):
      images = getattr(self, f"{split}_images")
      fine = getattr(self, f"{split}_fine")
      coarse = getattr(self, f"{split}_coarse")
      if images.dtype != np.uint8 or images.ndim != 4:
        raise ValueError(
            f"{split}_images must be uint8 (N, H, W, C), got "
            f"{images.dtype} {images.shape}."
        )
      for label_name, labels in (("fine", fine), ("coarse", coarse)):
        if labels is None:
          continue
        if labels.dtype != np.int32 or labels.shape != images.shape[:1]:
          raise ValueError(
              f"{split}_{label_name} must be int32 of shape "
              f"{images.shape[:1]}, got {labels.dtype} {labels.shape}."
          )
    if self.train_images.shape[1:] != self.test_images.shape[1:]:
      raise ValueError(
          f"Train images {self.train_images.shape[1:]} and test "
          f"images {self.test_images.shape[1:]} differ in shape."
      )
    channels = self.train_images.shape[-1]
    if len(self.mean) != channels or len(self.std) != channels:
      raise ValueError(
          f"mean and std need {channels} entries, got "
          f"{len(self.mean)} and {len(self.std)}."
      )

  @property
  def image_shape(self) -> tuple[int, int, int]:
    """``(H, W, C)`` of every image."""
    return tuple(self.train_images.shape[1:])

  @property
  def num_train(self) -> int:
    return int(self.train_images.shape[0])

  @property
  def num_test(self) -> int:
    return int(self.test_images.shape[0])

  @property
  def has_fine_labels(self) -> bool:
    """False for data labelled with coarse classes only.

    Retrieval can then only be scored against coarse labels; fine-label
    metrics are unavailable.
    """
    return self.train_fine is not None


# ---------------------------------------------------------------------------
# Image sources.
# ---------------------------------------------------------------------------


def first_line(error: Exception) -> str:
  """The first line of an error message (TF errors span many)."""
  text = str(getattr(error, "message", None) or error).strip()
  return text.splitlines()[0] if text else type(error).__name__


def shard_bounds(
    num_examples: int,
    process_index: int,
    process_count: int,
    drop_remainder: bool,
) -> tuple[int, int]:
  """``[start, stop)`` of one process's contiguous share of ``num_examples``.

  With ``drop_remainder`` every process gets ``num_examples // process_count``
  examples (equal step counts, as multi-process training needs); otherwise
  the first ``num_examples % process_count`` processes get one more.
  """
  if not 0 <= process_index < process_count:
    raise ValueError(
        f"process_index={process_index} is outside " f"[0, {process_count})."
    )
  base, extra = divmod(num_examples, process_count)
  if drop_remainder:
    return process_index * base, (process_index + 1) * base
  start = process_index * base + min(process_index, extra)
  return start, start + base + (process_index < extra)


class ImageSource(abc.ABC):
  """A split of labelled, encoded images that tf.data can read.

  Attributes:
    num_examples: Examples in the split.
    has_fine_labels: Whether examples carry a ``fine_label``.
    description: What the split is, for error messages.
  """

  num_examples: int
  has_fine_labels: bool
  description: str

  @abc.abstractmethod
  def examples(
      self,
      *,
      seed: int | None,
      process_index: int,
      process_count: int,
      drop_remainder: bool,
      skip: int = 0,
  ) -> tuple[Any, Callable[[int, int], Sequence[str]] | None]:
    """This process's share of the split.

    Args:
      seed: Shuffle with this seed; None keeps the stored order.
      process_index: Which share.
      process_count: Into how many shares the split is cut.
      drop_remainder: Give every process ``num_examples // process_count``
        examples (see `shard_bounds`).
      skip: Leave out the first ``skip`` examples of this share, without
        decoding them.

    Returns:
      ``(dataset, files)``: a ``tf.data.Dataset`` of ``{'image': encoded
      bytes, 'coarse_label': int[, 'fine_label': int]}``, and a function
      giving the files behind elements ``[start, stop)`` of it (used only to
      name an image that fails to decode), or None if files are not known.
    """

  def read_error(self, error: Exception) -> DataError:
    """The DataError for a failure while reading this source."""
    return DataError(f"Cannot read {self.description} ({first_line(error)}).")


class FileSource(ImageSource):
  """Images stored as individual files (PNG, JPEG, GIF or BMP).

  Shuffling permutes the whole file list (an exact shuffle), then cuts it into
  contiguous per-process shares, so each epoch every process sees a different
  subset.
  """

  def __init__(
      self,
      paths: Sequence[str],
      coarse: np.ndarray,
      fine: np.ndarray | None,
      description: str,
  ):
    """Initialises the source.

    Args:
      paths: Image file paths, in the split's stored order.
      coarse: Coarse label of each file.
      fine: Fine label of each file, or None if the data has none.
      description: What the split is, for error messages.
    """
    self.paths = np.asarray([str(p) for p in paths], dtype=object)
    self.coarse = np.asarray(coarse, np.int32)
    self.fine = None if fine is None else np.asarray(fine, np.int32)
    if len(self.coarse) != len(self.paths) or (
        self.fine is not None and len(self.fine) != len(self.paths)
    ):
      raise ValueError("paths and labels differ in length.")
    self.num_examples = len(self.paths)
    self.has_fine_labels = self.fine is not None
    self.description = description

  def examples(
      self, *, seed, process_index, process_count, drop_remainder, skip=0
  ):
    tf = import_tf()
    order = (
        np.arange(self.num_examples)
        if seed is None
        else np.random.default_rng(seed).permutation(self.num_examples)
    )
    start, stop = shard_bounds(
        self.num_examples, process_index, process_count, drop_remainder
    )
    paths = self.paths[order[start:stop]].astype(str)
    columns = {"path": paths, "coarse_label": self.coarse[order[start:stop]]}
    if self.fine is not None:
      columns["fine_label"] = self.fine[order[start:stop]]
    ds = tf.data.Dataset.from_tensor_slices(columns)

    def read(example):
      example = dict(example)
      example["image"] = tf.io.read_file(example.pop("path"))
      return example

    ds = ds.skip(skip).map(read, num_parallel_calls=tf.data.AUTOTUNE)
    return ds, lambda a, b: [str(p) for p in paths[skip + a : skip + b]]

  def read_error(self, error):
    return DataError(
        f"Cannot read an image of {self.description} "
        f"({first_line(error)}): check that the files exist and "
        "are intact PNG, JPEG, GIF or BMP images."
    )


class TfdsSource(ImageSource):
  """One split of a prepared TFDS dataset.

  ``label_fn`` maps the split's label features to ``fine_label`` and
  ``coarse_label`` inside tf.data; ``keep_fn`` optionally drops examples (the
  CIFAR-10 classes CIFARtoy leaves out).

  Shuffling shuffles the record files (seeded) and then a buffer of
  ``shuffle_buffer`` encoded examples. Without ``keep_fn`` each process reads
  only its own fixed slice of the split (`tfds.split_for_jax_process`); with
  it every process reads the whole split, shuffled alike, and keeps every
  ``process_count``-th kept example.
  """

  def __init__(
      self,
      builder: Any,
      tfds_name: str,
      data_dir: str,
      split: str,
      label_keys: Sequence[str],
      label_fn: Callable[[dict[str, Any]], dict[str, Any]],
      *,
      num_examples: int,
      has_fine_labels: bool = True,
      keep_fn: Callable[[dict[str, Any]], Any] | None = None,
      shuffle_buffer: int = DEFAULT_SHUFFLE_BUFFER,
  ):
    """Initialises the source.

    Args:
      builder: The prepared ``tfds`` builder.
      tfds_name: Its name for ``tfds build`` (e.g. ``cars196``).
      data_dir: The TFDS data_dir it is prepared in.
      split: TFDS split string, e.g. ``'train'`` or ``'train[:100]'``.
      label_keys: Features ``label_fn`` and ``keep_fn`` read.
      label_fn: Label features -> ``{'fine_label', 'coarse_label'}`` (tf).
      num_examples: Examples the source yields (after ``keep_fn``).
      has_fine_labels: Whether ``label_fn`` gives ``fine_label``.
      keep_fn: Label features -> bool tensor, False to drop the example.
      shuffle_buffer: Encoded examples buffered for shuffling.
    """
    self.builder = builder
    self.tfds_name = tfds_name
    self.data_dir = data_dir
    self.split = split
    self.label_keys = tuple(label_keys)
    self.label_fn = label_fn
    self.keep_fn = keep_fn
    self.num_examples = int(num_examples)
    self.has_fine_labels = has_fine_labels
    self.shuffle_buffer = int(shuffle_buffer)
    self.description = f"the TFDS {tfds_name} {split} split in {data_dir}"

  def examples(
      self, *, seed, process_index, process_count, drop_remainder, skip=0
  ):
    tfds = import_tfds()
    tf = import_tf()
    decoders = tfds.decode.PartialDecoding(
        {"image": True, **{k: True for k in self.label_keys}},
        decoders={"image": tfds.decode.SkipDecoding()},
    )
    read_config = tfds.ReadConfig(shuffle_seed=seed, try_autocache=False)
    if self.keep_fn is None:
      split = tfds.split_for_jax_process(
          self.split,
          process_index=process_index,
          process_count=process_count,
          drop_remainder=drop_remainder,
      )
    else:
      split = self.split
    ds = self.builder.as_dataset(
        split=split,
        decoders=decoders,
        shuffle_files=seed is not None,
        read_config=read_config,
    )
    if self.keep_fn is not None:
      ds = ds.filter(self.keep_fn).take(self.num_examples)
    if seed is not None:
      ds = ds.shuffle(
          min(self.shuffle_buffer, max(self.num_examples, 1)),
          seed=seed,
          reshuffle_each_iteration=False,
      )
    if self.keep_fn is not None:
      ds = ds.shard(process_count, process_index)
      if drop_remainder:
        ds = ds.take(self.num_examples // process_count)
    # Skipped examples are read but not decoded.
    ds = ds.skip(skip)
    label_fn = self.label_fn

    def relabel(example):
      return {"image": example["image"], **label_fn(example)}

    return ds.map(relabel, num_parallel_calls=tf.data.AUTOTUNE), None

  def read_error(self, error):
    return DataError(
        f"Cannot read {self.description} ({first_line(error)}): "
        f"rebuild it with `tfds build {self.tfds_name} "
        f"--data_dir={self.data_dir}`."
    )


class CoarseRemappedSource(ImageSource):
  """Another source's examples with coarse labels looked up from fine ones.

  Serves ``config.coarse_map`` on streamed data: ``coarse_label`` becomes
  ``fine_to_coarse[fine_label]`` inside tf.data, whatever the wrapped source
  derived it from (a table, or a TFDS feature such as CIFAR-100's own
  superclass), so the training labels follow the map exactly.
  """

  def __init__(self, source: ImageSource, fine_to_coarse: Sequence[int]):
    """Initialises the source.

    Args:
      source: The source to wrap; it must have fine labels.
      fine_to_coarse: The new coarse id of each fine class.
    """
    if not source.has_fine_labels:
      raise ValueError(
          f"{source.description} has no fine labels to derive "
          "coarse labels from."
      )
    self.source = source
    self.fine_to_coarse = tuple(int(c) for c in fine_to_coarse)
    self.num_examples = source.num_examples
    self.has_fine_labels = True
    self.description = source.description

  def examples(
      self, *, seed, process_index, process_count, drop_remainder, skip=0
  ):
    tf = import_tf()
    ds, files = self.source.examples(
        seed=seed,
        process_index=process_index,
        process_count=process_count,
        drop_remainder=drop_remainder,
        skip=skip,
    )
    table = tf.constant(np.asarray(self.fine_to_coarse, np.int32))

    def remap(example):
      example = dict(example)
      example["coarse_label"] = tf.gather(
          table, tf.cast(example["fine_label"], tf.int32)
      )
      return example

    return ds.map(remap, num_parallel_calls=tf.data.AUTOTUNE), files

  def read_error(self, error):
    return self.source.read_error(error)


def scan_tfds_labels(
    builder: Any,
    tfds_name: str,
    data_dir: str,
    split: str,
    label_keys: Sequence[str],
) -> dict[str, np.ndarray]:
  """Reads only the label features of a TFDS split, in stored order.

  Raises:
    DataError: the split cannot be read.
  """
  tfds = import_tfds()
  tf = import_tf()
  decoders = tfds.decode.PartialDecoding({k: True for k in label_keys})
  chunks = {k: [] for k in label_keys}
  try:
    ds = builder.as_dataset(
        split=split,
        decoders=decoders,
        read_config=tfds.ReadConfig(try_autocache=False),
    )
    for batch in tfds.as_numpy(ds.batch(8192).prefetch(tf.data.AUTOTUNE)):
      for k in label_keys:
        chunks[k].append(np.asarray(batch[k]))
  except tf.errors.OpError as e:
    raise DataError(
        f"Cannot read the TFDS {tfds_name} {split} split in {data_dir} "
        f"({first_line(e)}): rebuild it with `tfds build {tfds_name} "
        f"--data_dir={data_dir}`."
    ) from e
  return {
      k: (np.concatenate(v) if v else np.zeros((0,), np.int64))
      for k, v in chunks.items()
  }


# ---------------------------------------------------------------------------
# Decoding, batching and iteration.
# ---------------------------------------------------------------------------


def _decode_and_resize(tf: Any, image_size: int) -> Callable[[Any], Any]:
  """Returns a tf function: encoded bytes -> uint8 ``(S, S, 3)``.

  Grayscale and RGBA images become RGB. Images are squashed to a square
  without keeping the aspect ratio, as the official test transform
  ``Resize((224, 224))`` does; random crops happen later, in augmentation.
  An image already of the target size is left untouched.
  """

  def decode(encoded):
    image = tf.io.decode_image(encoded, channels=3, expand_animations=False)
    shape = tf.shape(image)

    def resize():
      resized = tf.image.resize(
          image, (image_size, image_size), method="bilinear", antialias=True
      )
      return tf.cast(tf.clip_by_value(tf.round(resized), 0.0, 255.0), tf.uint8)

    same = tf.logical_and(shape[0] == image_size, shape[1] == image_size)
    image = tf.cond(same, lambda: image, resize)
    return tf.ensure_shape(image, (image_size, image_size, 3))

  return decode


def _batched(
    ds: Any, image_size: int, batch_size: int, drop_remainder: bool
) -> Any:
  """Decodes, resizes and batches a dataset of `ImageSource` examples."""
  tf = import_tf()
  decode = _decode_and_resize(tf, image_size)

  def decode_example(example):
    example = dict(example)
    example["image"] = decode(example["image"])
    return example

  ds = ds.map(decode_example, num_parallel_calls=tf.data.AUTOTUNE)
  ds = ds.batch(batch_size, drop_remainder=drop_remainder)
  options = tf.data.Options()
  # Same input, same batches: training order must depend only on the seed.
  options.deterministic = True
  return ds.with_options(options).prefetch(tf.data.AUTOTUNE)


def _decode_error(
    source: ImageSource, error: Exception, files: Sequence[str] | None
) -> DataError:
  """Names the file among ``files`` that broke a batch, if there is one."""
  if files:
    tf = import_tf()
    for path in files:
      try:
        tf.io.decode_image(
            tf.io.read_file(path), channels=3, expand_animations=False
        )
      except (tf.errors.OpError, ValueError) as e:
        return DataError(
            f"Cannot decode image {path!r} of {source.description} "
            f"({first_line(e)}): delete or replace the file (PNG, JPEG, GIF "
            "and BMP images are read)."
        )
  return source.read_error(error)


def iterate_batches(
    source: ImageSource,
    *,
    image_size: int,
    batch_size: int,
    seed: int | None,
    process_index: int,
    process_count: int,
    drop_remainder: bool,
    skip_batches: int = 0,
) -> Iterator[dict[str, np.ndarray]]:
  """Yields numpy batches of decoded, resized images from ``source``.

  The first ``skip_batches`` batches are left out without being decoded.

  Raises:
    DataError: an image cannot be read or decoded (naming the file where the
      source knows it). Undecodable images are fatal rather than skipped:
      skipping would silently change the dataset and the step count.
  """
  tf = import_tf()
  ds, files = source.examples(
      seed=seed,
      process_index=process_index,
      process_count=process_count,
      drop_remainder=drop_remainder,
      skip=skip_batches * batch_size,
  )
  ds = _batched(ds, image_size, batch_size, drop_remainder)
  iterator = ds.as_numpy_iterator()
  position = 0
  while True:
    try:
      batch = next(iterator)
    except StopIteration:
      return
    except tf.errors.OpError as e:
      batch_files = files(position, position + batch_size) if files else None
      raise _decode_error(source, e, batch_files) from e
    position += batch_size
    batch["coarse_label"] = batch["coarse_label"].astype(np.int32)
    if "fine_label" in batch:
      batch["fine_label"] = batch["fine_label"].astype(np.int32)
    yield batch


def read_arrays(
    source: ImageSource, image_size: int
) -> tuple[np.ndarray, np.ndarray | None, np.ndarray]:
  """Reads a whole source into ``(images, fine or None, coarse)`` arrays."""
  images = np.zeros((source.num_examples, image_size, image_size, 3), np.uint8)
  coarse = np.zeros((source.num_examples,), np.int32)
  fine = (
      np.zeros((source.num_examples,), np.int32)
      if source.has_fine_labels
      else None
  )
  count = 0
  for batch in iterate_batches(
      source,
      image_size=image_size,
      batch_size=_READ_BATCH,
      seed=None,
      process_index=0,
      process_count=1,
      drop_remainder=False,
  ):
    n = len(batch["coarse_label"])
    if count + n > source.num_examples:
      raise DataError(
          f"{source.description} holds more than the "
          f"{source.num_examples} examples its metadata lists: "
          "rebuild or re-extract it."
      )
    images[count : count + n] = batch["image"]
    coarse[count : count + n] = batch["coarse_label"]
    if fine is not None:
      fine[count : count + n] = batch["fine_label"]
    count += n
  if count != source.num_examples:
    # Fewer examples than the metadata says: keep what was read rather than
    # zero-filled rows that would pass for real images.
    images, coarse = images[:count], coarse[:count]
    fine = None if fine is None else fine[:count]
  return images, fine, coarse


# ---------------------------------------------------------------------------
# Streaming dataset.
# ---------------------------------------------------------------------------


def epoch_seed(seed: int, epoch: int) -> int:
  """A 31-bit shuffle seed that depends only on ``(seed, epoch)``."""
  state = np.random.SeedSequence([int(seed) & 0xFFFFFFFF, int(epoch)])
  return int(state.generate_state(1, np.uint32)[0] >> 1)


@dataclasses.dataclass(frozen=True, eq=False)
class StreamingDataset:
  """A train/test image dataset read from disk batch by batch.

  Holds the same label hierarchy and normalisation statistics as `Dataset`;
  images come from `train_batches` / `test_batches` as dicts of numpy arrays:

  * ``'image'``: uint8 ``[B, S, S, 3]`` with ``S = image_size``, decoded and
    resized (aspect ratio not kept), not yet normalised or augmented;
  * ``'coarse_label'``: int32 ``[B]``;
  * ``'fine_label'``: int32 ``[B]``, only when `has_fine_labels`;
  * ``'index'`` (`split_batches` and `test_batches` only): int64 ``[B]``,
    each row's position in the split's stored order, -1 on padding.

  Attributes:
    name: The ``config.dataset`` it was loaded as.
    hierarchy: The fine -> coarse mapping.
    mean: Per-channel mean of the images scaled to [0, 1].
    std: Per-channel standard deviation of the images scaled to [0, 1].
    image_size: Side ``S`` of the square images the batches hold.
    train_source: Where training examples come from.
    test_source: Where test examples come from.
  """

  name: str
  hierarchy: LabelHierarchy
  mean: tuple[float, ...]
  std: tuple[float, ...]
  image_size: int
  train_source: ImageSource
  test_source: ImageSource

  def __post_init__(self):
    object.__setattr__(self, "mean", tuple(float(m) for m in self.mean))
    object.__setattr__(self, "std", tuple(float(s) for s in self.std))
    if len(self.mean) != 3 or len(self.std) != 3:
      raise ValueError("mean and std need 3 entries (RGB).")

  @property
  def image_shape(self) -> tuple[int, int, int]:
    return (self.image_size, self.image_size, 3)

  @property
  def num_train(self) -> int:
    return self.train_source.num_examples

  @property
  def num_test(self) -> int:
    return self.test_source.num_examples

  @property
  def has_fine_labels(self) -> bool:
    """False for data labelled with coarse classes only (see `Dataset`)."""
    return self.train_source.has_fine_labels

  def steps_per_epoch(self, batch_size: int, process_count: int = 1) -> int:
    """Batches `train_batches` yields per epoch, the same in every process."""
    return (self.num_train // process_count) // batch_size

  def train_batches(
      self,
      batch_size: int,
      *,
      seed: int,
      epoch: int,
      process_index: int = 0,
      process_count: int = 1,
      start_step: int = 0,
  ) -> Iterator[dict[str, np.ndarray]]:
    """One epoch of shuffled training batches for one process.

    Every process calls this with the same ``seed`` and ``epoch``; each gets a
    disjoint share of the examples and exactly
    ``steps_per_epoch(batch_size, process_count)`` full batches (incomplete
    batches are dropped, as the official code's ``drop_last=True``). The order
    depends only on ``(seed, epoch, process_index, process_count)``, so an
    interrupted run resumes an epoch exactly with ``start_step``.

    Args:
      batch_size: Examples per batch in this process.
      seed: The run's seed.
      epoch: The epoch number; each gets its own order.
      process_index: This process (``jax.process_index()``).
      process_count: Number of processes (``jax.process_count()``).
      start_step: Begin with this batch of the epoch; the earlier ones are
        skipped without being decoded.

    Yields:
      Batch dicts (see the class docstring).
    """
    return iterate_batches(
        self.train_source,
        image_size=self.image_size,
        batch_size=batch_size,
        seed=epoch_seed(seed, epoch),
        process_index=process_index,
        process_count=process_count,
        drop_remainder=True,
        skip_batches=start_step,
    )

  def test_batches(
      self,
      batch_size: int,
      *,
      process_index: int = 0,
      process_count: int = 1,
      pad: bool = False,
  ) -> Iterator[dict[str, np.ndarray]]:
    """The test split in stored order, once: `split_batches` of "test"."""
    return self.split_batches(
        "test",
        batch_size,
        process_index=process_index,
        process_count=process_count,
        pad=pad,
    )

  def split_batches(
      self,
      split: str,
      batch_size: int,
      *,
      process_index: int = 0,
      process_count: int = 1,
      pad: bool = False,
  ) -> Iterator[dict[str, np.ndarray]]:
    """A split ("train" or "test") in stored order, once, unshuffled.

    Args:
      split: "train" or "test".
      batch_size: Examples per batch.
      process_index: This process; process ``i`` gets the ``i``-th contiguous
        share (`shard_bounds` without dropping: shares differ in size by at
        most one example).
      process_count: Number of processes.
      pad: If False the last batch may be smaller. If True every batch has
        ``batch_size`` rows plus a boolean ``'mask'`` (False on zero padding),
        and every process yields the same number of batches,
        ``ceil(ceil(num_examples / process_count) / batch_size)``, which
        jitted multi-process evaluation needs.

    Yields:
      Batch dicts (see the class docstring) with ``'index'``, each row's
      position in the split (-1 on padding), plus ``'mask'`` when padding.
    """
    if split not in ("train", "test"):
      raise ValueError(f'split={split!r} is not "train" or "test".')
    source = self.test_source if split == "test" else self.train_source
    batches = iterate_batches(
        source,
        image_size=self.image_size,
        batch_size=batch_size,
        seed=None,
        process_index=process_index,
        process_count=process_count,
        drop_remainder=False,
    )
    start, _ = shard_bounds(
        source.num_examples, process_index, process_count, False
    )
    batches = _with_index(batches, start)
    if not pad:
      return batches
    num_batches = math.ceil(
        math.ceil(source.num_examples / process_count) / batch_size
    )
    return _padded(
        batches, batch_size, num_batches, self.image_shape, self.has_fine_labels
    )


def _with_index(
    batches: Iterator[dict[str, np.ndarray]], start: int
) -> Iterator[dict[str, np.ndarray]]:
  """Adds each row's position in the split: this process's share begins at
  ``start`` and its batches follow in stored order."""
  for batch in batches:
    n = len(batch["coarse_label"])
    yield {**batch, "index": start + np.arange(n, dtype=np.int64)}
    start += n


def _padded(
    batches: Iterator[dict[str, np.ndarray]],
    batch_size: int,
    num_batches: int,
    image_shape: tuple[int, int, int],
    has_fine: bool,
) -> Iterator[dict[str, np.ndarray]]:
  """Pads ``batches`` to full batches and to ``num_batches`` of them."""
  empty = {
      "image": np.zeros((0, *image_shape), np.uint8),
      "coarse_label": np.zeros((0,), np.int32),
      "index": np.zeros((0,), np.int64),
  }
  if has_fine:
    empty["fine_label"] = np.zeros((0,), np.int32)
  yielded = 0
  for batch in batches:
    yield _pad_batch(batch, batch_size)
    yielded += 1
  for _ in range(num_batches - yielded):
    yield _pad_batch(empty, batch_size)


def _pad_batch(
    batch: dict[str, np.ndarray], batch_size: int
) -> dict[str, np.ndarray]:
  n = len(batch["coarse_label"])
  out = {}
  for key, value in batch.items():
    fill = -1 if key == "index" else 0  # No position in the split.
    pad = np.full((batch_size - n, *value.shape[1:]), fill, value.dtype)
    out[key] = np.concatenate([value, pad]) if n < batch_size else value
  out["mask"] = np.arange(batch_size) < n
  return out


def with_hierarchy(
    dataset: Dataset | StreamingDataset,
    hierarchy: LabelHierarchy,
    name: str | None = None,
) -> Dataset | StreamingDataset:
  """``dataset`` relabelled: coarse labels from ``hierarchy`` and fine labels.

  Args:
    dataset: A dataset with fine labels.
    hierarchy: The new hierarchy; its fine classes must be the dataset's.
    name: A new ``name`` (default: keep it).

  Returns:
    A dataset of the same kind sharing the images (in memory: coarse labels
    recomputed; streaming: sources wrapped in `CoarseRemappedSource`).

  Raises:
    ValueError: the dataset has no fine labels, or a different number of
      fine classes.
  """
  if not dataset.has_fine_labels:
    raise ValueError(f"Dataset {dataset.name!r} has no fine labels.")
  if hierarchy.num_fine != dataset.hierarchy.num_fine:
    raise ValueError(
        f"The new hierarchy has {hierarchy.num_fine} fine "
        f"classes, dataset {dataset.name!r} "
        f"{dataset.hierarchy.num_fine}."
    )
  name = dataset.name if name is None else name
  if isinstance(dataset, StreamingDataset):
    return dataclasses.replace(
        dataset,
        name=name,
        hierarchy=hierarchy,
        train_source=CoarseRemappedSource(
            dataset.train_source, hierarchy.fine_to_coarse
        ),
        test_source=CoarseRemappedSource(
            dataset.test_source, hierarchy.fine_to_coarse
        ),
    )
  return dataclasses.replace(
      dataset,
      name=name,
      hierarchy=hierarchy,
      train_coarse=hierarchy.coarse_of(dataset.train_fine),
      test_coarse=hierarchy.coarse_of(dataset.test_fine),
  )


def in_memory(dataset: StreamingDataset) -> Dataset:
  """Reads both splits of ``dataset`` into a `Dataset`."""
  train_images, train_fine, train_coarse = read_arrays(
      dataset.train_source, dataset.image_size
  )
  test_images, test_fine, test_coarse = read_arrays(
      dataset.test_source, dataset.image_size
  )
  return Dataset(
      name=dataset.name,
      train_images=train_images,
      train_fine=train_fine,
      train_coarse=train_coarse,
      test_images=test_images,
      test_fine=test_fine,
      test_coarse=test_coarse,
      hierarchy=dataset.hierarchy,
      mean=dataset.mean,
      std=dataset.std,
      files=_files(dataset),
  )


def _files(dataset: StreamingDataset) -> dict[str, str] | None:
  """`Dataset.files` of data read from ``dataset``'s sources."""
  digests = {
      split: fingerprint.source_files_digest(
          getattr(dataset, f"{split}_source")
      )
      for split in ("train", "test")
  }
  return digests if all(digests.values()) else None
