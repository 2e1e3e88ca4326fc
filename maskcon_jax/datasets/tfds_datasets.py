"""The paper's datasets read from prepared TensorFlow Datasets copies.

* ``cifar100``: TFDS ``cifar100``, 100 fine / 20 coarse classes.
* ``cifartoy_good``, ``cifartoy_bad``: TFDS ``cifar10``, 8 / 2.
* ``imagenet32``: TFDS ``imagenet_resized/32x32``, 1000 / 12; tested on the
  ``validation`` split.
* ``cars196``: TFDS ``cars196``, 196 / 8.
* ``sop``: TFDS ``stanford_online_products``, 22634 / 12.

Every dataset but ImageNet32 is tested on its ``test`` split.

Nothing is downloaded: a dataset that is not prepared raises a `DataError`
with the ``tfds build`` command that prepares it.

ImageNet32 is TFDS ``imagenet_resized/32x32`` (Chrabaszcz et al.'s Imagenet32
files, the ones the official code reads), not ``downsampled_imagenet/32x32``,
which has no labels. Its labels use the Imagenet32 class order;
``imagenet32_to_fine.json`` turns them into standard ImageNet-1k labels and
``imagenet_fine_to_coarse.json`` into the 12 coarse groups.
"""

from __future__ import annotations

import os
from typing import Any

import numpy as np

from maskcon_jax import hierarchies
from maskcon_jax.datasets import core
from maskcon_jax.errors import DataError

# config.dataset -> (TFDS name, test split).
TFDS_DATASETS = {
    "cifar100": ("cifar100", "test"),
    "cifartoy_good": ("cifar10", "test"),
    "cifartoy_bad": ("cifar10", "test"),
    "imagenet32": ("imagenet_resized/32x32", "validation"),
    "cars196": ("cars196", "test"),
    "sop": ("stanford_online_products", "test"),
}

# The side of the stored images, used when config.image_size is not set.
# Cars196 and SOP images vary in size; 224 is what the paper resizes them to.
NATIVE_IMAGE_SIZE = {
    "cifar100": 32,
    "cifartoy_good": 32,
    "cifartoy_bad": 32,
    "imagenet32": 32,
    "cars196": 224,
    "sop": 224,
}

# Files `tfds build` would download, which an offline machine can be given
# instead (tfds looks for them in --manual_dir under these names).
_SOURCE_FILES = {
    "cifar100": "cifar-100-binary.tar.gz",
    "cifar10": "cifar-10-binary.tar.gz",
    "imagenet_resized/32x32": (
        "Imagenet32_train_npz.zip and "
        "Imagenet32_val_npz.zip (image-net.org "
        "account needed)"
    ),
    "cars196": (
        "cars_train.tgz, cars_test.tgz, car_devkit.tgz and "
        "cars_test_annos_withlabels.mat"
    ),
    "stanford_online_products": "Stanford_Online_Products.zip",
}


def default_data_dir() -> str:
  """The data_dir TFDS uses when none is given (mirrors tfds' own default)."""
  return os.environ.get("TFDS_DATA_DIR") or os.path.join(
      os.path.expanduser("~"), "tensorflow_datasets"
  )


def not_prepared_message(tfds_name: str, data_dir: str) -> str:
  """One line saying how to prepare ``tfds_name`` in ``data_dir``."""
  manual = os.path.join(data_dir, "downloads", "manual")
  return (
      f"TFDS {tfds_name} is not prepared in {data_dir}: run `tfds build "
      f"{tfds_name} --data_dir={data_dir}` (offline: copy "
      f"{_SOURCE_FILES[tfds_name]} into {manual} and add "
      f"--manual_dir={manual}), or set config.data_dir to the TFDS "
      "data_dir that holds it."
  )


class _Tfds:
  """A TFDS builder plus the details error messages need."""

  def __init__(self, tfds_name: str, data_dir: str | None):
    tfds = core.import_tfds()
    self.name = tfds_name
    self.data_dir = (
        os.path.expanduser(data_dir) if data_dir else default_data_dir()
    )
    self.builder = tfds.builder(tfds_name, data_dir=self.data_dir)

  def num_examples(self, split: str) -> int:
    """Examples in ``split``; the first read of the dataset.

    Raises:
      DataError: the dataset is not prepared or has no such split.
    """
    tfds = core.import_tfds()
    try:
      ds = self.builder.as_dataset(
          split=split, read_config=tfds.ReadConfig(try_autocache=False)
      )
    except AssertionError as e:
      # tfds' way of saying "not prepared here".
      raise DataError(not_prepared_message(self.name, self.data_dir)) from e
    except (KeyError, ValueError) as e:
      raise DataError(
          f"TFDS {self.name} in {self.data_dir} has no {split!r} split "
          f"({core.first_line(e)}): rebuild it with `tfds build "
          f"{self.name} --data_dir={self.data_dir}`."
      ) from e
    count = int(ds.cardinality())
    if count < 0:  # Unknown; the metadata has it.
      count = self.builder.info.splits[split].num_examples
    return count

  def source(
      self,
      split: str,
      label_keys,
      label_fn,
      *,
      num_examples: int,
      keep_fn=None,
      shuffle_buffer: int,
  ) -> core.TfdsSource:
    return core.TfdsSource(
        self.builder,
        self.name,
        self.data_dir,
        split,
        label_keys,
        label_fn,
        num_examples=num_examples,
        keep_fn=keep_fn,
        shuffle_buffer=shuffle_buffer,
    )

  def scan(self, split: str, label_keys) -> dict[str, np.ndarray]:
    return core.scan_tfds_labels(
        self.builder, self.name, self.data_dir, split, label_keys
    )

  def label_names(self, feature: str) -> list[str] | None:
    """Class names of a label feature, or None if only numbers are known.

    TFDS learns CIFAR's names while preparing it; an unprepared builder (or a
    mocked one in tests) numbers them instead.
    """
    names = list(self.builder.info.features[feature].names)
    return None if all(n.isdigit() for n in names) else names


def _sliced(split: str, limit: int | None) -> str:
  return split if limit is None else f"{split}[:{limit}]"


def load(
    name: str,
    *,
    data_dir: str | None,
    image_size: int,
    max_train: int | None,
    max_test: int | None,
    shuffle_buffer: int = core.DEFAULT_SHUFFLE_BUFFER,
) -> core.StreamingDataset:
  """Opens one of `TFDS_DATASETS` for streaming.

  Args:
    name: The ``config.dataset`` name.
    data_dir: TFDS data_dir, or None for the TFDS default.
    image_size: Side of the square images batches hold.
    max_train: Keep only the first N training examples (None: all).
    max_test: Keep only the first N test examples (None: all).
    shuffle_buffer: Encoded examples buffered to shuffle training data.

  Returns:
    The dataset; `core.in_memory` turns it into arrays.

  Raises:
    DataError: the dataset is not prepared, unreadable or inconsistent.
  """
  tfds_name, test_split = TFDS_DATASETS[name]
  tfds_ = _Tfds(tfds_name, data_dir)
  loader = {
      "cifar100": _cifar100,
      "cifartoy_good": _cifartoy,
      "cifartoy_bad": _cifartoy,
      "imagenet32": _imagenet32,
      "cars196": _cars196,
      "sop": _sop,
  }[name]
  hierarchy, sources, mean, std = loader(
      name,
      tfds_,
      test_split,
      max_train=max_train,
      max_test=max_test,
      shuffle_buffer=shuffle_buffer,
  )
  return core.StreamingDataset(
      name=name,
      hierarchy=hierarchy,
      mean=mean,
      std=std,
      image_size=image_size,
      train_source=sources[0],
      test_source=sources[1],
  )


def _plain_sources(
    tfds_: _Tfds,
    test_split: str,
    label_keys,
    label_fn,
    *,
    max_train,
    max_test,
    shuffle_buffer,
):
  """Train and test sources of a dataset that keeps every example."""
  sources = []
  for split, limit in (("train", max_train), (test_split, max_test)):
    count = tfds_.num_examples(split)
    if limit is not None:
      count = min(count, limit)
    sources.append(
        tfds_.source(
            _sliced(split, limit),
            label_keys,
            label_fn,
            num_examples=count,
            shuffle_buffer=shuffle_buffer,
        )
    )
  return sources


def _gather(table: np.ndarray):
  """A tf function looking labels up in a constant numpy table."""
  tf = core.import_tf()
  constant = tf.constant(np.asarray(table, np.int32))
  return lambda labels: tf.gather(constant, tf.cast(labels, tf.int32))


def _int32(x: Any) -> Any:
  tf = core.import_tf()
  return tf.cast(x, tf.int32)


# ---------------------------------------------------------------------------
# The datasets.
# ---------------------------------------------------------------------------


def _cifar100(name, tfds_, test_split, **kwargs):
  del name
  for feature, expected in (
      ("label", hierarchies.CIFAR100_FINE_NAMES),
      ("coarse_label", hierarchies.CIFAR100_COARSE_NAMES),
  ):
    names = tfds_.label_names(feature)
    if names is not None and tuple(names) != expected:
      raise DataError(
          f"TFDS cifar100 in {tfds_.data_dir} has unexpected "
          f"{feature} names: rebuild it with `tfds build cifar100 "
          f"--data_dir={tfds_.data_dir}`."
      )
  hierarchy = core.LabelHierarchy(
      fine_to_coarse=hierarchies.cifar100_fine_to_coarse(),
      fine_names=hierarchies.CIFAR100_FINE_NAMES,
      coarse_names=hierarchies.CIFAR100_COARSE_NAMES,
  )

  # The dataset's own superclass field is the coarse label, as in the
  # official code; on real data it always equals the hierarchy's.
  def label_fn(ex):
    return {
        "fine_label": _int32(ex["label"]),
        "coarse_label": _int32(ex["coarse_label"]),
    }

  sources = _plain_sources(
      tfds_, test_split, ("label", "coarse_label"), label_fn, **kwargs
  )
  return (
      hierarchy,
      sources,
      hierarchies.CIFAR100_MEAN,
      hierarchies.CIFAR100_STD,
  )


def _cifartoy(name, tfds_, test_split, *, max_train, max_test, shuffle_buffer):
  grouping = name.split("_")[1]
  fine_table, coarse_table = hierarchies.cifartoy_tables(grouping)
  kept = np.asarray(hierarchies.CIFARTOY_CLASSES)
  hierarchy = core.LabelHierarchy(
      fine_to_coarse=coarse_table[kept],
      fine_names=[hierarchies.CIFAR10_NAMES[c] for c in kept],
      coarse_names=hierarchies.CIFARTOY_COARSE_NAMES[grouping],
  )
  names = tfds_.label_names("label")
  if names is not None and tuple(names) != hierarchies.CIFAR10_NAMES:
    raise DataError(
        f"TFDS cifar10 in {tfds_.data_dir} has unexpected label "
        "names: rebuild it with `tfds build cifar10 "
        f"--data_dir={tfds_.data_dir}`."
    )
  fine_of, coarse_of, keep_of = (
      _gather(fine_table),
      _gather(coarse_table),
      _gather((fine_table >= 0).astype(np.int32)),
  )

  def label_fn(ex):
    return {
        "fine_label": fine_of(ex["label"]),
        "coarse_label": coarse_of(ex["label"]),
    }

  def keep_fn(ex):
    return keep_of(ex["label"]) > 0

  sources = []
  for split, limit in (("train", max_train), (test_split, max_test)):
    tfds_.num_examples(split)  # Raises if not prepared.
    labels = tfds_.scan(split, ("label",))["label"]
    count = int(np.sum(fine_table[labels] >= 0))
    if limit is not None:
      count = min(count, limit)
    sources.append(
        tfds_.source(
            split,
            ("label",),
            label_fn,
            num_examples=count,
            keep_fn=keep_fn,
            shuffle_buffer=shuffle_buffer,
        )
    )
  return (hierarchy, sources, hierarchies.CIFAR10_MEAN, hierarchies.CIFAR10_STD)


def _is_wordnet_id(name: str) -> bool:
  return len(name) == 9 and name[0] == "n" and name[1:].isdigit()


def _imagenet32(name, tfds_, test_split, **kwargs):
  del name
  to_fine, fine_to_coarse = hierarchies.imagenet32_tables()
  names = list(tfds_.builder.info.features["label"].names)
  if len(names) != hierarchies.IMAGENET_NUM_CLASSES:
    raise DataError(
        f"TFDS {tfds_.name} in {tfds_.data_dir} has {len(names)} "
        "classes, expected 1000: rebuild it."
    )
  fine_names = [f"class {i}" for i in range(hierarchies.IMAGENET_NUM_CLASSES)]
  if all(_is_wordnet_id(n) for n in names):
    # Standard ImageNet-1k labels number the WordNet ids in sorted order.
    fine_names = sorted(names)
    if any(fine_names[to_fine[i]] != n for i, n in enumerate(names)):
      raise DataError(
          f"TFDS {tfds_.name} in {tfds_.data_dir} orders its "
          "classes differently from imagenet32_to_fine.json: "
          "rebuild it with this tensorflow-datasets version."
      )
  hierarchy = core.LabelHierarchy(
      fine_to_coarse=fine_to_coarse,
      fine_names=fine_names,
      coarse_names=[
          f"group {g}" for g in range(hierarchies.IMAGENET32_NUM_COARSE)
      ],
  )
  fine_of = _gather(to_fine)
  coarse_of = _gather(fine_to_coarse[to_fine])

  def label_fn(ex):
    return {
        "fine_label": fine_of(ex["label"]),
        "coarse_label": coarse_of(ex["label"]),
    }

  sources = _plain_sources(tfds_, test_split, ("label",), label_fn, **kwargs)
  return (
      hierarchy,
      sources,
      hierarchies.IMAGENET_MEAN,
      hierarchies.IMAGENET_STD,
  )


def _cars196(name, tfds_, test_split, **kwargs):
  del name
  names = list(tfds_.builder.info.features["label"].names)
  try:
    fine_to_coarse = hierarchies.cars196_fine_to_coarse(names)
  except ValueError as e:
    raise DataError(f"TFDS cars196 in {tfds_.data_dir}: {e}") from e
  hierarchy = core.LabelHierarchy(
      fine_to_coarse=fine_to_coarse,
      fine_names=names,
      coarse_names=hierarchies.CARS196_COARSE_NAMES,
  )
  coarse_of = _gather(np.asarray(fine_to_coarse))

  def label_fn(ex):
    return {
        "fine_label": _int32(ex["label"]),
        "coarse_label": coarse_of(ex["label"]),
    }

  sources = _plain_sources(tfds_, test_split, ("label",), label_fn, **kwargs)
  return (
      hierarchy,
      sources,
      hierarchies.IMAGENET_MEAN,
      hierarchies.IMAGENET_STD,
  )


def _sop(name, tfds_, test_split, **kwargs):
  """Stanford Online Products: products as fine, super-categories as coarse.

  The fine -> coarse table is not part of the TFDS metadata, so both splits'
  labels are read once (images are skipped). Product ids are renumbered
  densely in sorted order over the products present; on the full dataset,
  where every one of the 22,634 products has images, that is the identity.
  Train and test products are disjoint, as in the dataset's own split.
  """
  del name
  keys = ("class_id", "super_class_id")
  for split in ("train", test_split):
    tfds_.num_examples(split)  # Raises if not prepared.
  scans = [tfds_.scan(split, keys) for split in ("train", test_split)]
  raw_fine = np.concatenate([s["class_id"] for s in scans]).astype(np.int64)
  raw_coarse = np.concatenate([s["super_class_id"] for s in scans])
  products = np.unique(raw_fine)
  dense = np.searchsorted(products, raw_fine)
  fine_to_coarse = np.full(len(products), -1, np.int64)
  fine_to_coarse[dense] = raw_coarse
  conflicting = np.flatnonzero(fine_to_coarse[dense] != raw_coarse)
  if conflicting.size:
    product = int(raw_fine[conflicting[0]])
    raise DataError(
        f"TFDS stanford_online_products in {tfds_.data_dir} puts "
        f"product {product} under two super-categories: rebuild "
        "it with `tfds build stanford_online_products "
        f"--data_dir={tfds_.data_dir}`."
    )
  num_raw = tfds_.builder.info.features["class_id"].num_classes
  table = np.full(max(num_raw, int(products.max(initial=0)) + 1), -1, np.int32)
  table[products] = np.arange(len(products), dtype=np.int32)
  hierarchy = core.LabelHierarchy(
      fine_to_coarse=fine_to_coarse,
      fine_names=[f"product {p}" for p in products],
      coarse_names=hierarchies.SOP_SUPER_CLASSES,
  )
  fine_of = _gather(table)

  def label_fn(ex):
    return {
        "fine_label": fine_of(ex["class_id"]),
        "coarse_label": _int32(ex["super_class_id"]),
    }

  sources = _plain_sources(tfds_, test_split, keys, label_fn, **kwargs)
  return (
      hierarchy,
      sources,
      hierarchies.IMAGENET_MEAN,
      hierarchies.IMAGENET_STD,
  )
