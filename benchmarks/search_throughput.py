r"""Time and peak memory of `search.nearest` over N synthetic index vectors.

The neighbour search of ``python -m maskcon_jax.search`` (the library's
chunked `evaluation.iter_neighbours`, chunk size from ``--memory_mb``) on N
random D-dimensional float32 vectors, for Q queries and K neighbours. Prints
one table (JSON with --json).

  python benchmarks/search_throughput.py                 # N = 1M, D = 512
  python benchmarks/search_throughput.py --sizes=100000,1000000 --queries=10,100
  python benchmarks/search_throughput.py --smoke         # seconds; for CI

Columns:

* ``chunk``: queries per chunk (`search.chunk_size_for`, at most Q).
* ``first_s``: the first call, including compilation; ``warm_s``: the median
  of the ``--repeats - 1`` later calls (``-`` with ``--repeats=1``);
  ``ms/query`` divides the warm time (else the first) by Q.
* ``rss_base_mb``: resident memory before the call (the index's vectors are
  already in it); ``rss_peak_mb``: the peak during the calls (Linux VmHWM,
  reset first); ``added_mb`` their difference; ``bound_mb``: what the
  search adds by design, `search.memory_bound_bytes` less the loaded copy
  already in the base.

Not counted: reading the index file (``np.load`` of N x D float32, about
1 s per GB) and embedding the queries.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import jax  # noqa: E402
import numpy as np  # noqa: E402

from benchmarks import common  # noqa: E402
from benchmarks import eval_throughput  # noqa: E402
from maskcon_jax import search  # noqa: E402


def synthetic_index(n: int, dim: int, seed: int = 0) -> np.ndarray:
  """``(n, dim)`` standard-normal float32 vectors, made in 64k-row blocks so
  that no float64 copy of the whole index exists."""
  rng = np.random.default_rng(seed)
  out = np.empty((n, dim), np.float32)
  for start in range(0, n, 65536):
    stop = min(start + 65536, n)
    out[start:stop] = rng.standard_normal((stop - start, dim), np.float32)
  return out


def measure(
    bank: np.ndarray,
    num_queries: int,
    k: int,
    *,
    memory_mb: float,
    repeats: int,
    seed: int = 1,
) -> dict:
  """Times `search.nearest` for ``num_queries`` queries; one table row."""
  n, dim = bank.shape
  rng = np.random.default_rng(seed)
  # Queries near index items, so the expected first neighbour is known.
  truth = rng.choice(n, num_queries, replace=False)
  queries = bank[truth] + 0.1 * rng.standard_normal(
      (num_queries, dim), np.float32
  )
  # iter_neighbours never makes a chunk larger than the queries.
  chunk = min(search.chunk_size_for(n, memory_mb), num_queries)
  rss_base = eval_throughput._rss_mb("VmRSS")  # pylint: disable=protected-access
  can_reset = eval_throughput._reset_peak_rss()  # pylint: disable=protected-access
  times, found = [], None
  for _ in range(max(1, repeats)):
    start = time.perf_counter()
    found, _ = search.nearest(queries, bank, k, memory_mb=memory_mb)
    times.append(time.perf_counter() - start)
  rss_peak = eval_throughput._rss_mb("VmHWM") if can_reset else None  # pylint: disable=protected-access
  warm = statistics.median(times[1:]) if len(times) > 1 else None
  # The loaded copy is already in the base.
  bound = search.memory_bound_bytes(n, dim, chunk) - 4 * n * dim
  return dict(
      n=n,
      dim=dim,
      queries=num_queries,
      k=k,
      chunk=chunk,
      first_s=times[0],
      warm_s=warm,
      ms_per_query=1e3 * (warm if warm is not None else times[0]) / num_queries,
      rss_base_mb=rss_base,
      rss_peak_mb=rss_peak,
      added_mb=(rss_peak - rss_base) if rss_peak and rss_base else None,
      bound_mb=bound / 2**20,
      top1_is_source=float(np.mean(found[:, 0] == truth)),
  )


def main(argv=None):
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  parser.add_argument("--sizes", type=common.ints, default=[1_000_000])
  parser.add_argument("--dim", type=int, default=512)
  parser.add_argument("--queries", type=common.ints, default=[100])
  parser.add_argument("--k", type=int, default=10)
  parser.add_argument(
      "--memory_mb", type=float, default=search.DEFAULT_MEMORY_MB
  )
  parser.add_argument(
      "--repeats",
      type=int,
      default=2,
      help="calls per row; the first includes compilation",
  )
  common.add_output_flags(parser)
  args = parser.parse_args(argv)
  if args.smoke:
    args.sizes, args.dim, args.queries, args.repeats = [2000], 32, [10], 1

  common.print_machine()
  table = common.Table(
      [
          ("N", ">9", ","),
          ("D", ">4", ""),
          ("Q", ">5", ""),
          ("K", ">3", ""),
          ("chunk", ">5", ""),
          ("first_s", ">8", ".2f"),
          ("warm_s", ">8", ".2f"),
          ("ms/query", ">9", ".1f"),
          ("rss_base_mb", ">11", ".0f"),
          ("rss_peak_mb", ">11", ".0f"),
          ("added_mb", ">9", ".0f"),
          ("bound_mb", ">9", ".0f"),
          ("top1_ok", ">7", ".2f"),
      ]
  )
  print(table.header())
  rows = []
  for n in args.sizes:
    bank = synthetic_index(n, args.dim)
    for q in args.queries:
      row = measure(
          bank, q, args.k, memory_mb=args.memory_mb, repeats=args.repeats
      )
      rows.append(row)
      print(
          table.row(
              n,
              args.dim,
              q,
              args.k,
              *(
                  row[key]
                  for key in (
                      "chunk",
                      "first_s",
                      "warm_s",
                      "ms_per_query",
                      "rss_base_mb",
                      "rss_peak_mb",
                      "added_mb",
                      "bound_mb",
                      "top1_is_source",
                  )
              ),
          ),
          flush=True,
      )
    del bank
  load = common.print_load_after()
  common.write_json(
      args.json,
      {
          "device": str(jax.devices()[0]),
          "jax": jax.__version__,
          "load_avg": load,
          "memory_mb": args.memory_mb,
          "rows": rows,
      },
  )
  return rows


if __name__ == "__main__":
  # The library's CPU convolution choice, as its command-line tools make it.
  import maskcon_jax  # pylint: disable=g-import-not-at-top

  maskcon_jax.prefer_eigen_cpu_convolutions()
  main()
