r"""Input pipeline, on-device augmentation and train step, images/s side by side.

For each image size (32 and 224 px by default) on one machine:

* ``stream_img_s``: the host tf.data path of `maskcon_jax.datasets` (a
  `FileSource` read through `StreamingDataset.train_batches`: read file,
  decode, resize when the file is not already the target size, batch) over
  generated image files in a temporary folder: 32x32 PNGs (CIFAR-like, no
  resize) for 32 px and 320x240 JPEGs (Cars-like, decoded then resized) for
  224 px.
* ``load_img_s``: the in-memory path's one-off load (`datasets.core.in_memory`:
  both splits read and decoded into uint8 arrays), and ``gather_img_s``: its
  per-step cost, the trainer's device-resident batch gather
  (``batches.DeviceBatches``).
* ``aug_img_s``: the on-device augmentation of the paper's policies, both
  views of every image (strong query view + weak key view:
  ``cifar_strong``/``cifar_weak`` at 32 px, ``cars_strong``/``cars_weak`` at
  224 px), jitted on ``uint8`` batches already on the device.
* ``step_img_s``: the full train step of ResNet-18 (width 64) with the same
  view policies, batch and device (`step_throughput.measure`).
* ``aug/step``: ``aug_img_s / step_img_s``: how many times faster the views
  are made than the step consumes them (goal on an accelerator: at least 5).

  python benchmarks/input_throughput.py                         # 32 and 224 px
  python benchmarks/input_throughput.py --batch_sizes=128,32    # per size
  python benchmarks/input_throughput.py --smoke                 # seconds; for CI

Every row names the device and the host; on a CPU the augmentation and the
step share the same cores, so the ratio says what augmentation costs there
rather than whether it overlaps.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402

from benchmarks import common  # noqa: E402
from benchmarks import step_throughput  # noqa: E402
from maskcon_jax import augment  # noqa: E402
from maskcon_jax import batches  # noqa: E402
from maskcon_jax import hierarchies  # noqa: E402
from maskcon_jax.datasets import core  # noqa: E402

# Per target size: (view policies (strong, weak), source file format, source
# (width, height)). 32 px files are stored at the target size, as CIFAR; the
# 224 px ones are larger, non-square JPEGs, as Cars196 and SOP.
SETTINGS = {
    32: (("cifar_strong", "cifar_weak"), "png", (32, 32)),
    224: (("cars_strong", "cars_weak"), "jpg", (320, 240)),
}


def write_images(
    directory: str, count: int, fmt: str, width: int, height: int, seed: int = 0
) -> list[str]:
  """Writes ``count`` smooth-plus-noise RGB images; returns their paths."""
  tf = core.import_tf()
  rng = np.random.default_rng(seed)
  yy, xx = np.mgrid[0:height, 0:width].astype(np.float32)
  paths = []
  for i in range(count):
    fx, fy, phase = rng.uniform(0.02, 0.2, 3)
    base = 127 + 100 * np.sin(fx * xx + fy * yy + 6 * phase)
    image = base[..., None] * rng.uniform(0.5, 1.0, 3) + rng.normal(
        0, 12, (height, width, 3)
    )
    image = np.clip(image, 0, 255).astype(np.uint8)
    encoded = (
        tf.io.encode_png(image)
        if fmt == "png"
        else tf.io.encode_jpeg(image, quality=90)
    )
    path = os.path.join(directory, f"{i:06d}.{fmt}")
    tf.io.write_file(path, encoded)
    paths.append(path)
  return paths


def _streaming_dataset(paths, image_size, num_coarse):
  coarse = np.arange(len(paths)) % num_coarse
  source = core.FileSource(paths, coarse, coarse, "benchmark images")
  hierarchy = core.identity_hierarchy([str(c) for c in range(num_coarse)])
  return core.StreamingDataset(
      name="benchmark",
      hierarchy=hierarchy,
      mean=hierarchies.IMAGENET_MEAN,
      std=hierarchies.IMAGENET_STD,
      image_size=image_size,
      train_source=source,
      test_source=source,
  )


def stream_rate(dataset, batch_size: int, epochs: int) -> float:
  """Images/s of `train_batches` over ``epochs`` epochs, first batch excluded.

  The first batch pays for building the tf.data graph and starting its
  threads, a one-off cost per epoch iterator that training amortises.
  """
  images, elapsed = 0, 0.0
  for epoch in range(epochs):
    iterator = dataset.train_batches(batch_size, seed=0, epoch=epoch)
    next(iterator)
    start = time.perf_counter()
    for batch in iterator:
      images += len(batch["coarse_label"])
    elapsed += time.perf_counter() - start
  if images == 0:
    raise ValueError("Too few files for more than one batch per epoch.")
  return images / elapsed


def load_rate(dataset) -> tuple[float, core.Dataset]:
  """Images/s of reading both splits into memory (`core.in_memory`)."""
  start = time.perf_counter()
  data = core.in_memory(dataset)
  elapsed = time.perf_counter() - start
  return (data.num_train + data.num_test) / elapsed, data


def gather_rate(data: core.Dataset, batch_size: int, repeats: int) -> float:
  """Images/s of the trainer's device-resident batch gather."""
  devices = jax.devices()[:1]
  mesh = jax.sharding.Mesh(
      np.array(devices), ("data",), axis_types=(jax.sharding.AxisType.Auto,)
  )
  source = batches.DeviceBatches(data, mesh, batch_size, seed=0)
  spe = data.num_train // batch_size
  jax.block_until_ready(source.batch(0, spe))
  times = []
  for step in range(1, repeats + 1):
    start = time.perf_counter()
    jax.block_until_ready(source.batch(step, spe))
    times.append(time.perf_counter() - start)
  return batch_size / statistics.median(times)


def augment_rate(
    image_size: int,
    batch_size: int,
    policies,
    repeats: int,
    mean=hierarchies.IMAGENET_MEAN,
    std=hierarchies.IMAGENET_STD,
) -> tuple[float, float]:
  """(images/s, compile seconds) of making both views of a uint8 batch."""
  strong_policy, weak_policy = policies
  kwargs = dict(size=image_size, mean=mean, std=std)

  @jax.jit
  def views(rng, images):
    return augment.policy_views(
        (weak_policy, strong_policy),
        tuple(jax.random.split(rng)),
        images,
        **kwargs,
    )

  rng = np.random.default_rng(0)
  images = jnp.asarray(
      rng.integers(0, 256, (batch_size, image_size, image_size, 3), np.uint8)
  )
  key = jax.random.key(0)
  start = time.perf_counter()
  compiled = views.lower(key, images).compile()
  compile_s = time.perf_counter() - start
  jax.block_until_ready(compiled(key, images))
  times = []
  for i in range(repeats):
    step_key = jax.random.fold_in(key, i + 1)
    start = time.perf_counter()
    jax.block_until_ready(compiled(step_key, images))
    times.append(time.perf_counter() - start)
  return batch_size / statistics.median(times), compile_s


def measure(
    image_size: int,
    batch_size: int,
    *,
    num_files: int,
    epochs: int,
    repeats: int,
    step_steps: int,
    step_warmup: int,
    arch: str,
    width: int,
    queue_size: int,
    skip_step: bool = False,
) -> dict:
  """One table row: every rate at ``image_size`` with ``batch_size``."""
  policies, fmt, (src_w, src_h) = SETTINGS[image_size]
  with tempfile.TemporaryDirectory(prefix="maskcon_input_bench_") as tmp:
    paths = write_images(tmp, num_files, fmt, src_w, src_h)
    dataset = _streaming_dataset(paths, image_size, num_coarse=4)
    stream = stream_rate(dataset, batch_size, epochs)
    load, data = load_rate(dataset)
  gather = gather_rate(data, batch_size, repeats)
  aug, aug_compile_s = augment_rate(image_size, batch_size, policies, repeats)
  step = None
  if not skip_step:
    step = step_throughput.measure(
        arch,
        width,
        image_size,
        batch_size,
        queue_size,
        "float32",
        1,
        mode="maskcon",
        steps_timed=step_steps,
        warmup=step_warmup,
        strong_policy=policies[0],
        weak_policy=policies[1],
    )["img_s"]
  return dict(
      image_size=image_size,
      batch=batch_size,
      source=f"{src_w}x{src_h} {fmt}",
      policies=list(policies),
      stream_img_s=stream,
      load_img_s=load,
      gather_img_s=gather,
      aug_img_s=aug,
      aug_compile_s=aug_compile_s,
      step_img_s=step,
      arch=arch,
      width=width,
      queue=queue_size,
      aug_over_step=aug / step if step else None,
      stream_over_step=stream / step if step else None,
  )


def main(argv=None):
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  parser.add_argument("--image_sizes", type=common.ints, default=[32, 224])
  parser.add_argument(
      "--batch_sizes",
      type=common.ints,
      default=[128],
      help="one per image size, or one for all",
  )
  parser.add_argument("--num_files", type=int, default=1024)
  parser.add_argument("--epochs", type=int, default=2)
  parser.add_argument(
      "--repeats",
      type=int,
      default=5,
      help="timed calls of the gather and the augmentation",
  )
  parser.add_argument("--steps", type=int, default=3, help="timed train steps")
  parser.add_argument("--warmup", type=int, default=1)
  parser.add_argument("--arch", default="resnet18")
  parser.add_argument("--width", type=int, default=64)
  parser.add_argument("--queue_size", type=int, default=8192)
  parser.add_argument(
      "--skip_step",
      action="store_true",
      help="leave out the train step (input side only)",
  )
  common.add_output_flags(parser, smoke_help="tiny sizes, for CI")
  args = parser.parse_args(argv)
  if args.smoke:
    args.batch_sizes, args.num_files, args.epochs, args.repeats = [8], 24, 1, 1
    args.steps, args.warmup, args.arch, args.width = 1, 0, "resnet10", 4
    args.queue_size = 16
  for size in args.image_sizes:
    if size not in SETTINGS:
      parser.error(
          f"image size {size} has no settings; use one of "
          f"{sorted(SETTINGS)}"
      )
  batches = (
      args.batch_sizes * len(args.image_sizes)
      if len(args.batch_sizes) == 1
      else args.batch_sizes
  )
  if len(batches) != len(args.image_sizes):
    parser.error("give one batch size, or one per image size")

  machine = common.print_machine()
  table = common.Table(
      [
          ("px", ">4", ""),
          ("batch", ">5", ""),
          ("source", ">12", ""),
          ("stream_img_s", ">12", ".0f"),
          ("load_img_s", ">10", ".0f"),
          ("gather_img_s", ">12", ".0f"),
          ("aug_img_s", ">10", ".0f"),
          ("step_img_s", ">10", ".1f"),
          ("aug/step", ">8", ".1f"),
      ]
  )
  print(table.header())
  rows = []
  for size, batch in zip(args.image_sizes, batches):
    row = measure(
        size,
        batch,
        num_files=args.num_files,
        epochs=args.epochs,
        repeats=args.repeats,
        step_steps=args.steps,
        step_warmup=args.warmup,
        arch=args.arch,
        width=args.width,
        queue_size=args.queue_size,
        skip_step=args.skip_step,
    )
    rows.append(row)
    print(
        table.row(
            size,
            batch,
            *(
                row[k]
                for k in (
                    "source",
                    "stream_img_s",
                    "load_img_s",
                    "gather_img_s",
                    "aug_img_s",
                    "step_img_s",
                    "aug_over_step",
                )
            ),
        ),
        flush=True,
    )
  load = common.print_load_after()
  common.write_json(
      args.json, {"machine": machine, "load_avg": load, "rows": rows}
  )
  return rows


if __name__ == "__main__":
  # The library's CPU convolution choice, as its command-line tools make it.
  import maskcon_jax  # pylint: disable=g-import-not-at-top

  maskcon_jax.prefer_eigen_cpu_convolutions()
  main()
