"""The TFDS-backed datasets of input_pipeline, on mocked TFDS data.

`tfds.testing.mock_data` stands in for prepared copies, so nothing is
downloaded. Its random labels ignore every hierarchy; where a test checks the
label mapping it serves fixed examples through ``as_dataset_fn`` instead.
"""

import json

import ml_collections
import numpy as np
import pytest

from maskcon_jax import hierarchies
from maskcon_jax import input_pipeline
from maskcon_jax.errors import DataError

tfds = pytest.importorskip("tensorflow_datasets")
tf = pytest.importorskip("tensorflow")


def _config(**fields) -> ml_collections.ConfigDict:
  return ml_collections.ConfigDict(fields)


def _fixed_examples(labels: dict[str, np.ndarray], size: int = 6):
  """An ``as_dataset_fn`` serving one fixed split for every split name.

  Image ``i`` is filled with the value ``i`` so image/label pairing can be
  checked after any shuffle. Images are PNG bytes, as the pipeline reads them
  with image decoding skipped.
  """
  n = len(next(iter(labels.values())))
  images = [
      tf.io.encode_png(np.full((size, size, 3), i, np.uint8)).numpy()
      for i in range(n)
  ]

  def as_dataset(
      self, split, decoders=None, read_config=None, shuffle_files=False
  ):
    del self, split, decoders, read_config, shuffle_files
    columns = {"image": np.asarray(images, dtype=object)}
    columns.update({k: np.asarray(v, np.int64) for k, v in labels.items()})
    return tf.data.Dataset.from_tensor_slices(columns)

  return as_dataset


# ----------------------------------------------------------------------------
# Every TFDS dataset builds on random mock data.
# ----------------------------------------------------------------------------


@pytest.mark.slow
@pytest.mark.parametrize(
    "name,size,num_fine,num_coarse,mean",
    [
        ("cifar100", 32, 100, 20, hierarchies.CIFAR100_MEAN),
        ("imagenet32", 32, 1000, 12, hierarchies.IMAGENET_MEAN),
        ("cars196", 16, 196, 8, hierarchies.IMAGENET_MEAN),
    ],
)
def test_tfds_dataset_builds_in_memory_and_streaming(
    name, size, num_fine, num_coarse, mean
):
  with tfds.testing.mock_data(num_examples=5):
    ds = input_pipeline.load_dataset(
        _config(dataset=name, image_size=size, in_memory=True)
    )
    assert isinstance(ds, input_pipeline.Dataset) and ds.name == name
    assert ds.has_fine_labels
    assert (ds.num_train, ds.num_test) == (5, 5)
    assert ds.image_shape == (size, size, 3)
    assert ds.train_images.dtype == np.uint8
    assert (ds.hierarchy.num_fine, ds.hierarchy.num_coarse) == (
        num_fine,
        num_coarse,
    )
    assert ds.mean == mean
    for fine, coarse in (
        (ds.train_fine, ds.train_coarse),
        (ds.test_fine, ds.test_coarse),
    ):
      assert fine.dtype == np.int32 and coarse.dtype == np.int32
      assert 0 <= fine.min() and fine.max() < num_fine
      assert 0 <= coarse.min() and coarse.max() < num_coarse

    stream = input_pipeline.load_dataset(
        _config(dataset=name, image_size=size, in_memory=False)
    )
    assert isinstance(stream, input_pipeline.StreamingDataset)
    assert stream.image_shape == (size, size, 3)
    assert stream.steps_per_epoch(2) == 2
    batch = next(iter(stream.train_batches(2, seed=0, epoch=0)))
    assert set(batch) == {"image", "fine_label", "coarse_label"}
    assert batch["image"].shape == (2, size, size, 3)
    assert batch["image"].dtype == np.uint8
    assert batch["fine_label"].dtype == np.int32


def test_cars196_coarse_labels_follow_the_body_type_table():
  with tfds.testing.mock_data(num_examples=8):
    ds = input_pipeline.load_dataset(
        _config(dataset="cars196", image_size=8, in_memory=True)
    )
  np.testing.assert_array_equal(
      ds.train_coarse, ds.hierarchy.coarse_of(ds.train_fine)
  )
  assert ds.hierarchy.coarse_names == hierarchies.CARS196_COARSE_NAMES
  assert ds.hierarchy.fine_names[0] == "AM General Hummer SUV 2000"


def test_the_224_pixel_datasets_stream_by_default():
  for name in ("cars196", "sop", "sop_split1", "sop_split2"):
    assert input_pipeline.is_streaming(_config(dataset=name))
    assert not input_pipeline.is_streaming(
        _config(dataset=name, in_memory=True)
    )
  for name in ("cifar100", "imagenet32", "folder", "csv", "digits"):
    assert not input_pipeline.is_streaming(_config(dataset=name))
  assert input_pipeline.is_streaming(
      _config(dataset="cifar100", in_memory=False)
  )


def test_streaming_cars196_defaults_to_224_pixels():
  with tfds.testing.mock_data(num_examples=2):
    stream = input_pipeline.load_dataset(_config(dataset="cars196"))
    assert stream.image_shape == (224, 224, 3)
    batch = next(iter(stream.test_batches(2)))
  assert batch["image"].shape == (2, 224, 224, 3)


# ----------------------------------------------------------------------------
# Exact label mappings on fixed examples.
# ----------------------------------------------------------------------------

_CIFAR10_LABELS = np.array([0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 6, 4, 9, 3])


@pytest.mark.parametrize(
    "grouping,group0",
    [
        ("good", {"airplane", "automobile", "ship", "truck"}),
        ("bad", {"airplane", "automobile", "dog", "cat"}),
    ],
)
def test_cifartoy_groups_remaps_and_drops_deer_and_frog(grouping, group0):
  fine_table, coarse_table = hierarchies.cifartoy_tables(grouping)
  names = hierarchies.CIFAR10_NAMES
  # The tables themselves: deer and frog dropped, the rest renumbered 0-7 in
  # CIFAR-10 order, coarse 0 exactly the named group.
  assert [names[c] for c in np.flatnonzero(fine_table < 0)] == ["deer", "frog"]
  np.testing.assert_array_equal(fine_table[fine_table >= 0], np.arange(8))
  assert {names[c] for c in np.flatnonzero(coarse_table == 0)} == group0
  assert len(np.flatnonzero(coarse_table == 1)) == 4

  with tfds.testing.mock_data(
      as_dataset_fn=_fixed_examples({"label": _CIFAR10_LABELS})
  ):
    ds = input_pipeline.load_dataset(
        _config(dataset=f"cifartoy_{grouping}", image_size=6)
    )
    stream = input_pipeline.load_dataset(
        _config(dataset=f"cifartoy_{grouping}", image_size=6, in_memory=False)
    )
    batches = list(stream.train_batches(3, seed=1, epoch=0))

  kept = np.flatnonzero(~np.isin(_CIFAR10_LABELS, (4, 6)))
  assert ds.hierarchy.fine_names == (
      "airplane",
      "automobile",
      "bird",
      "cat",
      "dog",
      "horse",
      "ship",
      "truck",
  )
  assert ds.mean == hierarchies.CIFAR10_MEAN
  for images, fine, coarse in (
      (ds.train_images, ds.train_fine, ds.train_coarse),
      (ds.test_images, ds.test_fine, ds.test_coarse),
  ):
    np.testing.assert_array_equal(images[:, 0, 0, 0], kept)
    np.testing.assert_array_equal(fine, fine_table[_CIFAR10_LABELS[kept]])
    np.testing.assert_array_equal(coarse, coarse_table[_CIFAR10_LABELS[kept]])
    np.testing.assert_array_equal(coarse, ds.hierarchy.coarse_of(fine))
    assert {ds.hierarchy.fine_names[f] for f in fine[coarse == 0]} <= group0

  # Streaming: 10 kept examples -> 3 full batches, each image with its labels.
  assert stream.num_train == len(kept) and len(batches) == 3
  seen = np.concatenate([b["image"][:, 0, 0, 0] for b in batches])
  assert len(set(seen)) == 9 and set(seen) <= set(kept)
  for b in batches:
    raw = _CIFAR10_LABELS[b["image"][:, 0, 0, 0]]
    np.testing.assert_array_equal(b["fine_label"], fine_table[raw])
    np.testing.assert_array_equal(b["coarse_label"], coarse_table[raw])


def test_imagenet32_labels_go_through_both_official_tables():
  to_fine, fine_to_coarse = hierarchies.imagenet32_tables()
  raw = np.array([0, 1, 2, 999, 500, 151])
  with tfds.testing.mock_data(as_dataset_fn=_fixed_examples({"label": raw})):
    ds = input_pipeline.load_dataset(_config(dataset="imagenet32"))
  np.testing.assert_array_equal(ds.test_fine, to_fine[raw])
  np.testing.assert_array_equal(ds.test_coarse, fine_to_coarse[to_fine[raw]])
  # Imagenet32 label 0 is the kit fox, standard ImageNet-1k class 278.
  assert ds.test_fine[0] == 278
  assert ds.hierarchy.fine_names[278] == "n02119789"
  assert ds.hierarchy.fine_names[0] == "n01440764"  # Tench.


def test_sop_products_and_super_categories():
  class_id = np.array([5, 5, 9, 22633, 100, 7, 8, 11, 12, 13, 14, 15, 16, 17])
  super_id = np.array([0, 0, 1, 11, 2, 3, 4, 5, 6, 7, 8, 9, 10, 10])
  with tfds.testing.mock_data(
      as_dataset_fn=_fixed_examples(
          {"class_id": class_id, "super_class_id": super_id}
      )
  ):
    stream = input_pipeline.load_dataset(_config(dataset="sop", image_size=8))
    assert stream.num_train == 14
    batches = list(stream.test_batches(5))
  h = stream.hierarchy
  products = np.unique(class_id)
  assert h.num_fine == len(products) and h.num_coarse == 12
  assert h.fine_names[0] == "product 5"
  assert h.coarse_names == hierarchies.SOP_SUPER_CLASSES
  assert [len(b["coarse_label"]) for b in batches] == [5, 5, 4]
  fine = np.concatenate([b["fine_label"] for b in batches])
  coarse = np.concatenate([b["coarse_label"] for b in batches])
  np.testing.assert_array_equal(fine, np.searchsorted(products, class_id))
  np.testing.assert_array_equal(coarse, super_id)
  np.testing.assert_array_equal(h.coarse_of(fine), coarse)


def test_sop_product_under_two_super_categories_is_a_data_error():
  with tfds.testing.mock_data(
      as_dataset_fn=_fixed_examples(
          {"class_id": np.array([1, 1]), "super_class_id": np.array([0, 1])}
      )
  ):
    with pytest.raises(DataError, match="two super-categories"):
      input_pipeline.load_dataset(_config(dataset="sop"))


# ----------------------------------------------------------------------------
# coarse_map, subset_seed and image_channels on TFDS data.
# ----------------------------------------------------------------------------


def _write_json(path, rows):
  path.write_text(json.dumps(rows))
  return str(path)


def test_coarse_map_on_streamed_and_in_memory_cifartoy(tmp_path):
  fine_table, _ = hierarchies.cifartoy_tables("good")
  # CIFARtoy's fine classes by name: wheels vs the rest.
  wheels = {"automobile", "truck"}
  names = (
      "airplane",
      "automobile",
      "bird",
      "cat",
      "dog",
      "horse",
      "ship",
      "truck",
  )
  path = _write_json(
      tmp_path / "wheels.json",
      {n: ("wheels" if n in wheels else "other") for n in names},
  )
  expected = np.asarray([1 if n in wheels else 0 for n in names])
  with tfds.testing.mock_data(
      as_dataset_fn=_fixed_examples({"label": _CIFAR10_LABELS})
  ):
    ds = input_pipeline.load_dataset(
        _config(dataset="cifartoy_good", image_size=6, coarse_map=path)
    )
    stream = input_pipeline.load_dataset(
        _config(
            dataset="cifartoy_good",
            image_size=6,
            coarse_map=path,
            in_memory=False,
        )
    )
    batches = list(stream.train_batches(3, seed=1, epoch=0))
    tests = list(stream.test_batches(4))
  assert ds.hierarchy.coarse_names == ("other", "wheels")
  assert stream.hierarchy == ds.hierarchy
  kept = np.flatnonzero(~np.isin(_CIFAR10_LABELS, (4, 6)))
  np.testing.assert_array_equal(
      ds.train_fine, fine_table[_CIFAR10_LABELS[kept]]
  )
  np.testing.assert_array_equal(ds.train_coarse, expected[ds.train_fine])
  np.testing.assert_array_equal(ds.test_coarse, expected[ds.test_fine])
  # Streamed: every batch's coarse labels follow the map, image by image.
  for b in batches + tests:
    fine = fine_table[_CIFAR10_LABELS[b["image"][:, 0, 0, 0]]]
    np.testing.assert_array_equal(b["fine_label"], fine)
    np.testing.assert_array_equal(b["coarse_label"], expected[fine])
    assert b["coarse_label"].dtype == np.int32
  assert len(batches) == 3


def test_coarse_map_overrides_cifar100s_own_superclass_field(tmp_path):
  labels = np.arange(12) * 7 % 100
  superclass = np.full(12, 19)  # Whatever the stored field says.
  path = _write_json(
      tmp_path / "parity.json", {str(f): str(f % 2) for f in range(100)}
  )
  with tfds.testing.mock_data(
      as_dataset_fn=_fixed_examples(
          {"label": labels, "coarse_label": superclass}
      )
  ):
    stream = input_pipeline.load_dataset(
        _config(
            dataset="cifar100", image_size=6, coarse_map=path, in_memory=False
        )
    )
    batch = next(iter(stream.test_batches(12)))
  np.testing.assert_array_equal(batch["fine_label"], labels)
  np.testing.assert_array_equal(batch["coarse_label"], labels % 2)
  assert stream.hierarchy.coarse_names == ("0", "1")


def test_subset_seed_and_channels_on_an_in_memory_tfds_copy():
  labels = np.arange(40) % 10
  with tfds.testing.mock_data(as_dataset_fn=_fixed_examples({"label": labels})):
    full = input_pipeline.load_dataset(
        _config(dataset="cars196", image_size=6, in_memory=True)
    )
    small = input_pipeline.load_dataset(
        _config(
            dataset="cars196",
            image_size=6,
            in_memory=True,
            subset_seed=4,
            max_train_examples=9,
            max_test_examples=3,
            image_channels=1,
        )
    )
  train_rows = np.random.default_rng(4).permutation(40)[:9]
  test_rows = np.random.default_rng(4).permutation(40)[:3]
  np.testing.assert_array_equal(small.train_fine, full.train_fine[train_rows])
  np.testing.assert_array_equal(small.test_fine, full.test_fine[test_rows])
  # Gray images (R = G = B = i) keep their value as luma.
  assert small.image_shape == (6, 6, 1)
  np.testing.assert_array_equal(
      small.train_images[..., 0], full.train_images[train_rows][..., 0]
  )
  np.testing.assert_allclose(
      small.mean, [np.dot((0.299, 0.587, 0.114), hierarchies.IMAGENET_MEAN)]
  )


# ----------------------------------------------------------------------------
# Shuffling and sharding of a TFDS stream.
# ----------------------------------------------------------------------------


def test_tfds_stream_order_depends_only_on_seed_and_epoch():
  labels = np.arange(40) % 10

  def order(seed, epoch):
    with tfds.testing.mock_data(
        as_dataset_fn=_fixed_examples({"label": labels})
    ):
      stream = input_pipeline.load_dataset(
          _config(dataset="cars196", image_size=6, in_memory=False)
      )
      return np.concatenate(
          [
              b["image"][:, 0, 0, 0]
              for b in stream.train_batches(8, seed=seed, epoch=epoch)
          ]
      )

  first = order(0, 0)
  assert len(first) == 40 and sorted(first) == list(range(40))
  np.testing.assert_array_equal(order(0, 0), first)
  assert not np.array_equal(order(0, 1), first)
  assert not np.array_equal(order(1, 0), first)


# ----------------------------------------------------------------------------
# A real prepared copy (no mocking): written locally with tfds' own writer
# and read back by the real `cars196` builder.
# ----------------------------------------------------------------------------


@pytest.fixture(scope="module")
def prepared_cars196(tmp_path_factory):
  """A tiny prepared `cars196` (12 train / 5 test, images of varied sizes).

  Image k is filled with the value k and labelled 16 * k (mod 196), so
  image/label pairing can be checked after shuffling.
  """
  data_dir = tmp_path_factory.mktemp("tfds_cars")
  features = tfds.builder("cars196").info.features
  splits = {}
  for split, values in (("train", range(12)), ("test", range(100, 105))):
    examples = []
    for k in values:
      examples.append(
          (
              f"{split}_{k}",
              {
                  "image": np.full((20 + k % 7, 30, 3), k, np.uint8),
                  "label": (16 * k) % 196,
                  "bbox": tfds.features.BBox(0.1, 0.2, 0.8, 0.9),
                  "id": f"{split}_{k}",
              },
          )
      )
    splits[split] = examples
  tfds.dataset_builders.store_as_tfds_dataset(
      name="cars196",
      version=str(tfds.builder("cars196").VERSION),
      features=features,
      split_datasets=splits,
      data_dir=str(data_dir),
  )
  return str(data_dir)


def test_prepared_cars196_in_memory(prepared_cars196):
  ds = input_pipeline.load_dataset(
      _config(
          dataset="cars196",
          data_dir=prepared_cars196,
          image_size=8,
          in_memory=True,
      )
  )
  assert (ds.num_train, ds.num_test) == (12, 5)
  assert sorted(ds.train_images[:, 0, 0, 0]) == list(range(12))
  np.testing.assert_array_equal(
      ds.train_fine, (16 * ds.train_images[:, 0, 0, 0]) % 196
  )
  np.testing.assert_array_equal(
      ds.test_coarse, ds.hierarchy.coarse_of(ds.test_fine)
  )
  limited = input_pipeline.load_dataset(
      _config(
          dataset="cars196",
          data_dir=prepared_cars196,
          image_size=8,
          in_memory=True,
          max_train_examples=4,
      )
  )
  assert limited.num_train == 4 and limited.num_test == 5


@pytest.mark.slow
def test_prepared_cars196_streams_disjoint_process_shares(prepared_cars196):
  stream = input_pipeline.load_dataset(
      _config(dataset="cars196", data_dir=prepared_cars196, image_size=8)
  )
  assert stream.steps_per_epoch(2, process_count=3) == 2

  def share(index, epoch=0, seed=0):
    batches = list(
        stream.train_batches(
            2, seed=seed, epoch=epoch, process_index=index, process_count=3
        )
    )
    assert len(batches) == 2
    for b in batches:
      np.testing.assert_array_equal(
          b["fine_label"], (16 * b["image"][:, 0, 0, 0]) % 196
      )
    return np.concatenate([b["image"][:, 0, 0, 0] for b in batches])

  shares = [share(i) for i in range(3)]
  assert sorted(np.concatenate(shares)) == list(range(12))
  np.testing.assert_array_equal(share(1), shares[1])
  resumed = list(
      stream.train_batches(
          2, seed=0, epoch=0, process_index=2, process_count=3, start_step=1
      )
  )
  assert len(resumed) == 1
  np.testing.assert_array_equal(resumed[0]["image"][:, 0, 0, 0], shares[2][2:])
  orders = {tuple(share(0, epoch=e)) for e in range(6)}
  assert len(orders) > 1  # Epochs reshuffle.

  padded = [
      list(stream.test_batches(2, process_index=i, process_count=2, pad=True))
      for i in range(2)
  ]
  assert [len(p) for p in padded] == [2, 2]
  masks = [np.concatenate([b["mask"] for b in p]) for p in padded]
  assert [int(m.sum()) for m in masks] == [3, 2]
  images = np.concatenate(
      [
          np.concatenate([b["image"] for b in p])[m]
          for p, m in zip(padded, masks)
      ]
  )
  assert sorted(images[:, 0, 0, 0]) == list(range(100, 105))


# ----------------------------------------------------------------------------
# Errors.
# ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    "name,tfds_name",
    [
        ("cars196", "cars196"),
        ("cifartoy_bad", "cifar10"),
        ("imagenet32", "imagenet_resized/32x32"),
        ("sop", "stanford_online_products"),
    ],
)
def test_unprepared_tfds_dataset_says_how_to_build_it(
    tmp_path, name, tfds_name
):
  with pytest.raises(DataError) as info:
    input_pipeline.load_dataset(_config(dataset=name, data_dir=str(tmp_path)))
  message = str(info.value)
  assert f"`tfds build {tfds_name} --data_dir={tmp_path}`" in message
  assert f"--manual_dir={tmp_path}/downloads/manual" in message
  assert "\n" not in message
