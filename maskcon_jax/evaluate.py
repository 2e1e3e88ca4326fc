r"""Evaluates a trained run: retrieval metrics, kNN, linear probe and figures.

  python -m maskcon_jax.evaluate --workdir runs/default
  python -m maskcon_jax.evaluate --workdir runs/default --split train \
      --checkpoint 500 --nofigures

Writes ``WORKDIR/eval_<split>.json`` (the keys of
`evaluation.retrieval_report` plus ``step``, ``split`` and ``num_queries``)
and, unless ``--nofigures``, PNGs in ``WORKDIR/figures/`` that are also logged
as TensorBoard images. The bank for kNN and the linear probe is the training
split; with ``--split train`` kNN is leave-one-out and the probe is scored on
its own training data.
"""

from __future__ import annotations

import functools
import math
import os
import sys
from typing import Any

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

from absl import app  # noqa: E402
from absl import flags  # noqa: E402
from absl import logging  # noqa: E402
import numpy as np  # noqa: E402

import maskcon_jax  # noqa: E402
from maskcon_jax import embedding  # noqa: E402
from maskcon_jax import evaluation  # noqa: E402
from maskcon_jax import train_state as train_state_lib  # noqa: E402
from maskcon_jax import trainer  # noqa: E402
from maskcon_jax import workdir_io  # noqa: E402
from maskcon_jax.errors import UserError  # noqa: E402

SPLITS = embedding.SPLITS
FIGURES_DIR = "figures"


def load_and_embed(
    workdir: str,
    split: str,
    checkpoint: int | None = None,
    *,
    with_bank: bool = True,
) -> dict[str, Any]:
  """Restores a run and embeds ``split`` (and the training split as bank).

  In-memory and streamed datasets alike (`embedding.Embedder.split`).

  Args:
    workdir: a directory written by ``maskcon_jax.train``.
    split: "test" or "train".
    checkpoint: the checkpoint step; the latest if None.
    with_bank: also embed the training split when ``split`` is not it.

  Returns:
    A dict with ``experiment``, ``step``, ``fine`` (None without fine
    labels), ``coarse``, ``embeddings`` (``features`` and ``projection`` of
    the split), ``bank`` (the training split's embeddings and labels; None
    when ``split`` is train or ``with_bank`` is False) and ``read_images``
    (``indices -> uint8 images`` of the split, read on demand).
  """
  embedding.check_split(split)
  exp, state = trainer.load_trained(workdir, checkpoint)
  variables = train_state_lib.query_variables(state)
  embedded = exp.embedder.split(variables, exp.dataset, split)
  bank = None
  if with_bank and split != "train":
    bank = exp.embedder.split(variables, exp.dataset, "train")
  return dict(
      experiment=exp,
      step=int(state.step),
      fine=embedded["fine"],
      coarse=embedded["coarse"],
      embeddings={k: embedded[k] for k in ("features", "projection")},
      bank=bank,
      read_images=functools.partial(embedding.read_images, exp.dataset, split),
  )


def _json_safe(value):
  # NaN (e.g. MAP@R with no pairs) is not valid JSON; null is.
  if isinstance(value, float) and not math.isfinite(value):
    return None
  return value


def _log_images(workdir: str, step: int, images: dict[str, np.ndarray]):
  from clu import metric_writers  # TF-backed: only with figures.

  writer = metric_writers.create_default_writer(workdir, asynchronous=False)
  writer.write_images(
      step, {name: image[None] for name, image in images.items()}
  )
  writer.flush()
  writer.close()


def run_evaluation(
    workdir: str,
    split: str = "test",
    checkpoint: int | None = None,
    figures: bool = True,
) -> dict[str, Any]:
  """Evaluates a checkpoint of ``workdir`` on ``split`` and writes the results.

  Args:
    workdir: a directory written by ``maskcon_jax.train``.
    split: "test" or "train".
    checkpoint: the checkpoint step; the latest if None.
    figures: also write the t-SNE, retrieval and per-group PNGs to
      ``workdir/figures/`` and log them as TensorBoard images.

  Returns:
    The dict written to ``workdir/eval_<split>.json``: every key of
    `evaluation.retrieval_report` (on backbone features, as training's
    evaluation) plus ``step``, ``split`` and ``num_queries``.

  Raises:
    UserError: ``workdir`` has no run or no such checkpoint, or a bad split.
  """
  embedding.check_split(split)
  run = load_and_embed(workdir, split, checkpoint)
  exp, step = run["experiment"], run["step"]
  hierarchy = exp.dataset.hierarchy
  features = run["embeddings"]["features"]
  bank = run["bank"]
  report = evaluation.retrieval_report(
      features,
      run["fine"],
      run["coarse"],
      coarse_names=hierarchy.coarse_names,
      bank_features=None if bank is None else bank["features"],
      bank_fine_labels=None if bank is None else bank["fine"],
      num_fine=hierarchy.num_fine,
  )
  results = {
      **report,
      "step": step,
      "split": split,
      "num_queries": int(len(features)),
  }
  path = os.path.join(workdir, f"eval_{split}.json")
  workdir_io.write_json_atomic(
      path, {k: _json_safe(v) for k, v in results.items()}
  )
  logging.info("Wrote %s.", path)

  if figures:
    from maskcon_jax import figures as figures_lib

    per_group = {
        c: report[f"fine_recall@1/coarse={name}"]
        for c, name in enumerate(hierarchy.coarse_names)
        if f"fine_recall@1/coarse={name}" in report
    }
    rendered = figures_lib.render_all(
        run["read_images"],
        features,
        run["fine"],
        run["coarse"],
        hierarchy,
        per_group,
        os.path.join(workdir, FIGURES_DIR),
        split=split,
        overall_r1=report["fine_recall@1"],
    )
    _log_images(
        workdir,
        step,
        {f"eval_{split}/{name}": image for name, image in rendered.items()},
    )
  return results


def summary_lines(results: dict[str, Any]) -> list[str]:
  """A few human-readable lines of the headline numbers."""

  def fmt(key):
    value = results.get(key)
    return (
        "n/a" if value is None or not math.isfinite(value) else (f"{value:.4f}")
    )

  recalls = " ".join(
      f"R@{k.split('@')[1]}={fmt(k)}"
      for k in results
      if k.startswith("fine_recall@") and "/" not in k
  )
  groups = " ".join(
      f"{k.split('=', 1)[1]}={fmt(k)}"
      for k in results
      if k.startswith("fine_recall@1/coarse=")
  )
  return [
      f"step {results['step']}, {results['split']} split, "
      f"{results['num_queries']} queries",
      f"  fine retrieval: {recalls} MAP@R={fmt('fine_map@r')}",
      f"  fine R@1 within coarse: {fmt('fine_within_coarse_recall@1')}; "
      f"by coarse class: {groups}",
      f"  coarse R@1: {fmt('coarse_recall@1')}",
      f"  kNN top-1: {fmt('knn_fine_top1')}  linear probe top-1: "
      f"{fmt('linear_probe_fine_top1')}",
  ]


def define_flags() -> None:
  """Defines the command-line flags (only when run as a program, so importing
  this module next to another entry point cannot clash on flag names)."""
  flags.DEFINE_string(
      "workdir", None, "A directory written by maskcon_jax.train."
  )
  flags.DEFINE_enum("split", "test", list(SPLITS), "The split to evaluate.")
  flags.DEFINE_integer(
      "checkpoint",
      None,
      "The checkpoint step to evaluate; the latest if unset.",
  )
  flags.DEFINE_boolean(
      "figures",
      True,
      "Write PNG figures to WORKDIR/figures/ and log them to TensorBoard.",
  )
  flags.mark_flags_as_required(["workdir"])


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"Unexpected arguments: {' '.join(argv[1:])}")
  logging.set_verbosity(logging.WARNING)  # The summary below is the output.
  flag = flags.FLAGS
  try:
    results = run_evaluation(
        flag.workdir, flag.split, flag.checkpoint, flag.figures
    )
  except UserError as e:
    print(f"error: {e}", file=sys.stderr, flush=True)
    sys.exit(2)
  print("\n".join(summary_lines(results)), flush=True)
  written = os.path.join(flag.workdir, f"eval_{flag.split}.json")
  if flag.figures:
    written += f" and {os.path.join(flag.workdir, FIGURES_DIR)}{os.sep}"
  print(f"wrote {written}", flush=True)


if __name__ == "__main__":
  maskcon_jax.prefer_eigen_cpu_convolutions()  # Before JAX starts.
  define_flags()
  app.run(main)
