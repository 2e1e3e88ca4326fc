"""Train/test image datasets with a fine -> coarse label hierarchy.

Each example carries its coarse label (the only supervision the methods see
during training) and, where the data has one, its fine label (used only for
evaluation). `load_dataset` returns one of two containers:

* `Dataset`: all images in host memory as uint8 arrays;
* `StreamingDataset`: the same labels and statistics, images read, decoded
  and resized batch by batch with tf.data (`StreamingDataset.train_batches`,
  `StreamingDataset.test_batches`). `is_streaming` says which one a config
  gets.

Datasets (``config.dataset``, see `DATASETS`):

* ``fashion_mnist``: the 10 Fashion-MNIST classes grouped into 3 coarse classes
  (tops, footwear, other). Read from local files only; see `load_dataset`.
* ``fashion_mnist_mixed``: the same data grouped into 2 misleading coarse
  classes (``hierarchies.FASHION_MNIST_GROUPINGS['mixed']``).
* ``digits``: scikit-learn's bundled 8x8 digits (1797 images), coarse class
  ``digit // 5``. Needs no files at all.
* ``synthetic``: procedurally generated class patterns plus noise, for tests
  and smoke runs.
* The paper's datasets, from prepared TensorFlow Datasets copies
  (`maskcon_jax.datasets.tfds_datasets`): ``cifar100`` (100 / 20 classes),
  ``cifartoy_good`` and ``cifartoy_bad`` (8 CIFAR-10 classes / 2),
  ``imagenet32`` (1000 / 12), ``cars196`` (196 / 8 body types) and ``sop``
  (Stanford Online Products, 22634 products / 12).
* ``sop_split1``, ``sop_split2``: the paper's SOP splits, images read from the
  extracted ``Stanford_Online_Products`` folder in ``config.data_dir``.
* ``folder`` and ``csv``: custom data (`maskcon_jax.datasets.files`).

The datasets with a fixed hierarchy list it in `HIERARCHIES`. Any dataset
with fine labels can be regrouped with ``config.coarse_map``; in-memory data
can also be subset at random (``config.subset_seed``) and converted between
grayscale and RGB (``config.image_channels``); see `load_dataset`.

The loaders of the built-in datasets (Fashion-MNIST, digits, synthetic) live
in `maskcon_jax.datasets.builtin`, the others in the rest of
`maskcon_jax.datasets`; this module picks one and regroups, subsets and
converts what it returns. Nothing here downloads data. TensorFlow and TensorFlow Datasets are imported
only when images are read through them, so the module imports (and the
``digits``/``synthetic`` datasets load) without them.
"""

from __future__ import annotations

import dataclasses

import ml_collections
import numpy as np

from maskcon_jax.datasets import builtin
from maskcon_jax.datasets import core
from maskcon_jax.datasets.core import Dataset
from maskcon_jax.datasets.core import LabelHierarchy
from maskcon_jax.datasets.core import StreamingDataset
from maskcon_jax.errors import ConfigError
from maskcon_jax.errors import is_int
from maskcon_jax.errors import show

# The built-in datasets' names, as this module has always offered them.
from maskcon_jax.datasets.builtin import DEBIAN_FASHION_MNIST_DIR
from maskcon_jax.datasets.builtin import DIGITS_HIERARCHY
from maskcon_jax.datasets.builtin import DIGITS_MEAN
from maskcon_jax.datasets.builtin import DIGITS_NUM_TRAIN
from maskcon_jax.datasets.builtin import DIGITS_STD
from maskcon_jax.datasets.builtin import FASHION_MNIST_HIERARCHY
from maskcon_jax.datasets.builtin import FASHION_MNIST_MEAN
from maskcon_jax.datasets.builtin import FASHION_MNIST_MIXED_HIERARCHY
from maskcon_jax.datasets.builtin import FASHION_MNIST_STD
from maskcon_jax.datasets.builtin import HIERARCHIES
from maskcon_jax.datasets.builtin import read_idx
from maskcon_jax.datasets.builtin import SYNTHETIC_DEFAULTS

__all__ = [
    "DATASETS",
    "Dataset",
    "HIERARCHIES",
    "LabelHierarchy",
    "StreamingDataset",
    "is_streaming",
    "load_dataset",
]

# Every valid `config.dataset`; the single list other modules validate
# against.
DATASETS = (
    "fashion_mnist",
    "fashion_mnist_mixed",
    "digits",
    "synthetic",
    "cifar100",
    "cifartoy_good",
    "cifartoy_bad",
    "imagenet32",
    "cars196",
    "sop",
    "sop_split1",
    "sop_split2",
    "folder",
    "csv",
)
# Datasets whose images need no resizing decision: they load at their own size.
_FIXED_DATASETS = (
    "fashion_mnist",
    "fashion_mnist_mixed",
    "digits",
    "synthetic",
)
# The 224-pixel datasets stream unless config.in_memory=True; the others load
# into memory unless config.in_memory=False.
STREAMING_BY_DEFAULT = ("cars196", "sop", "sop_split1", "sop_split2")
# Image side when config.image_size is unset.
_DEFAULT_IMAGE_SIZE = {
    "cifar100": 32,
    "cifartoy_good": 32,
    "cifartoy_bad": 32,
    "imagenet32": 32,
    "cars196": 224,
    "sop": 224,
    "sop_split1": 224,
    "sop_split2": 224,
    "folder": 224,
    "csv": 224,
}


def is_streaming(config: ml_collections.ConfigDict) -> bool:
  """Whether `load_dataset` returns a `StreamingDataset` for ``config``.

  ``config.in_memory`` (True, False or unset) decides; unset means streaming
  for the 224-pixel paper datasets (`STREAMING_BY_DEFAULT`) and in memory for
  everything else. ``fashion_mnist``, ``fashion_mnist_mixed``, ``digits`` and
  ``synthetic`` are always in memory.

  Raises:
    ConfigError: an unknown dataset or a non-boolean ``in_memory``.
  """
  name = _dataset_name(config)
  in_memory = config.get("in_memory")
  if in_memory is not None and not isinstance(in_memory, bool):
    raise ConfigError(
        f"config.in_memory={in_memory!r} must be True, False or unset."
    )
  if name in _FIXED_DATASETS:
    if in_memory is False:
      raise ConfigError(
          f"config.dataset={name!r} is always loaded into "
          "memory: leave config.in_memory unset."
      )
    return False
  if in_memory is None:
    return name in STREAMING_BY_DEFAULT
  return not in_memory


def load_dataset(
    config: ml_collections.ConfigDict,
) -> Dataset | StreamingDataset:
  """Loads the dataset that ``config.dataset`` names.

  Config fields read:

  * ``dataset``: one of `DATASETS`.
  * ``data_dir`` (optional): for ``fashion_mnist`` and
    ``fashion_mnist_mixed``, where to look for Fashion-MNIST: either a folder
    holding its four IDX files (``train-images-idx3-ubyte``,
    ``train-labels-idx1-ubyte``, ``t10k-images-idx3-ubyte``,
    ``t10k-labels-idx1-ubyte``, each optionally ``.gz``) or a TFDS data_dir in
    which ``fashion_mnist`` is prepared. Without it Fashion-MNIST is looked up
    in the default TFDS data_dir, then in ``/usr/share/datasets/fashion-mnist``
    (Debian's ``dataset-fashion-mnist`` package). For the TFDS datasets
    (``cifar100``, ``cifartoy_*``, ``imagenet32``, ``cars196``, ``sop``): the
    TFDS data_dir (default: ``$TFDS_DATA_DIR`` or ``~/tensorflow_datasets``).
    For ``sop_split1``/``sop_split2``: the extracted
    ``Stanford_Online_Products`` folder (required). For ``folder``: the root
    holding ``train/`` and ``test/`` (required).
  * ``image_size`` (optional): side of the square images of every dataset
    except ``fashion_mnist*``, ``digits`` and ``synthetic``; images are
    resized to it (32 for the 32-pixel datasets and 224 for the others when
    unset).
  * ``in_memory`` (optional): see `is_streaming`.
  * ``coarse_map`` (optional): a CSV or JSON fine -> coarse map (see
    `maskcon_jax.datasets.files.coarse_map_hierarchy` for the format and how
    names and indices are read). For ``folder`` it is required and is the
    dataset's labelling. For every other dataset with fine labels it replaces
    the dataset's own coarse classes, in both splits, in memory or streamed
    (there the coarse label is looked up from the fine one in tf.data); the
    fine labels, images and statistics do not change. ``csv`` data without a
    fine column cannot take one (`ConfigError`).
  * ``train_csv``, ``test_csv``: for ``csv``, the two file lists.
  * ``shuffle_buffer`` (optional): encoded examples buffered to shuffle a
    streamed TFDS dataset (default `core.DEFAULT_SHUFFLE_BUFFER`).
  * ``max_train_examples``, ``max_test_examples`` (optional): keep only N
    examples of each split, for quick runs: the first N unless
    ``subset_seed`` is set.
  * ``subset_seed`` (optional, in-memory data only): each split keeps the
    examples at the first N indices of
    ``numpy.random.default_rng(subset_seed).permutation(split size)``, in
    that order, N being the split's ``max_*_examples``. Each split draws from
    a fresh generator with the same seed. Without a maximum (or with one at
    least the split size) the whole split is kept, permuted. The split is the
    dataset's full split (for ``digits``: its fixed 1437/360 split; for
    ``cifartoy_*``: the kept classes), read whole before the subset is taken.
    A streamed dataset raises `ConfigError`.
  * ``image_channels`` (optional): None keeps the dataset's own channels. 3
    turns 1-channel images into RGB by repeating the gray value, as PIL's
    ``convert('RGB')`` of an ``'L'`` image does; mean and std repeat their one
    value. 1 turns RGB into luma as PIL's ``convert('L')`` does:
    ``(19595 R + 38470 G + 7471 B + 32768) >> 16``, i.e. ITU-R 601-2 weights
    0.299, 0.587, 0.114 rounded to uint8; the mean becomes the same weighted
    sum of the channel means (exact up to that rounding) and the std the
    weighted sum of the channel stds (exact when the channels move together,
    an upper bound otherwise). Streamed images are always RGB: 3 is accepted
    there and changes nothing, 1 raises `ConfigError`.
  * ``synthetic`` and ``seed``: the generator settings of ``synthetic`` (see
    `SYNTHETIC_DEFAULTS`).

  In-memory data is loaded, then subset, then relabelled with
  ``coarse_map``, then converted to ``image_channels``.

  Args:
    config: The experiment config.

  Returns:
    A `StreamingDataset` if `is_streaming` says so, else a `Dataset`.

  Raises:
    ConfigError: an unknown dataset name or a bad field value.
    DataError: data is missing, not prepared, unreadable or inconsistent, or
      the coarse map is; the message says what to do.
  """
  name = _dataset_name(config)
  streaming = is_streaming(config)
  max_train = _optional_positive_int(config, "max_train_examples")
  max_test = _optional_positive_int(config, "max_test_examples")
  subset_seed = optional_subset_seed(config)
  channels = optional_image_channels(config)
  coarse_map = optional_coarse_map(config)
  if streaming and subset_seed is not None:
    raise ConfigError(
        f"config.subset_seed={subset_seed} needs the data in "
        f"memory, but config.dataset={name!r} streams: set "
        "config.in_memory=True or unset config.subset_seed."
    )
  if streaming and channels == 1:
    raise ConfigError(
        f"config.image_channels=1 needs the data in memory, but "
        f"config.dataset={name!r} streams (always RGB): set "
        "config.in_memory=True or unset config.image_channels."
    )
  # The map is read before the data, so that a bad file fails at once.
  # `folder` reads its own map: there it is the dataset's only labelling.
  mapping = None
  if coarse_map is not None and name != "folder":
    # pylint: disable-next=g-import-not-at-top
    from maskcon_jax.datasets import files

    mapping = files.read_coarse_map(coarse_map)

  if name not in _FIXED_DATASETS:
    # A random subset is drawn from whole splits, so they are read whole.
    limits = (max_train, max_test) if subset_seed is None else (None, None)
    stream = _open_stream(name, config, max_train=limits[0], max_test=limits[1])
    if streaming:
      return _with_coarse_map(stream, coarse_map, mapping)
    dataset = core.in_memory(stream)
  elif name in ("fashion_mnist", "fashion_mnist_mixed"):
    dataset = builtin.load_fashion_mnist(config.get("data_dir"))
    if name == "fashion_mnist_mixed":
      dataset = core.with_hierarchy(dataset, HIERARCHIES[name], name=name)
  elif name == "digits":
    dataset = builtin.load_digits()
  else:
    dataset = builtin.make_synthetic(
        config.get("synthetic"), seed=config.get("seed", 0)
    )

  dataset = _subset(dataset, max_train, max_test, subset_seed)
  dataset = _with_coarse_map(dataset, coarse_map, mapping)
  return _with_channels(dataset, channels)


def _subset(
    dataset: Dataset,
    max_train: int | None,
    max_test: int | None,
    subset_seed: int | None,
) -> Dataset:
  """Applies ``max_*_examples`` and ``subset_seed`` (see `load_dataset`)."""
  if subset_seed is None and max_train is None and max_test is None:
    return dataset

  def rows(size: int, limit: int | None) -> slice | np.ndarray:
    if subset_seed is None:
      # Slices are views: truncating costs no copy of the full arrays.
      return slice(None, limit)
    # A fresh generator per split, as the parity protocol draws them.
    return np.random.default_rng(subset_seed).permutation(size)[:limit]

  train = rows(dataset.num_train, max_train)
  test = rows(dataset.num_test, max_test)

  def take(array: np.ndarray | None, index) -> np.ndarray | None:
    return None if array is None else array[index]

  return dataclasses.replace(
      dataset,
      train_images=dataset.train_images[train],
      train_fine=take(dataset.train_fine, train),
      train_coarse=dataset.train_coarse[train],
      test_images=dataset.test_images[test],
      test_fine=take(dataset.test_fine, test),
      test_coarse=dataset.test_coarse[test],
  )


def _with_coarse_map(
    dataset: Dataset | StreamingDataset,
    coarse_map: str | None,
    mapping: dict[str, str] | None,
) -> Dataset | StreamingDataset:
  """Relabels ``dataset`` with the read ``coarse_map`` (None: unchanged)."""
  if mapping is None:
    return dataset
  if not dataset.has_fine_labels:
    raise ConfigError(
        f"config.coarse_map={coarse_map!r} maps fine classes, "
        f"but this config.dataset={dataset.name!r} data has "
        "coarse labels only: add a fine column to the CSVs or "
        "unset config.coarse_map."
    )
  # pylint: disable-next=g-import-not-at-top
  from maskcon_jax.datasets import files

  hierarchy = files.coarse_map_hierarchy(
      coarse_map,
      dataset.hierarchy.fine_names,
      dataset=dataset.name,
      mapping=mapping,
  )
  return core.with_hierarchy(dataset, hierarchy)


# PIL's convert('L') weights in 16-bit fixed point (they sum to 65536), for
# R, G, B; and the ITU-R 601-2 luma weights they stand for.
_LUMA_FIXED = (19595, 38470, 7471)
_LUMA_WEIGHTS = (0.299, 0.587, 0.114)
# Images converted at a time: bounds the uint32 temporaries for 224-px data.
_LUMA_CHUNK = 4096


def rgb_to_luma(images: np.ndarray) -> np.ndarray:
  """uint8 ``(..., 3)`` RGB -> uint8 ``(..., 1)`` luma, as PIL's ``'L'``."""
  out = np.empty(images.shape[:-1] + (1,), np.uint8)
  for start in range(0, len(images), _LUMA_CHUNK):
    rgb = images[start : start + _LUMA_CHUNK].astype(np.uint32)
    luma = (
        rgb[..., 0] * _LUMA_FIXED[0]
        + rgb[..., 1] * _LUMA_FIXED[1]
        + rgb[..., 2] * _LUMA_FIXED[2]
        + 0x8000
    ) >> 16
    out[start : start + _LUMA_CHUNK, ..., 0] = luma
  return out


def _with_channels(
    dataset: Dataset | StreamingDataset, channels: int | None
) -> Dataset | StreamingDataset:
  """Converts images to ``config.image_channels`` (see `load_dataset`)."""
  have = dataset.image_shape[-1]
  if channels is None or channels == have:
    return dataset
  # Only in-memory data gets here: streamed images are RGB, and
  # `load_dataset` rejects image_channels=1 for them.
  if channels == 3 and have == 1:
    return dataclasses.replace(
        dataset,
        train_images=np.repeat(dataset.train_images, 3, axis=-1),
        test_images=np.repeat(dataset.test_images, 3, axis=-1),
        mean=dataset.mean * 3,
        std=dataset.std * 3,
    )
  if channels == 1 and have == 3:
    return dataclasses.replace(
        dataset,
        train_images=rgb_to_luma(dataset.train_images),
        test_images=rgb_to_luma(dataset.test_images),
        mean=(float(np.dot(_LUMA_WEIGHTS, dataset.mean)),),
        std=(float(np.dot(_LUMA_WEIGHTS, dataset.std)),),
    )
  raise ConfigError(
      f"config.image_channels={channels} converts between 1 "
      f"and 3 channels, but config.dataset={dataset.name!r} "
      f"has {have}-channel images: unset config.image_channels "
      "or change the data."
  )


def _dataset_name(config: ml_collections.ConfigDict) -> str:
  name = config.get("dataset")
  if name not in DATASETS:
    raise ConfigError(
        f"config.dataset={name!r} is not a known dataset: use "
        f'one of {", ".join(DATASETS)}.'
    )
  return name


def _open_stream(
    name: str,
    config: ml_collections.ConfigDict,
    *,
    max_train: int | None,
    max_test: int | None,
) -> StreamingDataset:
  """Opens every dataset but the three fixed ones in streaming form."""
  # pylint: disable=g-import-not-at-top
  from maskcon_jax.datasets import files
  from maskcon_jax.datasets import tfds_datasets
  # pylint: enable=g-import-not-at-top
  image_size = config.get("image_size")
  if image_size is None:
    image_size = _DEFAULT_IMAGE_SIZE[name]
  elif not is_int(image_size, numpy=True) or image_size < 1:
    raise ConfigError(
        f"config.image_size={image_size!r} must be a positive integer."
    )
  image_size = int(image_size)
  data_dir = config.get("data_dir")
  if name in tfds_datasets.TFDS_DATASETS:
    shuffle_buffer = config.get("shuffle_buffer")
    if shuffle_buffer is None:
      shuffle_buffer = core.DEFAULT_SHUFFLE_BUFFER
    elif not is_int(shuffle_buffer, numpy=True) or shuffle_buffer < 1:
      raise ConfigError(
          f"config.shuffle_buffer={shuffle_buffer!r} must be a "
          "positive integer."
      )
    return tfds_datasets.load(
        name,
        data_dir=data_dir,
        image_size=image_size,
        max_train=max_train,
        max_test=max_test,
        shuffle_buffer=int(shuffle_buffer),
    )
  if name in ("sop_split1", "sop_split2"):
    return files.load_sop_split(
        int(name[-1]),
        data_dir=data_dir,
        image_size=image_size,
        max_train=max_train,
        max_test=max_test,
    )
  if name == "folder":
    return files.load_folder(
        data_dir,
        config.get("coarse_map"),
        image_size=image_size,
        max_train=max_train,
        max_test=max_test,
    )
  return files.load_csv(
      config.get("train_csv"),
      config.get("test_csv"),
      image_size=image_size,
      max_train=max_train,
      max_test=max_test,
  )


def _optional_positive_int(
    config: ml_collections.ConfigDict, field: str
) -> int | None:
  value = config.get(field)
  if value is None:
    return None
  # bool is an int subclass; `True` as an example count is surely a mistake.
  if not is_int(value, numpy=True):
    raise ConfigError(
        f"config.{field}={value!r} must be a positive integer or None."
    )
  if value < 1:
    raise ConfigError(
        f"config.{field}={value} must be at least 1 (or None "
        "to keep every example)."
    )
  return int(value)


def optional_subset_seed(
    config: ml_collections.ConfigDict, *, numpy: bool = True
) -> int | None:
  """``config.subset_seed``: None, or an integer >= 0 (with ``numpy``, NumPy
  integers too; `configuration.validate_config` wants plain ints, which a
  config.json can hold)."""
  value = config.get("subset_seed")
  if value is None:
    return None
  if not is_int(value, numpy=numpy) or value < 0:
    raise ConfigError(
        f"config.subset_seed={show(value)} must be an integer >= 0, "
        "or unset to keep the first examples."
    )
  return int(value)


def optional_image_channels(
    config: ml_collections.ConfigDict, *, numpy: bool = True
) -> int | None:
  """``config.image_channels``: None, 1 or 3 (``numpy`` as in
  `optional_subset_seed`)."""
  value = config.get("image_channels")
  if value is None:
    return None
  if not is_int(value, numpy=numpy) or value not in (1, 3):
    raise ConfigError(
        f"config.image_channels={show(value)} must be 1 (gray), 3 "
        "(RGB) or unset (the dataset's own channels)."
    )
  return int(value)


def optional_coarse_map(config: ml_collections.ConfigDict) -> str | None:
  """``config.coarse_map``: a path, or None (unset or empty)."""
  value = config.get("coarse_map")
  if value is None or value == "":
    return None
  if not isinstance(value, str):
    raise ConfigError(
        f"config.coarse_map={show(value)} must be the path of a CSV "
        "or JSON fine -> coarse map, or unset."
    )
  return value
