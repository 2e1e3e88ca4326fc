"""A comparison's statistics and figure (maskcon_jax.compare_report) on
made-up rows. The tables of real runs: tests/test_compare.py."""

import math

import numpy as np
import pytest

from maskcon_jax import compare_report


def numpy_paired(a, b):
  """Mean and standard error of a - b over the pairs where both are finite,
  written out from the definitions."""
  a = np.array([np.nan if v is None else v for v in a], float)
  b = np.array([np.nan if v is None else v for v in b], float)
  d = (a - b)[np.isfinite(a) & np.isfinite(b)]
  n = d.size
  if n == 0:
    return None, None, 0
  mean = d.sum() / n
  se = (
      math.sqrt(((d - mean) ** 2).sum() / (n - 1)) / math.sqrt(n)
      if n > 1
      else None
  )
  return mean, se, n


def test_paired_difference_matches_numpy():
  rng = np.random.default_rng(0)
  a = dict(zip(range(8), rng.uniform(0.5, 0.9, 8).tolist()))
  b = dict(zip(range(2, 10), rng.uniform(0.4, 0.8, 8).tolist()))
  a[3], b[5] = None, float("nan")  # Missing: only the other pairs count.
  common = [s for s in range(2, 8)]
  expected = numpy_paired([a[s] for s in common], [b[s] for s in common])
  mean, se, n = compare_report.paired_difference(a, b)
  assert n == expected[2] == 4
  assert mean == pytest.approx(expected[0], abs=1e-12)
  assert se == pytest.approx(expected[1], abs=1e-12)
  # Not the unpaired error: the shared per-seed offset cancels.
  offset = {s: 0.1 * s for s in range(5)}
  paired = compare_report.paired_difference(
      {s: offset[s] + 0.02 + 0.001 * (s % 2) for s in offset}, offset
  )
  assert paired[0] == pytest.approx(0.0204) and paired[1] < 0.001
  assert compare_report.paired_difference({1: 0.5}, {1: 0.25}) == (
      0.25,
      None,
      1,
  )
  assert compare_report.paired_difference({1: 0.5}, {2: 0.25}) == (
      None,
      None,
      0,
  )


def _rows(values_per_row, untrained=None):
  rows = []
  for i, values in enumerate(values_per_row):
    rows.append(
        {
            "label": f"mode{i} (w={i / 10})",
            "mode": "maskcon",
            "seeds": [1, 2, 3],
            "is_reference": i == 0,
            "runs": [{"fine_recall@1": v} for v in values],
            "fine_recall@1_mean": float(np.mean(values)),
            "fine_recall@1_std": float(np.std(values, ddof=1)),
        }
    )
  if untrained is not None:
    rows.append(
        {
            "label": "untrained",
            "mode": "untrained",
            "seeds": [1, 2, 3],
            "is_reference": False,
            "runs": [{"fine_recall@1": v} for v in untrained],
            "fine_recall@1_mean": float(np.mean(untrained)),
            "fine_recall@1_std": float(np.std(untrained, ddof=1)),
        }
    )
  return rows


def test_plot_is_zoomed_to_the_data(tmp_path):
  rng = np.random.default_rng(1)
  values = [
      (0.7 + 0.01 * i + rng.normal(0, 0.005, 3)).tolist() for i in range(15)
  ]
  path = tmp_path / "fifteen.png"
  low, high = compare_report.plot_comparison(_rows(values), str(path))
  flat = np.ravel(values)
  assert 0.5 < low < flat.min() and flat.max() < high <= 1.0
  assert high - low < 0.3  # Not 0..1: differences of a point show.
  from matplotlib import image

  png = image.imread(path)
  assert png.shape[0] > 500  # Taller with more entries: labels stay apart.

  # The untrained encoder stays in view, far below the trained ones.
  low, high = compare_report.plot_comparison(
      _rows(values[:2], [0.2, 0.25, 0.22]), str(tmp_path / "untrained.png")
  )
  assert 0.0 < low < 0.2 and 0.72 < high <= 1.0
  assert (tmp_path / "untrained.png").stat().st_size > 0
  # Nothing to show: the whole range.
  none = _rows([[0.5, 0.6, 0.7]])
  none[0].update(
      {
          "runs": [{"fine_recall@1": None}] * 3,
          "fine_recall@1_mean": None,
          "fine_recall@1_std": None,
      }
  )
  assert compare_report.plot_comparison(none, str(tmp_path / "none.png")) == (
      0,
      1,
  )


@pytest.mark.parametrize(
    "machines_per_run,clause",
    [
        ([[], []], "per seed."),
        (
            [["CPU (X, 2 cores), jax 1"], ["CPU (X, 2 cores), jax 1"]],
            "per seed, on CPU (X, 2 cores), jax 1.",
        ),
        # A run resumed on another machine: both are named.
        (
            [
                ["CPU (X, 2 cores), jax 1"],
                ["CPU (X, 2 cores), jax 1", "1 x H200"],
            ],
            "per seed, on several machines (comparison.json names each run's): "
            "CPU (X, 2 cores), jax 1; 1 x H200.",
        ),
    ],
)
def test_table_names_the_machines_of_the_wall_times(machines_per_run, clause):
  row = {
      "label": "maskcon",
      "mode": "maskcon",
      "seeds": [1, 2],
      "steps": [4],
      "wall_seconds_mean": 1.0,
      "runs": [{"machines": m} for m in machines_per_run],
      **{
          f"{key}_{stat}": 0.5
          for key, _ in compare_report.METRICS
          for stat in ("mean", "std")
      },
  }
  table = compare_report.markdown_table([row])
  assert clause in table
  assert table.count("per seed") == 1
