"""The datasets that ship with the library or need no download.

* ``fashion_mnist`` and ``fashion_mnist_mixed``: Fashion-MNIST read from local
  files only (Debian's ``dataset-fashion-mnist`` package, a folder of IDX
  files, or a prepared TFDS copy), under its two coarse groupings;
* ``digits``: scikit-learn's bundled 8x8 digits;
* ``synthetic``: procedurally generated class patterns, for tests and smoke
  runs.

Use `maskcon_jax.input_pipeline.load_dataset`, which picks the loader, and
regroups, subsets and converts what it returns.
"""

from __future__ import annotations

import glob
import gzip
import os
from typing import Any, Sequence
import zlib

import ml_collections
import numpy as np

from maskcon_jax import hierarchies
from maskcon_jax.datasets import core
from maskcon_jax.datasets.core import Dataset
from maskcon_jax.datasets.core import LabelHierarchy
from maskcon_jax.errors import ConfigError
from maskcon_jax.errors import DataError
from maskcon_jax.errors import is_int


def make_dataset(
    name: str,
    hierarchy: LabelHierarchy,
    train: tuple[np.ndarray, np.ndarray],
    test: tuple[np.ndarray, np.ndarray],
    mean: Sequence[float],
    std: Sequence[float],
) -> Dataset:
  """Assembles a `Dataset`, deriving the coarse labels from the fine ones."""
  train_images, train_fine = train
  test_images, test_fine = test
  train_fine = np.asarray(train_fine, dtype=np.int32)
  test_fine = np.asarray(test_fine, dtype=np.int32)
  return Dataset(
      name=name,
      train_images=np.asarray(train_images, dtype=np.uint8),
      train_fine=train_fine,
      train_coarse=hierarchy.coarse_of(train_fine),
      test_images=np.asarray(test_images, dtype=np.uint8),
      test_fine=test_fine,
      test_coarse=hierarchy.coarse_of(test_fine),
      hierarchy=hierarchy,
      mean=tuple(mean),
      std=tuple(std),
  )


# ---------------------------------------------------------------------------
# Fashion-MNIST.
# ---------------------------------------------------------------------------


def _fashion_mnist_hierarchy(grouping: str) -> LabelHierarchy:
  fine_to_coarse, coarse_names = hierarchies.fashion_mnist_grouping(grouping)
  return LabelHierarchy(
      fine_to_coarse=fine_to_coarse,
      fine_names=hierarchies.FASHION_MNIST_NAMES,
      coarse_names=coarse_names,
  )


# Dataset `fashion_mnist`: tops {0, 2, 4, 6} -> 0, footwear {5, 7, 9} -> 1,
# other {1, 3, 8} -> 2.
FASHION_MNIST_HIERARCHY = _fashion_mnist_hierarchy("natural")
# Dataset `fashion_mnist_mixed`: mixed_a {0, 1, 2, 5, 8} -> 0, mixed_b
# {3, 4, 6, 7, 9} -> 1 (see `hierarchies.FASHION_MNIST_GROUPINGS`).
FASHION_MNIST_MIXED_HIERARCHY = _fashion_mnist_hierarchy("mixed")

# The widely quoted statistics of the Fashion-MNIST training set in [0, 1].
FASHION_MNIST_MEAN = (0.2860,)
FASHION_MNIST_STD = (0.3530,)

# Installed by Debian/Ubuntu's `dataset-fashion-mnist` package.
DEBIAN_FASHION_MNIST_DIR = "/usr/share/datasets/fashion-mnist"

_IDX_FILES = {
    "train_images": "train-images-idx3-ubyte",
    "train_labels": "train-labels-idx1-ubyte",
    "test_images": "t10k-images-idx3-ubyte",
    "test_labels": "t10k-labels-idx1-ubyte",
}
_IDX_IMAGES_MAGIC = 2051  # uint8 data, 3 dimensions.
_IDX_LABELS_MAGIC = 2049  # uint8 data, 1 dimension.
_FASHION_MNIST_SHAPE = (28, 28)
_FASHION_MNIST_NOT_FOUND = (
    "Fashion-MNIST not found: run `apt-get install dataset-fashion-mnist` "
    "(Debian/Ubuntu), prepare it with `tfds build fashion_mnist`, or set "
    "--config.data_dir to a folder holding its IDX files; "
    "--config.dataset=digits needs no download."
)


def load_fashion_mnist(data_dir: str | None) -> Dataset:
  """Finds Fashion-MNIST locally (see `load_dataset`) and loads it."""
  if data_dir:
    data_dir = os.fspath(os.path.expanduser(data_dir))
    is_remote = "://" in data_dir
    if not is_remote and not os.path.isdir(data_dir):
      raise DataError(
          f"config.data_dir={data_dir!r} does not exist: point it "
          "at a folder holding the Fashion-MNIST IDX files or a "
          "TFDS data_dir where fashion_mnist is prepared."
      )
    if not is_remote:
      paths = _find_idx_files(data_dir)
      if paths is not None:
        return _fashion_mnist_from_idx(paths)
    try:
      splits = _read_tfds_fashion_mnist(data_dir)
    except ImportError as e:
      raise DataError(
          f"config.data_dir={data_dir!r} holds a TFDS fashion_mnist but "
          f"TensorFlow Datasets cannot be imported ({e}): install "
          "tensorflow-datasets or use a folder of IDX files instead."
      ) from e
    if splits is not None:
      return _fashion_mnist_from_arrays(*splits)
    raise DataError(
        f"No Fashion-MNIST in config.data_dir={data_dir!r}: it should hold "
        "the four IDX files (train-images-idx3-ubyte, train-labels-idx1-ubyte, "
        "t10k-images-idx3-ubyte, t10k-labels-idx1-ubyte, each optionally "
        ".gz) or be a TFDS data_dir with fashion_mnist prepared."
    )

  # An absent or broken TFDS install must not stop the other sources from
  # being tried, so any failure of the default-location probe just skips it.
  # A prepared copy that exists but is unreadable is still reported (DataError).
  try:
    splits = _read_tfds_fashion_mnist(_default_tfds_data_dir())
  except DataError:
    raise
  except Exception:  # pylint: disable=broad-except
    splits = None
  if splits is not None:
    return _fashion_mnist_from_arrays(*splits)

  if os.path.isdir(DEBIAN_FASHION_MNIST_DIR):
    paths = _find_idx_files(DEBIAN_FASHION_MNIST_DIR)
    if paths is not None:
      return _fashion_mnist_from_idx(paths)
  raise DataError(_FASHION_MNIST_NOT_FOUND)


def _find_idx_files(directory: str) -> dict[str, str] | None:
  """Returns the paths of the four IDX files, or None if none is there.

  Raises:
    DataError: only some of the four files are present, which is almost
      certainly an incomplete copy the user wants to hear about.
  """
  found = {}
  for key, base in _IDX_FILES.items():
    # The uncompressed file wins when both exist: it is faster to read.
    for candidate in (base, base + ".gz"):
      path = os.path.join(directory, candidate)
      if os.path.isfile(path):
        found[key] = path
        break
  if not found:
    return None
  missing = [_IDX_FILES[k] for k in _IDX_FILES if k not in found]
  if missing:
    raise DataError(
        f"Fashion-MNIST in {directory!r} is incomplete: add "
        f'{", ".join(missing)} (optionally .gz) next to the other '
        "IDX files."
    )
  return found


def read_idx(path: str, *, expected_ndim: int) -> np.ndarray:
  """Reads a uint8 IDX file (optionally gzipped) into a numpy array.

  The IDX format is a big-endian int32 magic number ``0x0000TTDD`` (``TT`` =
  0x08 for uint8, ``DD`` = number of dimensions), ``DD`` big-endian int32
  sizes, then the data in C order.

  Args:
    path: The file; a ``.gz`` suffix means gzip-compressed.
    expected_ndim: 3 for image files, 1 for label files.

  Returns:
    A uint8 array of the stored shape.

  Raises:
    DataError: the file cannot be read or is not a well-formed IDX file of
      the expected kind.
  """
  try:
    if path.endswith(".gz"):
      with gzip.open(path, "rb") as f:
        raw = f.read()
    else:
      with open(path, "rb") as f:
        raw = f.read()
  except (OSError, EOFError, zlib.error) as e:
    raise DataError(
        f"Cannot read IDX file {path!r} ({e}): replace it with an "
        "intact copy."
    ) from e
  expected_magic = 0x0800 + expected_ndim
  header_size = 4 * (1 + expected_ndim)
  if len(raw) < header_size:
    raise DataError(
        f"IDX file {path!r} is truncated ({len(raw)} bytes): "
        "replace it with an intact copy."
    )
  magic = int(np.frombuffer(raw, dtype=">i4", count=1)[0])
  if magic != expected_magic:
    raise DataError(
        f"IDX file {path!r} has magic number {magic}, expected "
        f"{expected_magic}: replace it with an intact copy."
    )
  shape = tuple(
      int(d)
      for d in np.frombuffer(raw, dtype=">i4", count=expected_ndim, offset=4)
  )
  num_bytes = int(np.prod(shape, dtype=np.int64))
  if len(raw) - header_size != num_bytes:
    raise DataError(
        f"IDX file {path!r} holds {len(raw) - header_size} data "
        f"bytes but its header {shape} needs {num_bytes}: replace "
        "it with an intact copy."
    )
  # frombuffer over immutable bytes is read-only; one copy (milliseconds even
  # for 47 MB) makes the result an ordinary writable array like every other
  # source returns.
  data = np.frombuffer(raw, dtype=np.uint8, offset=header_size)
  return data.reshape(shape).copy()


def _fashion_mnist_from_idx(paths: dict[str, str]) -> Dataset:
  """Loads Fashion-MNIST from its four IDX files."""
  splits = []
  for split in ("train", "test"):
    images_path = paths[f"{split}_images"]
    labels_path = paths[f"{split}_labels"]
    images = read_idx(images_path, expected_ndim=3)
    labels = read_idx(labels_path, expected_ndim=1)
    if images.shape[1:] != _FASHION_MNIST_SHAPE:
      raise DataError(
          f"IDX file {images_path!r} holds images of shape "
          f"{images.shape[1:]}, expected {_FASHION_MNIST_SHAPE}: "
          "it is not Fashion-MNIST."
      )
    if images.shape[0] != labels.shape[0]:
      raise DataError(
          f"{images_path!r} holds {images.shape[0]} images but "
          f"{labels_path!r} holds {labels.shape[0]} labels: use "
          "files from the same copy of Fashion-MNIST."
      )
    if labels.size and labels.max() >= FASHION_MNIST_HIERARCHY.num_fine:
      raise DataError(
          f"IDX file {labels_path!r} has label {labels.max()}, "
          "Fashion-MNIST has 10 classes: it is not Fashion-MNIST."
      )
    splits.append((images[..., None], labels))
  return _fashion_mnist_from_arrays(*splits)


def _fashion_mnist_from_arrays(
    train: tuple[np.ndarray, np.ndarray], test: tuple[np.ndarray, np.ndarray]
) -> Dataset:
  return make_dataset(
      "fashion_mnist",
      FASHION_MNIST_HIERARCHY,
      train,
      test,
      FASHION_MNIST_MEAN,
      FASHION_MNIST_STD,
  )


def _default_tfds_data_dir() -> str:
  """The data_dir TFDS uses when none is given (mirrors tfds' own default)."""
  return os.environ.get("TFDS_DATA_DIR") or os.path.join(
      os.path.expanduser("~"), "tensorflow_datasets"
  )


def _read_tfds_fashion_mnist(
    data_dir: str,
) -> tuple[tuple[np.ndarray, np.ndarray], tuple[np.ndarray, np.ndarray]] | None:
  """Reads a prepared TFDS ``fashion_mnist`` from ``data_dir``, else None.

  Never downloads or prepares anything: an unprepared dataset returns None.

  Returns:
    ``((train_images, train_labels), (test_images, test_labels))`` or None.

  Raises:
    DataError: the prepared copy exists but cannot be read.
  """
  # A prepared TFDS dataset always has `<name>/<version>/dataset_info.json`.
  # Checking for it first keeps the common "not there" case free of the
  # multi-second TensorFlow import and of tfds' warnings about empty folders.
  if "://" not in data_dir and not glob.glob(
      os.path.join(
          glob.escape(data_dir), "fashion_mnist", "*", "dataset_info.json"
      )
  ):
    return None
  tfds = _import_tfds()
  builder = tfds.builder("fashion_mnist", data_dir=data_dir)
  if not builder.is_prepared():
    return None
  splits = []
  for split in ("train", "test"):
    try:
      images, labels = tfds.as_numpy(
          builder.as_dataset(split=split, batch_size=-1, as_supervised=True)
      )
    except Exception as e:  # pylint: disable=broad-except
      # tfds raises a zoo of TF/IO errors; the user needs the location.
      raise DataError(
          f"Cannot read the TFDS fashion_mnist {split} split in "
          f"{data_dir!r} ({type(e).__name__}): rebuild it with `tfds build "
          f"fashion_mnist --data_dir={data_dir}`."
      ) from e
    images = np.asarray(images, dtype=np.uint8)
    labels = np.asarray(labels)
    if images.shape[1:] != (*_FASHION_MNIST_SHAPE, 1):
      raise DataError(
          f"TFDS fashion_mnist in {data_dir!r} has images of shape "
          f"{images.shape[1:]}, expected (28, 28, 1): rebuild it "
          "with `tfds build fashion_mnist`."
      )
    splits.append((images, labels))
  return splits[0], splits[1]


def _import_tfds() -> Any:
  """Imports tensorflow_datasets with TensorFlow kept off the GPUs."""
  return core.import_tfds()


# ---------------------------------------------------------------------------
# scikit-learn digits.
# ---------------------------------------------------------------------------

DIGITS_HIERARCHY = LabelHierarchy(
    fine_to_coarse=(0, 0, 0, 0, 0, 1, 1, 1, 1, 1),
    fine_names=tuple(str(d) for d in range(10)),
    coarse_names=("digits 0-4", "digits 5-9"),
)

# The hierarchy of every dataset whose classes and grouping are fixed in
# code, by config.dataset (the others learn theirs from their data).
HIERARCHIES = {
    "fashion_mnist": FASHION_MNIST_HIERARCHY,
    "fashion_mnist_mixed": FASHION_MNIST_MIXED_HIERARCHY,
    "digits": DIGITS_HIERARCHY,
}

DIGITS_NUM_TRAIN = 1437  # Of 1797; the remaining 360 form the test split.
# Mean and std of the uint8 train images scaled to [0, 1], computed once from
# the split below (tests recompute and compare them).
DIGITS_MEAN = (0.30549564554423025,)
DIGITS_STD = (0.37587373215482484,)


def load_digits() -> Dataset:
  """scikit-learn's bundled 8x8 digits with a fixed 1437/360 split.

  Pixel values 0..16 become ``round(v * 255 / 16)`` uint8. The split permutes
  all 1797 examples with ``np.random.default_rng(0)`` and takes the first 1437
  as train, the rest as test; every digit lands in both splits (27 to 47 test
  examples per digit), and the split is identical on every machine.
  """
  # pylint: disable-next=g-import-not-at-top
  from sklearn import datasets as sk_datasets

  digits = sk_datasets.load_digits()
  images = np.rint(digits.images * (255.0 / 16.0)).astype(np.uint8)[..., None]
  labels = digits.target.astype(np.int32)
  order = np.random.default_rng(0).permutation(len(labels))
  train, test = order[:DIGITS_NUM_TRAIN], order[DIGITS_NUM_TRAIN:]
  return make_dataset(
      "digits",
      DIGITS_HIERARCHY,
      (images[train], labels[train]),
      (images[test], labels[test]),
      DIGITS_MEAN,
      DIGITS_STD,
  )


# ---------------------------------------------------------------------------
# Synthetic.
# ---------------------------------------------------------------------------

# Used for any field `config.synthetic` leaves out (or when it is absent).
SYNTHETIC_DEFAULTS = {
    "num_train": 512,
    "num_test": 128,
    "image_size": 8,
    "channels": 1,
    "num_fine": 8,
    "num_coarse": 2,
}
_SYNTHETIC_NOISE_STD = 0.1


def make_synthetic(
    settings: ml_collections.ConfigDict | None, *, seed: int
) -> Dataset:
  """Generates the ``synthetic`` dataset (see `SYNTHETIC_DEFAULTS`).

  Every fine class has one fixed uniform-random prototype image; examples are
  their class prototype plus Gaussian noise (std 0.1 in [0, 1] units), so
  classes are easy to tell apart yet no two examples are identical. Fine class
  ``f`` belongs to coarse class ``f % num_coarse``. Labels are balanced (each
  class appears ``n // num_fine`` or one more times) and shuffled.
  """
  values = dict(SYNTHETIC_DEFAULTS)
  if settings is not None:
    for key in SYNTHETIC_DEFAULTS:
      if key in settings and settings[key] is not None:
        values[key] = settings[key]
  for key, value in values.items():
    if not is_int(value, numpy=True) or value < 1:
      raise ConfigError(
          f"config.synthetic.{key}={value!r} must be a positive integer."
      )
  num_fine, num_coarse = values["num_fine"], values["num_coarse"]
  if num_coarse > num_fine:
    raise ConfigError(
        f"config.synthetic.num_coarse={num_coarse} must not "
        f"exceed config.synthetic.num_fine={num_fine}."
    )
  if not is_int(seed, numpy=True):
    raise ConfigError(f"config.seed={seed!r} must be an integer.")

  hierarchy = LabelHierarchy(
      fine_to_coarse=tuple(f % num_coarse for f in range(num_fine)),
      fine_names=tuple(f"pattern {f}" for f in range(num_fine)),
      coarse_names=tuple(f"group {c}" for c in range(num_coarse)),
  )
  shape = (values["image_size"], values["image_size"], values["channels"])
  # Separate streams for prototypes and each split: changing num_train leaves
  # the class patterns and the test set unchanged.
  proto_rng, train_rng, test_rng = (
      np.random.default_rng(s) for s in np.random.SeedSequence(seed).spawn(3)
  )
  prototypes = proto_rng.uniform(0.0, 1.0, size=(num_fine, *shape))

  def split(rng: np.random.Generator, n: int) -> tuple[np.ndarray, np.ndarray]:
    labels = rng.permutation(np.arange(n) % num_fine).astype(np.int32)
    noise = rng.normal(0.0, _SYNTHETIC_NOISE_STD, size=(n, *shape))
    pixels = np.clip(prototypes[labels] + noise, 0.0, 1.0)
    return np.rint(pixels * 255.0).astype(np.uint8), labels

  return make_dataset(
      "synthetic",
      hierarchy,
      split(train_rng, values["num_train"]),
      split(test_rng, values["num_test"]),
      (0.5,) * shape[-1],
      (0.5,) * shape[-1],
  )
