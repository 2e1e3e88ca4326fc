"""Datasets read from image files: the paper's SOP splits and custom data.

* ``sop_split1`` / ``sop_split2``: the paper's Stanford Online Products splits
  (lists shipped in ``maskcon_jax/data/coarse_labels``), images read from the
  extracted ``Stanford_Online_Products`` folder that ``config.data_dir`` names.
* ``folder``: ``ROOT/{train,test}/<fine class>/*.{png,jpg,jpeg}`` plus a
  fine -> coarse map (CSV ``fine,coarse`` rows or JSON ``{fine: coarse}``).
  The same map files, read by `coarse_map_hierarchy`, replace the coarse
  classes of any dataset with fine labels (``config.coarse_map``).
* ``csv``: a train and a test CSV of ``path,coarse[,fine]`` rows.

Images are decoded (PNG, JPEG; grayscale and RGBA become RGB) and resized to
``config.image_size`` by tf.data. An image that fails to decode stops loading
with a `DataError` naming the file: skipping it would silently change the
dataset, and the user is better placed to delete or replace it.

Class folders are listed here rather than through
``tfds.folder_dataset.ImageFolder``, which follows the same layout and file
types but reads every file just to enumerate a split and shuffles without a
seed; the path list is what deterministic shuffling, per-process sharding and
naming a broken file need.
"""

from __future__ import annotations

import csv
import json
import os
from typing import Iterable, Sequence

from absl import logging
import numpy as np

from maskcon_jax import hierarchies
from maskcon_jax.datasets import core
from maskcon_jax.errors import ConfigError
from maskcon_jax.errors import DataError

IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg")
FOLDER_SPLITS = ("train", "test")
# How many offending names an error message lists before "...".
_LIST_LIMIT = 10


def natural_key(name: str) -> tuple[int, int, str]:
  """Sorts numeric names numerically ("2" before "10"), then the rest."""
  return (0, int(name), name) if name.isdigit() else (1, 0, name)


def _listing(names: Iterable[str]) -> str:
  names = sorted(names, key=natural_key)
  shown = ", ".join(repr(n) for n in names[:_LIST_LIMIT])
  more = len(names) - _LIST_LIMIT
  return shown + (f" and {more} more" if more > 0 else "")


def _check_files_exist(paths: Sequence[str], what: str, fix: str) -> None:
  missing = [p for p in paths if not os.path.isfile(p)]
  if missing:
    raise DataError(
        f"{len(missing)} of the {len(paths)} images of {what} are "
        f"missing (e.g. {missing[0]!r}): {fix}"
    )


def _truncate(arrays: tuple, limit: int | None) -> tuple:
  if limit is None:
    return arrays
  return tuple(None if a is None else a[:limit] for a in arrays)


# ---------------------------------------------------------------------------
# The paper's Stanford Online Products splits.
# ---------------------------------------------------------------------------


def load_sop_split(
    split: int,
    *,
    data_dir: str | None,
    image_size: int,
    max_train: int | None,
    max_test: int | None,
) -> core.StreamingDataset:
  """The paper's SOP split 1 or 2, images read from ``data_dir``.

  Fine labels are products, coarse labels the 12 super-categories. In split 1
  train and test products are disjoint and both official lists number their
  products from 0, so test product ids are shifted past the train ones to keep
  distinct products distinct. In split 2 the lists share products and ids.
  Fine class names are the products' path stems, e.g.
  ``'bicycle_final/111375616144'``.

  Args:
    split: 1 or 2.
    data_dir: The extracted ``Stanford_Online_Products`` folder.
    image_size: Side of the square images batches hold.
    max_train: Keep only the first N training images (None: all).
    max_test: Keep only the first N test images (None: all).

  Returns:
    The dataset, streaming from the image files.

  Raises:
    DataError: ``data_dir`` is unset or missing, or images are missing.
  """
  name = f"sop_split{split}"
  fix = (
      "set config.data_dir to the extracted Stanford_Online_Products "
      "folder (the one holding bicycle_final/, cabinet_final/, ...; "
      "download Stanford_Online_Products.zip from "
      "cvgl.stanford.edu/projects/lifted_struct)."
  )
  if not data_dir:
    raise DataError(f"{name} reads its images from config.data_dir: {fix}")
  root = os.path.expanduser(data_dir)
  if not os.path.isdir(root):
    raise DataError(f"config.data_dir={data_dir!r} does not exist: {fix}")

  train_paths, train_fine, train_coarse = hierarchies.sop_split_lists(
      split, "train"
  )
  test_paths, test_fine, test_coarse = hierarchies.sop_split_lists(
      split, "test"
  )
  if split == 1:
    test_fine = test_fine + int(train_fine.max()) + 1
  all_fine = np.concatenate([train_fine, test_fine])
  all_coarse = np.concatenate([train_coarse, test_coarse])
  num_fine = int(all_fine.max()) + 1
  fine_to_coarse = np.zeros(num_fine, np.int32)
  fine_to_coarse[all_fine] = all_coarse
  fine_names = [""] * num_fine
  for f, path in zip(all_fine, train_paths + test_paths):
    fine_names[f] = path.rsplit("_", 1)[0]
  hierarchy = core.LabelHierarchy(
      fine_to_coarse=fine_to_coarse,
      fine_names=fine_names,
      coarse_names=hierarchies.SOP_SUPER_CLASSES,
  )

  sources = []
  for subset, paths, fine, coarse, limit in (
      ("train", train_paths, train_fine, train_coarse, max_train),
      ("test", test_paths, test_fine, test_coarse, max_test),
  ):
    paths, fine, coarse = _truncate((paths, fine, coarse), limit)
    paths = [os.path.join(root, p) for p in paths]
    _check_files_exist(paths, f"the {name} {subset} list", fix)
    sources.append(
        core.FileSource(
            paths, coarse, fine, f"the {name} {subset} images in {root}"
        )
    )
  return core.StreamingDataset(
      name=name,
      hierarchy=hierarchy,
      mean=hierarchies.IMAGENET_MEAN,
      std=hierarchies.IMAGENET_STD,
      image_size=image_size,
      train_source=sources[0],
      test_source=sources[1],
  )


# ---------------------------------------------------------------------------
# Custom data: class folders plus a coarse map.
# ---------------------------------------------------------------------------


def read_coarse_map(path: str) -> dict[str, str]:
  """Reads a fine -> coarse class map file as text.

  `coarse_map_hierarchy` turns the result into class ids.

  ``*.json`` (any case): one object ``{"fine class": "coarse class", ...}``
  with string or integer values. Anything else is read as CSV: ``fine,coarse``
  rows, optionally after a ``fine,coarse`` header row. Fields are stripped of
  surrounding spaces; JSON numbers become their text, so ``7`` and ``"7"``
  are the same class.

  Args:
    path: The file (``~`` is expanded).

  Returns:
    ``{fine: coarse}`` as written in the file.

  Raises:
    DataError: the file is missing, unreadable or malformed, has an empty
      field, or maps a class twice to different coarse classes.
  """
  path = os.path.expanduser(path)
  if not os.path.isfile(path):
    raise DataError(
        f"config.coarse_map={path!r} does not exist: point it at a "
        'CSV of fine,coarse rows or a JSON {"fine": "coarse"} '
        "file."
    )
  if path.lower().endswith(".json"):
    try:
      with open(path, encoding="utf-8") as f:
        mapping = json.load(f)
    except (OSError, ValueError) as e:
      raise DataError(
          f"Cannot read coarse map {path!r} as JSON "
          f"({core.first_line(e)}): it must hold one object "
          '{"fine class": "coarse class", ...}.'
      ) from e
    if not isinstance(mapping, dict) or not all(
        isinstance(v, (str, int)) and not isinstance(v, bool)
        for v in mapping.values()
    ):
      raise DataError(
          f"Coarse map {path!r} must hold one JSON object "
          '{"fine class": "coarse class", ...} with string or '
          "integer values."
      )
    mapping = {str(k).strip(): str(v).strip() for k, v in mapping.items()}
    empty = [k for k, v in mapping.items() if not k or not v]
    if empty:
      raise DataError(
          f"Coarse map {path!r} has an empty class name (fine "
          f"{empty[0]!r}): give every entry a fine and a coarse "
          "class."
      )
    if not mapping:
      raise DataError(
          f"Coarse map {path!r} is an empty JSON object: add one "
          '"fine": "coarse" entry per fine class.'
      )
    return mapping

  mapping = {}
  for line, row in _csv_rows(path):
    if len(row) != 2:
      raise DataError(
          f"{path}:{line} has {len(row)} fields; the coarse map "
          "needs fine,coarse rows."
      )
    if not mapping and [c.lower() for c in row] == ["fine", "coarse"]:
      continue  # Header.
    fine, coarse = row
    if not fine or not coarse:
      raise DataError(
          f"{path}:{line} has an empty field; the coarse map needs "
          "fine,coarse rows with both classes named."
      )
    if mapping.get(fine, coarse) != coarse:
      raise DataError(
          f"{path}:{line} maps class {fine!r} to {coarse!r}, an "
          f"earlier row to {mapping[fine]!r}: keep one."
      )
    mapping[fine] = coarse
  if not mapping:
    raise DataError(f"Coarse map {path!r} has no fine,coarse rows.")
  return mapping


def coarse_map_hierarchy(
    path: str,
    fine_names: Sequence[str],
    *,
    dataset: str,
    mapping: dict[str, str] | None = None,
    folder_root: str | None = None,
) -> core.LabelHierarchy:
  """The hierarchy a coarse map file gives the fine classes ``fine_names``.

  The one reading of ``config.coarse_map``, for ``folder`` and for every
  dataset whose own fine -> coarse map it replaces:

  * Fine classes (keys) are named as the dataset names them
    (``LabelHierarchy.fine_names``: e.g. ``T-shirt/top`` for Fashion-MNIST,
    ``0``-``9`` for digits, the folder names for ``folder``), compared
    exactly. When none of those names is an integer, a key may instead be a
    fine class index ``0``..``num_fine - 1``; when some are (digits, numbered
    folders), integers are always names, so ``3`` never means two classes.
  * Coarse classes (values) are the distinct values, numbered in sorted
    order, integers numerically and before other names; their text becomes
    ``coarse_names``. So values ``0``..``K-1`` are the coarse indices
    themselves, other integers keep their order (``1, 2`` become ids
    ``0, 1``, named ``'1'``, ``'2'``), and names sort alphabetically.
  * Every fine class is mapped exactly once, and (except for ``folder``,
    whose map is its only labelling) the map has at least two coarse classes:
    a coarse label that never differs carries no supervision.

  Args:
    path: ``config.coarse_map``, for reading and for messages.
    fine_names: The dataset's fine class names, in label order.
    dataset: ``config.dataset``, for messages.
    mapping: The file's `read_coarse_map` result if already read.
    folder_root: For ``folder``, its ``config.data_dir``: the messages then
      speak of class folders, and one coarse class is allowed.

  Returns:
    The hierarchy: ``fine_names`` and the coarse classes above.

  Raises:
    DataError: the file is unreadable or malformed, names an unknown fine
      class, leaves one unmapped or maps one twice, or has one coarse class.
  """
  if mapping is None:
    mapping = read_coarse_map(path)
  fine_names = [str(n) for n in fine_names]
  fine_ids = {n: i for i, n in enumerate(fine_names)}
  by_index = not any(n.strip().isdigit() for n in fine_names)
  coarse_of = {}  # fine id -> coarse name
  key_of = {}  # fine id -> the key that mapped it
  unknown = []
  for key, coarse in mapping.items():
    if key in fine_ids:
      fine = fine_ids[key]
    elif by_index and key.isdigit() and int(key) < len(fine_names):
      fine = int(key)
    else:
      unknown.append(key)
      continue
    if fine in key_of and coarse_of[fine] != coarse:
      raise DataError(
          f"Coarse map {path!r} maps fine class "
          f"{fine_names[fine]!r} twice, as {key_of[fine]!r} and "
          f"{key!r}, to {coarse_of[fine]!r} and {coarse!r}: keep "
          "one."
      )
    coarse_of[fine] = coarse
    key_of[fine] = key
  if unknown:
    if folder_root is not None:
      raise DataError(
          f"Coarse map {path!r} names {len(unknown)} classes with no folder "
          f"in {folder_root}/train or {folder_root}/test: {_listing(unknown)};"
          " remove them or fix the names."
      )
    indices = f" or indices 0-{len(fine_names) - 1}" if by_index else ""
    raise DataError(
        f"Coarse map {path!r} names {len(unknown)} classes that {dataset} "
        f"does not have: {_listing(unknown)}; use its fine class names "
        f"({_examples(fine_names)}){indices}."
    )
  unmapped = [n for i, n in enumerate(fine_names) if i not in coarse_of]
  if unmapped:
    what = (
        "class folders"
        if folder_root is not None
        else f"fine classes of {dataset}"
    )
    raise DataError(
        f"Coarse map {path!r} leaves {len(unmapped)} {what} "
        f"unmapped: {_listing(unmapped)}; add a row for each."
    )
  coarse_names = sorted(set(coarse_of.values()), key=natural_key)
  if len(coarse_names) < 2 and folder_root is None:
    raise DataError(
        f"Coarse map {path!r} puts all {len(fine_names)} fine "
        f"classes of {dataset} in one coarse class "
        f"{coarse_names[0]!r}: map them to at least two coarse "
        "classes."
    )
  coarse_ids = {c: i for i, c in enumerate(coarse_names)}
  return core.LabelHierarchy(
      fine_to_coarse=[coarse_ids[coarse_of[i]] for i in range(len(fine_names))],
      fine_names=fine_names,
      coarse_names=coarse_names,
  )


def _examples(names: Sequence[str], limit: int = 3) -> str:
  """The first few of ``names`` in their own order, for a hint."""
  shown = ", ".join(repr(n) for n in names[:limit])
  return shown + (", ..." if len(names) > limit else "")


def _csv_rows(path: str) -> Iterable[tuple[int, list[str]]]:
  """Yields ``(line number, stripped fields)`` of non-empty CSV rows."""
  try:
    with open(path, newline="", encoding="utf-8") as f:
      rows = list(csv.reader(f))
  except (OSError, UnicodeDecodeError, csv.Error) as e:
    raise DataError(
        f"Cannot read CSV {path!r} ({core.first_line(e)}): save "
        "it as UTF-8 text with comma-separated fields."
    ) from e
  for line, row in enumerate(rows, start=1):
    row = [field.strip() for field in row]
    if any(row):
      yield line, row


def _list_split(split_dir: str) -> tuple[dict[str, list[str]], int]:
  """Image files per class folder of one split, and how many were ignored."""
  classes = {}
  ignored = 0
  for entry in sorted(os.scandir(split_dir), key=lambda e: e.name):
    if not entry.is_dir():
      ignored += 1
      continue
    files = []
    for item in sorted(os.scandir(entry.path), key=lambda e: e.name):
      if item.is_file() and item.name.lower().endswith(IMAGE_EXTENSIONS):
        files.append(item.path)
      else:
        ignored += 1
    classes[entry.name] = files
  return classes, ignored


def load_folder(
    root: str | None,
    coarse_map: str | None,
    *,
    image_size: int,
    max_train: int | None,
    max_test: int | None,
) -> core.StreamingDataset:
  """Custom data in class folders (``dataset='folder'``).

  Layout: ``ROOT/train/<fine class>/*.png`` and ``ROOT/test/<fine class>/...``
  (``.png``, ``.jpg``, ``.jpeg``, any case). Fine classes are the folder names
  of both splits, numbered in sorted order (numeric names numerically); the
  map gives each one's coarse class, and coarse classes are numbered the same
  way. Other files are ignored with a logged warning. Within a split, images
  are ordered by class and file name.

  Args:
    root: ``config.data_dir``.
    coarse_map: ``config.coarse_map``, see `read_coarse_map` and
      `coarse_map_hierarchy` (fine keys are the folder names; one coarse
      class is allowed).
    image_size: Side of the square images batches hold.
    max_train: Keep only the first N training images (None: all).
    max_test: Keep only the first N test images (None: all).

  Returns:
    The dataset, streaming from the image files.

  Raises:
    ConfigError: ``config.data_dir`` or ``config.coarse_map`` is unset.
    DataError: a folder is missing or empty, or the map leaves a class
      unmapped or names a class that has no folder.
  """
  if not root:
    raise ConfigError(
        "config.dataset='folder' needs config.data_dir: the "
        "folder holding train/<class>/ and test/<class>/ image "
        "folders."
    )
  if not coarse_map:
    raise ConfigError(
        "config.dataset='folder' needs config.coarse_map: a CSV "
        'of fine,coarse rows or a JSON {"fine": "coarse"} file '
        "giving each class folder its coarse class."
    )
  root = os.path.expanduser(root)
  if not os.path.isdir(root):
    raise DataError(
        f"config.data_dir={root!r} does not exist: point it at the "
        "folder holding train/<class>/ and test/<class>/."
    )
  listings = {}
  for split in FOLDER_SPLITS:
    split_dir = os.path.join(root, split)
    if not os.path.isdir(split_dir):
      raise DataError(
          f"{split_dir!r} does not exist: put the {split} images "
          f"in {split_dir}/<fine class>/ (PNG or JPEG)."
      )
    classes, ignored = _list_split(split_dir)
    if ignored:
      logging.warning(
          "Ignored %d entries of %s that are not PNG/JPEG files "
          "inside a class folder.",
          ignored,
          split_dir,
      )
    if not any(classes.values()):
      raise DataError(
          f"{split_dir!r} holds no images: put them in "
          f"{split_dir}/<fine class>/ (PNG or JPEG)."
      )
    listings[split] = classes

  fine_names = sorted(
      set(listings["train"]) | set(listings["test"]), key=natural_key
  )
  hierarchy = coarse_map_hierarchy(
      coarse_map, fine_names, dataset="folder", folder_root=root
  )
  fine_to_coarse = hierarchy.fine_to_coarse

  fine_ids = {n: i for i, n in enumerate(fine_names)}
  sources = []
  for split, limit in zip(FOLDER_SPLITS, (max_train, max_test)):
    paths, fine = [], []
    for name, files in sorted(
        listings[split].items(), key=lambda kv: natural_key(kv[0])
    ):
      paths += files
      fine += [fine_ids[name]] * len(files)
    fine = np.asarray(fine, np.int32)
    coarse = np.asarray(fine_to_coarse, np.int32)[fine]
    paths, fine, coarse = _truncate((paths, fine, coarse), limit)
    sources.append(
        core.FileSource(paths, coarse, fine, f"{os.path.join(root, split)}")
    )
  return core.StreamingDataset(
      name="folder",
      hierarchy=hierarchy,
      mean=hierarchies.IMAGENET_MEAN,
      std=hierarchies.IMAGENET_STD,
      image_size=image_size,
      train_source=sources[0],
      test_source=sources[1],
  )


# ---------------------------------------------------------------------------
# Custom data: CSV lists.
# ---------------------------------------------------------------------------


def _read_list(path: str) -> tuple[list[str], list[str], list[str] | None]:
  """Reads a ``path,coarse[,fine]`` CSV; paths made absolute."""
  path = os.path.expanduser(path)
  if not os.path.isfile(path):
    raise DataError(
        f"CSV {path!r} does not exist: it should list "
        "path,coarse[,fine] rows."
    )
  base = os.path.dirname(os.path.abspath(path))
  rows = list(_csv_rows(path))
  if rows and rows[0][1] and rows[0][1][0].lower() == "path":
    rows = rows[1:]  # Header.
  if not rows:
    raise DataError(f"CSV {path!r} has no path,coarse[,fine] rows.")
  width = len(rows[0][1])
  paths, coarse, fine = [], [], []
  for line, row in rows:
    if len(row) != width or width not in (2, 3) or not all(row):
      raise DataError(
          f"{path}:{line} has {len(row)} fields (or an empty "
          f"one); every row needs path,coarse or path,coarse,fine "
          f"like the first ({width} fields)."
      )
    paths.append(os.path.join(base, row[0]))
    coarse.append(row[1])
    if width == 3:
      fine.append(row[2])
  return paths, coarse, fine if width == 3 else None


def load_csv(
    train_csv: str | None,
    test_csv: str | None,
    *,
    image_size: int,
    max_train: int | None,
    max_test: int | None,
) -> core.StreamingDataset:
  """Custom data listed in CSV files (``dataset='csv'``).

  Each CSV has ``path,coarse`` or ``path,coarse,fine`` rows (an optional
  header row starts with ``path``); relative paths are relative to the CSV's
  own folder. Class names are numbered in sorted order (numeric names
  numerically) over both files.

  Without a fine column the data has coarse labels only: fine labels are None
  (`has_fine_labels` is False), the hierarchy has one stand-in fine class per
  coarse class, and evaluation can only report coarse retrieval.

  Args:
    train_csv: ``config.train_csv``.
    test_csv: ``config.test_csv``.
    image_size: Side of the square images batches hold.
    max_train: Keep only the first N training rows (None: all).
    max_test: Keep only the first N test rows (None: all).

  Returns:
    The dataset, streaming from the image files.

  Raises:
    ConfigError: a CSV path is unset.
    DataError: a CSV is missing or malformed, the two disagree on having a
      fine column, a fine class has two coarse classes, or images are
      missing.
  """
  for field, value in (("train_csv", train_csv), ("test_csv", test_csv)):
    if not value:
      raise ConfigError(
          f"config.dataset='csv' needs config.{field}: a CSV of "
          "path,coarse[,fine] rows."
      )
  lists = [_read_list(train_csv), _read_list(test_csv)]
  has_fine = [fine is not None for _, _, fine in lists]
  if has_fine[0] != has_fine[1]:
    raise DataError(
        f"{train_csv!r} and {test_csv!r} must both have a fine "
        "column or both lack it."
    )
  coarse_names = sorted(
      {c for _, coarse, _ in lists for c in coarse}, key=natural_key
  )
  if has_fine[0]:
    parent = {}
    for (_, coarse, fine), csv_path in zip(lists, (train_csv, test_csv)):
      for f, c in zip(fine, coarse):
        if parent.setdefault(f, c) != c:
          raise DataError(
              f"Fine class {f!r} has coarse class {parent[f]!r} "
              f"and {c!r} (in {csv_path!r}): give every fine "
              "class one coarse class."
          )
    fine_names = sorted(parent, key=natural_key)
    hierarchy = core.LabelHierarchy(
        fine_to_coarse=[coarse_names.index(parent[f]) for f in fine_names],
        fine_names=fine_names,
        coarse_names=coarse_names,
    )
  else:
    hierarchy = core.identity_hierarchy(coarse_names)

  coarse_ids = {c: i for i, c in enumerate(coarse_names)}
  fine_ids = {f: i for i, f in enumerate(hierarchy.fine_names)}
  sources = []
  for (paths, coarse, fine), csv_path, limit in zip(
      lists, (train_csv, test_csv), (max_train, max_test)
  ):
    coarse = np.asarray([coarse_ids[c] for c in coarse], np.int32)
    if fine is not None:
      fine = np.asarray([fine_ids[f] for f in fine], np.int32)
    paths, coarse, fine = _truncate((paths, coarse, fine), limit)
    _check_files_exist(
        paths,
        f"{csv_path!r}",
        "fix the paths (relative ones are relative to the CSV's folder).",
    )
    sources.append(
        core.FileSource(
            paths, coarse, fine, f"the images listed in {csv_path!r}"
        )
    )
  return core.StreamingDataset(
      name="csv",
      hierarchy=hierarchy,
      mean=hierarchies.IMAGENET_MEAN,
      std=hierarchies.IMAGENET_STD,
      image_size=image_size,
      train_source=sources[0],
      test_source=sources[1],
  )
