r"""Exports a trained run's embeddings of one split to an ``.npz`` file.

  python -m maskcon_jax.export --workdir runs/default --split test \
      --out runs/default/emb_test.npz

The file holds ``features`` (backbone, what retrieval is scored on),
``projections`` (the contrastive head's output, not normalised),
``fine_labels``, ``coarse_labels``, ``image_ids`` (row indices into the
split), ``fine_names``, ``coarse_names``, ``fine_to_coarse`` and ``step``.
Names are unicode arrays, so ``np.load`` needs no ``allow_pickle``.
"""

from __future__ import annotations

import os
import sys

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

from absl import app  # noqa: E402
from absl import flags  # noqa: E402
from absl import logging  # noqa: E402
import numpy as np  # noqa: E402

from maskcon_jax import evaluate  # noqa: E402
from maskcon_jax.errors import UserError  # noqa: E402


def run_export(workdir: str, split: str, out: str,
               checkpoint: int | None = None) -> dict[str, np.ndarray]:
  """Embeds ``split`` with a checkpoint of ``workdir`` and writes ``out``.

  Args:
    workdir: a directory written by ``maskcon_jax.train``.
    split: "test" or "train".
    out: the ``.npz`` path, written as given (no suffix is added); its
      directory is created if needed.
    checkpoint: the checkpoint step; the latest if None.

  Returns:
    The arrays written.

  Raises:
    UserError: ``workdir`` has no run or no such checkpoint, or a bad split.
  """
  run = evaluate.load_and_embed(workdir, split, checkpoint, with_bank=False)
  hierarchy = run["experiment"].dataset.hierarchy
  arrays = {
      "features": run["embeddings"]["features"].astype(np.float32),
      "projections": run["embeddings"]["projection"].astype(np.float32),
      "fine_labels": np.asarray(run["fine"], np.int32),
      "coarse_labels": np.asarray(run["coarse"], np.int32),
      "image_ids": np.arange(len(run["fine"]), dtype=np.int32),
      "fine_names": np.asarray(hierarchy.fine_names, dtype=str),
      "coarse_names": np.asarray(hierarchy.coarse_names, dtype=str),
      "fine_to_coarse": np.asarray(hierarchy.fine_to_coarse, np.int32),
      "step": np.asarray(run["step"], np.int64),
  }
  directory = os.path.dirname(os.path.abspath(out))
  try:
    os.makedirs(directory, exist_ok=True)
  except OSError as e:
    raise UserError(f"cannot create {directory} for --out: {e.strerror}.")
  tmp = out + ".tmp"
  # A file object keeps numpy from appending ".npz" to the name.
  with open(tmp, "wb") as f:
    np.savez(f, **arrays)
  os.replace(tmp, out)
  return arrays


def define_flags() -> None:
  """Defines the command-line flags (only when run as a program)."""
  flags.DEFINE_string("workdir", None,
                      "A directory written by maskcon_jax.train.")
  flags.DEFINE_enum("split", "test", list(evaluate.SPLITS),
                    "The split to export.")
  flags.DEFINE_string("out", None, "The .npz file to write.")
  flags.DEFINE_integer("checkpoint", None,
                       "The checkpoint step to export; the latest if unset.")
  flags.mark_flags_as_required(["workdir", "out"])


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"Unexpected arguments: {' '.join(argv[1:])}")
  logging.set_verbosity(logging.WARNING)  # The line below is the output.
  flag = flags.FLAGS
  try:
    arrays = run_export(flag.workdir, flag.split, flag.out, flag.checkpoint)
  except UserError as e:
    print(f"error: {e}", file=sys.stderr, flush=True)
    sys.exit(2)
  print(f"wrote {flag.out}: {len(arrays['image_ids'])} {flag.split} items, "
        f"features {arrays['features'].shape[1]}-d, projections "
        f"{arrays['projections'].shape[1]}-d (step {int(arrays['step'])})",
        flush=True)


if __name__ == "__main__":
  define_flags()
  app.run(main)
