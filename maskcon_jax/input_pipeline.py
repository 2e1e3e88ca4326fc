"""In-memory image datasets with a two-level (fine -> coarse) label hierarchy.

Every dataset is small enough to live in host memory as uint8 numpy arrays, so
the trainer can shuffle, batch and augment it without a streaming pipeline.
Each example carries both its fine label (used only for evaluation) and its
coarse label (the only supervision the methods see during training).

Datasets (``config.dataset``):

* ``fashion_mnist``: the 10 Fashion-MNIST classes grouped into 3 coarse classes
  (tops, footwear, other). Read from local files only; see `load_dataset`.
* ``digits``: scikit-learn's bundled 8x8 digits (1797 images), coarse class
  ``digit // 5``. Needs no files at all.
* ``synthetic``: procedurally generated class patterns plus noise, for tests
  and smoke runs.

Nothing here downloads data. TensorFlow and TensorFlow Datasets are imported
only when a prepared TFDS copy of Fashion-MNIST is actually read, so the module
imports (and the ``digits``/``synthetic`` datasets load) without them.
"""

from __future__ import annotations

import dataclasses
import glob
import gzip
import os
import zlib
from typing import Any, Sequence

import ml_collections
import numpy as np

from maskcon_jax.errors import ConfigError
from maskcon_jax.errors import DataError

DATASETS = ('fashion_mnist', 'digits', 'synthetic')


@dataclasses.dataclass(frozen=True)
class LabelHierarchy:
  """Maps each fine class to exactly one coarse class.

  Attributes:
    fine_to_coarse: ``fine_to_coarse[f]`` is the coarse id of fine class ``f``.
    fine_names: Human-readable name of each fine class.
    coarse_names: Human-readable name of each coarse class.
  """

  fine_to_coarse: tuple[int, ...]
  fine_names: tuple[str, ...]
  coarse_names: tuple[str, ...]

  def __post_init__(self):
    # Normalise lists/numpy ints to plain tuples so instances stay hashable
    # and compare equal regardless of how they were built.
    object.__setattr__(self, 'fine_to_coarse',
                       tuple(int(c) for c in self.fine_to_coarse))
    object.__setattr__(self, 'fine_names',
                       tuple(str(n) for n in self.fine_names))
    object.__setattr__(self, 'coarse_names',
                       tuple(str(n) for n in self.coarse_names))
    if not self.fine_to_coarse:
      raise ValueError('LabelHierarchy needs at least one fine class.')
    if len(self.fine_names) != len(self.fine_to_coarse):
      raise ValueError(
          f'LabelHierarchy has {len(self.fine_to_coarse)} fine classes in '
          f'fine_to_coarse but {len(self.fine_names)} fine_names.')
    if not self.coarse_names:
      raise ValueError('LabelHierarchy needs at least one coarse class.')
    bad = [c for c in self.fine_to_coarse if not 0 <= c < self.num_coarse]
    if bad:
      raise ValueError(
          f'LabelHierarchy coarse ids {sorted(set(bad))} are outside '
          f'[0, {self.num_coarse}).')
    unused = sorted(set(range(self.num_coarse)) - set(self.fine_to_coarse))
    if unused:
      # An empty coarse class would never appear in training data and would
      # silently skew per-class metrics, so it is a construction error.
      raise ValueError(
          f'LabelHierarchy coarse classes {unused} have no fine class.')

  @property
  def num_fine(self) -> int:
    return len(self.fine_to_coarse)

  @property
  def num_coarse(self) -> int:
    return len(self.coarse_names)

  def coarse_of(self, fine_labels: np.ndarray) -> np.ndarray:
    """Returns the int32 coarse label of each fine label (any shape).

    Raises:
      ValueError: if a fine label is outside ``[0, num_fine)``; numpy would
        otherwise wrap negative labels around silently.
    """
    fine = np.asarray(fine_labels)
    if fine.size and (fine.min() < 0 or fine.max() >= self.num_fine):
      raise ValueError(
          f'Fine labels must lie in [0, {self.num_fine}), got values in '
          f'[{fine.min()}, {fine.max()}].')
    table = np.asarray(self.fine_to_coarse, dtype=np.int32)
    return table[fine.astype(np.int64)]


# `eq=False`: comparing or hashing large arrays field by field is never what a
# caller wants; identity semantics are the useful ones here.
@dataclasses.dataclass(frozen=True, eq=False)
class Dataset:
  """A train/test image dataset held in memory.

  Attributes:
    name: One of `DATASETS`.
    train_images: uint8 ``(N, H, W, C)``.
    train_fine: int32 ``(N,)`` fine labels.
    train_coarse: int32 ``(N,)`` coarse labels.
    test_images: uint8 ``(M, H, W, C)``.
    test_fine: int32 ``(M,)`` fine labels.
    test_coarse: int32 ``(M,)`` coarse labels.
    hierarchy: The fine -> coarse mapping.
    mean: Per-channel mean of the images scaled to [0, 1], for normalisation.
    std: Per-channel standard deviation of the images scaled to [0, 1].
  """

  name: str
  train_images: np.ndarray
  train_fine: np.ndarray
  train_coarse: np.ndarray
  test_images: np.ndarray
  test_fine: np.ndarray
  test_coarse: np.ndarray
  hierarchy: LabelHierarchy
  mean: tuple[float, ...]
  std: tuple[float, ...]

  def __post_init__(self):
    object.__setattr__(self, 'mean', tuple(float(m) for m in self.mean))
    object.__setattr__(self, 'std', tuple(float(s) for s in self.std))
    for split in ('train', 'test'):
      images = getattr(self, f'{split}_images')
      fine = getattr(self, f'{split}_fine')
      coarse = getattr(self, f'{split}_coarse')
      if images.dtype != np.uint8 or images.ndim != 4:
        raise ValueError(f'{split}_images must be uint8 (N, H, W, C), got '
                         f'{images.dtype} {images.shape}.')
      for label_name, labels in (('fine', fine), ('coarse', coarse)):
        if labels.dtype != np.int32 or labels.shape != images.shape[:1]:
          raise ValueError(
              f'{split}_{label_name} must be int32 of shape '
              f'{images.shape[:1]}, got {labels.dtype} {labels.shape}.')
    if self.train_images.shape[1:] != self.test_images.shape[1:]:
      raise ValueError(f'Train images {self.train_images.shape[1:]} and test '
                       f'images {self.test_images.shape[1:]} differ in shape.')
    channels = self.train_images.shape[-1]
    if len(self.mean) != channels or len(self.std) != channels:
      raise ValueError(f'mean and std need {channels} entries, got '
                       f'{len(self.mean)} and {len(self.std)}.')

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


def load_dataset(config: ml_collections.ConfigDict) -> Dataset:
  """Loads the dataset that ``config.dataset`` names.

  Config fields read:

  * ``dataset``: one of `DATASETS`.
  * ``data_dir`` (optional): where to look for Fashion-MNIST, either a folder
    holding its four IDX files (``train-images-idx3-ubyte``,
    ``train-labels-idx1-ubyte``, ``t10k-images-idx3-ubyte``,
    ``t10k-labels-idx1-ubyte``, each optionally ``.gz``) or a TFDS data_dir in
    which ``fashion_mnist`` is prepared. Without it Fashion-MNIST is looked up
    in the default TFDS data_dir, then in ``/usr/share/datasets/fashion-mnist``
    (Debian's ``dataset-fashion-mnist`` package). Ignored by other datasets.
  * ``max_train_examples``, ``max_test_examples`` (optional): keep only the
    first N examples of each split, for quick runs.
  * ``synthetic`` and ``seed``: the generator settings of ``synthetic`` (see
    `SYNTHETIC_DEFAULTS`).

  Args:
    config: The experiment config.

  Returns:
    The dataset, fully in memory.

  Raises:
    ConfigError: an unknown dataset name or a bad field value.
    DataError: Fashion-MNIST files are missing or corrupt.
  """
  name = config.get('dataset')
  if name not in DATASETS:
    raise ConfigError(f'config.dataset={name!r} is not a known dataset: use '
                      f'one of {", ".join(DATASETS)}.')
  max_train = _optional_positive_int(config, 'max_train_examples')
  max_test = _optional_positive_int(config, 'max_test_examples')

  if name == 'fashion_mnist':
    dataset = _load_fashion_mnist(config.get('data_dir'))
  elif name == 'digits':
    dataset = _load_digits()
  else:
    dataset = _make_synthetic(config.get('synthetic'),
                              seed=config.get('seed', 0))

  if max_train is None and max_test is None:
    return dataset
  # Slices are views: truncating costs no copy of the full arrays.
  train = slice(None, max_train)
  test = slice(None, max_test)
  return dataclasses.replace(
      dataset,
      train_images=dataset.train_images[train],
      train_fine=dataset.train_fine[train],
      train_coarse=dataset.train_coarse[train],
      test_images=dataset.test_images[test],
      test_fine=dataset.test_fine[test],
      test_coarse=dataset.test_coarse[test])


def _optional_positive_int(config: ml_collections.ConfigDict,
                           field: str) -> int | None:
  value = config.get(field)
  if value is None:
    return None
  # bool is an int subclass; `True` as an example count is surely a mistake.
  if isinstance(value, bool) or not isinstance(value, (int, np.integer)):
    raise ConfigError(f'config.{field}={value!r} must be a positive integer '
                      'or None.')
  if value < 1:
    raise ConfigError(f'config.{field}={value} must be at least 1 (or None '
                      'to keep every example).')
  return int(value)


def _make_dataset(name: str, hierarchy: LabelHierarchy,
                  train: tuple[np.ndarray, np.ndarray],
                  test: tuple[np.ndarray, np.ndarray],
                  mean: Sequence[float], std: Sequence[float]) -> Dataset:
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
      std=tuple(std))


# ---------------------------------------------------------------------------
# Fashion-MNIST.
# ---------------------------------------------------------------------------

FASHION_MNIST_HIERARCHY = LabelHierarchy(
    # Tops {0, 2, 4, 6} -> 0, footwear {5, 7, 9} -> 1, other {1, 3, 8} -> 2.
    fine_to_coarse=(0, 2, 0, 2, 0, 1, 0, 1, 2, 1),
    fine_names=('T-shirt/top', 'Trouser', 'Pullover', 'Dress', 'Coat',
                'Sandal', 'Shirt', 'Sneaker', 'Bag', 'Ankle boot'),
    coarse_names=('tops', 'footwear', 'other'))

# The widely quoted statistics of the Fashion-MNIST training set in [0, 1].
FASHION_MNIST_MEAN = (0.2860,)
FASHION_MNIST_STD = (0.3530,)

# Installed by Debian/Ubuntu's `dataset-fashion-mnist` package.
DEBIAN_FASHION_MNIST_DIR = '/usr/share/datasets/fashion-mnist'

_IDX_FILES = {
    'train_images': 'train-images-idx3-ubyte',
    'train_labels': 'train-labels-idx1-ubyte',
    'test_images': 't10k-images-idx3-ubyte',
    'test_labels': 't10k-labels-idx1-ubyte',
}
_IDX_IMAGES_MAGIC = 2051  # uint8 data, 3 dimensions.
_IDX_LABELS_MAGIC = 2049  # uint8 data, 1 dimension.
_FASHION_MNIST_SHAPE = (28, 28)
_FASHION_MNIST_NOT_FOUND = (
    'Fashion-MNIST not found: run `apt-get install dataset-fashion-mnist` '
    '(Debian/Ubuntu), prepare it with `tfds build fashion_mnist`, or set '
    '--config.data_dir to a folder holding its IDX files; '
    '--config.dataset=digits needs no download.')


def _load_fashion_mnist(data_dir: str | None) -> Dataset:
  """Finds Fashion-MNIST locally (see `load_dataset`) and loads it."""
  if data_dir:
    data_dir = os.fspath(os.path.expanduser(data_dir))
    is_remote = '://' in data_dir
    if not is_remote and not os.path.isdir(data_dir):
      raise DataError(f'config.data_dir={data_dir!r} does not exist: point it '
                      'at a folder holding the Fashion-MNIST IDX files or a '
                      'TFDS data_dir where fashion_mnist is prepared.')
    if not is_remote:
      paths = _find_idx_files(data_dir)
      if paths is not None:
        return _fashion_mnist_from_idx(paths)
    try:
      splits = _read_tfds_fashion_mnist(data_dir)
    except ImportError as e:
      raise DataError(
          f'config.data_dir={data_dir!r} holds a TFDS fashion_mnist but '
          f'TensorFlow Datasets cannot be imported ({e}): install '
          'tensorflow-datasets or use a folder of IDX files instead.') from e
    if splits is not None:
      return _fashion_mnist_from_arrays(*splits)
    raise DataError(
        f'No Fashion-MNIST in config.data_dir={data_dir!r}: it should hold '
        'the four IDX files (train-images-idx3-ubyte, train-labels-idx1-ubyte, '
        't10k-images-idx3-ubyte, t10k-labels-idx1-ubyte, each optionally '
        '.gz) or be a TFDS data_dir with fashion_mnist prepared.')

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
    for candidate in (base, base + '.gz'):
      path = os.path.join(directory, candidate)
      if os.path.isfile(path):
        found[key] = path
        break
  if not found:
    return None
  missing = [_IDX_FILES[k] for k in _IDX_FILES if k not in found]
  if missing:
    raise DataError(f'Fashion-MNIST in {directory!r} is incomplete: add '
                    f'{", ".join(missing)} (optionally .gz) next to the other '
                    'IDX files.')
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
    if path.endswith('.gz'):
      with gzip.open(path, 'rb') as f:
        raw = f.read()
    else:
      with open(path, 'rb') as f:
        raw = f.read()
  except (OSError, EOFError, zlib.error) as e:
    raise DataError(f'Cannot read IDX file {path!r} ({e}): replace it with an '
                    'intact copy.') from e
  expected_magic = 0x0800 + expected_ndim
  header_size = 4 * (1 + expected_ndim)
  if len(raw) < header_size:
    raise DataError(f'IDX file {path!r} is truncated ({len(raw)} bytes): '
                    'replace it with an intact copy.')
  magic = int(np.frombuffer(raw, dtype='>i4', count=1)[0])
  if magic != expected_magic:
    raise DataError(f'IDX file {path!r} has magic number {magic}, expected '
                    f'{expected_magic}: replace it with an intact copy.')
  shape = tuple(int(d) for d in
                np.frombuffer(raw, dtype='>i4', count=expected_ndim, offset=4))
  num_bytes = int(np.prod(shape, dtype=np.int64))
  if len(raw) - header_size != num_bytes:
    raise DataError(f'IDX file {path!r} holds {len(raw) - header_size} data '
                    f'bytes but its header {shape} needs {num_bytes}: replace '
                    'it with an intact copy.')
  # frombuffer over immutable bytes is read-only; one copy (milliseconds even
  # for 47 MB) makes the result an ordinary writable array like every other
  # source returns.
  data = np.frombuffer(raw, dtype=np.uint8, offset=header_size)
  return data.reshape(shape).copy()


def _fashion_mnist_from_idx(paths: dict[str, str]) -> Dataset:
  """Loads Fashion-MNIST from its four IDX files."""
  splits = []
  for split in ('train', 'test'):
    images_path = paths[f'{split}_images']
    labels_path = paths[f'{split}_labels']
    images = read_idx(images_path, expected_ndim=3)
    labels = read_idx(labels_path, expected_ndim=1)
    if images.shape[1:] != _FASHION_MNIST_SHAPE:
      raise DataError(f'IDX file {images_path!r} holds images of shape '
                      f'{images.shape[1:]}, expected {_FASHION_MNIST_SHAPE}: '
                      'it is not Fashion-MNIST.')
    if images.shape[0] != labels.shape[0]:
      raise DataError(f'{images_path!r} holds {images.shape[0]} images but '
                      f'{labels_path!r} holds {labels.shape[0]} labels: use '
                      'files from the same copy of Fashion-MNIST.')
    if labels.size and labels.max() >= FASHION_MNIST_HIERARCHY.num_fine:
      raise DataError(f'IDX file {labels_path!r} has label {labels.max()}, '
                      'Fashion-MNIST has 10 classes: it is not Fashion-MNIST.')
    splits.append((images[..., None], labels))
  return _fashion_mnist_from_arrays(*splits)


def _fashion_mnist_from_arrays(train: tuple[np.ndarray, np.ndarray],
                               test: tuple[np.ndarray, np.ndarray]) -> Dataset:
  return _make_dataset('fashion_mnist', FASHION_MNIST_HIERARCHY, train, test,
                       FASHION_MNIST_MEAN, FASHION_MNIST_STD)


def _default_tfds_data_dir() -> str:
  """The data_dir TFDS uses when none is given (mirrors tfds' own default)."""
  return os.environ.get('TFDS_DATA_DIR') or os.path.join(
      os.path.expanduser('~'), 'tensorflow_datasets')


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
  if '://' not in data_dir and not glob.glob(
      os.path.join(glob.escape(data_dir), 'fashion_mnist', '*',
                   'dataset_info.json')):
    return None
  tfds = _import_tfds()
  builder = tfds.builder('fashion_mnist', data_dir=data_dir)
  if not builder.is_prepared():
    return None
  splits = []
  for split in ('train', 'test'):
    try:
      images, labels = tfds.as_numpy(
          builder.as_dataset(split=split, batch_size=-1, as_supervised=True))
    except Exception as e:  # pylint: disable=broad-except
      # tfds raises a zoo of TF/IO errors; the user needs the location.
      raise DataError(
          f'Cannot read the TFDS fashion_mnist {split} split in '
          f'{data_dir!r} ({type(e).__name__}): rebuild it with `tfds build '
          f'fashion_mnist --data_dir={data_dir}`.') from e
    images = np.asarray(images, dtype=np.uint8)
    labels = np.asarray(labels)
    if images.shape[1:] != (*_FASHION_MNIST_SHAPE, 1):
      raise DataError(f'TFDS fashion_mnist in {data_dir!r} has images of shape '
                      f'{images.shape[1:]}, expected (28, 28, 1): rebuild it '
                      'with `tfds build fashion_mnist`.')
    splits.append((images, labels))
  return splits[0], splits[1]


def _import_tfds() -> Any:
  """Imports tensorflow_datasets with TensorFlow kept off the GPUs.

  TensorFlow only decodes records here; left alone it would reserve most of
  the accelerator memory that JAX needs.
  """
  import tensorflow as tf  # pylint: disable=g-import-not-at-top
  try:
    tf.config.set_visible_devices([], 'GPU')
  except (RuntimeError, ValueError):
    # Already initialised (e.g. by another library): nothing more to do.
    pass
  import tensorflow_datasets as tfds  # pylint: disable=g-import-not-at-top
  return tfds


# ---------------------------------------------------------------------------
# scikit-learn digits.
# ---------------------------------------------------------------------------

DIGITS_HIERARCHY = LabelHierarchy(
    fine_to_coarse=(0, 0, 0, 0, 0, 1, 1, 1, 1, 1),
    fine_names=tuple(str(d) for d in range(10)),
    coarse_names=('digits 0-4', 'digits 5-9'))

DIGITS_NUM_TRAIN = 1437  # Of 1797; the remaining 360 form the test split.
# Mean and std of the uint8 train images scaled to [0, 1], computed once from
# the split below (tests recompute and compare them).
DIGITS_MEAN = (0.30549564554423025,)
DIGITS_STD = (0.37587373215482484,)


def _load_digits() -> Dataset:
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
  return _make_dataset('digits', DIGITS_HIERARCHY,
                       (images[train], labels[train]),
                       (images[test], labels[test]),
                       DIGITS_MEAN, DIGITS_STD)


# ---------------------------------------------------------------------------
# Synthetic.
# ---------------------------------------------------------------------------

# Used for any field `config.synthetic` leaves out (or when it is absent).
SYNTHETIC_DEFAULTS = {
    'num_train': 512,
    'num_test': 128,
    'image_size': 8,
    'channels': 1,
    'num_fine': 8,
    'num_coarse': 2,
}
_SYNTHETIC_NOISE_STD = 0.1


def _make_synthetic(settings: ml_collections.ConfigDict | None, *,
                    seed: int) -> Dataset:
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
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) \
        or value < 1:
      raise ConfigError(f'config.synthetic.{key}={value!r} must be a positive '
                        'integer.')
  num_fine, num_coarse = values['num_fine'], values['num_coarse']
  if num_coarse > num_fine:
    raise ConfigError(f'config.synthetic.num_coarse={num_coarse} must not '
                      f'exceed config.synthetic.num_fine={num_fine}.')
  if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)):
    raise ConfigError(f'config.seed={seed!r} must be an integer.')

  hierarchy = LabelHierarchy(
      fine_to_coarse=tuple(f % num_coarse for f in range(num_fine)),
      fine_names=tuple(f'pattern {f}' for f in range(num_fine)),
      coarse_names=tuple(f'group {c}' for c in range(num_coarse)))
  shape = (values['image_size'], values['image_size'], values['channels'])
  # Separate streams for prototypes and each split: changing num_train leaves
  # the class patterns and the test set unchanged.
  proto_rng, train_rng, test_rng = (
      np.random.default_rng(s) for s in np.random.SeedSequence(seed).spawn(3))
  prototypes = proto_rng.uniform(0.0, 1.0, size=(num_fine, *shape))

  def split(rng: np.random.Generator, n: int) -> tuple[np.ndarray, np.ndarray]:
    labels = rng.permutation(np.arange(n) % num_fine).astype(np.int32)
    noise = rng.normal(0.0, _SYNTHETIC_NOISE_STD, size=(n, *shape))
    pixels = np.clip(prototypes[labels] + noise, 0.0, 1.0)
    return np.rint(pixels * 255.0).astype(np.uint8), labels

  return _make_dataset('synthetic', hierarchy,
                       split(train_rng, values['num_train']),
                       split(test_rng, values['num_test']),
                       (0.5,) * shape[-1], (0.5,) * shape[-1])
