"""Tests for maskcon_jax.input_pipeline."""

import dataclasses
import gzip
import os
import pathlib
import struct
import subprocess
import sys
import tempfile

import hypothesis
from hypothesis import strategies as st
import ml_collections
import numpy as np
import pytest

from configs import tiny
from maskcon_jax import configuration
from maskcon_jax import input_pipeline
from maskcon_jax.datasets import builtin
from maskcon_jax.errors import ConfigError
from maskcon_jax.errors import DataError

IDX_NAMES = (
    "train-images-idx3-ubyte",
    "train-labels-idx1-ubyte",
    "t10k-images-idx3-ubyte",
    "t10k-labels-idx1-ubyte",
)


def _config(**fields) -> ml_collections.ConfigDict:
  return ml_collections.ConfigDict(fields)


def _full_config(**fields) -> ml_collections.ConfigDict:
  """tiny's training config on synthetic data with ``fields``; built from a
  dict, as from a config.json, so values of any type arrive."""
  return ml_collections.ConfigDict(
      {**tiny.get_config().to_dict(), "dataset": "synthetic", **fields}
  )


def _idx_bytes(array: np.ndarray) -> bytes:
  array = np.asarray(array, dtype=np.uint8)
  header = struct.pack(">i", 0x0800 + array.ndim)
  header += struct.pack(f">{array.ndim}i", *array.shape)
  return header + array.tobytes()


def _write(path: pathlib.Path, payload: bytes, gz: bool) -> pathlib.Path:
  if gz:
    path = path.with_name(path.name + ".gz")
    path.write_bytes(gzip.compress(payload))
  else:
    path.write_bytes(payload)
  return path


def _fake_fashion_mnist(
    directory: pathlib.Path, *, gz: bool, num_train=23, num_test=11, seed=0
):
  """Writes the four IDX files; returns the arrays written."""
  rng = np.random.default_rng(seed)
  arrays = {
      IDX_NAMES[0]: rng.integers(0, 256, (num_train, 28, 28), dtype=np.uint8),
      # Every class occurs so the coarse mapping is checked for all of them.
      IDX_NAMES[1]: rng.permutation(np.arange(num_train) % 10),
      IDX_NAMES[2]: rng.integers(0, 256, (num_test, 28, 28), dtype=np.uint8),
      IDX_NAMES[3]: rng.permutation(np.arange(num_test) % 10),
  }
  directory.mkdir(parents=True, exist_ok=True)
  for name, array in arrays.items():
    _write(directory / name, _idx_bytes(array), gz)
  return arrays


@pytest.fixture
def no_default_fashion_mnist(monkeypatch, tmp_path):
  """Hides the default TFDS data_dir and the Debian folder."""
  monkeypatch.setenv("TFDS_DATA_DIR", str(tmp_path / "empty_tfds"))
  monkeypatch.setattr(
      builtin,
      "DEBIAN_FASHION_MNIST_DIR",
      str(tmp_path / "no_debian_package"),
  )


# ----------------------------------------------------------------------------
# LabelHierarchy and Dataset.
# ----------------------------------------------------------------------------


def test_label_hierarchy_properties_and_coarse_of():
  h = input_pipeline.LabelHierarchy(
      fine_to_coarse=[1, 0, 1],
      fine_names=["a", "b", "c"],
      coarse_names=["x", "y"],
  )
  assert h.fine_to_coarse == (1, 0, 1)  # Lists normalised to tuples.
  assert (h.num_fine, h.num_coarse) == (3, 2)
  coarse = h.coarse_of(np.array([[0, 1], [2, 2]]))
  assert coarse.dtype == np.int32
  np.testing.assert_array_equal(coarse, [[1, 0], [1, 1]])
  assert hash(h) == hash(
      input_pipeline.LabelHierarchy((1, 0, 1), ("a", "b", "c"), ("x", "y"))
  )


@pytest.mark.parametrize(
    "fine_to_coarse,fine_names,coarse_names,match",
    [
        ((0, 1), ("a",), ("x", "y"), "fine_names"),
        ((0, 2), ("a", "b"), ("x", "y"), "outside"),
        ((0, -1), ("a", "b"), ("x", "y"), "outside"),
        ((0, 0), ("a", "b"), ("x", "y"), "no fine class"),
        ((), (), ("x",), "at least one fine"),
        ((0,), ("a",), (), "at least one coarse"),
    ],
)
def test_label_hierarchy_validation(
    fine_to_coarse, fine_names, coarse_names, match
):
  with pytest.raises(ValueError, match=match):
    input_pipeline.LabelHierarchy(fine_to_coarse, fine_names, coarse_names)


@pytest.mark.parametrize("labels", [[0, 3], [-1, 0]])
def test_coarse_of_rejects_out_of_range_labels(labels):
  h = input_pipeline.LabelHierarchy((0, 0, 1), ("a", "b", "c"), ("x", "y"))
  with pytest.raises(ValueError, match="Fine labels"):
    h.coarse_of(np.array(labels))


def test_dataset_validates_dtypes():
  ds = input_pipeline.load_dataset(_config(dataset="synthetic"))
  with pytest.raises(ValueError, match="train_fine must be int32"):
    input_pipeline.Dataset(
        name="x",
        train_images=ds.train_images,
        train_fine=ds.train_fine.astype(np.int64),
        train_coarse=ds.train_coarse,
        test_images=ds.test_images,
        test_fine=ds.test_fine,
        test_coarse=ds.test_coarse,
        hierarchy=ds.hierarchy,
        mean=ds.mean,
        std=ds.std,
    )
  with pytest.raises(ValueError, match="mean and std"):
    input_pipeline.Dataset(
        name="x",
        train_images=ds.train_images,
        train_fine=ds.train_fine,
        train_coarse=ds.train_coarse,
        test_images=ds.test_images,
        test_fine=ds.test_fine,
        test_coarse=ds.test_coarse,
        hierarchy=ds.hierarchy,
        mean=(0.5, 0.5),
        std=(0.5, 0.5),
    )


# ----------------------------------------------------------------------------
# Config handling.
# ----------------------------------------------------------------------------


def test_unknown_dataset_is_a_config_error():
  with pytest.raises(ConfigError) as info:
    input_pipeline.load_dataset(_config(dataset="imagenet"))
  message = str(info.value)
  assert "config.dataset" in message and "imagenet" in message
  for name in input_pipeline.DATASETS:
    assert name in message
  assert "\n" not in message


def test_max_examples_keeps_the_first_examples():
  full = input_pipeline.load_dataset(_config(dataset="digits"))
  small = input_pipeline.load_dataset(
      _config(dataset="digits", max_train_examples=100, max_test_examples=7)
  )
  assert (small.num_train, small.num_test) == (100, 7)
  np.testing.assert_array_equal(small.train_images, full.train_images[:100])
  np.testing.assert_array_equal(small.train_fine, full.train_fine[:100])
  np.testing.assert_array_equal(small.train_coarse, full.train_coarse[:100])
  np.testing.assert_array_equal(small.test_images, full.test_images[:7])
  np.testing.assert_array_equal(small.test_coarse, full.test_coarse[:7])
  # A limit above the split size keeps everything; None means no limit.
  big = input_pipeline.load_dataset(
      _config(
          dataset="digits", max_train_examples=10**6, max_test_examples=None
      )
  )
  assert (big.num_train, big.num_test) == (full.num_train, full.num_test)


@pytest.mark.parametrize("value", [0, -3, True, 1.5, "10"])
def test_bad_max_examples_is_a_config_error(value):
  with pytest.raises(ConfigError, match="max_train_examples"):
    input_pipeline.load_dataset(
        _config(dataset="synthetic", max_train_examples=value)
    )


# ----------------------------------------------------------------------------
# IDX parsing and Fashion-MNIST from a data_dir.
# ----------------------------------------------------------------------------


@hypothesis.settings(max_examples=25, deadline=None)
@hypothesis.given(
    shape=st.lists(st.integers(0, 5), min_size=1, max_size=3),
    gz=st.booleans(),
    seed=st.integers(0, 2**32 - 1),
)
def test_read_idx_round_trips(shape, gz, seed):
  array = np.random.default_rng(seed).integers(0, 256, shape, dtype=np.uint8)
  with tempfile.TemporaryDirectory() as tmp:
    path = _write(pathlib.Path(tmp) / "data", _idx_bytes(array), gz)
    read = input_pipeline.read_idx(str(path), expected_ndim=len(shape))
  assert read.dtype == np.uint8 and read.flags.writeable
  np.testing.assert_array_equal(read, array)


@pytest.mark.parametrize("gz", [False, True])
def test_fashion_mnist_from_idx_data_dir(tmp_path, gz):
  written = _fake_fashion_mnist(tmp_path, gz=gz)
  ds = input_pipeline.load_dataset(
      _config(dataset="fashion_mnist", data_dir=str(tmp_path))
  )
  assert ds.name == "fashion_mnist"
  assert ds.image_shape == (28, 28, 1)
  assert (ds.num_train, ds.num_test) == (23, 11)
  assert ds.train_images.dtype == np.uint8
  assert ds.train_fine.dtype == ds.train_coarse.dtype == np.int32
  np.testing.assert_array_equal(ds.train_images[..., 0], written[IDX_NAMES[0]])
  np.testing.assert_array_equal(ds.train_fine, written[IDX_NAMES[1]])
  np.testing.assert_array_equal(ds.test_images[..., 0], written[IDX_NAMES[2]])
  np.testing.assert_array_equal(ds.test_fine, written[IDX_NAMES[3]])
  tops, footwear, other = 0, 1, 2
  expected = {
      0: tops,
      2: tops,
      4: tops,
      6: tops,
      5: footwear,
      7: footwear,
      9: footwear,
      1: other,
      3: other,
      8: other,
  }
  for fine, coarse in zip(ds.train_fine, ds.train_coarse):
    assert coarse == expected[int(fine)]
  for fine, coarse in zip(ds.test_fine, ds.test_coarse):
    assert coarse == expected[int(fine)]
  assert ds.hierarchy.coarse_names == ("tops", "footwear", "other")
  assert ds.hierarchy.fine_names[0] == "T-shirt/top"
  assert ds.hierarchy.fine_names[9] == "Ankle boot"
  assert ds.mean == (0.2860,) and ds.std == (0.3530,)


def test_fashion_mnist_mixed_gzip_and_plain(tmp_path):
  written = _fake_fashion_mnist(tmp_path, gz=True)
  # Replace one gzipped file by its plain version: both forms are accepted.
  (tmp_path / (IDX_NAMES[1] + ".gz")).unlink()
  _write(tmp_path / IDX_NAMES[1], _idx_bytes(written[IDX_NAMES[1]]), gz=False)
  ds = input_pipeline.load_dataset(
      _config(dataset="fashion_mnist", data_dir=str(tmp_path))
  )
  np.testing.assert_array_equal(ds.train_fine, written[IDX_NAMES[1]])


def _corrupt_bad_magic(path: pathlib.Path):
  data = bytearray(path.read_bytes())
  data[3] = 0x01  # 2049 (labels) instead of 2051 (images).
  path.write_bytes(bytes(data))


def _corrupt_truncate(path: pathlib.Path):
  path.write_bytes(path.read_bytes()[:-5])


def _corrupt_header_only(path: pathlib.Path):
  path.write_bytes(b"\x00\x00\x08")


@pytest.mark.parametrize(
    "corrupt,match",
    [
        (_corrupt_bad_magic, "magic number 2049, expected 2051"),
        (_corrupt_truncate, "data bytes"),
        (_corrupt_header_only, "truncated"),
    ],
)
def test_corrupt_idx_file_is_a_data_error(tmp_path, corrupt, match):
  _fake_fashion_mnist(tmp_path, gz=False)
  bad = tmp_path / IDX_NAMES[0]
  corrupt(bad)
  with pytest.raises(DataError, match=match) as info:
    input_pipeline.load_dataset(
        _config(dataset="fashion_mnist", data_dir=str(tmp_path))
    )
  assert str(bad) in str(info.value)
  assert "\n" not in str(info.value)


def test_corrupt_gzip_is_a_data_error(tmp_path):
  _fake_fashion_mnist(tmp_path, gz=True)
  bad = tmp_path / (IDX_NAMES[2] + ".gz")
  bad.write_bytes(bad.read_bytes()[:40])  # Cut off mid-stream.
  with pytest.raises(DataError, match="Cannot read IDX file") as info:
    input_pipeline.load_dataset(
        _config(dataset="fashion_mnist", data_dir=str(tmp_path))
    )
  assert str(bad) in str(info.value)


def test_mismatched_or_foreign_idx_files_are_data_errors(tmp_path):
  _fake_fashion_mnist(tmp_path, gz=False)
  _write(tmp_path / IDX_NAMES[1], _idx_bytes(np.zeros(5)), gz=False)
  with pytest.raises(DataError, match="23 images but"):
    input_pipeline.load_dataset(
        _config(dataset="fashion_mnist", data_dir=str(tmp_path))
    )

  _fake_fashion_mnist(tmp_path, gz=False)
  _write(tmp_path / IDX_NAMES[3], _idx_bytes(np.full(11, 10)), gz=False)
  with pytest.raises(DataError, match="label 10"):
    input_pipeline.load_dataset(
        _config(dataset="fashion_mnist", data_dir=str(tmp_path))
    )

  _fake_fashion_mnist(tmp_path, gz=False)
  _write(tmp_path / IDX_NAMES[0], _idx_bytes(np.zeros((23, 32, 32))), gz=False)
  with pytest.raises(DataError, match="not Fashion-MNIST"):
    input_pipeline.load_dataset(
        _config(dataset="fashion_mnist", data_dir=str(tmp_path))
    )


def test_incomplete_idx_files_are_a_data_error(tmp_path):
  _fake_fashion_mnist(tmp_path, gz=True)
  (tmp_path / (IDX_NAMES[3] + ".gz")).unlink()
  with pytest.raises(DataError, match="incomplete") as info:
    input_pipeline.load_dataset(
        _config(dataset="fashion_mnist", data_dir=str(tmp_path))
    )
  assert IDX_NAMES[3] in str(info.value)


def test_useless_data_dir_is_a_one_line_data_error(tmp_path):
  (tmp_path / "notes.txt").write_text("nothing to see")
  with pytest.raises(DataError) as info:
    input_pipeline.load_dataset(
        _config(dataset="fashion_mnist", data_dir=str(tmp_path))
    )
  message = str(info.value)
  assert str(tmp_path) in message
  assert "train-images-idx3-ubyte" in message and "TFDS" in message
  assert "\n" not in message


def test_missing_data_dir_is_a_one_line_data_error(tmp_path):
  missing = tmp_path / "nope"
  with pytest.raises(DataError, match="does not exist") as info:
    input_pipeline.load_dataset(
        _config(dataset="fashion_mnist", data_dir=str(missing))
    )
  assert "\n" not in str(info.value)


def test_nothing_found_anywhere_is_a_one_line_data_error(
    no_default_fashion_mnist,
):
  del no_default_fashion_mnist
  with pytest.raises(DataError) as info:
    input_pipeline.load_dataset(_config(dataset="fashion_mnist"))
  message = str(info.value)
  assert "apt-get install dataset-fashion-mnist" in message
  assert "tfds build fashion_mnist" in message
  assert "data_dir" in message and "digits" in message
  assert "\n" not in message


def test_debian_folder_is_used_without_data_dir(
    monkeypatch, tmp_path, no_default_fashion_mnist
):
  del no_default_fashion_mnist
  written = _fake_fashion_mnist(tmp_path / "debian", gz=True)
  monkeypatch.setattr(
      builtin, "DEBIAN_FASHION_MNIST_DIR", str(tmp_path / "debian")
  )
  ds = input_pipeline.load_dataset(_config(dataset="fashion_mnist"))
  np.testing.assert_array_equal(ds.test_fine, written[IDX_NAMES[3]])


@pytest.mark.slow
def test_real_fashion_mnist_from_debian_package(monkeypatch, tmp_path):
  if not os.path.isdir(input_pipeline.DEBIAN_FASHION_MNIST_DIR):
    pytest.skip(
        f"{input_pipeline.DEBIAN_FASHION_MNIST_DIR} is missing "
        "(install with `apt-get install dataset-fashion-mnist`)."
    )
  # Force the Debian branch even if a TFDS copy exists on this machine.
  monkeypatch.setenv("TFDS_DATA_DIR", str(tmp_path))
  ds = input_pipeline.load_dataset(_config(dataset="fashion_mnist"))
  assert (ds.num_train, ds.num_test) == (60000, 10000)
  assert ds.image_shape == (28, 28, 1)
  np.testing.assert_array_equal(np.bincount(ds.train_fine), [6000] * 10)
  np.testing.assert_array_equal(np.bincount(ds.test_fine), [1000] * 10)
  # 4 top classes, 3 footwear, 3 other.
  np.testing.assert_array_equal(
      np.bincount(ds.train_coarse), [24000, 18000, 18000]
  )
  # The hard-coded normalisation constants match the data. A histogram of the
  # 47M pixels gives exact moments far faster than a float copy would.
  counts = np.bincount(ds.train_images.ravel(), minlength=256)
  values = np.arange(256) / 255.0
  mean = (counts * values).sum() / counts.sum()
  std = np.sqrt((counts * (values - mean) ** 2).sum() / counts.sum())
  np.testing.assert_allclose(mean, ds.mean[0], atol=1e-3)
  np.testing.assert_allclose(std, ds.std[0], atol=1e-3)


# ----------------------------------------------------------------------------
# Fashion-MNIST from a prepared TFDS data_dir (no download: the copy is built
# locally from arrays with tfds' own writer and read back by the real
# `fashion_mnist` builder).
# ----------------------------------------------------------------------------


@pytest.fixture(scope="module")
def tfds_data_dir(tmp_path_factory):
  """A tiny prepared `fashion_mnist` (13 train / 6 test) and its arrays."""
  tfds = builtin._import_tfds()  # pylint: disable=protected-access
  import tensorflow as tf  # pylint: disable=g-import-not-at-top

  data_dir = tmp_path_factory.mktemp("tfds")
  # Image k is filled with the value k and labelled k % 10, so image/label
  # pairing can be checked whatever order tfds stores the examples in.
  splits = {}
  for split, (start, n) in {"train": (0, 13), "test": (100, 6)}.items():
    values = np.arange(start, start + n)
    images = np.broadcast_to(
        values[:, None, None, None], (n, 28, 28, 1)
    ).astype(np.uint8)
    splits[split] = tf.data.Dataset.from_tensor_slices(
        {"image": images, "label": (values % 10).astype(np.int64)}
    )
  features = tfds.features.FeaturesDict(
      {
          "image": tfds.features.Image(shape=(28, 28, 1)),
          "label": tfds.features.ClassLabel(num_classes=10),
      }
  )
  version = str(tfds.builder_cls("fashion_mnist").VERSION)
  tfds.dataset_builders.store_as_tfds_dataset(
      name="fashion_mnist",
      version=version,
      features=features,
      split_datasets=splits,
      data_dir=str(data_dir),
  )
  assert tfds.builder("fashion_mnist", data_dir=str(data_dir)).is_prepared()
  return data_dir


def _check_tfds_copy(ds):
  assert (ds.num_train, ds.num_test) == (13, 6)
  assert ds.image_shape == (28, 28, 1) and ds.train_images.dtype == np.uint8
  assert sorted(ds.train_images[:, 0, 0, 0]) == list(range(13))
  assert sorted(ds.test_images[:, 0, 0, 0]) == list(range(100, 106))
  for images, fine, coarse in (
      (ds.train_images, ds.train_fine, ds.train_coarse),
      (ds.test_images, ds.test_fine, ds.test_coarse),
  ):
    assert fine.dtype == np.int32
    np.testing.assert_array_equal(fine, images[:, 0, 0, 0] % 10)
    np.testing.assert_array_equal(
        coarse, input_pipeline.FASHION_MNIST_HIERARCHY.coarse_of(fine)
    )


def test_fashion_mnist_from_tfds_data_dir(tfds_data_dir):
  ds = input_pipeline.load_dataset(
      _config(dataset="fashion_mnist", data_dir=str(tfds_data_dir))
  )
  _check_tfds_copy(ds)


def test_default_tfds_data_dir_wins_over_debian_folder(
    monkeypatch, tfds_data_dir, no_default_fashion_mnist
):
  del no_default_fashion_mnist
  monkeypatch.setenv("TFDS_DATA_DIR", str(tfds_data_dir))
  ds = input_pipeline.load_dataset(_config(dataset="fashion_mnist"))
  _check_tfds_copy(ds)


def test_tfds_copy_without_tfds_installed(
    monkeypatch, tmp_path, tfds_data_dir, no_default_fashion_mnist
):
  del no_default_fashion_mnist
  # `None` in sys.modules makes the import fail as if the package were absent.
  monkeypatch.setitem(sys.modules, "tensorflow", None)
  monkeypatch.setitem(sys.modules, "tensorflow_datasets", None)
  # An explicit data_dir that needs tfds: say so.
  with pytest.raises(DataError, match="install tensorflow-datasets") as info:
    input_pipeline.load_dataset(
        _config(dataset="fashion_mnist", data_dir=str(tfds_data_dir))
    )
  assert "\n" not in str(info.value)
  # The default TFDS location is only a probe: fall through to the next source.
  monkeypatch.setenv("TFDS_DATA_DIR", str(tfds_data_dir))
  written = _fake_fashion_mnist(tmp_path / "debian", gz=True)
  monkeypatch.setattr(
      builtin, "DEBIAN_FASHION_MNIST_DIR", str(tmp_path / "debian")
  )
  ds = input_pipeline.load_dataset(_config(dataset="fashion_mnist"))
  np.testing.assert_array_equal(ds.train_fine, written[IDX_NAMES[1]])


# ----------------------------------------------------------------------------
# digits.
# ----------------------------------------------------------------------------


def test_digits():
  # pylint: disable-next=g-import-not-at-top
  from sklearn import datasets as sk_datasets

  ds = input_pipeline.load_dataset(_config(dataset="digits"))
  assert ds.name == "digits"
  assert (ds.num_train, ds.num_test) == (1437, 360)
  assert ds.image_shape == (8, 8, 1) and ds.train_images.dtype == np.uint8
  assert ds.train_images.max() == 255 and ds.train_images.min() == 0
  np.testing.assert_array_equal(ds.train_coarse, ds.train_fine // 5)
  np.testing.assert_array_equal(ds.test_coarse, ds.test_fine // 5)
  assert ds.hierarchy.coarse_names == ("digits 0-4", "digits 5-9")
  # Every digit is in both splits.
  assert np.all(np.bincount(ds.train_fine, minlength=10) > 100)
  assert np.all(np.bincount(ds.test_fine, minlength=10) > 20)

  # The documented split and pixel conversion, recomputed independently.
  raw = sk_datasets.load_digits()
  order = np.random.default_rng(0).permutation(1797)
  np.testing.assert_array_equal(ds.train_fine, raw.target[order[:1437]])
  np.testing.assert_array_equal(ds.test_fine, raw.target[order[1437:]])
  np.testing.assert_array_equal(
      ds.test_images[..., 0], np.rint(raw.images[order[1437:]] * 255 / 16)
  )

  # Hard-coded normalisation constants match the train split.
  pixels = ds.train_images.astype(np.float64) / 255.0
  np.testing.assert_allclose(ds.mean, [pixels.mean()], rtol=1e-9)
  np.testing.assert_allclose(ds.std, [pixels.std()], rtol=1e-9)

  again = input_pipeline.load_dataset(_config(dataset="digits"))
  np.testing.assert_array_equal(again.train_images, ds.train_images)
  np.testing.assert_array_equal(again.test_fine, ds.test_fine)


# ----------------------------------------------------------------------------
# synthetic.
# ----------------------------------------------------------------------------


def _synthetic_config(seed=0, **settings):
  values = dict(
      num_train=60,
      num_test=30,
      image_size=6,
      channels=3,
      num_fine=6,
      num_coarse=3,
  )
  values.update(settings)
  return _config(dataset="synthetic", seed=seed, synthetic=values)


def test_synthetic_shapes_and_hierarchy():
  ds = input_pipeline.load_dataset(_synthetic_config())
  assert ds.name == "synthetic"
  assert (ds.num_train, ds.num_test) == (60, 30)
  assert ds.image_shape == (6, 6, 3) and ds.train_images.dtype == np.uint8
  assert ds.mean == (0.5,) * 3 and ds.std == (0.5,) * 3
  assert (ds.hierarchy.num_fine, ds.hierarchy.num_coarse) == (6, 3)
  np.testing.assert_array_equal(ds.train_coarse, ds.train_fine % 3)
  np.testing.assert_array_equal(ds.test_coarse, ds.test_fine % 3)
  np.testing.assert_array_equal(np.bincount(ds.train_fine), [10] * 6)


def test_synthetic_is_deterministic_given_the_seed():
  a = input_pipeline.load_dataset(_synthetic_config(seed=3))
  b = input_pipeline.load_dataset(_synthetic_config(seed=3))
  c = input_pipeline.load_dataset(_synthetic_config(seed=4))
  for field in ("train_images", "train_fine", "test_images", "test_fine"):
    np.testing.assert_array_equal(getattr(a, field), getattr(b, field))
  assert not np.array_equal(a.train_images, c.train_images)


def test_synthetic_is_learnable():
  ds = input_pipeline.load_dataset(_synthetic_config(num_train=120))
  train = ds.train_images.reshape(ds.num_train, -1).astype(np.float64)
  test = ds.test_images.reshape(ds.num_test, -1).astype(np.float64)
  centroids = np.stack([train[ds.train_fine == f].mean(0) for f in range(6)])
  distances = ((test[:, None] - centroids[None]) ** 2).sum(-1)
  assert np.mean(distances.argmin(1) == ds.test_fine) > 0.95
  # Yet examples of one class are not identical copies.
  assert len(np.unique(train, axis=0)) == ds.num_train


def test_synthetic_defaults_and_validation():
  ds = input_pipeline.load_dataset(_config(dataset="synthetic"))
  defaults = input_pipeline.SYNTHETIC_DEFAULTS
  assert ds.num_train == defaults["num_train"]
  assert ds.image_shape == (
      defaults["image_size"],
      defaults["image_size"],
      defaults["channels"],
  )
  with pytest.raises(ConfigError, match="num_coarse"):
    input_pipeline.load_dataset(_synthetic_config(num_fine=2, num_coarse=3))
  with pytest.raises(ConfigError, match="image_size"):
    input_pipeline.load_dataset(_synthetic_config(image_size=0))


# ----------------------------------------------------------------------------
# fashion_mnist_mixed.
# ----------------------------------------------------------------------------

# The misleading grouping, written out by label: T-shirt/top, Trouser,
# Pullover, Sandal, Bag -> mixed_a; Dress, Coat, Shirt, Sneaker, Ankle boot ->
# mixed_b.
_MIXED_OF_LABEL = (0, 0, 0, 1, 1, 0, 1, 1, 0, 1)


def test_fashion_mnist_mixed_dataset(tmp_path):
  written = _fake_fashion_mnist(tmp_path, gz=False)
  ds = input_pipeline.load_dataset(
      _config(dataset="fashion_mnist_mixed", data_dir=str(tmp_path))
  )
  plain = input_pipeline.load_dataset(
      _config(dataset="fashion_mnist", data_dir=str(tmp_path))
  )
  assert ds.name == "fashion_mnist_mixed"
  assert ds.hierarchy.coarse_names == ("mixed_a", "mixed_b")
  assert ds.hierarchy.fine_names == plain.hierarchy.fine_names
  # Same files, images, fine labels and statistics as fashion_mnist.
  np.testing.assert_array_equal(ds.train_images[..., 0], written[IDX_NAMES[0]])
  np.testing.assert_array_equal(ds.train_fine, written[IDX_NAMES[1]])
  np.testing.assert_array_equal(ds.test_fine, written[IDX_NAMES[3]])
  assert (ds.mean, ds.std) == (plain.mean, plain.std)
  table = np.asarray(_MIXED_OF_LABEL)
  np.testing.assert_array_equal(ds.train_coarse, table[ds.train_fine])
  np.testing.assert_array_equal(ds.test_coarse, table[ds.test_fine])
  assert input_pipeline.HIERARCHIES["fashion_mnist_mixed"] is ds.hierarchy


def test_fashion_mnist_mixed_is_registered_like_fashion_mnist():
  assert "fashion_mnist_mixed" in input_pipeline.DATASETS
  assert not input_pipeline.is_streaming(_config(dataset="fashion_mnist_mixed"))
  with pytest.raises(ConfigError, match="always loaded into memory"):
    input_pipeline.is_streaming(
        _config(dataset="fashion_mnist_mixed", in_memory=False)
    )


# ----------------------------------------------------------------------------
# Random subsets (subset_seed).
# ----------------------------------------------------------------------------


def _assert_rows(small, full, train_rows, test_rows):
  for split, rows in (("train", train_rows), ("test", test_rows)):
    for field in ("images", "fine", "coarse"):
      np.testing.assert_array_equal(
          getattr(small, f"{split}_{field}"),
          getattr(full, f"{split}_{field}")[rows],
      )


@pytest.mark.parametrize(
    "seed,max_train,max_test",
    [(0, 100, 7), (1228, 1, 360), (5, None, 20), (2, 10**6, None)],
)
def test_subset_seed_on_digits_matches_numpy(seed, max_train, max_test):
  full = input_pipeline.load_dataset(_config(dataset="digits"))
  small = input_pipeline.load_dataset(
      _config(
          dataset="digits",
          subset_seed=seed,
          max_train_examples=max_train,
          max_test_examples=max_test,
      )
  )
  # The reference: a fresh generator per split, first N of the permutation.
  train_rows = np.random.default_rng(seed).permutation(1437)[:max_train]
  test_rows = np.random.default_rng(seed).permutation(360)[:max_test]
  _assert_rows(small, full, train_rows, test_rows)
  assert small.num_train == min(max_train or 1437, 1437)
  # Not the first examples (which a missing seed would give).
  assert not np.array_equal(
      small.test_fine, full.test_fine[: len(small.test_fine)]
  )


def test_subset_seed_on_fashion_mnist_matches_numpy(tmp_path):
  written = _fake_fashion_mnist(tmp_path, gz=True)
  ds = input_pipeline.load_dataset(
      _config(
          dataset="fashion_mnist",
          data_dir=str(tmp_path),
          subset_seed=0,
          max_train_examples=12,
          max_test_examples=5,
      )
  )
  train_rows = np.random.default_rng(0).permutation(23)[:12]
  test_rows = np.random.default_rng(0).permutation(11)[:5]
  np.testing.assert_array_equal(
      ds.train_images[..., 0], written[IDX_NAMES[0]][train_rows]
  )
  np.testing.assert_array_equal(
      ds.train_fine, written[IDX_NAMES[1]][train_rows]
  )
  np.testing.assert_array_equal(
      ds.test_images[..., 0], written[IDX_NAMES[2]][test_rows]
  )
  np.testing.assert_array_equal(ds.test_fine, written[IDX_NAMES[3]][test_rows])
  np.testing.assert_array_equal(
      ds.train_coarse,
      input_pipeline.FASHION_MNIST_HIERARCHY.coarse_of(ds.train_fine),
  )


def test_subset_seed_without_max_permutes_the_whole_split():
  full = input_pipeline.load_dataset(_config(dataset="synthetic"))
  permuted = input_pipeline.load_dataset(
      _config(dataset="synthetic", subset_seed=7)
  )
  _assert_rows(
      permuted,
      full,
      np.random.default_rng(7).permutation(full.num_train),
      np.random.default_rng(7).permutation(full.num_test),
  )


def test_real_fashion_mnist_parity_subsets(monkeypatch, tmp_path):
  """The parity protocol's subsets, read independently from the IDX files."""
  folder = input_pipeline.DEBIAN_FASHION_MNIST_DIR
  if not os.path.isdir(folder):
    pytest.skip(
        f"{folder} is missing (install with `apt-get install "
        "dataset-fashion-mnist`)."
    )
  monkeypatch.setenv("TFDS_DATA_DIR", str(tmp_path))
  ds = input_pipeline.load_dataset(
      _config(
          dataset="fashion_mnist",
          subset_seed=0,
          max_train_examples=12000,
          max_test_examples=2000,
          image_channels=3,
      )
  )
  assert (ds.num_train, ds.num_test) == (12000, 2000)
  assert ds.image_shape == (28, 28, 3)
  for split, prefix, size, count in (
      ("train", "train", 60000, 12000),
      ("test", "t10k", 10000, 2000),
  ):
    path = os.path.join(folder, f"{prefix}-labels-idx1-ubyte")
    if not os.path.exists(path):
      path += ".gz"
    labels = input_pipeline.read_idx(path, expected_ndim=1)
    rows = np.random.default_rng(0).permutation(size)[:count]
    np.testing.assert_array_equal(getattr(ds, f"{split}_fine"), labels[rows])


@pytest.mark.parametrize(
    "fields,match",
    [
        (dict(subset_seed=-1), "subset_seed=-1 must be an integer >= 0"),
        (dict(subset_seed=True), "subset_seed=True"),
        (dict(subset_seed="0"), "subset_seed='0'"),
        (dict(image_channels=2), r"image_channels=2 must be 1 \(gray\), 3"),
        (dict(image_channels=3.0), "image_channels=3.0"),
        (dict(coarse_map=3), "coarse_map=3 must be the path of a CSV"),
        (
            dict(image_channels=3, synthetic=dict(channels=2)),
            "has 2-channel images",
        ),
    ],
)
def test_bad_subset_seed_channels_or_coarse_map_is_a_config_error(
    fields, match
):
  config = _config(dataset="synthetic", **fields)
  with pytest.raises(ConfigError, match=match) as info:
    input_pipeline.load_dataset(config)
  assert "\n" not in str(info.value)
  if "synthetic" not in fields:
    # The loader and the config check say the same (one check serves both).
    with pytest.raises(ConfigError) as checked:
      configuration.validate_config(_full_config(**fields))
    assert str(checked.value) == str(info.value)


@pytest.mark.parametrize("field", ["subset_seed", "image_channels"])
def test_loader_takes_numpy_ints_and_the_config_check_plain_ones(field):
  value = np.int64(1)
  config = _config(dataset="synthetic", **{field: value})
  assert input_pipeline.load_dataset(config).num_train > 0
  with pytest.raises(ConfigError, match=f"config.{field}=np.int64\\(1\\)"):
    configuration.validate_config(_full_config(**{field: value}))


@pytest.mark.parametrize(
    "fields,match",
    [
        (
            dict(subset_seed=0),
            r"subset_seed=0 needs the data in memory, but "
            r"config.dataset='cars196' streams: set config.in_memory=True",
        ),
        (dict(image_channels=1), r"image_channels=1 needs the data in memory"),
    ],
)
def test_streamed_data_refuses_subset_seed_and_gray(fields, match):
  # Raised before anything is opened: no TensorFlow or data needed.
  with pytest.raises(ConfigError, match=match) as info:
    input_pipeline.load_dataset(_config(dataset="cars196", **fields))
  assert "\n" not in str(info.value)


# ----------------------------------------------------------------------------
# image_channels.
# ----------------------------------------------------------------------------


def test_image_channels_3_repeats_fashion_mnist_gray(tmp_path):
  from PIL import Image  # pylint: disable=g-import-not-at-top

  written = _fake_fashion_mnist(tmp_path, gz=False)
  ds = input_pipeline.load_dataset(
      _config(dataset="fashion_mnist", data_dir=str(tmp_path), image_channels=3)
  )
  assert ds.image_shape == (28, 28, 3) and ds.train_images.dtype == np.uint8
  for c in range(3):
    np.testing.assert_array_equal(
        ds.train_images[..., c], written[IDX_NAMES[0]]
    )
    np.testing.assert_array_equal(ds.test_images[..., c], written[IDX_NAMES[2]])
  # What PIL's convert('RGB') of the 'L' image gives.
  for i in (0, 7):
    rgb = Image.fromarray(written[IDX_NAMES[0]][i], mode="L").convert("RGB")
    np.testing.assert_array_equal(ds.train_images[i], np.asarray(rgb))
  assert ds.mean == (0.2860,) * 3 and ds.std == (0.3530,) * 3
  # Labels are untouched.
  np.testing.assert_array_equal(ds.train_fine, written[IDX_NAMES[1]])
  # The dataset's own channels: nothing changes.
  same = input_pipeline.load_dataset(
      _config(dataset="fashion_mnist", data_dir=str(tmp_path), image_channels=1)
  )
  assert same.image_shape == (28, 28, 1) and same.mean == (0.2860,)


def test_image_channels_1_is_pil_luma():
  from PIL import Image  # pylint: disable=g-import-not-at-top

  config = _config(dataset="synthetic", synthetic=dict(channels=3))
  rgb = input_pipeline.load_dataset(config)
  config.image_channels = 1
  gray = input_pipeline.load_dataset(config)
  assert gray.image_shape == rgb.image_shape[:2] + (1,)
  for images, converted in (
      (rgb.train_images, gray.train_images),
      (rgb.test_images, gray.test_images),
  ):
    expected = np.stack(
        [np.asarray(Image.fromarray(im, "RGB").convert("L")) for im in images]
    )
    np.testing.assert_array_equal(converted[..., 0], expected)
  # Every extreme and a random spread of colours, against PIL directly.
  values = np.random.default_rng(0).integers(0, 256, (64, 64, 3), np.uint8)
  values[0, :8] = [
      [r, g, b] for r in (0, 255) for g in (0, 255) for b in (0, 255)
  ]
  np.testing.assert_array_equal(
      input_pipeline.rgb_to_luma(values[None])[0, ..., 0],
      np.asarray(Image.fromarray(values, "RGB").convert("L")),
  )
  # Gray repeated to RGB converts back to itself.
  grays = np.arange(256, dtype=np.uint8).reshape(1, 16, 16, 1)
  np.testing.assert_array_equal(
      input_pipeline.rgb_to_luma(np.repeat(grays, 3, -1)), grays
  )


def test_image_channels_1_weights_the_statistics():
  ds = input_pipeline.load_dataset(
      _config(dataset="synthetic", synthetic=dict(channels=3))
  )
  coloured = dataclasses.replace(ds, mean=(0.2, 0.4, 0.6), std=(0.1, 0.2, 0.3))
  # pylint: disable-next=protected-access
  gray = input_pipeline._with_channels(coloured, 1)
  np.testing.assert_allclose(
      gray.mean, [0.299 * 0.2 + 0.587 * 0.4 + 0.114 * 0.6]
  )
  np.testing.assert_allclose(
      gray.std, [0.299 * 0.1 + 0.587 * 0.2 + 0.114 * 0.3]
  )


# ----------------------------------------------------------------------------
# Import hygiene.
# ----------------------------------------------------------------------------


def test_works_without_tensorflow(repo_root):
  # `None` in sys.modules makes any import of the package fail, as if it were
  # not installed.
  code = (
      "import sys\n"
      'sys.modules["tensorflow"] = None\n'
      'sys.modules["tensorflow_datasets"] = None\n'
      "import ml_collections\n"
      "from maskcon_jax import input_pipeline\n"
      "ds = input_pipeline.load_dataset(\n"
      '    ml_collections.ConfigDict({"dataset": "synthetic"}))\n'
      "assert ds.num_train > 0\n"
  )
  result = subprocess.run(
      [sys.executable, "-c", code],
      cwd=repo_root,
      capture_output=True,
      text=True,
      timeout=60,
      check=False,
  )
  assert result.returncode == 0, result.stderr
