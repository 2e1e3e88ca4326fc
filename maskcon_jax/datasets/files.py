"""Datasets read from image files: the paper's SOP splits and custom data.

* ``sop_split1`` / ``sop_split2``: the paper's Stanford Online Products splits
  (lists shipped in ``maskcon_jax/data/coarse_labels``), images read from the
  extracted ``Stanford_Online_Products`` folder that ``config.data_dir`` names.
* ``folder``: ``ROOT/{train,test}/<fine class>/*.{png,jpg,jpeg}`` plus a
  fine -> coarse map (CSV ``fine,coarse`` rows or JSON ``{fine: coarse}``).
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

IMAGE_EXTENSIONS = ('.png', '.jpg', '.jpeg')
FOLDER_SPLITS = ('train', 'test')
# How many offending names an error message lists before "...".
_LIST_LIMIT = 10


def natural_key(name: str) -> tuple[int, int, str]:
  """Sorts numeric names numerically ("2" before "10"), then the rest."""
  return (0, int(name), name) if name.isdigit() else (1, 0, name)


def _listing(names: Iterable[str]) -> str:
  names = sorted(names, key=natural_key)
  shown = ', '.join(repr(n) for n in names[:_LIST_LIMIT])
  more = len(names) - _LIST_LIMIT
  return shown + (f' and {more} more' if more > 0 else '')


def _check_files_exist(paths: Sequence[str], what: str, fix: str) -> None:
  missing = [p for p in paths if not os.path.isfile(p)]
  if missing:
    raise DataError(f'{len(missing)} of the {len(paths)} images of {what} are '
                    f'missing (e.g. {missing[0]!r}): {fix}')


def _truncate(arrays: tuple, limit: int | None) -> tuple:
  if limit is None:
    return arrays
  return tuple(None if a is None else a[:limit] for a in arrays)


# ---------------------------------------------------------------------------
# The paper's Stanford Online Products splits.
# ---------------------------------------------------------------------------


def load_sop_split(split: int, *, data_dir: str | None, image_size: int,
                   max_train: int | None, max_test: int | None
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
  name = f'sop_split{split}'
  fix = ('set config.data_dir to the extracted Stanford_Online_Products '
         'folder (the one holding bicycle_final/, cabinet_final/, ...; '
         'download Stanford_Online_Products.zip from '
         'cvgl.stanford.edu/projects/lifted_struct).')
  if not data_dir:
    raise DataError(f'{name} reads its images from config.data_dir: {fix}')
  root = os.path.expanduser(data_dir)
  if not os.path.isdir(root):
    raise DataError(f'config.data_dir={data_dir!r} does not exist: {fix}')

  train_paths, train_fine, train_coarse = hierarchies.sop_split_lists(
      split, 'train')
  test_paths, test_fine, test_coarse = hierarchies.sop_split_lists(
      split, 'test')
  if split == 1:
    test_fine = test_fine + int(train_fine.max()) + 1
  all_fine = np.concatenate([train_fine, test_fine])
  all_coarse = np.concatenate([train_coarse, test_coarse])
  num_fine = int(all_fine.max()) + 1
  fine_to_coarse = np.zeros(num_fine, np.int32)
  fine_to_coarse[all_fine] = all_coarse
  fine_names = [''] * num_fine
  for f, path in zip(all_fine, train_paths + test_paths):
    fine_names[f] = path.rsplit('_', 1)[0]
  hierarchy = core.LabelHierarchy(
      fine_to_coarse=fine_to_coarse, fine_names=fine_names,
      coarse_names=hierarchies.SOP_SUPER_CLASSES)

  sources = []
  for subset, paths, fine, coarse, limit in (
      ('train', train_paths, train_fine, train_coarse, max_train),
      ('test', test_paths, test_fine, test_coarse, max_test)):
    paths, fine, coarse = _truncate((paths, fine, coarse), limit)
    paths = [os.path.join(root, p) for p in paths]
    _check_files_exist(paths, f'the {name} {subset} list', fix)
    sources.append(core.FileSource(
        paths, coarse, fine, f'the {name} {subset} images in {root}'))
  return core.StreamingDataset(
      name=name, hierarchy=hierarchy, mean=hierarchies.IMAGENET_MEAN,
      std=hierarchies.IMAGENET_STD, image_size=image_size,
      train_source=sources[0], test_source=sources[1])


# ---------------------------------------------------------------------------
# Custom data: class folders plus a coarse map.
# ---------------------------------------------------------------------------


def read_coarse_map(path: str) -> dict[str, str]:
  """Reads a fine -> coarse class map.

  ``*.json``: one object ``{"fine class": "coarse class", ...}``. Anything
  else is read as CSV: ``fine,coarse`` rows, optionally after a
  ``fine,coarse`` header row. Class names are compared as strings, so JSON
  numbers and folder names like ``7`` match.

  Raises:
    DataError: the file is missing, malformed, or maps a class twice to
      different coarse classes.
  """
  path = os.path.expanduser(path)
  if not os.path.isfile(path):
    raise DataError(f'config.coarse_map={path!r} does not exist: point it at a '
                    'CSV of fine,coarse rows or a JSON {"fine": "coarse"} '
                    'file.')
  if path.lower().endswith('.json'):
    try:
      with open(path, encoding='utf-8') as f:
        mapping = json.load(f)
    except (OSError, ValueError) as e:
      raise DataError(f'Cannot read coarse map {path!r} as JSON '
                      f'({core.first_line(e)}): it must hold one object '
                      '{"fine class": "coarse class", ...}.') from e
    if not isinstance(mapping, dict) or not all(
        isinstance(v, (str, int)) and not isinstance(v, bool)
        for v in mapping.values()):
      raise DataError(f'Coarse map {path!r} must hold one JSON object '
                      '{"fine class": "coarse class", ...} with string or '
                      'integer values.')
    return {str(k).strip(): str(v).strip() for k, v in mapping.items()}

  mapping = {}
  for line, row in _csv_rows(path):
    if len(row) != 2:
      raise DataError(f'{path}:{line} has {len(row)} fields; the coarse map '
                      'needs fine,coarse rows.')
    if not mapping and [c.lower() for c in row] == ['fine', 'coarse']:
      continue  # Header.
    fine, coarse = row
    if mapping.get(fine, coarse) != coarse:
      raise DataError(f'{path}:{line} maps class {fine!r} to {coarse!r}, an '
                      f'earlier row to {mapping[fine]!r}: keep one.')
    mapping[fine] = coarse
  if not mapping:
    raise DataError(f'Coarse map {path!r} has no fine,coarse rows.')
  return mapping


def _csv_rows(path: str) -> Iterable[tuple[int, list[str]]]:
  """Yields ``(line number, stripped fields)`` of non-empty CSV rows."""
  try:
    with open(path, newline='', encoding='utf-8') as f:
      rows = list(csv.reader(f))
  except (OSError, UnicodeDecodeError, csv.Error) as e:
    raise DataError(f'Cannot read CSV {path!r} ({core.first_line(e)}).') from e
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


def load_folder(root: str | None, coarse_map: str | None, *, image_size: int,
                max_train: int | None, max_test: int | None
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
    coarse_map: ``config.coarse_map``, see `read_coarse_map`.
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
    raise ConfigError("config.dataset='folder' needs config.data_dir: the "
                      'folder holding train/<class>/ and test/<class>/ image '
                      'folders.')
  if not coarse_map:
    raise ConfigError("config.dataset='folder' needs config.coarse_map: a CSV "
                      'of fine,coarse rows or a JSON {"fine": "coarse"} file '
                      'giving each class folder its coarse class.')
  root = os.path.expanduser(root)
  if not os.path.isdir(root):
    raise DataError(f'config.data_dir={root!r} does not exist: point it at the '
                    'folder holding train/<class>/ and test/<class>/.')
  listings = {}
  for split in FOLDER_SPLITS:
    split_dir = os.path.join(root, split)
    if not os.path.isdir(split_dir):
      raise DataError(f'{split_dir!r} does not exist: put the {split} images '
                      f'in {split_dir}/<fine class>/ (PNG or JPEG).')
    classes, ignored = _list_split(split_dir)
    if ignored:
      logging.warning('Ignored %d entries of %s that are not PNG/JPEG files '
                      'inside a class folder.', ignored, split_dir)
    if not any(classes.values()):
      raise DataError(f'{split_dir!r} holds no images: put them in '
                      f'{split_dir}/<fine class>/ (PNG or JPEG).')
    listings[split] = classes

  fine_names = sorted(set(listings['train']) | set(listings['test']),
                      key=natural_key)
  mapping = read_coarse_map(coarse_map)
  unmapped = [n for n in fine_names if n not in mapping]
  if unmapped:
    raise DataError(f'Coarse map {coarse_map!r} leaves {len(unmapped)} class '
                    f'folders unmapped: {_listing(unmapped)}; add a row for '
                    'each.')
  unknown = sorted(set(mapping) - set(fine_names), key=natural_key)
  if unknown:
    raise DataError(f'Coarse map {coarse_map!r} names {len(unknown)} classes '
                    f'with no folder in {root}/train or {root}/test: '
                    f'{_listing(unknown)}; remove them or fix the names.')
  coarse_names = sorted({mapping[n] for n in fine_names}, key=natural_key)
  fine_to_coarse = [coarse_names.index(mapping[n]) for n in fine_names]
  hierarchy = core.LabelHierarchy(fine_to_coarse=fine_to_coarse,
                                  fine_names=fine_names,
                                  coarse_names=coarse_names)

  fine_ids = {n: i for i, n in enumerate(fine_names)}
  sources = []
  for split, limit in zip(FOLDER_SPLITS, (max_train, max_test)):
    paths, fine = [], []
    for name, files in sorted(listings[split].items(),
                              key=lambda kv: natural_key(kv[0])):
      paths += files
      fine += [fine_ids[name]] * len(files)
    fine = np.asarray(fine, np.int32)
    coarse = np.asarray(fine_to_coarse, np.int32)[fine]
    paths, fine, coarse = _truncate((paths, fine, coarse), limit)
    sources.append(core.FileSource(paths, coarse, fine,
                                   f'{os.path.join(root, split)}'))
  return core.StreamingDataset(
      name='folder', hierarchy=hierarchy, mean=hierarchies.IMAGENET_MEAN,
      std=hierarchies.IMAGENET_STD, image_size=image_size,
      train_source=sources[0], test_source=sources[1])


# ---------------------------------------------------------------------------
# Custom data: CSV lists.
# ---------------------------------------------------------------------------


def _read_list(path: str) -> tuple[list[str], list[str], list[str] | None]:
  """Reads a ``path,coarse[,fine]`` CSV; paths made absolute."""
  path = os.path.expanduser(path)
  if not os.path.isfile(path):
    raise DataError(f'CSV {path!r} does not exist: it should list '
                    'path,coarse[,fine] rows.')
  base = os.path.dirname(os.path.abspath(path))
  rows = list(_csv_rows(path))
  if rows and rows[0][1] and rows[0][1][0].lower() == 'path':
    rows = rows[1:]  # Header.
  if not rows:
    raise DataError(f'CSV {path!r} has no path,coarse[,fine] rows.')
  width = len(rows[0][1])
  paths, coarse, fine = [], [], []
  for line, row in rows:
    if len(row) != width or width not in (2, 3) or not all(row):
      raise DataError(f'{path}:{line} has {len(row)} fields (or an empty '
                      f'one); every row needs path,coarse or path,coarse,fine '
                      f'like the first ({width} fields).')
    paths.append(os.path.join(base, row[0]))
    coarse.append(row[1])
    if width == 3:
      fine.append(row[2])
  return paths, coarse, fine if width == 3 else None


def load_csv(train_csv: str | None, test_csv: str | None, *, image_size: int,
             max_train: int | None, max_test: int | None
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
  for field, value in (('train_csv', train_csv), ('test_csv', test_csv)):
    if not value:
      raise ConfigError(f"config.dataset='csv' needs config.{field}: a CSV of "
                        'path,coarse[,fine] rows.')
  lists = [_read_list(train_csv), _read_list(test_csv)]
  has_fine = [fine is not None for _, _, fine in lists]
  if has_fine[0] != has_fine[1]:
    raise DataError(f'{train_csv!r} and {test_csv!r} must both have a fine '
                    'column or both lack it.')
  coarse_names = sorted({c for _, coarse, _ in lists for c in coarse},
                        key=natural_key)
  if has_fine[0]:
    parent = {}
    for (_, coarse, fine), csv_path in zip(lists, (train_csv, test_csv)):
      for f, c in zip(fine, coarse):
        if parent.setdefault(f, c) != c:
          raise DataError(f'Fine class {f!r} has coarse class {parent[f]!r} '
                          f'and {c!r} (in {csv_path!r}): give every fine '
                          'class one coarse class.')
    fine_names = sorted(parent, key=natural_key)
    hierarchy = core.LabelHierarchy(
        fine_to_coarse=[coarse_names.index(parent[f]) for f in fine_names],
        fine_names=fine_names, coarse_names=coarse_names)
  else:
    hierarchy = core.identity_hierarchy(coarse_names)

  coarse_ids = {c: i for i, c in enumerate(coarse_names)}
  fine_ids = {f: i for i, f in enumerate(hierarchy.fine_names)}
  sources = []
  for (paths, coarse, fine), csv_path, limit in zip(
      lists, (train_csv, test_csv), (max_train, max_test)):
    coarse = np.asarray([coarse_ids[c] for c in coarse], np.int32)
    if fine is not None:
      fine = np.asarray([fine_ids[f] for f in fine], np.int32)
    paths, coarse, fine = _truncate((paths, coarse, fine), limit)
    _check_files_exist(paths, f'{csv_path!r}',
                       'fix the paths (relative ones are relative to the '
                       "CSV's folder).")
    sources.append(core.FileSource(paths, coarse, fine,
                                   f'the images listed in {csv_path!r}'))
  return core.StreamingDataset(
      name='csv', hierarchy=hierarchy, mean=hierarchies.IMAGENET_MEAN,
      std=hierarchies.IMAGENET_STD, image_size=image_size,
      train_source=sources[0], test_source=sources[1])
