r"""Images/s of an encoder exported by ``export --format stablehlo``, jax only.

Loads ``DIR/encoder.jaxexport`` the way the README's loader does (no flax, no
maskcon_jax: importing either fails here) and times ``encoder.call`` on
random uint8 images of the encoder's shape, on the default jax device.

  python -m maskcon_jax.export --workdir runs/default --format stablehlo \
      --out /tmp/encoder
  python benchmarks/exported_encoder_throughput.py --encoder=/tmp/encoder
  python benchmarks/exported_encoder_throughput.py --encoder=/tmp/encoder \
      --batch_sizes=1024 --steps=20

Columns: ``first_s`` (the first call: compilation and transfer), ``ms`` (the
median of ``--steps`` later calls, each waited for), ``images_s``.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


class _Block:
  """Refuses the library's imports: the encoder must run on jax alone."""

  def find_spec(self, name, path=None, target=None):
    del path, target
    if name.split(".")[0] in ("flax", "maskcon_jax", "optax", "tensorflow"):
      raise ImportError(f"{name} is not needed to run an exported encoder")


def main(argv=None):
  sys.meta_path.insert(0, _Block())
  # pylint: disable=g-import-not-at-top
  import jax
  import numpy as np
  from benchmarks import common
  # pylint: enable=g-import-not-at-top
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  parser.add_argument(
      "--encoder",
      required=True,
      help="the folder export --format stablehlo wrote",
  )
  parser.add_argument("--batch_sizes", type=common.ints, default=[1024])
  parser.add_argument("--steps", type=int, default=10)
  common.add_output_flags(parser, "two calls at batch 8")
  args = parser.parse_args(argv)
  if args.smoke:
    args.batch_sizes, args.steps = [8], 2

  with open(os.path.join(args.encoder, "encoder.jaxexport"), "rb") as f:
    encoder = jax.export.deserialize(bytearray(f.read()))
  with open(os.path.join(args.encoder, "encoder.json")) as f:
    info = json.load(f)
  size, channels = info["image_size"], info["channels"]
  common.print_machine()
  print(
      f"# encoder: {info['arch']} width {info['width']}, {size} px x "
      f"{channels}, {info['output']['shape'][1]}-d, step {info['step']}"
  )
  table = common.Table(
      [
          ("batch", ">6", ""),
          ("first_s", ">8", ".2f"),
          ("ms", ">9", ".2f"),
          ("images_s", ">10", ",.0f"),
      ]
  )
  print(table.header())
  rng = np.random.default_rng(0)
  rows = []
  for batch in args.batch_sizes:
    images = jax.device_put(
        rng.integers(0, 256, (batch, size, size, channels), dtype=np.uint8)
    )
    start = time.perf_counter()
    jax.block_until_ready(encoder.call(images))
    first = time.perf_counter() - start
    times = []
    for _ in range(max(1, args.steps)):
      start = time.perf_counter()
      jax.block_until_ready(encoder.call(images))
      times.append(time.perf_counter() - start)
    ms = 1e3 * statistics.median(times)
    row = dict(batch=batch, first_s=first, ms=ms, images_s=batch / ms * 1e3)
    rows.append(row)
    print(table.row(batch, first, ms, row["images_s"]), flush=True)
  load = common.print_load_after()
  common.write_json(
      args.json,
      {
          "device": str(jax.devices()[0]),
          "jax": jax.__version__,
          "encoder": info,
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
