"""Datasets read from image files: SOP splits, class folders and CSV lists.

Every test writes a handful of tiny images into tmp_path.
"""

import json
import os

import ml_collections
import numpy as np
from PIL import Image
import pytest

from maskcon_jax import hierarchies
from maskcon_jax import input_pipeline
from maskcon_jax.errors import ConfigError
from maskcon_jax.errors import DataError

pytest.importorskip("tensorflow")


def _config(**fields) -> ml_collections.ConfigDict:
  return ml_collections.ConfigDict(fields)


def _write_image(path, value, size=(6, 5), mode="RGB", fmt=None):
  """Writes a solid image whose pixels (in every channel) equal ``value``."""
  os.makedirs(os.path.dirname(path), exist_ok=True)
  color = {"RGB": (value,) * 3, "L": value, "RGBA": (value,) * 3 + (255,)}
  Image.new(mode, size, color[mode]).save(path, format=fmt)


# ----------------------------------------------------------------------------
# The paper's SOP splits.
# ----------------------------------------------------------------------------

_SOP_TRAIN, _SOP_TEST = 5, 3


@pytest.fixture
def fake_sop(tmp_path):
  """A Stanford_Online_Products folder with the first few images of both
  splits' lists (solid JPEGs of varied sizes)."""
  root = tmp_path / "Stanford_Online_Products"
  for split in (1, 2):
    for subset, count in (("train", _SOP_TRAIN), ("test", _SOP_TEST)):
      paths, _, _ = hierarchies.sop_split_lists(split, subset)
      for i, p in enumerate(paths[:count]):
        _write_image(str(root / p), 40 * i, size=(20 + i, 30), fmt="JPEG")
  return root


@pytest.mark.parametrize("split,num_fine", [(1, 2517 + 2518), (2, 1498)])
def test_sop_split_reads_the_shipped_lists(fake_sop, split, num_fine):
  config = _config(
      dataset=f"sop_split{split}",
      data_dir=str(fake_sop),
      image_size=12,
      max_train_examples=_SOP_TRAIN,
      max_test_examples=_SOP_TEST,
  )
  assert input_pipeline.is_streaming(config)
  config.in_memory = True
  ds = input_pipeline.load_dataset(config)
  train_paths, train_fine, train_coarse = hierarchies.sop_split_lists(
      split, "train"
  )
  _, test_fine, test_coarse = hierarchies.sop_split_lists(split, "test")
  offset = 2517 if split == 1 else 0
  assert ds.image_shape == (12, 12, 3) and ds.num_train == _SOP_TRAIN
  np.testing.assert_array_equal(ds.train_fine, train_fine[:_SOP_TRAIN])
  np.testing.assert_array_equal(ds.train_coarse, train_coarse[:_SOP_TRAIN])
  np.testing.assert_array_equal(ds.test_fine, test_fine[:_SOP_TEST] + offset)
  np.testing.assert_array_equal(ds.test_coarse, test_coarse[:_SOP_TEST])
  h = ds.hierarchy
  assert (h.num_fine, h.num_coarse) == (num_fine, 12)
  assert h.fine_names[train_fine[0]] == train_paths[0].rsplit("_", 1)[0]
  np.testing.assert_array_equal(h.coarse_of(ds.test_fine), ds.test_coarse)
  assert ds.mean == hierarchies.IMAGENET_MEAN

  config.in_memory = False
  stream = input_pipeline.load_dataset(config)
  batch = next(iter(stream.train_batches(4, seed=3, epoch=2)))
  assert batch["image"].shape == (4, 12, 12, 3)
  assert stream.steps_per_epoch(4) == 1


def test_sop_split_without_data_dir_is_a_data_error(tmp_path):
  with pytest.raises(DataError, match="config.data_dir") as info:
    input_pipeline.load_dataset(_config(dataset="sop_split1"))
  assert "Stanford_Online_Products" in str(info.value)
  with pytest.raises(DataError, match="does not exist"):
    input_pipeline.load_dataset(
        _config(dataset="sop_split2", data_dir=str(tmp_path / "nope"))
    )


def test_sop_split_missing_images_are_counted(fake_sop):
  with pytest.raises(DataError) as info:
    input_pipeline.load_dataset(
        _config(
            dataset="sop_split2",
            data_dir=str(fake_sop),
            max_train_examples=_SOP_TRAIN + 2,
        )
    )
  message = str(info.value)
  assert f"2 of the {_SOP_TRAIN + 2} images" in message
  assert "bicycle_final" in message and "\n" not in message


# ----------------------------------------------------------------------------
# Class folders.
# ----------------------------------------------------------------------------

# Class -> (coarse, number of train images, number of test images).
_CLASSES = {
    "cat": ("animal", 3, 1),
    "dog": ("animal", 2, 2),
    "10": ("vehicle", 2, 1),
    "7": ("vehicle", 1, 0),
}


@pytest.fixture
def image_folder(tmp_path):
  """ROOT/{train,test}/<class>/ with solid PNGs; pixel value = 10 * class
  position in `_CLASSES` + image number."""
  root = tmp_path / "root"
  for k, (name, (_, num_train, num_test)) in enumerate(_CLASSES.items()):
    for split, count in (("train", num_train), ("test", num_test)):
      for i in range(count):
        _write_image(str(root / split / name / f"img{i}.png"), 10 * k + i)
  (root / "test" / "7").mkdir(parents=True)  # A class with no test images.
  (root / "train" / "README.txt").write_text("not an image")
  (root / "train" / "cat" / "notes.txt").write_text("not an image")
  return root


def _write_map(path, mapping, *, header=True):
  if str(path).endswith(".json"):
    path.write_text(json.dumps(mapping))
  else:
    rows = (["fine,coarse"] if header else []) + [
        f"{f},{c}" for f, c in mapping.items()
    ]
    path.write_text("\n".join(rows) + "\n")
  return str(path)


_MAP = {name: coarse for name, (coarse, _, _) in _CLASSES.items()}


@pytest.mark.parametrize(
    "map_name,header",
    [("map.csv", True), ("map.csv", False), ("map.json", True)],
)
def test_folder_dataset(image_folder, tmp_path, map_name, header):
  coarse_map = _write_map(tmp_path / map_name, _MAP, header=header)
  ds = input_pipeline.load_dataset(
      _config(
          dataset="folder",
          data_dir=str(image_folder),
          coarse_map=coarse_map,
          image_size=8,
      )
  )
  assert isinstance(ds, input_pipeline.Dataset) and ds.has_fine_labels
  h = ds.hierarchy
  # Numeric names sort numerically, before the others.
  assert h.fine_names == ("7", "10", "cat", "dog")
  assert h.coarse_names == ("animal", "vehicle")
  assert h.fine_to_coarse == (1, 1, 0, 0)
  assert ds.image_shape == (8, 8, 3) and ds.train_images.dtype == np.uint8
  assert (ds.num_train, ds.num_test) == (8, 4)
  # Images come class by class in name order, each with its own labels.
  position = {name: k for k, name in enumerate(_CLASSES)}
  expected = [
      10 * position[name] + i
      for name in h.fine_names
      for i in range(_CLASSES[name][1])
  ]
  np.testing.assert_array_equal(ds.train_images[:, 0, 0, 0], expected)
  np.testing.assert_array_equal(
      ds.train_images[..., 0], ds.train_images[..., 2]
  )
  np.testing.assert_array_equal(
      ds.train_fine,
      [
          h.fine_names.index(n)
          for n in h.fine_names
          for _ in range(_CLASSES[n][1])
      ],
  )
  np.testing.assert_array_equal(ds.train_coarse, h.coarse_of(ds.train_fine))
  np.testing.assert_array_equal(ds.test_fine, [1, 2, 3, 3])


def test_folder_reads_grayscale_rgba_and_jpeg_as_rgb(image_folder, tmp_path):
  _write_image(str(image_folder / "test" / "cat" / "gray.png"), 90, mode="L")
  _write_image(str(image_folder / "test" / "cat" / "rgba.PNG"), 91, mode="RGBA")
  _write_image(
      str(image_folder / "test" / "cat" / "photo.jpg"),
      92,
      size=(40, 30),
      fmt="JPEG",
  )
  ds = input_pipeline.load_dataset(
      _config(
          dataset="folder",
          data_dir=str(image_folder),
          image_size=4,
          coarse_map=_write_map(tmp_path / "map.json", _MAP),
      )
  )
  assert ds.num_test == 7 and ds.image_shape == (4, 4, 3)
  # Within the class, files sort by name: gray, img0, photo, rgba.
  values = ds.test_images[ds.test_fine == 2][:, 0, 0, 0]
  assert values[0] == 90 and values[3] == 91 and abs(int(values[2]) - 92) <= 2


def test_folder_streaming_shards_and_determinism(image_folder, tmp_path):
  config = _config(
      dataset="folder",
      data_dir=str(image_folder),
      coarse_map=_write_map(tmp_path / "map.csv", _MAP),
      image_size=8,
      in_memory=False,
  )
  stream = input_pipeline.load_dataset(config)
  assert isinstance(stream, input_pipeline.StreamingDataset)
  assert (stream.num_train, stream.num_test) == (8, 4)

  def epoch(seed, epoch_, index=0, count=1):
    return [
        b["image"][:, 0, 0, 0]
        for b in stream.train_batches(
            2, seed=seed, epoch=epoch_, process_index=index, process_count=count
        )
    ]

  first = np.concatenate(epoch(5, 0))
  assert sorted(first) == sorted(
      input_pipeline.load_dataset(
          _config(**{**config.to_dict(), "in_memory": True})
      ).train_images[:, 0, 0, 0]
  )
  np.testing.assert_array_equal(np.concatenate(epoch(5, 0)), first)
  assert not np.array_equal(np.concatenate(epoch(5, 1)), first)
  # Resuming mid-epoch gives the rest of the same epoch.
  rest = [
      b["image"][:, 0, 0, 0]
      for b in stream.train_batches(2, seed=5, epoch=0, start_step=3)
  ]
  np.testing.assert_array_equal(np.concatenate(rest), first[6:])
  # Three processes: 8 // 3 = 2 examples each, one batch of 2, disjoint.
  shares = [epoch(5, 0, index=i, count=3) for i in range(3)]
  assert [len(s) for s in shares] == [1, 1, 1]
  seen = np.concatenate([s[0] for s in shares])
  assert len(set(seen)) == 6
  assert stream.steps_per_epoch(2, process_count=3) == 1

  # Test batches: every test example once, in order; padded on request.
  plain = list(stream.test_batches(3))
  assert [len(b["coarse_label"]) for b in plain] == [3, 1]
  padded = [
      list(stream.test_batches(3, process_index=i, process_count=3, pad=True))
      for i in range(3)
  ]
  assert [len(p) for p in padded] == [1, 1, 1]
  assert [int(p[0]["mask"].sum()) for p in padded] == [2, 1, 1]
  # Each row's position in the split: the shares are contiguous.
  assert [b["index"].tolist() for b in plain] == [[0, 1, 2], [3]]
  assert [p[0]["index"].tolist() for p in padded] == [
      [0, 1, -1],
      [2, -1, -1],
      [3, -1, -1],
  ]
  assert all(p[0]["image"].shape == (3, 8, 8, 3) for p in padded)
  np.testing.assert_array_equal(
      np.concatenate([p[0]["fine_label"][p[0]["mask"]] for p in padded]),
      np.concatenate([b["fine_label"] for b in plain]),
  )


def test_folder_undecodable_image_is_fatal_and_named(image_folder, tmp_path):
  bad = image_folder / "train" / "dog" / "broken.png"
  bad.write_bytes(b"\x89PNG\r\n\x1a\n this is not really a png")
  config = _config(
      dataset="folder",
      data_dir=str(image_folder),
      coarse_map=_write_map(tmp_path / "map.csv", _MAP),
      image_size=8,
  )
  with pytest.raises(DataError, match="Cannot decode image") as info:
    input_pipeline.load_dataset(config)
  assert str(bad) in str(info.value) and "\n" not in str(info.value)
  config.in_memory = False
  stream = input_pipeline.load_dataset(config)
  with pytest.raises(DataError, match="delete or replace") as info:
    list(stream.train_batches(3, seed=0, epoch=0))
  assert str(bad) in str(info.value)


def test_folder_map_errors(image_folder, tmp_path):
  def load(**fields):
    return input_pipeline.load_dataset(
        _config(dataset="folder", **{"data_dir": str(image_folder), **fields})
    )

  partial = {k: v for k, v in _MAP.items() if k not in ("cat", "10")}
  with pytest.raises(
      DataError, match="2 class folders unmapped: '10', 'cat'"
  ) as info:
    load(coarse_map=_write_map(tmp_path / "partial.csv", partial))
  assert "\n" not in str(info.value)
  extra = {**_MAP, "horse": "animal", "bus": "vehicle"}
  with pytest.raises(
      DataError, match="2 classes with no folder.*'bus', 'horse'"
  ):
    load(coarse_map=_write_map(tmp_path / "extra.json", extra))
  with pytest.raises(ConfigError, match="coarse_map"):
    load()
  with pytest.raises(DataError, match="does not exist"):
    load(coarse_map=str(tmp_path / "missing.csv"))
  (tmp_path / "bad.csv").write_text("cat,animal\ndog\n")
  with pytest.raises(DataError, match=r"bad.csv:2 has 1 fields"):
    load(coarse_map=str(tmp_path / "bad.csv"))
  (tmp_path / "twice.csv").write_text("cat,animal\ncat,vehicle\n")
  with pytest.raises(DataError, match="maps class 'cat' to 'vehicle'"):
    load(coarse_map=str(tmp_path / "twice.csv"))
  (tmp_path / "list.json").write_text('["cat", "dog"]')
  with pytest.raises(DataError, match="one JSON object"):
    load(coarse_map=str(tmp_path / "list.json"))


def test_folder_numbered_classes_are_named_not_indexed(image_folder, tmp_path):
  # The folders '7' and '10' exist, so integers are folder names: '2' is not
  # the third folder but a class with no folder.
  with pytest.raises(
      DataError, match=r"names 1 classes with no folder .*" r"'2'; remove them"
  ) as info:
    input_pipeline.load_dataset(
        _config(
            dataset="folder",
            data_dir=str(image_folder),
            coarse_map=_write_map(
                tmp_path / "map.csv", {**_MAP, "2": "animal"}
            ),
        )
    )
  assert "\n" not in str(info.value)


def test_folder_allows_one_coarse_class(image_folder, tmp_path):
  # Its map is its only labelling, so one coarse class is the user's call.
  ds = input_pipeline.load_dataset(
      _config(
          dataset="folder",
          data_dir=str(image_folder),
          image_size=4,
          coarse_map=_write_map(tmp_path / "one.csv", {k: "all" for k in _MAP}),
      )
  )
  assert ds.hierarchy.coarse_names == ("all",)


def test_folder_missing_directories(image_folder, tmp_path):
  coarse_map = _write_map(tmp_path / "map.csv", _MAP)
  with pytest.raises(ConfigError, match="data_dir"):
    input_pipeline.load_dataset(
        _config(dataset="folder", coarse_map=coarse_map)
    )
  with pytest.raises(DataError, match="does not exist"):
    input_pipeline.load_dataset(
        _config(
            dataset="folder",
            data_dir=str(tmp_path / "nope"),
            coarse_map=coarse_map,
        )
    )
  os.rename(image_folder / "test", image_folder / "val")
  with pytest.raises(DataError, match=r"test' does not exist") as info:
    input_pipeline.load_dataset(
        _config(
            dataset="folder", data_dir=str(image_folder), coarse_map=coarse_map
        )
    )
  assert "\n" not in str(info.value)


# ----------------------------------------------------------------------------
# CSV lists.
# ----------------------------------------------------------------------------


@pytest.fixture
def csv_images(tmp_path):
  """Six PNGs under tmp_path/data/img; returns their paths relative to data/."""
  paths = []
  for i in range(6):
    rel = f"img/{i}.png"
    _write_image(str(tmp_path / "data" / rel), 20 * i)
    paths.append(rel)
  return paths


def _write_csv(path, rows, header=None):
  lines = ([header] if header else []) + [",".join(r) for r in rows]
  path.write_text("\n".join(lines) + "\n")
  return str(path)


def test_csv_with_fine_labels(tmp_path, csv_images):
  data = tmp_path / "data"
  train = _write_csv(
      data / "train.csv",
      [
          (csv_images[0], "b", "b1"),
          (csv_images[1], "a", "a2"),
          (csv_images[2], "a", "a1"),
          (csv_images[3], "b", "b1"),
      ],
      header="path,coarse,fine",
  )
  test = _write_csv(
      data / "test.csv",
      [(str(data / csv_images[4]), "a", "a3"), (csv_images[5], "b", "b1")],
  )
  ds = input_pipeline.load_dataset(
      _config(dataset="csv", train_csv=train, test_csv=test, image_size=4)
  )
  assert ds.has_fine_labels and (ds.num_train, ds.num_test) == (4, 2)
  h = ds.hierarchy
  assert h.coarse_names == ("a", "b")
  assert h.fine_names == ("a1", "a2", "a3", "b1")
  assert h.fine_to_coarse == (0, 0, 0, 1)
  np.testing.assert_array_equal(ds.train_images[:, 0, 0, 0], [0, 20, 40, 60])
  np.testing.assert_array_equal(ds.train_fine, [3, 1, 0, 3])
  np.testing.assert_array_equal(ds.train_coarse, [1, 0, 0, 1])
  np.testing.assert_array_equal(ds.test_fine, [2, 3])


def test_csv_with_coarse_labels_only(tmp_path, csv_images):
  data = tmp_path / "data"
  train = _write_csv(
      data / "train.csv",
      [(p, str(i % 3)) for i, p in enumerate(csv_images[:4])],
  )
  test = _write_csv(
      data / "test.csv", [(csv_images[4], "2"), (csv_images[5], "10")]
  )
  config = _config(dataset="csv", train_csv=train, test_csv=test, image_size=4)
  ds = input_pipeline.load_dataset(config)
  assert not ds.has_fine_labels
  assert ds.train_fine is None and ds.test_fine is None
  assert ds.hierarchy.coarse_names == ("0", "1", "2", "10")
  assert ds.hierarchy.fine_names == ds.hierarchy.coarse_names
  np.testing.assert_array_equal(ds.train_coarse, [0, 1, 2, 0])
  np.testing.assert_array_equal(ds.test_coarse, [2, 3])

  config.in_memory = False
  stream = input_pipeline.load_dataset(config)
  assert not stream.has_fine_labels
  batch = next(iter(stream.train_batches(2, seed=0, epoch=0)))
  assert set(batch) == {"image", "coarse_label"}
  batch = next(iter(stream.test_batches(4, pad=True)))
  assert set(batch) == {"image", "coarse_label", "index", "mask"}
  np.testing.assert_array_equal(batch["index"], [0, 1, -1, -1])


def test_csv_errors(tmp_path, csv_images):
  data = tmp_path / "data"
  good = _write_csv(data / "good.csv", [(csv_images[0], "a", "x")])

  def load(train, test=good):
    return input_pipeline.load_dataset(
        _config(dataset="csv", train_csv=train, test_csv=test)
    )

  conflict = _write_csv(data / "conflict.csv", [(csv_images[1], "b", "x")])
  with pytest.raises(
      DataError, match="Fine class 'x' has coarse class 'b' and 'a'"
  ):
    load(conflict)
  coarse_only = _write_csv(data / "coarse.csv", [(csv_images[1], "b")])
  with pytest.raises(DataError, match="both have a fine column"):
    load(coarse_only)
  ragged = _write_csv(
      data / "ragged.csv", [(csv_images[1], "b", "y"), (csv_images[2], "b")]
  )
  with pytest.raises(DataError, match=r"ragged.csv:2 has 2 fields"):
    load(ragged)
  missing = _write_csv(
      data / "missing.csv",
      [("img/nope.png", "a", "x"), (csv_images[1], "a", "x")],
  )
  with pytest.raises(DataError, match="1 of the 2 images") as info:
    load(missing)
  assert "nope.png" in str(info.value) and "\n" not in str(info.value)
  with pytest.raises(DataError, match="does not exist"):
    load(str(data / "absent.csv"))
  with pytest.raises(ConfigError, match="test_csv"):
    input_pipeline.load_dataset(_config(dataset="csv", train_csv=good))


def test_csv_with_fine_labels_takes_a_coarse_map(tmp_path, csv_images):
  data = tmp_path / "data"
  train = _write_csv(
      data / "train.csv",
      [
          (csv_images[0], "b", "b1"),
          (csv_images[1], "a", "a2"),
          (csv_images[2], "a", "a1"),
          (csv_images[3], "b", "b1"),
      ],
  )
  test = _write_csv(
      data / "test.csv",
      [(csv_images[4], "a", "a3"), (csv_images[5], "b", "b1")],
  )
  # Fine classes a1, a2, a3, b1 (by index 0 and by name) regrouped.
  coarse_map = _write_map(
      tmp_path / "map.csv",
      {"0": "odd", "a2": "even", "a3": "odd", "b1": "even"},
  )
  config = _config(
      dataset="csv",
      train_csv=train,
      test_csv=test,
      image_size=4,
      coarse_map=coarse_map,
  )
  ds = input_pipeline.load_dataset(config)
  assert ds.hierarchy.coarse_names == ("even", "odd")
  assert ds.hierarchy.fine_to_coarse == (1, 0, 1, 0)
  np.testing.assert_array_equal(ds.train_fine, [3, 1, 0, 3])
  np.testing.assert_array_equal(ds.train_coarse, [0, 0, 1, 0])
  np.testing.assert_array_equal(ds.test_coarse, [1, 0])

  # Streamed from the files, the same labels image by image.
  config.in_memory = False
  stream = input_pipeline.load_dataset(config)
  value_to_coarse = {0: 0, 20: 0, 40: 1, 60: 0}
  for batch in stream.train_batches(2, seed=3, epoch=0):
    np.testing.assert_array_equal(
        batch["coarse_label"],
        [value_to_coarse[v] for v in batch["image"][:, 0, 0, 0]],
    )
  batch = next(iter(stream.test_batches(2)))
  np.testing.assert_array_equal(batch["coarse_label"], [1, 0])
