"""``config.coarse_map`` on datasets with their own hierarchy, and resuming.

Fashion-MNIST is a tiny fake written as IDX files into tmp_path, so nothing
here needs the real data or TensorFlow; the streamed and TFDS cases live in
tests/test_datasets_tfds_datasets.py and tests/test_datasets_files.py.
"""

import json

import ml_collections
import numpy as np
import pytest

from configs import tiny
from maskcon_jax import configuration
from maskcon_jax import input_pipeline
from maskcon_jax.datasets import builtin
from maskcon_jax.errors import ConfigError
from maskcon_jax.errors import DataError
from tests.test_input_pipeline import IDX_NAMES
from tests.test_input_pipeline import _fake_fashion_mnist

# The Fashion-MNIST classes in label order, written out here rather than
# taken from the package.
_FASHION = (
    "T-shirt/top",
    "Trouser",
    "Pullover",
    "Dress",
    "Coat",
    "Sandal",
    "Shirt",
    "Sneaker",
    "Bag",
    "Ankle boot",
)


def _config(**fields) -> ml_collections.ConfigDict:
  return ml_collections.ConfigDict(fields)


def _write_map(path, rows, *, header=False):
  """Writes ``rows`` ({fine: coarse}) as CSV or, for ``*.json``, JSON."""
  if str(path).endswith(".json"):
    path.write_text(json.dumps(rows))
  else:
    lines = (["fine,coarse"] if header else []) + [
        f"{f},{c}" for f, c in rows.items()
    ]
    path.write_text("\n".join(lines) + "\n")
  return str(path)


@pytest.fixture
def fashion(tmp_path):
  """A fake Fashion-MNIST folder and the arrays written into it."""
  written = _fake_fashion_mnist(tmp_path / "fmnist", gz=False)
  return str(tmp_path / "fmnist"), written


def _load_fashion(data_dir, coarse_map, dataset="fashion_mnist"):
  return input_pipeline.load_dataset(
      _config(dataset=dataset, data_dir=data_dir, coarse_map=coarse_map)
  )


def _assert_labels(ds, expected_coarse_of_fine, fine_train, fine_test):
  """Fine labels untouched; coarse labels = the expected table of them."""
  table = np.asarray(expected_coarse_of_fine)
  np.testing.assert_array_equal(ds.train_fine, fine_train)
  np.testing.assert_array_equal(ds.test_fine, fine_test)
  np.testing.assert_array_equal(ds.train_coarse, table[fine_train])
  np.testing.assert_array_equal(ds.test_coarse, table[fine_test])
  assert ds.train_coarse.dtype == np.int32


# ----------------------------------------------------------------------------
# Maps that work.
# ----------------------------------------------------------------------------

# Upper body / lower body / feet / bag, by class name.
_BODY = {
    "T-shirt/top": "upper",
    "Trouser": "lower",
    "Pullover": "upper",
    "Dress": "upper",
    "Coat": "upper",
    "Sandal": "feet",
    "Shirt": "upper",
    "Sneaker": "feet",
    "Bag": "bag",
    "Ankle boot": "feet",
}


@pytest.mark.parametrize(
    "file_name,header",
    [("body.csv", False), ("body.csv", True), ("body.json", False)],
)
def test_fashion_mnist_map_by_names(fashion, tmp_path, file_name, header):
  data_dir, written = fashion
  ds = _load_fashion(
      data_dir, _write_map(tmp_path / file_name, _BODY, header=header)
  )
  # Coarse names are numbered alphabetically.
  assert ds.hierarchy.coarse_names == ("bag", "feet", "lower", "upper")
  assert ds.hierarchy.fine_names == _FASHION
  ids = {"bag": 0, "feet": 1, "lower": 2, "upper": 3}
  _assert_labels(
      ds,
      [ids[_BODY[n]] for n in _FASHION],
      written[IDX_NAMES[1]],
      written[IDX_NAMES[3]],
  )
  # Images and statistics are the dataset's own.
  np.testing.assert_array_equal(ds.train_images[..., 0], written[IDX_NAMES[0]])
  assert ds.name == "fashion_mnist" and ds.mean == (0.2860,)


def test_fashion_mnist_map_by_indices_with_integer_coarse_classes(
    fashion, tmp_path
):
  data_dir, written = fashion
  # Fine indices as JSON keys, integer coarse indices as values.
  table = [1, 0, 1, 0, 0, 1, 1, 0, 0, 1]
  path = tmp_path / "indices.json"
  path.write_text(json.dumps({str(f): c for f, c in enumerate(table)}))
  ds = _load_fashion(data_dir, str(path))
  assert ds.hierarchy.coarse_names == ("0", "1")
  _assert_labels(ds, table, written[IDX_NAMES[1]], written[IDX_NAMES[3]])


def test_names_and_indices_can_be_mixed(fashion, tmp_path):
  data_dir, written = fashion
  rows = {
      ("Trouser" if f == 1 else str(f)): ("x" if f < 5 else "y")
      for f in range(10)
  }
  ds = _load_fashion(data_dir, _write_map(tmp_path / "mixed.csv", rows))
  _assert_labels(
      ds, [0] * 5 + [1] * 5, written[IDX_NAMES[1]], written[IDX_NAMES[3]]
  )


def test_map_replaces_the_mixed_grouping_too(fashion, tmp_path):
  data_dir, written = fashion
  ds = _load_fashion(
      data_dir,
      _write_map(tmp_path / "body.csv", _BODY),
      dataset="fashion_mnist_mixed",
  )
  assert ds.name == "fashion_mnist_mixed"
  assert ds.hierarchy.coarse_names == ("bag", "feet", "lower", "upper")
  ids = {"bag": 0, "feet": 1, "lower": 2, "upper": 3}
  _assert_labels(
      ds,
      [ids[_BODY[n]] for n in _FASHION],
      written[IDX_NAMES[1]],
      written[IDX_NAMES[3]],
  )


@pytest.mark.parametrize("file_name", ["parity.csv", "parity.json"])
def test_digits_map(tmp_path, file_name):
  full = input_pipeline.load_dataset(_config(dataset="digits"))
  parity = {str(d): ("even" if d % 2 == 0 else "odd") for d in range(10)}
  ds = input_pipeline.load_dataset(
      _config(
          dataset="digits", coarse_map=_write_map(tmp_path / file_name, parity)
      )
  )
  assert ds.hierarchy.coarse_names == ("even", "odd")
  _assert_labels(
      ds, [d % 2 for d in range(10)], full.train_fine, full.test_fine
  )
  # Before the map the coarse classes were 0-4 / 5-9: the map did something.
  assert not np.array_equal(full.train_coarse, ds.train_coarse)


def test_integer_coarse_classes_keep_their_numeric_order(tmp_path):
  full = input_pipeline.load_dataset(_config(dataset="digits"))
  # 10 > 2 numerically though not as text; 1-based integers are renumbered.
  rows = {str(d): (10 if d < 3 else 2) for d in range(10)}
  path = tmp_path / "numbers.json"
  path.write_text(json.dumps(rows))
  ds = input_pipeline.load_dataset(
      _config(dataset="digits", coarse_map=str(path))
  )
  assert ds.hierarchy.coarse_names == ("2", "10")
  _assert_labels(ds, [1, 1, 1] + [0] * 7, full.train_fine, full.test_fine)


def test_map_with_subset_and_channels(tmp_path):
  parity = {str(d): str(d % 2) for d in range(10)}
  ds = input_pipeline.load_dataset(
      _config(
          dataset="digits",
          coarse_map=_write_map(tmp_path / "p.csv", parity),
          subset_seed=3,
          max_train_examples=50,
          image_channels=3,
      )
  )
  assert ds.num_train == 50 and ds.image_shape == (8, 8, 3)
  np.testing.assert_array_equal(ds.train_coarse, ds.train_fine % 2)


# ----------------------------------------------------------------------------
# Bad maps: one line naming the file and the fix.
# ----------------------------------------------------------------------------


def _one_line_error(error_type, load, *needles):
  with pytest.raises(error_type) as info:
    load()
  message = str(info.value)
  assert "\n" not in message, message
  for needle in needles:
    assert needle in message, (needle, message)
  return message


@pytest.mark.parametrize(
    "rows,needles",
    [
        (
            {**_BODY, "Sweater": "upper"},
            [
                "names 1 classes that fashion_mnist does not have: 'Sweater'",
                "use its fine class names ('T-shirt/top'",
                "or indices 0-9",
            ],
        ),
        ({**_BODY, "10": "upper"}, ["does not have: '10'"]),
        (
            {k: v for k, v in _BODY.items() if k != "Bag"},
            [
                "leaves 1 fine classes of fashion_mnist unmapped: 'Bag'",
                "add a row for each",
            ],
        ),
        (
            {n: "clothes" for n in _FASHION},
            [
                "puts all 10 fine classes of fashion_mnist in one coarse class "
                "'clothes'",
                "at least two coarse classes",
            ],
        ),
        (
            {**_BODY, "1": "feet"},
            [
                "maps fine class 'Trouser' twice, as 'Trouser' and '1'",
                "keep one",
            ],
        ),
    ],
)
def test_bad_fashion_mnist_maps(fashion, tmp_path, rows, needles):
  data_dir, _ = fashion
  path = _write_map(tmp_path / "bad.csv", rows)
  _one_line_error(
      DataError,
      lambda: _load_fashion(data_dir, path),
      f"Coarse map '{path}'",
      *needles,
  )


def test_digits_integers_are_names_not_indices(tmp_path):
  # Digits' classes are named '0'-'9', so '10' is an unknown name and the
  # hint offers no indices.
  rows = {**{str(d): str(d // 5) for d in range(10)}, "10": "1"}
  path = _write_map(tmp_path / "digits.csv", rows)
  message = _one_line_error(
      DataError,
      lambda: input_pipeline.load_dataset(
          _config(dataset="digits", coarse_map=path)
      ),
      "classes that digits does not have: '10'",
  )
  assert "indices" not in message


@pytest.mark.parametrize(
    "name,text,needle",
    [
        ("fields.csv", "Trouser,lower,extra\n", "fields.csv:1 has 3 fields"),
        ("empty.csv", "Trouser,\n", "empty.csv:1 has an empty field"),
        ("conflict.csv", "Bag,a\nBag,b\n", "maps class 'Bag' to 'b'"),
        ("blank.csv", "\n\n", "has no fine,coarse rows"),
        ("syntax.json", '{"Bag": "a",', "as JSON"),
        ("list.json", '["Bag", "a"]', "one JSON object"),
        ("float.json", '{"Bag": 1.5}', "string or integer values"),
        ("empty.json", "{}", "empty JSON object"),
        ("latin1.csv", b"Bag,\xe9t\xe9\n", "save it as UTF-8 text"),
    ],
)
def test_malformed_map_files(tmp_path, name, text, needle):
  if isinstance(text, bytes):
    (tmp_path / name).write_bytes(text)
  else:
    (tmp_path / name).write_text(text)
  _one_line_error(
      DataError,
      lambda: input_pipeline.load_dataset(
          _config(dataset="digits", coarse_map=str(tmp_path / name))
      ),
      name,
      needle,
  )


def test_bad_map_fails_before_the_data_is_read(tmp_path, monkeypatch):
  # No Fashion-MNIST anywhere: the map's problem is still the one reported.
  monkeypatch.setenv("TFDS_DATA_DIR", str(tmp_path / "no_tfds"))
  monkeypatch.setattr(
      builtin, "DEBIAN_FASHION_MNIST_DIR", str(tmp_path / "no_debian")
  )
  missing = str(tmp_path / "nowhere.csv")
  _one_line_error(
      DataError,
      lambda: input_pipeline.load_dataset(
          _config(dataset="fashion_mnist", coarse_map=missing)
      ),
      f"config.coarse_map='{missing}' does not exist",
  )


def test_coarse_map_must_be_a_path():
  _one_line_error(
      ConfigError,
      lambda: input_pipeline.load_dataset(
          _config(dataset="digits", coarse_map=5)
      ),
      "config.coarse_map=5",
  )


def test_coarse_only_csv_data_cannot_take_a_map(tmp_path):
  # Never decoded: streaming data is checked before any image is read.
  (tmp_path / "a.png").write_bytes(b"")
  (tmp_path / "list.csv").write_text("a.png,x\na.png,y\n")
  path = _write_map(tmp_path / "map.csv", {"x": "p", "y": "q"})
  _one_line_error(
      ConfigError,
      lambda: input_pipeline.load_dataset(
          _config(
              dataset="csv",
              train_csv=str(tmp_path / "list.csv"),
              test_csv=str(tmp_path / "list.csv"),
              in_memory=False,
              coarse_map=path,
          )
      ),
      "coarse labels only",
      "unset config.coarse_map",
  )


# ----------------------------------------------------------------------------
# Config checks and resuming.
# ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    "field,value,needle",
    [
        ("subset_seed", -1, "config.subset_seed=-1 must be an integer >= 0"),
        ("subset_seed", 1.0, "config.subset_seed=1.0"),
        ("image_channels", 2, "config.image_channels=2 must be 1 (gray), 3"),
        ("image_channels", True, "config.image_channels=True"),
        ("coarse_map", 3, "config.coarse_map=3 must be the path"),
    ],
)
def test_validate_config_checks_the_data_fields(field, value, needle):
  # Built from a dict, as from a config.json: any type can arrive.
  config = ml_collections.ConfigDict(
      {**tiny.get_config().to_dict(), field: value}
  )
  _one_line_error(
      ConfigError, lambda: configuration.validate_config(config), needle
  )


def test_data_fields_are_checkpoint_fields():
  for field in ("subset_seed", "image_channels", "coarse_map"):
    assert field in configuration.CHECKPOINT_FIELDS
    assert field not in configuration.RESUME_FREE_FIELDS


def _saved(**changes):
  return {**tiny.get_config().to_dict(), **changes}


def test_resume_refuses_other_subsets_and_channels():
  config = tiny.get_config()
  assert configuration.check_compatible(_saved(), config) == []
  # A config.json written before these fields existed resumes.
  old = _saved()
  for field in ("subset_seed", "image_channels", "coarse_map"):
    del old[field]
  assert configuration.check_compatible(old, config) == []
  for field, value in (("subset_seed", 0), ("image_channels", 3)):
    message = _one_line_error(
        ConfigError,
        lambda: configuration.check_compatible(
            _saved(**{field: value}), config
        ),
        f"{field} ({value!r} -> None)",
    )
    assert "incompatible" in message


def test_resume_compares_coarse_maps_by_content(tmp_path):
  rows = {f"pattern {f}": f % 2 for f in range(8)}
  csv_map = _write_map(tmp_path / "a.csv", rows, header=True)
  json_map = _write_map(tmp_path / "b.json", rows)
  other = _write_map(tmp_path / "c.csv", {**rows, "pattern 0": 1})
  config = tiny.get_config()

  def resume(saved_path, path):
    config.coarse_map = path
    return configuration.check_compatible(_saved(coarse_map=saved_path), config)

  assert resume(csv_map, csv_map) == []
  # The same rows at another path (even in the other format) resume.
  assert resume(csv_map, json_map) == []
  _one_line_error(
      ConfigError,
      lambda: resume(csv_map, other),
      f"coarse_map ('{csv_map}' -> '{other}')",
  )
  _one_line_error(ConfigError, lambda: resume(None, csv_map), "coarse_map")
  _one_line_error(ConfigError, lambda: resume(csv_map, None), "coarse_map")
  # A map that can no longer be read cannot be shown to be the same.
  gone = str(tmp_path / "gone.csv")
  _one_line_error(ConfigError, lambda: resume(gone, csv_map), "coarse_map")
