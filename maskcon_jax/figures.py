"""Evaluation figures: t-SNE map, retrieval grid, per-coarse-class Recall@1.

Each function draws with matplotlib's Agg canvas (no display, no global pyplot
state), optionally saves a PNG and returns the rendered image as a uint8
``(H, W, 3)`` array, ready for TensorBoard. matplotlib and scikit-learn are
imported inside the functions so importing this module costs nothing.
"""

from __future__ import annotations

import os
import textwrap
from typing import Any

import numpy as np

from maskcon_jax import evaluation

# Marker shapes for coarse classes, cycled when there are more.
_MARKERS = ("o", "s", "^", "D", "v", "P", "X", "*", "h", "<", ">", "p")
# Neighbour borders green / red; the query's blue, which stays visible on
# the black backgrounds of digit-like images.
_MATCH, _MISMATCH, _QUERY = "#1a9850", "#d73027", "#2166ac"


def _new_figure(width: float, height: float, dpi: int = 100):
  from matplotlib.backends.backend_agg import FigureCanvasAgg
  from matplotlib.figure import Figure

  fig = Figure(figsize=(width, height), dpi=dpi)
  FigureCanvasAgg(fig)
  return fig


def _finish(fig, path: str | None) -> np.ndarray:
  """Saves ``fig`` to ``path`` (if given) and returns its RGB pixels."""
  if path is not None:
    fig.savefig(path, dpi=fig.dpi)
  fig.canvas.draw()
  return np.asarray(fig.canvas.buffer_rgba())[..., :3].copy()


def _fine_colours(num_fine: int) -> list[Any]:
  from matplotlib import colormaps

  if num_fine <= 10:
    cmap, n = colormaps["tab10"], 10
  elif num_fine <= 20:
    cmap, n = colormaps["tab20"], 20
  else:
    cmap, n = colormaps["turbo"], num_fine
  return [
      cmap(i / max(n - 1, 1)) if n > 20 else cmap(i) for i in range(num_fine)
  ]


def tsne_figure(
    features,
    fine,
    coarse,
    hierarchy,
    path: str | None = None,
    *,
    max_points: int = 2000,
    title: str | None = None,
    seed: int = 0,
) -> np.ndarray:
  """A 2-D t-SNE map of ``features``: colour = fine class, marker = coarse.

  Args:
    features: ``(N, D)`` embeddings (L2-normalised here, as retrieval sees
      them).
    fine: ``(N,)`` fine labels.
    coarse: ``(N,)`` coarse labels.
    hierarchy: a `LabelHierarchy` (class names).
    path: where to save the PNG; None only renders.
    max_points: t-SNE runs on a seeded random subsample of at most this many.
    title: the figure title.
    seed: seeds the subsample and t-SNE.

  Returns:
    The rendered figure, uint8 ``(H, W, 3)``.
  """
  from sklearn.manifold import TSNE

  fine, coarse = np.asarray(fine), np.asarray(coarse)
  rng = np.random.default_rng(seed)
  keep = np.sort(rng.permutation(len(fine))[:max_points])
  x = evaluation.l2_normalize_np(np.asarray(features)[keep])
  fine, coarse = fine[keep], coarse[keep]
  # sklearn requires perplexity < n; 30 is its default for large n.
  perplexity = float(min(30.0, max(1.0, (len(x) - 1) / 3)))
  xy = TSNE(
      n_components=2,
      perplexity=perplexity,
      init="pca",
      learning_rate="auto",
      random_state=seed,
  ).fit_transform(x)

  colours = _fine_colours(hierarchy.num_fine)
  size = 36 if len(x) <= 500 else 14  # Readable whether 30 or 2000 points.
  fig = _new_figure(10, 7.5)
  ax = fig.add_subplot(1, 1, 1)
  for f in np.unique(fine):
    for c in np.unique(coarse[fine == f]):
      sel = (fine == f) & (coarse == c)
      ax.scatter(
          xy[sel, 0],
          xy[sel, 1],
          s=size,
          alpha=0.8,
          linewidths=0.3,
          edgecolors="black",
          color=colours[f],
          marker=_MARKERS[c % len(_MARKERS)],
      )
  ax.set_xticks([])
  ax.set_yticks([])
  ax.set_title(
      title
      or f"t-SNE of {len(x)} embeddings: colour = fine class, "
      "marker = coarse class"
  )
  from matplotlib.lines import Line2D

  present = set(np.unique(fine).tolist())
  fine_handles = [
      Line2D(
          [],
          [],
          linestyle="",
          marker=_MARKERS[hierarchy.fine_to_coarse[f] % len(_MARKERS)],
          markersize=7,
          color=colours[f],
          markeredgecolor="black",
          markeredgewidth=0.3,
          label=hierarchy.fine_names[f],
      )
      for f in range(hierarchy.num_fine)
      if f in present
  ]
  coarse_handles = [
      Line2D(
          [],
          [],
          linestyle="",
          marker=_MARKERS[c % len(_MARKERS)],
          markersize=7,
          color="0.5",
          label=name,
      )
      for c, name in enumerate(hierarchy.coarse_names)
  ]
  first = ax.legend(
      handles=fine_handles,
      title="fine class",
      loc="upper left",
      bbox_to_anchor=(1.01, 1.0),
      fontsize=8,
      ncol=1 if len(fine_handles) <= 25 else 2,
  )
  ax.add_artist(first)
  ax.legend(
      handles=coarse_handles,
      title="coarse class",
      loc="lower left",
      bbox_to_anchor=(1.01, 0.0),
      fontsize=8,
  )
  fig.tight_layout()
  return _finish(fig, path)


def _pick_queries(fine: np.ndarray, num_queries: int, seed: int) -> np.ndarray:
  """Seeded queries spread over the fine classes (round-robin)."""
  rng = np.random.default_rng(seed)
  pools = [
      list(rng.permutation(np.flatnonzero(fine == f)))
      for f in rng.permutation(np.unique(fine))
  ]
  picked = []
  while len(picked) < min(num_queries, len(fine)):
    for pool in pools:
      if pool and len(picked) < num_queries:
        picked.append(pool.pop())
  return np.array(picked)


def _show(ax, image: np.ndarray, border: str | None, lw: float = 4.0):
  if image.shape[-1] == 1:
    ax.imshow(
        image[..., 0], cmap="gray", vmin=0, vmax=255, interpolation="nearest"
    )
  else:
    ax.imshow(image, interpolation="nearest")
  ax.set_xticks([])
  ax.set_yticks([])
  for spine in ax.spines.values():
    spine.set_visible(border is not None)
    if border is not None:
      spine.set_edgecolor(border)
      spine.set_linewidth(lw)


def retrieval_grid(
    images,
    features,
    fine,
    hierarchy,
    path: str | None = None,
    num_queries: int = 8,
    k: int = 10,
    *,
    title: str | None = None,
    seed: int = 0,
) -> np.ndarray:
  """Queries (rows) and their k nearest neighbours by cosine similarity.

  The query (left column, blue border) is excluded from its own neighbours;
  each neighbour's border is green when its fine class matches the query's
  and red otherwise. Every image is captioned with its fine class.

  Args:
    images: ``(N, H, W, C)`` uint8 images, C in {1, 3}; or a function
      ``indices -> images at those indices`` (streamed data: only the
      images shown are read).
    features: ``(N, D)`` embeddings of the N images.
    fine: ``(N,)`` fine labels.
    hierarchy: a `LabelHierarchy` (class names).
    path: where to save the PNG; None only renders.
    num_queries: rows; queries are spread over the fine classes.
    k: neighbours per query.
    title: the figure title.
    seed: seeds the choice of queries.

  Returns:
    The rendered figure, uint8 ``(H, W, 3)``.
  """
  fine = np.asarray(fine)
  queries = _pick_queries(fine, num_queries, seed)
  k = min(k, len(fine) - 1)
  # Only the chosen queries' rows are needed; search them against everything.
  neighbours = np.concatenate(
      [
          nn
          for _, nn, _ in evaluation.iter_neighbours(
              np.asarray(features)[queries], np.asarray(features), k + 1
          )
      ]
  )
  shown = np.unique(np.concatenate([np.asarray(queries), neighbours.ravel()]))
  read = images if callable(images) else (lambda ids: np.asarray(images)[ids])
  images = dict(zip(shown.tolist(), read(shown)))
  height = 1.25 * len(queries) + 0.6
  fig = _new_figure(1.1 * (k + 1) + 0.4, height)
  grid = fig.add_gridspec(
      len(queries),
      k + 1,
      wspace=0.15,
      hspace=0.4,
      left=0.02,
      right=0.98,
      bottom=0.02,
      top=1 - 0.55 / height,
  )
  names = hierarchy.fine_names
  for row, q in enumerate(queries):
    # Drop the query itself (its own nearest match) and keep k others.
    others = [j for j in neighbours[row] if j != q][:k]
    ax = fig.add_subplot(grid[row, 0])
    _show(ax, images[int(q)], _QUERY)
    ax.set_title(
        f"query: {names[fine[q]]}",
        fontsize=7.5,
        fontweight="bold",
        color=_QUERY,
    )
    for col, j in enumerate(others, start=1):
      ax = fig.add_subplot(grid[row, col])
      match = fine[j] == fine[q]
      _show(ax, images[int(j)], _MATCH if match else _MISMATCH)
      ax.set_title(
          names[fine[j]], fontsize=7, color=_MATCH if match else _MISMATCH
      )
  fig.suptitle(
      title or f"Top-{k} retrieval (green = same fine class, red = different)",
      fontsize=11,
      y=1 - 0.12 / height,
  )
  return _finish(fig, path)


def per_group_bar_chart(
    per_group_r1: dict[int, float],
    hierarchy,
    path: str | None = None,
    *,
    overall: float | None = None,
    title: str | None = None,
) -> np.ndarray:
  """Fine Recall@1 of the queries of each coarse class, as bars.

  Args:
    per_group_r1: ``{coarse_id: recall}`` (`evaluation.per_group_recall_at_1`).
    hierarchy: a `LabelHierarchy` (class names).
    path: where to save the PNG; None only renders.
    overall: the overall fine Recall@1, drawn as a dashed line if given.
    title: the figure title.

  Returns:
    The rendered figure, uint8 ``(H, W, 3)``.
  """
  ids = sorted(per_group_r1)
  values = [per_group_r1[c] for c in ids]
  labels = [_group_label(hierarchy, c) for c in ids]
  fig = _new_figure(max(6.0, 2.2 * len(ids) + 1.5), 5.0)
  ax = fig.add_subplot(1, 1, 1)
  colours = [_fine_colours(max(len(ids), 1))[i] for i in range(len(ids))]
  bars = ax.bar(range(len(ids)), values, color=colours, edgecolor="black")
  for bar, v in zip(bars, values):
    # Inside the bar when it is tall enough, so the overall line never
    # crosses the number.
    inside = v >= 0.15
    ax.text(
        bar.get_x() + bar.get_width() / 2,
        v - 0.03 if inside else v + 0.02,
        f"{v:.3f}",
        ha="center",
        va="top" if inside else "bottom",
        fontsize=10,
        color="white" if inside else "black",
    )
  if overall is not None:
    ax.axhline(
        overall,
        color="0.3",
        linestyle="--",
        linewidth=1,
        label=f"all queries: {overall:.3f}",
    )
    ax.legend(loc="upper right", fontsize=8)
  ax.set_xticks(range(len(ids)))
  ax.set_xticklabels(labels, fontsize=8)
  ax.set_ylim(0, 1.12)
  ax.set_ylabel("fine Recall@1")
  ax.set_xlabel("coarse class of the query")
  ax.set_title(title or "Fine Recall@1 by coarse class")
  fig.tight_layout()
  return _finish(fig, path)


def _group_label(hierarchy, c: int) -> str:
  members = [
      n
      for n, g in zip(hierarchy.fine_names, hierarchy.fine_to_coarse)
      if g == c
  ]
  if len(members) > 8:
    members = members[:7] + ["..."]
  wrapped = textwrap.fill(", ".join(members), width=28)
  return f"{hierarchy.coarse_names[c]}\n{wrapped}"


def render_all(
    images,
    features,
    fine,
    coarse,
    hierarchy,
    per_group_r1: dict[int, float],
    out_dir: str,
    *,
    split: str = "test",
    overall_r1: float | None = None,
) -> dict[str, np.ndarray]:
  """Writes the three figures of a split as PNGs into ``out_dir``.

  Returns:
    ``{name: image}`` with the rendered uint8 ``(H, W, 3)`` figures, named
    ``tsne``, ``retrieval`` and ``per_group_recall``.
  """
  os.makedirs(out_dir, exist_ok=True)
  k = min(10, len(fine) - 1)
  return {
      "tsne": tsne_figure(
          features,
          fine,
          coarse,
          hierarchy,
          os.path.join(out_dir, f"tsne_{split}.png"),
          title=f"t-SNE of {split} features: colour = fine class, "
          "marker = coarse class",
      ),
      "retrieval": retrieval_grid(
          images,
          features,
          fine,
          hierarchy,
          os.path.join(out_dir, f"retrieval_{split}.png"),
          k=k,
          title=f"{split}: top-{k} neighbours by cosine similarity "
          "(green = same fine class, red = different)",
      ),
      "per_group_recall": per_group_bar_chart(
          per_group_r1,
          hierarchy,
          os.path.join(out_dir, f"per_group_recall_{split}.png"),
          overall=overall_r1,
          title=f"{split}: fine Recall@1 by coarse class",
      ),
  }
