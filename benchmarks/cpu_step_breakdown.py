r"""Where a CPU train step's time goes: views, forward, forward + backward.

Times the parts of the MaskCon step separately, JAX against PyTorch on the
same inputs, alternating call by call:

* ``views``: both augmented views of the batch (JAX only; the PyTorch
  reference step has no augmentation);
* ``forward``: the encoder (ResNet + projector) in training mode (batch
  statistics), no gradient: the key encoder's share of a step;
* ``fwd_bwd``: forward and backward of the query encoder with a scalar loss
  on the projection: the query encoder's share;
* ``sgd``: the optimizer update (weight decay, momentum) of all parameters.

JAX parts run once per XLA variant (``step_throughput.CPU_VARIANTS``), each
compiled with its own options, so the variants share one process and one
load history.

  python benchmarks/cpu_step_breakdown.py --variants=ynn_conv,eigen_conv
"""

from __future__ import annotations

import argparse
import functools
import os
import statistics
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

# Neither imports jax or torch at import time (OMP_WAIT_POLICY comes first).
from benchmarks import common  # noqa: E402
from benchmarks import torch_reference_step  # noqa: E402


def main(argv=None):
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  parser.add_argument("--width", type=int, default=64)
  parser.add_argument("--batch", type=int, default=128)
  parser.add_argument("--image_size", type=int, default=32)
  parser.add_argument("--repeats", type=int, default=3)
  parser.add_argument(
      "--variants", type=common.strs, default=["ynn_conv", "eigen_conv"]
  )
  parser.add_argument("--omp_wait_policy", default="PASSIVE")
  common.add_output_flags(parser)
  args = parser.parse_args(argv)
  stages = (2, 2, 2, 2)
  arch = "resnet18"
  if args.smoke:
    args.width, args.batch, args.image_size, args.repeats = 4, 4, 8, 1
    stages, arch = (1, 1, 1, 1), "resnet10"
  if args.omp_wait_policy:
    os.environ["OMP_WAIT_POLICY"] = args.omp_wait_policy
  import jax  # pylint: disable=g-import-not-at-top
  import jax.numpy as jnp  # pylint: disable=g-import-not-at-top
  import numpy as np  # pylint: disable=g-import-not-at-top
  import optax  # pylint: disable=g-import-not-at-top
  import torch  # pylint: disable=g-import-not-at-top

  from benchmarks import step_throughput  # pylint: disable=g-import-not-at-top
  from maskcon_jax import augment  # pylint: disable=g-import-not-at-top
  from maskcon_jax import models  # pylint: disable=g-import-not-at-top

  size, batch = args.image_size, args.batch
  model = models.Encoder(
      backbone=models.build_backbone(arch, args.width, size),
      embed_dim=256,
      proj_hidden_dim=512,
      num_coarse=20,
  )
  rng = np.random.default_rng(0)
  images = jnp.asarray(rng.integers(0, 256, (batch, size, size, 3), np.uint8))
  x = jnp.asarray(rng.normal(size=(batch, size, size, 3)).astype(np.float32))
  variables = jax.jit(functools.partial(model.init, train=False))(
      jax.random.key(0), x
  )
  kwargs = dict(size=size, mean=(0.5,) * 3, std=(0.25,) * 3)

  def views(key, images):
    return augment.policy_views(
        ("weak", "strong"), tuple(jax.random.split(key)), images, **kwargs
    )

  def forward(variables, x):
    out, _ = model.apply(variables, x, train=True, mutable=["batch_stats"])
    return out["projection"]

  def fwd_bwd(variables, x):
    def loss(params):
      out, _ = model.apply(
          {**variables, "params": params},
          x,
          train=True,
          mutable=["batch_stats"],
      )
      return jnp.mean(out["projection"] ** 2)

    return jax.value_and_grad(loss)(variables["params"])

  tx = optax.chain(
      optax.add_decayed_weights(5e-4), optax.sgd(0.02, momentum=0.9)
  )
  params = variables["params"]
  opt_state = tx.init(params)

  def sgd(params, grads, opt_state):
    updates, opt_state = tx.update(grads, opt_state, params)
    return optax.apply_updates(params, updates), opt_state

  parts = {
      "views": (views, (jax.random.key(0), images)),
      "forward": (forward, (variables, x)),
      "fwd_bwd": (fwd_bwd, (variables, x)),
      "sgd": (sgd, (params, params, opt_state)),
  }
  runners = {}
  for variant in args.variants:
    options = step_throughput.CPU_VARIANTS[variant]
    for part, (fn, fn_args) in parts.items():
      compiled = jax.jit(fn).lower(*fn_args).compile(compiler_options=options)
      runners[(part, f"jax:{variant}")] = functools.partial(
          lambda c, a: jax.block_until_ready(c(*a)), compiled, fn_args
      )

  # The same encoder in PyTorch (train mode, no augmentation): the official
  # one of torch_reference_step. Its unused coarse classifier gets no
  # gradient, so the SGD step skips it.
  tx_torch = torch.from_numpy(np.asarray(x).transpose(0, 3, 1, 2).copy())
  encoder = torch_reference_step.build_torch_encoder(args.width, stages=stages)
  encoder.train()
  opt = torch.optim.SGD(
      encoder.parameters(), lr=0.02, momentum=0.9, weight_decay=5e-4
  )

  def t_forward():
    with torch.no_grad():
      encoder(tx_torch)

  def t_fwd_bwd():
    encoder.zero_grad()
    loss = encoder(tx_torch).pow(2).mean()
    loss.backward()

  t_fwd_bwd()
  runners[("forward", "torch")] = t_forward
  runners[("fwd_bwd", "torch")] = t_fwd_bwd
  runners[("sgd", "torch")] = opt.step

  for run in runners.values():  # Warm-up.
    run()
  times = {key: [] for key in runners}
  for _ in range(args.repeats):
    for key, run in runners.items():
      start = time.perf_counter()
      run()
      times[key].append(time.perf_counter() - start)
  med = {key: statistics.median(t) for key, t in times.items()}
  load = os.getloadavg()
  sides = ["torch"] + [f"jax:{v}" for v in args.variants]
  print(
      f"# {arch} width {args.width}, {size} px, batch {batch}; median of "
      f"{args.repeats}; jax {jax.__version__}, torch {torch.__version__} "
      f"(OMP_WAIT_POLICY={os.environ.get('OMP_WAIT_POLICY')}); load "
      f"average {common.load_average(load)}"
  )
  table = common.Table(
      [("part", "<8", "")]
      + [(s + "_s", ">16", ".3f") for s in sides]
      + [(s[4:] + "/torch", ">16", ".2f") for s in sides[1:]]
  )
  print(table.header())
  rows = []
  for part in parts:
    vals = [med.get((part, s)) for s in sides]
    ratios = [
        (v / vals[0]) if (v is not None and vals[0]) else None for v in vals[1:]
    ]
    print(table.row(part, *vals, *ratios), flush=True)
    rows.append(dict(part=part, **{s: v for s, v in zip(sides, vals)}))
  common.write_json(args.json, {"load_avg": load, "rows": rows})
  return rows


if __name__ == "__main__":
  # The library's CPU convolution choice, as its command-line tools make it.
  import maskcon_jax  # pylint: disable=g-import-not-at-top

  maskcon_jax.prefer_eigen_cpu_convolutions()
  main()
