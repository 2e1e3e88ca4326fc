r"""Train-step throughput of the full MaskCon step (augmentation included).

Times the jitted, donated train step on synthetic uint8 images for a grid of
mode (any of ``methods.MODES``, built by ``methods.step_for_config`` as in
training), architecture, width, image size, batch, queue size, precision and
device count, and prints one table (and writes JSON with --json). Needs jax,
flax, optax and ml_collections only, so it runs on a bare accelerator image.

  python benchmarks/step_throughput.py                       # reference config
  python benchmarks/step_throughput.py --batch_sizes=256,512 \
      --precisions=bfloat16 --peak_tflops=989                 # one H100 (dense bf16)
  python benchmarks/step_throughput.py --modes=maskcon,wcl,selfcon,saliency
  python benchmarks/step_throughput.py --smoke                # seconds; for CI

Columns: compile_s (lowering + compilation), step_ms (median over --steps
after --warmup), img_s (batch / median), img_s_dev (per device), gflop_img
(model FLOPs per training image, ``methods.flops_per_image``: the
method's encoder passes, e.g. key forward + query forward and backward for
the queue modes, times one forward's FLOPs counted from the model's
convolutions and matmuls), tflop_s (achieved model
FLOP/s) and mfu (achieved / (--peak_tflops x devices)) when a peak is given.

On CPU the step runs with the XLA options `maskcon_jax` sets at import (see
`maskcon_jax/__init__.py`); `CPU_VARIANTS` names per-program alternatives
that `build_step(compiler_options=...)`, `torch_reference_step.py` and
`cpu_step_breakdown.py` compare in one process.
"""

from __future__ import annotations

import argparse
import functools
import itertools
import os
import statistics
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import jax  # noqa: E402
from jax.sharding import NamedSharding, PartitionSpec as P  # noqa: E402
import numpy as np  # noqa: E402

from benchmarks import common  # noqa: E402
from maskcon_jax import methods  # noqa: E402
from maskcon_jax import train_state as train_state_lib  # noqa: E402


class _Config(dict):
  """Just enough of an ml_collections.ConfigDict for the optimizer helpers."""

  __getattr__ = dict.__getitem__


def model_flops_per_image(
    model, image_size: int, channels: int, mode: str = "maskcon"
) -> float:
  """Model FLOPs of one training image of ``mode``'s step (its block at the
  defaults): `methods.flops_per_image`."""
  return methods.flops_per_image(
      _Config(mode=mode, image_size=image_size),
      model,
      (image_size, image_size, channels),
  )


# Per-program XLA options for comparing CPU code paths in one process. The
# YNNPACK fusion list is the jaxlib 0.10 default (dots, convolutions,
# reductions) with or without convolutions; without them XLA uses its Eigen
# convolution kernels.
YNN_FUSION_OPTION = "xla_cpu_experimental_ynn_fusion_type"
CPU_VARIANTS = {
    "ynn_conv": {
        YNN_FUSION_OPTION: "LIBRARY_FUSION_TYPE_INDIVIDUAL_DOT,"
        "LIBRARY_FUSION_TYPE_INDIVIDUAL_CONVOLUTION,"
        "LIBRARY_FUSION_TYPE_REDUCE"
    },
    "eigen_conv": {
        YNN_FUSION_OPTION: "LIBRARY_FUSION_TYPE_INDIVIDUAL_DOT,"
        "LIBRARY_FUSION_TYPE_REDUCE"
    },
    "eigen_conv_no_ynn_reduce": {
        YNN_FUSION_OPTION: "LIBRARY_FUSION_TYPE_INDIVIDUAL_DOT"
    },
    "no_ynn": {YNN_FUSION_OPTION: ""},
    # XLA's scheduler that orders independent ops to run concurrently; both
    # settings, on top of Eigen convolutions.
    "eigen_conv_concurrency_sched": {
        YNN_FUSION_OPTION: "LIBRARY_FUSION_TYPE_INDIVIDUAL_DOT,"
        "LIBRARY_FUSION_TYPE_REDUCE",
        "xla_cpu_enable_concurrency_optimized_scheduler": True,
    },
    "eigen_conv_sequential_sched": {
        YNN_FUSION_OPTION: "LIBRARY_FUSION_TYPE_INDIVIDUAL_DOT,"
        "LIBRARY_FUSION_TYPE_REDUCE",
        "xla_cpu_enable_concurrency_optimized_scheduler": False,
    },
    "process": None,  # Whatever XLA_FLAGS (and maskcon_jax) set.
}


class BuiltStep:
  """A compiled train step with its state and one fixed batch.

  ``run()`` takes one step (the state is donated and replaced) and waits for
  the loss, so wall-clock timing of ``run`` is the step time.
  """

  def __init__(self, compiled, state, batch, model, compile_s):
    self.compiled, self.state, self.batch = compiled, state, batch
    self.model, self.compile_s = model, compile_s
    self.metrics = None

  def run(self):
    self.state, self.metrics = self.compiled(self.state, self.batch)
    jax.block_until_ready(self.metrics["loss"])
    return self.metrics


def build_step(
    arch,
    width,
    image_size,
    batch_size,
    queue_size,
    precision,
    num_devices,
    *,
    mode,
    num_coarse=20,
    embed_dim=256,
    channels=3,
    strong_policy="strong",
    weak_policy="weak",
    compiler_options=None,
):
  """Builds and compiles the full train step on synthetic uint8 images.

  ``compiler_options`` are XLA debug options for this one program (e.g.
  ``CPU_VARIANTS`` entries), so variants can be compared in one process.
  """
  devices = jax.devices()[:num_devices]
  mesh = jax.sharding.Mesh(
      np.array(devices), ("data",), axis_types=(jax.sharding.AxisType.Auto,)
  )
  replicated, sharded = NamedSharding(mesh, P()), NamedSharding(mesh, P("data"))
  # The official hyperparameters; method blocks take their defaults.
  config = _Config(
      arch=arch,
      width=width,
      image_size=image_size,
      embed_dim=embed_dim,
      proj_hidden_dim=512,
      precision=precision,
      mode=mode,
      t0=0.1,
      t=0.05,
      w=0.5,
      ema_momentum=0.99,
      key_bn="global",
      bn_splits=1,
      query_bn="global",
      strong_policy=strong_policy,
      weak_policy=weak_policy,
      num_epochs=200,
      warmup_epochs=5,
      learning_rate=0.02,
      weight_decay=5e-4,
      momentum=0.9,
  )
  model = methods.build_encoder(config, num_coarse)
  schedule = train_state_lib.learning_rate_schedule(config, 390)
  tx = train_state_lib.make_optimizer(config, schedule)
  create = functools.partial(
      train_state_lib.create_train_state,
      model=model,
      tx=tx,
      image_shape=(image_size, image_size, channels),
      queue_size=queue_size,
      embed_dim=embed_dim,
      num_coarse=num_coarse,
      uses_queue=methods.uses_queue(config),
  )
  abstract = jax.eval_shape(create, jax.random.key(0))
  state = jax.jit(
      create, out_shardings=jax.tree.map(lambda _: replicated, abstract)
  )(jax.random.key(0))
  step_fn = jax.jit(
      methods.step_for_config(
          config, mean=(0.5,) * channels, std=(0.25,) * channels
      ),
      donate_argnums=0,
  )
  rng = np.random.default_rng(0)
  batch = {
      "image": jax.device_put(
          rng.integers(
              0, 256, (batch_size, image_size, image_size, channels), np.uint8
          ),
          sharded,
      ),
      "coarse_label": jax.device_put(
          rng.integers(0, num_coarse, (batch_size,), np.int32), sharded
      ),
  }
  start = time.perf_counter()
  compiled = step_fn.lower(state, batch).compile(
      compiler_options=compiler_options
  )
  compile_s = time.perf_counter() - start
  return BuiltStep(compiled, state, batch, model, compile_s)


def measure(
    arch,
    width,
    image_size,
    batch_size,
    queue_size,
    precision,
    num_devices,
    *,
    mode,
    steps_timed,
    warmup,
    num_coarse=20,
    embed_dim=256,
    channels=3,
    strong_policy="strong",
    weak_policy="weak",
):
  """Compiles the step, then times ``steps_timed`` steps after ``warmup``."""
  built = build_step(
      arch,
      width,
      image_size,
      batch_size,
      queue_size,
      precision,
      num_devices,
      mode=mode,
      num_coarse=num_coarse,
      embed_dim=embed_dim,
      channels=channels,
      strong_policy=strong_policy,
      weak_policy=weak_policy,
  )
  flops = (
      model_flops_per_image(built.model, image_size, channels, mode)
      * batch_size
  )
  for _ in range(warmup):
    built.run()
  times = []
  for _ in range(steps_timed):
    start = time.perf_counter()
    built.run()
    times.append(time.perf_counter() - start)
  step_s = statistics.median(times)
  if not np.isfinite(float(built.metrics["loss"])):
    raise FloatingPointError("non-finite loss in benchmark")
  return dict(
      mode=mode,
      arch=arch,
      width=width,
      image_size=image_size,
      batch=batch_size,
      queue=queue_size,
      precision=precision,
      devices=num_devices,
      compile_s=built.compile_s,
      step_ms=1e3 * step_s,
      img_s=batch_size / step_s,
      img_s_dev=batch_size / step_s / num_devices,
      gflop_img=flops / batch_size / 1e9,
      tflop_s=flops / step_s / 1e12,
  )


def main(argv=None):
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  parser.add_argument("--archs", type=common.strs, default=["resnet18"])
  parser.add_argument("--widths", type=common.ints, default=[64])
  parser.add_argument("--image_sizes", type=common.ints, default=[32])
  parser.add_argument("--batch_sizes", type=common.ints, default=[128])
  parser.add_argument("--queue_sizes", type=common.ints, default=[8192])
  parser.add_argument("--precisions", type=common.strs, default=["float32"])
  parser.add_argument(
      "--channels",
      type=int,
      default=3,
      help="image channels (1 for Fashion-MNIST)",
  )
  parser.add_argument(
      "--device_counts",
      type=common.ints,
      default=None,
      help="default: all devices",
  )
  parser.add_argument(
      "--modes",
      type=common.strs,
      default=["maskcon"],
      help="comma-separated methods.MODES",
  )
  parser.add_argument("--steps", type=int, default=10)
  parser.add_argument("--warmup", type=int, default=3)
  parser.add_argument(
      "--peak_tflops",
      type=float,
      default=None,
      help="per-device peak for MFU, e.g. 989 (H100 bf16)",
  )
  common.add_output_flags(parser)
  args = parser.parse_args(argv)
  if args.smoke:
    args.archs, args.widths, args.image_sizes = ["resnet10"], [4], [8]
    args.batch_sizes, args.queue_sizes, args.steps, args.warmup = (
        [8],
        [16],
        2,
        1,
    )
  device_counts = args.device_counts or [jax.device_count()]

  table = common.Table(
      [
          ("mode", "<8", ""),
          ("arch", "<9", ""),
          ("width", ">5", ""),
          ("px", ">4", ""),
          ("batch", ">6", ""),
          ("queue", ">6", ""),
          ("precision", ">9", ""),
          ("dev", ">3", ""),
          ("compile_s", ">9", ".1f"),
          ("step_ms", ">9", ".2f"),
          ("img_s", ">9", ".0f"),
          ("img_s_dev", ">9", ".0f"),
          ("gflop_img", ">9", ".3f"),
          ("tflop_s", ">8", ".2f"),
          ("mfu", ">6", ".1%"),
          ("scaling", ">7", ".2f"),
      ]
  )
  common.print_machine(device_count=True, load=False)
  print(table.header())
  rows, single = [], {}
  for mode, *combo in itertools.product(
      args.modes,
      args.archs,
      args.widths,
      args.image_sizes,
      args.batch_sizes,
      args.queue_sizes,
      args.precisions,
      device_counts,
  ):
    row = measure(
        *combo,
        mode=mode,
        steps_timed=args.steps,
        warmup=args.warmup,
        channels=args.channels,
    )
    key = (mode, *combo[:-1])
    if row["devices"] == 1:
      single[key] = row["img_s"]
    row["scaling"] = row["img_s_dev"] / single[key] if key in single else None
    row["mfu"] = (
        row["tflop_s"] / (args.peak_tflops * row["devices"])
        if args.peak_tflops and row["tflop_s"]
        else None
    )
    rows.append(row)
    print(
        table.row(
            *(
                row[k]
                for k in (
                    "mode",
                    "arch",
                    "width",
                    "image_size",
                    "batch",
                    "queue",
                    "precision",
                    "devices",
                    "compile_s",
                    "step_ms",
                    "img_s",
                    "img_s_dev",
                    "gflop_img",
                    "tflop_s",
                    "mfu",
                    "scaling",
                )
            )
        ),
        flush=True,
    )
  common.write_json(
      args.json,
      {"device": str(jax.devices()[0]), "jax": jax.__version__, "rows": rows},
  )
  return rows


if __name__ == "__main__":
  # The library's CPU convolution choice, as its command-line tools make it.
  import maskcon_jax  # pylint: disable=g-import-not-at-top

  maskcon_jax.prefer_eigen_cpu_convolutions()
  main()
