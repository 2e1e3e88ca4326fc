"""The statistics, table and figure of a comparison (`maskcon_jax.compare`).

A comparison's rows (one per grid cell: its mode, label, per-seed metrics)
become

* mean ± std over seeds per metric, and for every row the paired difference
  (same seeds) to the reference row with its standard error
  (`paired_difference`, `add_paired_differences`);
* the Markdown tables (`markdown_table`);
* the figure: fine Recall@1, one dot per seed, mean ± std, the untrained
  encoder as a dashed line, the value axis zoomed to the data
  (`plot_comparison`).

Nothing here trains or reads runs.
"""

from __future__ import annotations

import math
from typing import Any, Sequence

import numpy as np

from maskcon_jax.errors import is_number

# The pseudo-mode of the freshly initialised encoder (never trained).
UNTRAINED = "untrained"


# The table's metrics: (key in results / eval_test.json, column header).
METRICS = (
    ("fine_recall@1", "fine R@1"),
    ("fine_recall@5", "fine R@5"),
    ("fine_recall@10", "fine R@10"),
    ("knn_fine_top1", "kNN top-1"),
    ("fine_map@r", "fine MAP@R"),
    ("linear_probe_fine_top1", "linear probe"),
)


def paired_difference(
    values: dict[int, float | None], reference: dict[int, float | None]
) -> tuple[float | None, float | None, int]:
  """The paired difference of one metric between two entries.

  Args:
    values: ``{seed: value}`` of the entry.
    reference: ``{seed: value}`` of the reference entry.

  Returns:
    ``(mean, standard error, n)`` over the n seeds where both have a finite
    value: the mean of ``values[s] - reference[s]`` and the sample std
    (ddof=1) of those differences / sqrt(n). The error is None for n = 1,
    and the mean too for n = 0.
  """
  diffs = [
      values[s] - reference[s]
      for s in values
      if s in reference and is_number(values[s]) and is_number(reference[s])
  ]
  if not diffs:
    return None, None, 0
  n = len(diffs)
  se = float(np.std(diffs, ddof=1) / math.sqrt(n)) if n > 1 else None
  return float(np.mean(diffs)), se, n


def add_paired_differences(rows: list[dict[str, Any]], ref: int) -> None:
  """Adds ``reference``, ``is_reference`` and ``<metric>_delta_{mean,se,n}``
  (vs ``rows[ref]``; None on the reference row itself) to every row."""
  by_seed = [
      {key: {r["seed"]: r[key] for r in row["runs"]} for key, _ in METRICS}
      for row in rows
  ]
  for i, row in enumerate(rows):
    row["reference"] = rows[ref]["label"]
    row["is_reference"] = i == ref
    for key, _ in METRICS:
      if i == ref:
        mean, se, n = None, None, 0
      else:
        mean, se, n = paired_difference(by_seed[i][key], by_seed[ref][key])
      row[f"{key}_delta_mean"] = mean
      row[f"{key}_delta_se"] = se
      row[f"{key}_delta_n"] = n


def mean_std(
    values: Sequence[float | None],
) -> tuple[float | None, float | None]:
  values = [v for v in values if v is not None and math.isfinite(v)]
  if not values:
    return None, None
  # Sample standard deviation (ddof=1): the spread a new seed would show.
  std = float(np.std(values, ddof=1)) if len(values) > 1 else None
  return float(np.mean(values)), std


def _cell(mean: float | None, std: float | None) -> str:
  if mean is None:
    return "n/a"
  return f"{mean:.3f}" if std is None else f"{mean:.3f} ± {std:.3f}"


def _delta_cell(row: dict[str, Any], key: str) -> str:
  if row.get("is_reference"):
    return "reference"
  mean, se = row.get(f"{key}_delta_mean"), row.get(f"{key}_delta_se")
  if mean is None:
    return "n/a"
  return f"{mean:+.3f}" if se is None else f"{mean:+.3f} ± {se:.3f}"


def _machines_clause(rows: Sequence[dict[str, Any]]) -> str:
  """ ", on <machine>" for the wall times, naming every machine they were
  measured on (a resumed run may add another's); "" where none is known."""
  machines = []
  for row in rows:
    for run in row.get("runs", []):
      for machine in run.get("machines", []):
        if machine not in machines:
          machines.append(machine)
  if not machines:
    return ""
  if len(machines) == 1:
    return f", on {machines[0]}"
  return (
      ", on several machines (comparison.json names each run's): "
      + "; ".join(machines)
  )


def markdown_table(rows: Sequence[dict[str, Any]]) -> str:
  """The comparison as Markdown: the metrics per entry, the paired
  differences to the reference entry, and a note saying what they show."""
  seeds = rows[0]["seeds"] if rows else []
  # Entries may have their own seeds (wcl:seeds=1228): then each row says.
  per_row_seeds = any(row["seeds"] != seeds for row in rows)
  reference = rows[0].get("reference") if rows else None
  header = (
      ["mode"]
      + (["seeds"] if per_row_seeds else [])
      + ["steps"]
      + [title for _, title in METRICS]
      + ["wall time (s)"]
  )
  if reference is not None:
    header.append(f"Δ R@1 vs {reference} (± SE)")
  lines = [
      "| " + " | ".join(header) + " |",
      "|" + "|".join("---" for _ in header) + "|",
  ]
  for row in rows:
    cells = [row["label"]]
    if per_row_seeds:
      cells.append(", ".join(map(str, row["seeds"])))
    cells.append("/".join(map(str, row["steps"])) or "n/a")
    cells += [
        _cell(row[f"{key}_mean"], row[f"{key}_std"]) for key, _ in METRICS
    ]
    wall = row["wall_seconds_mean"]
    cells.append("n/a" if wall is None else f"{wall:.0f}")
    if reference is not None:
      cells.append(_delta_cell(row, "fine_recall@1"))
    lines.append("| " + " | ".join(cells) + " |")
  if per_row_seeds:
    spread = "mean ± sample std over each row's seeds (column seeds)"
  else:
    spread = (
        "mean ± sample std over seeds " if len(seeds) > 1 else "seed "
    ) + ", ".join(map(str, seeds))
  note = (
      f"\nFine-label retrieval on the test split; {spread}"
      ". kNN top-1 uses the training split "
      "as the bank (k = 20); MAP@R ranks each query's R same-class items "
      "(Musgrave et al.); the linear probe is a softmax classifier of "
      "the fine labels on frozen training features. Wall time: seconds "
      "in training (compilation, queue pre-fill, training and its final "
      "evaluation), per seed" + _machines_clause(rows) + "."
  )
  if any(row["mode"] == UNTRAINED for row in rows):
    note += (
        f" {UNTRAINED}: the freshly initialised encoder of the config "
        "(step 0, the state each training run starts from), evaluated "
        "without training; its wall time is initialisation and "
        "evaluation."
    )
  if reference is not None and len(rows) > 1:
    paired = [
        "| mode | seeds paired | "
        + " | ".join(f"Δ {title}" for _, title in METRICS)
        + " |",
        "|" + "|".join("---" for _ in range(len(METRICS) + 2)) + "|",
    ]
    for row in rows:
      n = (
          ""
          if row.get("is_reference")
          else str(row.get("fine_recall@1_delta_n", 0))
      )
      paired.append(
          "| "
          + " | ".join(
              [row["label"], n] + [_delta_cell(row, key) for key, _ in METRICS]
          )
          + " |"
      )
    note += (
        f"\n\nPaired differences to {reference}: for each metric, the "
        "mean over the seeds both entries have of (entry − reference) at "
        "the same seed, ± its standard error (sample std of those "
        "differences / √n; none for one seed). Runs of one seed share "
        "its data order and, with the same architecture, its "
        "initialisation; pairing removes what that shared part adds to "
        "the spread.\n\n" + "\n".join(paired)
    )
  return "\n".join(lines) + "\n" + note + "\n"


def _zoomed_limits(values: Sequence[float]) -> tuple[float, float]:
  """Axis limits around ``values`` with a margin, within [0, 1] for values
  that lie there (recalls); (0, 1) without values."""
  values = [v for v in values if is_number(v)]
  if not values:
    return 0.0, 1.0
  low, high = min(values), max(values)
  pad = max(0.08 * (high - low), 0.01)
  low, high = low - pad, high + pad
  if min(values) >= 0:
    low = max(low, 0.0)
  if max(values) <= 1:
    high = min(high, 1.0)
  return float(low), float(high)


def plot_comparison(
    rows: Sequence[dict[str, Any]], path: str, metric: str = "fine_recall@1"
) -> tuple[float, float]:
  """Saves a dot plot of ``metric`` per entry and returns its value limits.

  One row per entry, top to bottom in the table's order: a small dot per
  seed, the mean ± std (sample, over seeds) as a diamond with error bars and
  its value at the right. The untrained encoder's mean is a dashed line
  across all rows, the reference entry's a dotted one. The value axis is
  horizontal and zoomed to the data (every seed, mean ± std and those lines)
  rather than starting at 0, so differences of a few points stay visible;
  with long labels it stays readable for a dozen or more entries.

  Returns:
    ``(low, high)``, the limits of the value (x) axis.
  """
  # Agg canvas directly: no display and no global pyplot state.
  from matplotlib.backends.backend_agg import FigureCanvasAgg
  from matplotlib.figure import Figure

  n = len(rows)
  fig = Figure(figsize=(8.0, max(2.6, 0.42 * n + 1.6)), dpi=100)
  FigureCanvasAgg(fig)
  ax = fig.add_subplot()
  shown = []
  for i, row in enumerate(rows):
    untrained = row.get("mode") == UNTRAINED
    color = (
        "#7f7f7f"
        if untrained
        else "#dd8452"
        if row.get("is_reference")
        else "#4c72b0"
    )
    per_seed = [r.get(metric) for r in row["runs"] if is_number(r.get(metric))]
    # Seeds just below the mean's line, so both stay visible.
    ax.scatter(
        per_seed,
        [i + 0.18] * len(per_seed),
        color=color,
        s=14,
        alpha=0.7,
        zorder=3,
        linewidths=0,
    )
    shown += per_seed
    mean, std = row.get(f"{metric}_mean"), row.get(f"{metric}_std")
    if mean is None:
      continue
    ax.errorbar(
        [mean],
        [i],
        xerr=None if std is None else [[std], [std]],
        fmt="D",
        color=color,
        markersize=6,
        capsize=4,
        zorder=4,
    )
    shown += [mean] if std is None else [mean - std, mean + std]
    ax.annotate(
        _cell(mean, std),
        (1.01, i),
        xycoords=("axes fraction", "data"),
        va="center",
        ha="left",
        fontsize=8,
    )
  lines = [
      (row, "--", "#7f7f7f", "untrained encoder")
      for row in rows
      if row.get("mode") == UNTRAINED
  ][:1]
  lines += [
      (row, ":", "#dd8452", f"reference: {row['label']}")
      for row in rows
      if row.get("is_reference") and row.get("mode") != UNTRAINED
  ]
  for row, style, color, label in lines:
    if row.get(f"{metric}_mean") is not None:
      ax.axvline(
          row[f"{metric}_mean"],
          linestyle=style,
          color=color,
          linewidth=1,
          zorder=1,
          label=label,
      )
  limits = _zoomed_limits(shown)
  ax.set_xlim(*limits)
  ax.set_ylim(n - 0.5, -0.6)  # First entry on top.
  ax.set_yticks(np.arange(n), [row["label"] for row in rows], fontsize=9)
  ax.grid(axis="x", alpha=0.3)
  name = "fine Recall@1" if metric == "fine_recall@1" else metric
  ax.set_xlabel(f"{name} (test)")
  counts = sorted({len(row["seeds"]) for row in rows}) or [0]
  shown = "/".join(map(str, counts))
  ax.set_title(
      f"{name}, {shown} seed{'s' if counts != [1] else ''}: "
      "dots single seeds, diamonds mean ± std",
      fontsize=10,
  )
  if ax.get_legend_handles_labels()[0]:
    ax.legend(loc="best", fontsize=8, framealpha=0.8)
  fig.tight_layout()
  fig.savefig(path)
  return limits
