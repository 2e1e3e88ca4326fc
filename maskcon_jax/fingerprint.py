"""What data a run trained on, so that it resumes only onto the same data.

The data order and the schedule are functions of the number of examples and
of their labels; a run resumed on other data (another ``max_train_examples``,
a coarse map edited in place, another copy of a file dataset) would silently
differ from the run that was started. `of_dataset` summarises the data in a
small JSON object, which a run records in ``WORKDIR/data_fingerprint.json``
beside config.json; `differences` says what changed, in words.

The fingerprint holds:

* ``train_examples``, ``test_examples``, ``fine_classes``,
  ``coarse_classes``;
* ``coarse_map``: a hash of the fine -> coarse table and the class names;
* ``train_labels``, ``test_labels``: hashes of the fine and coarse label
  arrays in the split's order (in-memory data, and streamed file data);
* ``train_files``, ``test_files``: for data read from image files, a hash of
  the sorted paths relative to their common folder, so moving the dataset
  (``config.data_dir``) keeps it. Images themselves are not hashed.

Streamed TFDS data has no label hashes (reading the labels would mean reading
the split); its counts, classes and coarse map are still compared.
"""

from __future__ import annotations

import hashlib
import json
import os
from typing import Any, Sequence

from absl import logging
import numpy as np

from maskcon_jax.errors import DataError

FINGERPRINT_FILE = "data_fingerprint.json"
VERSION = 1

# Keys of the training side: a change there refuses a resumption. Changes
# of the others (the test split) only change what evaluation reports.
_TRAIN_KEYS = (
    "train_examples",
    "fine_classes",
    "coarse_classes",
    "coarse_map",
    "train_labels",
    "train_files",
)
_TEST_KEYS = ("test_examples", "test_labels", "test_files")
# How `differences` names each key: counts as "train examples 12 -> 60".
_COUNTS = {
    "train_examples": "train examples",
    "test_examples": "test examples",
    "fine_classes": "fine classes",
    "coarse_classes": "coarse classes",
}
_HASHES = {
    "coarse_map": "the coarse map differs",
    "train_labels": "the train labels differ",
    "test_labels": "the test labels differ",
    "train_files": "the train image files differ",
    "test_files": "the test image files differ",
}


def _digest(*parts: Any) -> str:
  h = hashlib.sha256()
  for part in parts:
    if part is None:
      h.update(b"\0none")
    elif isinstance(part, np.ndarray):
      array = np.ascontiguousarray(part.astype("<i8"))
      h.update(f"\0array{array.shape}".encode())
      h.update(array.tobytes())
    else:
      h.update(b"\0" + json.dumps(part, sort_keys=True).encode())
  return h.hexdigest()[:16]


def files_digest(paths: Sequence[str]) -> str:
  """A hash of the sorted ``paths``, relative to the folder they share."""
  paths = [os.path.normpath(str(p)) for p in paths]
  if not paths:
    return _digest([])
  root = os.path.commonpath([os.path.dirname(p) or "." for p in paths])
  return _digest(sorted(os.path.relpath(p, root) for p in paths))


def source_files_digest(source: Any) -> str | None:
  """`files_digest` of an image source read from files (None otherwise)."""
  source = getattr(source, "source", source)  # A coarse-remapped source.
  paths = getattr(source, "paths", None)
  return None if paths is None else files_digest(list(paths))


def _source_labels(source: Any) -> tuple[Any, Any] | None:
  """``(fine, coarse)`` label arrays of a file source, None if unknown."""
  inner = getattr(source, "source", source)
  coarse = getattr(inner, "coarse", None)
  if coarse is None:
    return None
  fine = getattr(inner, "fine", None)
  table = getattr(source, "fine_to_coarse", None)
  if table is not None and fine is not None:
    coarse = np.asarray(table, np.int64)[fine]
  return fine, coarse


def of_dataset(dataset: Any) -> dict[str, Any]:
  """The fingerprint of a `Dataset` or `StreamingDataset` (see the module)."""
  hierarchy = dataset.hierarchy
  fingerprint = {
      "version": VERSION,
      "train_examples": int(dataset.num_train),
      "test_examples": int(dataset.num_test),
      "fine_classes": int(hierarchy.num_fine),
      "coarse_classes": int(hierarchy.num_coarse),
      "coarse_map": _digest(
          list(hierarchy.fine_to_coarse),
          list(hierarchy.fine_names),
          list(hierarchy.coarse_names),
      ),
  }
  for split in ("train", "test"):
    if hasattr(dataset, f"{split}_coarse"):
      labels = (
          getattr(dataset, f"{split}_fine"),
          getattr(dataset, f"{split}_coarse"),
      )
      files = (getattr(dataset, "files", None) or {}).get(split)
    else:
      source = getattr(dataset, f"{split}_source")
      labels = _source_labels(source)
      files = source_files_digest(source)
    if labels is not None:
      fingerprint[f"{split}_labels"] = _digest(*labels)
    if files is not None:
      fingerprint[f"{split}_files"] = files
  return fingerprint


def differences(
    saved: dict[str, Any], current: dict[str, Any]
) -> tuple[list[str], list[str]]:
  """What changed from ``saved`` to ``current``, in words.

  Only keys both have are compared (a streamed TFDS dataset has no label
  hashes). A split whose count changed is not also said to have other
  labels.

  Returns:
    ``(train, test)``: the changes of the training data (counts as
    ``"train examples 12000 -> 60000"``, hashes as ``"the train labels
    differ"``) and those of the test split.
  """

  def changes(keys):
    found = []
    for key in keys:
      if key not in saved or key not in current:
        continue
      old, new = saved[key], current[key]
      if old == new:
        continue
      if key.endswith("_labels") and (
          saved.get(key.replace("labels", "examples"))
          != current.get(key.replace("labels", "examples"))
      ):
        continue  # Other labels follow from another count: say it once.
      found.append(
          f"{_COUNTS[key]} {old} -> {new}" if key in _COUNTS else _HASHES[key]
      )
    return found

  return changes(_TRAIN_KEYS), changes(_TEST_KEYS)


def read(workdir: str) -> dict[str, Any] | None:
  """The fingerprint a run recorded (None: none, or not readable)."""
  try:
    with open(os.path.join(workdir, FINGERPRINT_FILE)) as f:
      saved = json.load(f)
  except (OSError, ValueError):
    return None
  return saved if isinstance(saved, dict) else None


def check_same_data(
    workdir: str,
    saved: dict[str, Any] | None,
    current: dict[str, Any],
    *,
    finished: bool,
) -> None:
  """Refuses to resume ``workdir``'s run on other training data.

  ``saved`` is the run's fingerprint (`read`) (None for runs from before them: they
  resume with a warning, and the fingerprint is recorded from then on). A
  finished run is only re-evaluated, so other data is allowed there, with a
  warning naming it; a resumed run on another test split is warned about too.

  Raises:
    DataError: the training data differs; the line says how.
  """
  if saved is None:
    logging.warning(
        "%s has no record of the data its run used (a run from "
        "before data fingerprints): %s without checking it.",
        workdir,
        "re-evaluating" if finished else "resuming",
    )
    return
  train, test = differences(saved, current)
  if finished:
    if train or test:
      logging.warning(
          "Evaluating the finished run in %s on other data than it "
          "was trained on: %s.",
          workdir,
          "; ".join(train + test),
      )
    return
  if train:
    raise DataError(
        f"the training data differs from the data the run in {workdir} "
        f"started with: {'; '.join(train)}; resume with the original data or "
        "use a new --workdir."
    )
  if test:
    logging.warning(
        "The test split differs from the one the run in %s was "
        "evaluated on so far: %s.",
        workdir,
        "; ".join(test),
    )
