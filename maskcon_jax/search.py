r"""Nearest neighbours of query images in an index written by maskcon_jax.embed.

  python -m maskcon_jax.search --index emb.npz --query photo.jpg --out results/
  python -m maskcon_jax.search --index emb.npz --query queries/ --k 10 \
      --workdir runs/default --out results/

The queries (an image, a folder searched recursively, or a CSV list, as
``embed --images``) are embedded by the run that made the index: the
workdir recorded in the index, or ``--workdir`` where the run has moved,
at the index's checkpoint step. An index made by another encoder (its weights'
fingerprint differs) is refused with a one-line error, since its features
and the queries' would not be comparable.

Neighbours are ranked by cosine similarity of backbone features (the
retrieval the evaluation scores) with the library's chunked search,
`evaluation.iter_neighbours`. A query that is itself in the index is left
out of its own neighbours unless ``--include_self``. Writes
``OUT/neighbours.json`` (per query: its path, its grid and its neighbours'
paths and similarities, best first) and, unless ``--nogrids``, one PNG per
query (``OUT/NNNN_<name>.png``): the query and its neighbours in a row, as the
evaluation's retrieval grid, each captioned with its similarity.

Memory (`memory_bound_bytes`): the search holds the index's float32 features
as loaded, their L2-normalised copy and XLA's copy of that on the device
(host memory on a CPU), plus at most one more transient copy, so ``16 N D``
bytes; and, per chunk of C queries, the compiled search's two C x N float32
buffers (the similarities and their masked copy; the mask and top-k need no
more), ``8 C N`` bytes. C is the largest chunk whose buffers fit
``--memory_mb`` (default 512 MB; at most 1024 and at most the number of
queries, `chunk_size_for`). At N = 1M, D = 512: 8.2 GB for the features and
0.54 GB for C = 67; measured by benchmarks/search_throughput.py (README,
"Use a trained model").
"""

from __future__ import annotations

import dataclasses
import os
import sys
from typing import Any, Sequence

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

from absl import app  # noqa: E402
from absl import flags  # noqa: E402
from absl import logging  # noqa: E402
import numpy as np  # noqa: E402

import maskcon_jax  # noqa: E402
from maskcon_jax import embed as embed_lib  # noqa: E402
from maskcon_jax import evaluation  # noqa: E402
from maskcon_jax import pretrained  # noqa: E402
from maskcon_jax.errors import UserError  # noqa: E402
from maskcon_jax.errors import is_int  # noqa: E402

DEFAULT_MEMORY_MB = 512
# iter_neighbours' default, and the most queries a chunk holds.
MAX_CHUNK = 1024
# Bytes per (query, bank item) pair of a chunk: the float32 similarities and
# their masked copy (XLA fuses the mask into the select; top-k is one pass).
_CHUNK_BYTES_PER_PAIR = 8
# Copies of the index's float32 features during a search: as loaded,
# L2-normalised, XLA's copy of that, and one transient (measured: the peak
# is 2.6 copies above the loaded one at N = 250k).
_FEATURE_COPIES = 4
RESULTS_FILE = "neighbours.json"
# Keys an index file must have.
_INDEX_KEYS = ("features", "paths", "step", "workdir", "fingerprint")


def chunk_size_for(num_bank: int, memory_mb: float = DEFAULT_MEMORY_MB) -> int:
  """Queries per chunk whose C x N matrices fit ``memory_mb`` (1..1024)."""
  per_query = _CHUNK_BYTES_PER_PAIR * max(num_bank, 1)
  return int(max(1, min(MAX_CHUNK, (memory_mb * 2**20) // per_query)))


def memory_bound_bytes(num_bank: int, dim: int, chunk_size: int) -> int:
  """Peak bytes of a search, the loaded index included (see the module doc);
  ``chunk_size`` is the effective one, at most the number of queries."""
  return (
      _FEATURE_COPIES * 4 * num_bank * dim
      + _CHUNK_BYTES_PER_PAIR * chunk_size * num_bank
  )


def nearest(
    queries_QxD,
    bank_NxD,
    k: int,
    *,
    memory_mb: float = DEFAULT_MEMORY_MB,
    exclude_Q: Sequence[int] | None = None,
) -> tuple[np.ndarray, np.ndarray]:
  """The ``k`` most cosine-similar bank rows of each query, best first.

  Args:
    queries_QxD: query features (any scale: normalised here).
    bank_NxD: bank features.
    k: neighbours per query (at most N, fewer where ``exclude_Q`` removes
      one).
    memory_mb: bounds the chunk's matrices (`chunk_size_for`).
    exclude_Q: per query, a bank row to leave out (-1: none), e.g. the query
      itself.

  Returns:
    ``(indices_QxK, similarities_QxK)``; -1 and -inf pad rows with fewer
    eligible items.
  """
  n = len(bank_NxD)
  exclude = None if exclude_Q is None else np.asarray(exclude_Q, np.int64)
  extra = int(exclude is not None and bool(np.any(exclude >= 0)))
  depth = max(1, min(k + extra, n))
  idx_rows, sim_rows = [], []
  for rows, idx_CxK, sims_CxK in evaluation.iter_neighbours(
      queries_QxD, bank_NxD, depth, chunk_size=chunk_size_for(n, memory_mb)
  ):
    if extra:
      keep = idx_CxK != exclude[rows][:, None]
      # Stable: the kept neighbours keep their order; dropped ones go last.
      order = np.argsort(~keep, axis=1, kind="stable")
      idx_CxK = np.where(
          np.take_along_axis(keep, order, 1),
          np.take_along_axis(idx_CxK, order, 1),
          -1,
      )
      sims_CxK = np.where(
          idx_CxK >= 0, np.take_along_axis(sims_CxK, order, 1), -np.inf
      )
    idx_rows.append(idx_CxK[:, :k])
    sim_rows.append(sims_CxK[:, :k])
  return np.concatenate(idx_rows), np.concatenate(sim_rows)


@dataclasses.dataclass(frozen=True)
class Index:
  """An ``.npz`` written by `maskcon_jax.embed` (see its module doc)."""

  path: str
  features: np.ndarray
  paths: np.ndarray
  step: int
  workdir: str
  fingerprint: str


def load_index(path: str) -> Index:
  """Reads an index; `UserError` if it is missing or not one."""
  if not path or not os.path.isfile(path):
    raise UserError(
        f"--index={path!r} does not exist: write one with "
        "python -m maskcon_jax.embed."
    )
  try:
    with np.load(path, allow_pickle=False) as data:
      missing = [k for k in _INDEX_KEYS if k not in data.files]
      if missing:
        made_by = (
            " (an export of a split, which has no image paths)"
            if "image_ids" in data.files
            else ""
        )
        raise UserError(
            f"--index={path!r} is not an index of "
            f"maskcon_jax.embed{made_by}: it lacks "
            f"{', '.join(missing)}; write one with python -m "
            "maskcon_jax.embed."
        )
      index = Index(
          path=os.path.abspath(path),
          features=np.asarray(data["features"], np.float32),
          paths=np.asarray(data["paths"]),
          step=int(data["step"]),
          workdir=str(data["workdir"]),
          fingerprint=str(data["fingerprint"]),
      )
  except (OSError, ValueError) as e:
    raise UserError(
        f"cannot read --index={path!r} ({e}): write it with "
        "python -m maskcon_jax.embed."
    ) from e
  if (
      index.features.ndim != 2
      or len(index.features) != len(index.paths)
      or (not len(index.paths))
  ):
    raise UserError(
        f"--index={path!r} is damaged or empty: "
        f"{index.features.shape} features for "
        f"{len(index.paths)} paths; write it again."
    )
  return index


def encoder_for(
    index: Index, workdir: str | None = None, checkpoint: int | None = None
) -> embed_lib.RunEncoder:
  """The run encoder that made ``index``, checked by its fingerprint.

  Args:
    index: the index.
    workdir: the run (default: the workdir the index records).
    checkpoint: the step (default: the index's).

  Raises:
    UserError: the run or step is missing, or its encoder is not the one
      that made the index.
  """
  if workdir is None:
    workdir = index.workdir
    if not os.path.isdir(workdir):
      raise UserError(
          f"--index={index.path} was made by the run in "
          f"{workdir}, which is gone: pass its new place as "
          "--workdir."
      )
  step = index.step if checkpoint is None else checkpoint
  available = pretrained.checkpoint_steps(workdir)
  if step not in available:
    raise UserError(
        f"--index={index.path} was made with checkpoint {index.step} of "
        f"{index.workdir}, and {workdir} has no checkpoint {step} (only "
        f"{', '.join(map(str, available))}): pass the run that made it, or "
        "embed the images again with this one."
    )
  encoder = embed_lib.load_run_encoder(workdir, step)
  if encoder.fingerprint != index.fingerprint:
    raise UserError(
        f"--index={index.path} comes from another run: it was made by "
        f"{index.workdir} step {index.step} (encoder {index.fingerprint}), "
        f"not by {workdir} step {step} (encoder {encoder.fingerprint}); embed "
        "the images again with this run, or pass the index's run as "
        "--workdir."
    )
  return encoder


def _tile_name(path: str) -> str:
  name = os.path.basename(path)
  return name if len(name) <= 18 else name[:8] + "..." + name[-7:]


def neighbour_grid(
    query_image: np.ndarray,
    query_path: str,
    images: Sequence[np.ndarray | None],
    paths: Sequence[str],
    similarities: Sequence[float],
    path: str | None = None,
    *,
    title: str | None = None,
) -> np.ndarray:
  """One query (left, blue border) and its neighbours, best first.

  Drawn as `figures.retrieval_grid`'s rows; each neighbour is captioned with
  its cosine similarity and file name. A neighbour whose file can no longer
  be read (None) is an empty tile.

  Returns:
    The rendered figure, uint8 ``(H, W, 3)``.
  """
  # The evaluation's grid helpers: one look for both grids.
  # pylint: disable=protected-access
  from maskcon_jax import figures

  k = len(paths)
  fig = figures._new_figure(1.1 * (k + 1) + 0.4, 2.0)
  grid = fig.add_gridspec(
      1, k + 1, wspace=0.15, left=0.02, right=0.98, bottom=0.02, top=0.62
  )
  ax = fig.add_subplot(grid[0, 0])
  figures._show(ax, query_image, figures._QUERY)
  ax.set_title(
      f"query\n{_tile_name(query_path)}",
      fontsize=7,
      fontweight="bold",
      color=figures._QUERY,
  )
  for col, (image, neighbour, sim) in enumerate(
      zip(images, paths, similarities), start=1
  ):
    ax = fig.add_subplot(grid[0, col])
    if image is None:
      ax.set_xticks([])
      ax.set_yticks([])
    else:
      figures._show(ax, image, None)
    ax.set_title(f"{sim:.3f}\n{_tile_name(neighbour)}", fontsize=6.5)
  fig.suptitle(
      title or f"Top-{k} neighbours by cosine similarity", fontsize=9, y=0.97
  )
  return figures._finish(fig, path)
  # pylint: enable=protected-access


def _read_for_display(encoder, paths: Sequence[str]) -> list[np.ndarray | None]:
  """The images as the encoder saw them; None for those that can't be read."""
  images: list[np.ndarray | None] = [None] * len(paths)
  if not paths:
    return images
  for indices, batch in embed_lib.read_images(
      paths,
      image_size=encoder.image_size,
      channels=encoder.channels,
      batch_size=max(len(paths), 1),
      skip_bad=True,
  ):
    for i, image in zip(indices, batch):
      images[int(i)] = image
  return images


def run_search(
    index_path: str,
    query: str,
    out: str,
    *,
    k: int = 10,
    workdir: str | None = None,
    checkpoint: int | None = None,
    skip_bad: bool = False,
    include_self: bool = False,
    grids: bool = True,
    memory_mb: float = DEFAULT_MEMORY_MB,
) -> dict[str, Any]:
  """Searches ``index_path`` for the images ``query`` names; writes ``out``.

  Args:
    index_path: an ``.npz`` of `maskcon_jax.embed`.
    query: an image, a folder or a CSV list (`embed.list_images`).
    out: the folder for ``neighbours.json`` and the grids.
    k: neighbours per query.
    workdir: the run that made the index, where it has moved.
    checkpoint: its step, if not the index's (must be the same weights).
    skip_bad: skip query files that can't be decoded.
    include_self: keep a query's own index entry among its neighbours.
    grids: write one PNG per query.
    memory_mb: bounds the search's chunk (see the module doc).

  Returns:
    The dict written to ``neighbours.json``.

  Raises:
    UserError: one line saying what to fix.
  """
  if not is_int(k) or k < 1:
    raise UserError(f"--k={k!r} must be a positive integer.")
  if not memory_mb or memory_mb <= 0:
    raise UserError(f"--memory_mb={memory_mb!r} must be positive.")
  index = load_index(index_path)
  query_paths = embed_lib.list_images(query, "--query")
  encoder = encoder_for(index, workdir, checkpoint)
  embedded = embed_lib.embed_files(encoder, query_paths, skip_bad=skip_bad)
  row_of = {str(p): i for i, p in enumerate(index.paths)}
  exclude = (
      None if include_self else [row_of.get(p, -1) for p in embedded["paths"]]
  )
  neighbours, sims = nearest(
      embedded["features"],
      index.features,
      k,
      memory_mb=memory_mb,
      exclude_Q=exclude,
  )
  try:
    os.makedirs(out, exist_ok=True)
  except OSError as e:
    raise UserError(
        f"cannot create --out={out}: {e.strerror}; choose a writable folder."
    ) from e
  query_images = (
      _read_for_display(encoder, embedded["paths"])
      if grids
      else [None] * len(embedded["paths"])
  )
  results = []
  for q, query_path in enumerate(embedded["paths"]):
    valid = neighbours[q] >= 0
    rows, values = neighbours[q][valid], sims[q][valid]
    found = [
        {
            "rank": r + 1,
            "path": str(index.paths[j]),
            "similarity": round(float(s), 6),
        }
        for r, (j, s) in enumerate(zip(rows, values))
    ]
    entry = {"query": query_path, "neighbours": found}
    if grids:
      stem = os.path.splitext(os.path.basename(query_path))[0]
      name = f"{q:04d}_{stem}.png"
      neighbour_paths = [n["path"] for n in found]
      neighbour_grid(
          query_images[q],
          query_path,
          _read_for_display(encoder, neighbour_paths),
          neighbour_paths,
          values,
          os.path.join(out, name),
          title=f"Top-{len(found)} of {len(index.paths)} by cosine "
          f"similarity (step {encoder.step})",
      )
      entry["grid"] = name
    results.append(entry)
  report = {
      "index": index.path,
      "workdir": encoder.workdir,
      "step": encoder.step,
      "fingerprint": encoder.fingerprint,
      "k": k,
      "similarity": "cosine of backbone features",
      "index_size": int(len(index.paths)),
      "chunk_size": min(
          chunk_size_for(len(index.paths), memory_mb), len(results)
      ),
      "queries": results,
      "skipped_queries": embedded["skipped"],
  }
  # pylint: disable-next=g-import-not-at-top
  from maskcon_jax import workdir_io

  try:
    workdir_io.write_json_atomic(os.path.join(out, RESULTS_FILE), report)
  except OSError as e:
    raise UserError(f"cannot write to --out={out}: {e.strerror}.") from e
  return report


def define_flags() -> None:
  """Defines the command-line flags (only when run as a program)."""
  flags.DEFINE_string("index", None, "An .npz written by maskcon_jax.embed.")
  flags.DEFINE_string(
      "query",
      None,
      "An image, a folder of images "
      "(recursive) or a CSV list of image paths.",
  )
  flags.DEFINE_string(
      "out", None, "The folder for neighbours.json and the PNG grids."
  )
  flags.DEFINE_integer("k", 10, "Neighbours per query.")
  flags.DEFINE_string(
      "workdir",
      None,
      "The run that made the index, if it "
      "moved (default: the workdir the index records).",
  )
  flags.DEFINE_integer(
      "checkpoint", None, "The checkpoint step (default: the index's)."
  )
  flags.DEFINE_boolean(
      "skip_bad",
      False,
      "Skip query files that can't be decoded instead of stopping.",
  )
  flags.DEFINE_boolean(
      "include_self",
      False,
      "Keep a query's own index entry among its neighbours.",
  )
  flags.DEFINE_boolean("grids", True, "Write one PNG per query.")
  flags.DEFINE_float(
      "memory_mb",
      DEFAULT_MEMORY_MB,
      "Bound on the search's per-chunk similarity matrices, in MB.",
  )
  flags.mark_flags_as_required(["index", "query", "out"])


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"Unexpected arguments: {' '.join(argv[1:])}")
  logging.set_verbosity(logging.ERROR)  # The lines below are the output.
  flag = flags.FLAGS
  try:
    report = run_search(
        flag.index,
        flag.query,
        flag.out,
        k=flag.k,
        workdir=flag.workdir,
        checkpoint=flag.checkpoint,
        skip_bad=flag.skip_bad,
        include_self=flag.include_self,
        grids=flag.grids,
        memory_mb=flag.memory_mb,
    )
  except UserError as e:
    print(f"error: {e}", file=sys.stderr, flush=True)
    sys.exit(2)
  if report["skipped_queries"]:
    print(
        embed_lib.skipped_line(report["skipped_queries"]),
        file=sys.stderr,
        flush=True,
    )
  for entry in report["queries"][:5]:
    best = entry["neighbours"][:3]
    shown = ", ".join(
        f"{os.path.basename(n['path'])} {n['similarity']:.3f}" for n in best
    )
    print(
        f"{entry['query']}: {shown}{', ...' if len(entry['neighbours']) > 3 else ''}",
        flush=True,
    )
  if len(report["queries"]) > 5:
    print(f"... and {len(report['queries']) - 5} more queries", flush=True)
  print(
      f"wrote {os.path.join(flag.out, RESULTS_FILE)}"
      + (" and one PNG per query" if flag.grids else ""),
      flush=True,
  )


if __name__ == "__main__":
  maskcon_jax.prefer_eigen_cpu_convolutions()  # Before JAX starts.
  define_flags()
  app.run(main)
