r"""Time and peak memory of retrieval evaluation for N embeddings.

Times `evaluation.recall_at_k` (one chunked neighbour search, K up to 100) and
`evaluation.retrieval_report` (the search deep enough for MAP@R, the
within-coarse search, kNN and the linear probe) on synthetic embeddings with
fine/coarse class structure, for each N, and prints one table (JSON with
--json).

  python benchmarks/eval_throughput.py                  # N = 1k, 10k, 50k, D = 512
  python benchmarks/eval_throughput.py --sizes=1000 --metrics=recall_at_k
  python benchmarks/eval_throughput.py --smoke          # seconds; for CI

Columns:

* ``first_s``: the first call, including compilation of the search kernel
  (one program per chunk shape and K); ``warm_s``: the median of the
  ``--repeats - 1`` later calls (``-`` with ``--repeats=1``).
* ``py_peak_mb``: peak of Python-tracked allocations (tracemalloc: numpy
  arrays made on the host, e.g. per-chunk neighbour lists).
* ``rss_peak_mb``: peak resident set size of the process during the call
  (Linux VmHWM, reset before each call), which also counts XLA's own buffers
  when the device is the CPU; ``rss_base_mb`` is the RSS before the call.
* ``dev_peak_mb``: the accelerator's ``peak_bytes_in_use`` (``-`` on CPU,
  where XLA reports no memory statistics and device buffers are in the RSS).

Memory is O(chunk_size x N) by design: a 1024-query chunk at N = 50k holds a
1024 x 50k float32 similarity matrix (205 MB) and its mask on the device.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
import tracemalloc

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import jax  # noqa: E402
import numpy as np  # noqa: E402

from benchmarks import common  # noqa: E402
from maskcon_jax import evaluation  # noqa: E402

METRICS = ("recall_at_k", "retrieval_report")


def synthetic_embeddings(
    n: int, dim: int, num_fine: int, num_coarse: int, seed: int = 0
):
  """Clustered embeddings: a fine-class centre near its coarse centre + noise.

  The noise keeps fine Recall@1 near 0.45 at N = 2k (it rises with N, as
  each class gets more members); the cost of the search does not depend on
  the structure.
  """
  rng = np.random.default_rng(seed)
  fine = rng.integers(0, num_fine, n).astype(np.int32)
  fine_to_coarse = np.arange(num_fine) % num_coarse
  coarse_centres = rng.normal(size=(num_coarse, dim))
  fine_centres = coarse_centres[fine_to_coarse] + 0.7 * rng.normal(
      size=(num_fine, dim)
  )
  x = fine_centres[fine] + 4.0 * rng.normal(size=(n, dim))
  return x.astype(np.float32), fine, fine_to_coarse[fine].astype(np.int32)


def _rss_mb(field: str) -> float | None:
  """``VmRSS`` or ``VmHWM`` of this process in MB (None off Linux)."""
  try:
    with open("/proc/self/status") as f:
      for line in f:
        if line.startswith(field + ":"):
          return int(line.split()[1]) / 1024
  except OSError:
    pass
  return None


def _reset_peak_rss() -> bool:
  """Resets the kernel's peak-RSS counter (Linux >= 4.0); False if it can't."""
  try:
    with open("/proc/self/clear_refs", "w") as f:
      f.write("5")
    return True
  except OSError:
    return False


def _device_peak_mb() -> float | None:
  stats = jax.devices()[0].memory_stats()
  if not stats or "peak_bytes_in_use" not in stats:
    return None
  return stats["peak_bytes_in_use"] / 2**20


def _call(metric: str, x, fine, coarse, *, chunk_size: int, probe_epochs: int):
  if metric == "recall_at_k":
    return evaluation.recall_at_k(x, fine, chunk_size=chunk_size)
  if metric == "retrieval_report":
    return evaluation.retrieval_report(
        x, fine, coarse, chunk_size=chunk_size, probe=dict(epochs=probe_epochs)
    )
  raise ValueError(f"Unknown metric {metric!r}; expected one of {METRICS}.")


def measure(
    metric: str,
    n: int,
    dim: int,
    *,
    num_fine: int,
    num_coarse: int,
    chunk_size: int,
    repeats: int,
    probe_epochs: int,
) -> dict:
  """Times ``metric`` on N synthetic embeddings; returns one table row."""
  x, fine, coarse = synthetic_embeddings(n, dim, num_fine, num_coarse)
  times, result = [], None
  rss_base = _rss_mb("VmRSS")
  can_reset = _reset_peak_rss()
  tracemalloc.start()
  for _ in range(max(1, repeats)):
    start = time.perf_counter()
    result = _call(
        metric,
        x,
        fine,
        coarse,
        chunk_size=chunk_size,
        probe_epochs=probe_epochs,
    )
    times.append(time.perf_counter() - start)
  _, py_peak = tracemalloc.get_traced_memory()
  tracemalloc.stop()
  rss_peak = _rss_mb("VmHWM") if can_reset else None
  if metric == "recall_at_k":
    recall_1 = result[1]
  else:
    recall_1 = result["fine_recall@1"]
  return dict(
      metric=metric,
      n=n,
      dim=dim,
      chunk=chunk_size,
      first_s=times[0],
      warm_s=statistics.median(times[1:]) if len(times) > 1 else None,
      py_peak_mb=py_peak / 2**20,
      rss_base_mb=rss_base,
      rss_peak_mb=rss_peak,
      dev_peak_mb=_device_peak_mb(),
      fine_recall_at_1=recall_1,
      queries_per_s=n
      / (statistics.median(times[1:]) if len(times) > 1 else times[0]),
  )


def main(argv=None):
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  parser.add_argument("--sizes", type=common.ints, default=[1000, 10000, 50000])
  parser.add_argument("--dim", type=int, default=512)
  parser.add_argument("--metrics", type=common.strs, default=list(METRICS))
  parser.add_argument("--num_fine", type=int, default=100)
  parser.add_argument("--num_coarse", type=int, default=20)
  parser.add_argument("--chunk_size", type=int, default=1024)
  parser.add_argument(
      "--repeats",
      type=int,
      default=2,
      help="calls per row; the first includes compilation",
  )
  parser.add_argument(
      "--probe_epochs", type=int, default=evaluation.PROBE_DEFAULTS["epochs"]
  )
  common.add_output_flags(parser)
  args = parser.parse_args(argv)
  if args.smoke:
    args.sizes, args.dim, args.num_fine, args.num_coarse = [300], 32, 10, 3
    args.chunk_size, args.repeats, args.probe_epochs = 128, 1, 1
  for metric in args.metrics:
    if metric not in METRICS:
      parser.error(f"unknown metric {metric!r}; expected one of {METRICS}")

  common.print_machine()
  table = common.Table(
      [
          ("metric", "<16", ""),
          ("N", ">6", ""),
          ("D", ">4", ""),
          ("first_s", ">8", ".2f"),
          ("warm_s", ">8", ".2f"),
          ("queries/s", ">9", ".0f"),
          ("py_peak_mb", ">10", ".1f"),
          ("rss_base_mb", ">11", ".0f"),
          ("rss_peak_mb", ">11", ".0f"),
          ("dev_peak_mb", ">11", ".1f"),
          ("R@1", ">6", ".3f"),
      ]
  )
  print(table.header())
  rows = []
  for n in args.sizes:
    for metric in args.metrics:
      row = measure(
          metric,
          n,
          args.dim,
          num_fine=args.num_fine,
          num_coarse=args.num_coarse,
          chunk_size=args.chunk_size,
          repeats=args.repeats,
          probe_epochs=args.probe_epochs,
      )
      rows.append(row)
      print(
          table.row(
              metric,
              n,
              args.dim,
              *(
                  row[k]
                  for k in (
                      "first_s",
                      "warm_s",
                      "queries_per_s",
                      "py_peak_mb",
                      "rss_base_mb",
                      "rss_peak_mb",
                      "dev_peak_mb",
                      "fine_recall_at_1",
                  )
              ),
          ),
          flush=True,
      )
  load = common.print_load_after()
  common.write_json(
      args.json,
      {
          "device": str(jax.devices()[0]),
          "jax": jax.__version__,
          "load_avg": load,
          "rows": rows,
      },
  )
  return rows


if __name__ == "__main__":
  # The library's CPU convolution choice, as its command-line tools make it.
  import maskcon_jax  # pylint: disable=g-import-not-at-top

  maskcon_jax.prefer_eigen_cpu_convolutions()
  main()
