r"""XLA CPU vs PyTorch CPU on the convolutions of a CIFAR ResNet-18 step.

For each distinct 3x3 convolution of ResNet-18 at 32 px (batch 128 by
default), times the forward pass and the backward pass (input and kernel
gradients) in JAX (NHWC, as `maskcon_jax.models`; or NCHW with
``--layout=NCHW``) and in PyTorch (NCHW, oneDNN), alternating call by call so
machine load hits both alike, and prints achieved GFLOP/s and the JAX/torch
time ratio. XLA flags are read from ``$XLA_FLAGS`` as usual, so

  XLA_FLAGS=--xla_cpu_use_onednn=true python benchmarks/cpu_conv_micro.py

compares one XLA configuration against the same torch baseline. Needs torch
(CPU wheel); a diagnostic for BENCHMARKS.md's CPU section, not a test.
"""

from __future__ import annotations

import argparse
import functools
import os
import statistics
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402

from benchmarks import common  # noqa: E402

# (name, spatial size of the input, in channels, out channels, stride): the
# 3x3 convolutions of CIFAR ResNet-18 at 32 px, one entry per distinct shape,
# with how many times the network has it.
LAYERS = (
    ("stem", 32, 3, 64, 1, 1),
    ("s1", 32, 64, 64, 1, 4),
    ("s2_down", 32, 64, 128, 2, 1),
    ("s2", 16, 128, 128, 1, 3),
    ("s3_down", 16, 128, 256, 2, 1),
    ("s3", 8, 256, 256, 1, 3),
    ("s4_down", 8, 256, 512, 2, 1),
    ("s4", 4, 512, 512, 1, 3),
)


def _xla_conv(x, w, strides, padding):
  return jax.lax.conv_general_dilated(
      x, w, strides, padding, dimension_numbers=("NHWC", "HWIO", "NHWC")
  )


@functools.partial(jax.custom_vjp, nondiff_argnums=(2, 3))
def conv_shifted_matmul_kernel_grad(x, w, strides, padding):
  """An NHWC/HWIO convolution whose kernel gradient is one matmul per tap.

  ``dW[i, j] = x_shifted(i, j)^T @ dy`` contracting batch and space, so XLA
  needs no transposed copies of the activations (its own kernel-gradient
  convolution contracts the batch dimension and transposes both operands).
  The input gradient is XLA's. An experiment for BENCHMARKS.md ("What we
  tried"); `--kernel_grad=shifted_matmuls`.
  """
  return _xla_conv(x, w, strides, padding)


def _shifted_fwd(x, w, strides, padding):
  return _xla_conv(x, w, strides, padding), (x, w)


def _shifted_bwd(strides, padding, residuals, dy):
  x, w = residuals
  _, input_vjp = jax.vjp(lambda x_: _xla_conv(x_, w, strides, padding), x)
  (dx,) = input_vjp(dy)
  x_padded = jnp.pad(x, ((0, 0), padding[0], padding[1], (0, 0)))
  (n, h_out, w_out, _), (sh, sw) = dy.shape, strides
  taps = [
      [
          jax.lax.dot_general(
              jax.lax.slice(
                  x_padded,
                  (0, i, j, 0),
                  (
                      n,
                      i + sh * (h_out - 1) + 1,
                      j + sw * (w_out - 1) + 1,
                      x_padded.shape[3],
                  ),
                  (1, sh, sw, 1),
              ),
              dy,
              (((0, 1, 2), (0, 1, 2)), ((), ())),
          )
          for j in range(w.shape[1])
      ]
      for i in range(w.shape[0])
  ]
  return dx, jnp.stack([jnp.stack(row) for row in taps]).astype(w.dtype)


conv_shifted_matmul_kernel_grad.defvjp(_shifted_fwd, _shifted_bwd)


def _median_time(fn, repeats):
  times = []
  for _ in range(repeats):
    start = time.perf_counter()
    fn()
    times.append(time.perf_counter() - start)
  return statistics.median(times)


def main(argv=None):
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  parser.add_argument("--batch", type=int, default=128)
  parser.add_argument(
      "--width",
      type=int,
      default=64,
      help="ResNet width (64 = standard); scales channels",
  )
  parser.add_argument("--layout", default="NHWC", choices=("NHWC", "NCHW"))
  parser.add_argument(
      "--kernel_grad",
      default="xla",
      choices=("xla", "shifted_matmuls"),
      help="how JAX computes the kernel gradient (NHWC only)",
  )
  parser.add_argument("--repeats", type=int, default=3)
  parser.add_argument(
      "--layers", default=None, help="comma-separated subset of layer names"
  )
  parser.add_argument("--no_torch", action="store_true")
  parser.add_argument(
      "--omp_wait_policy",
      default="PASSIVE",
      help="OMP_WAIT_POLICY for torch; '' keeps the environment's",
  )
  common.add_output_flags(
      parser, smoke_help="two small layers, batch 2, for CI"
  )
  args = parser.parse_args(argv)
  if args.kernel_grad != "xla" and args.layout != "NHWC":
    parser.error("--kernel_grad=shifted_matmuls needs --layout=NHWC")
  if args.smoke:
    args.batch, args.width, args.repeats, args.layers = 2, 8, 1, "stem,s4"
  if args.omp_wait_policy:
    # See torch_reference_step.py: spin-waiting OpenMP threads penalise torch
    # on a shared machine. Must precede importing torch.
    os.environ["OMP_WAIT_POLICY"] = args.omp_wait_policy
  torch = None if args.no_torch else __import__("torch")
  layers = [
      l for l in LAYERS if args.layers is None or l[0] in args.layers.split(",")
  ]
  scale = args.width / 64
  print(
      f"# XLA_FLAGS={os.environ.get('XLA_FLAGS', '')!r}; OMP_WAIT_POLICY="
      f"{os.environ.get('OMP_WAIT_POLICY')}; jax "
      f"{jax.__version__}; layout {args.layout}; kernel gradient "
      f"{args.kernel_grad}; batch {args.batch}; "
      f"load average {common.load_average()}"
  )
  table = common.Table(
      [
          ("layer", "<8", ""),
          ("x", ">3", ""),
          ("cin", ">4", ""),
          ("cout", ">4", ""),
          ("s", ">2", ""),
          ("jax_fwd_ms", ">10", ".1f"),
          ("torch_fwd_ms", ">12", ".1f"),
          ("jax_bwd_ms", ">10", ".1f"),
          ("torch_bwd_ms", ">12", ".1f"),
          ("jax_gflops", ">10", ".1f"),
          ("torch_gflops", ">12", ".1f"),
          ("ratio", ">6", ".2f"),
      ]
  )
  print(table.header())
  rows = []
  total = {"jax": 0.0, "torch": 0.0}
  for name, size, cin, cout, stride, count in layers:
    if name != "stem":
      cin = int(cin * scale)
    cout = int(cout * scale)
    rng = np.random.default_rng(0)
    x_nchw = rng.normal(size=(args.batch, cin, size, size)).astype(np.float32)
    w_oihw = (rng.normal(size=(cout, cin, 3, 3)) * 0.05).astype(np.float32)
    if args.layout == "NHWC":
      x = jnp.asarray(x_nchw.transpose(0, 2, 3, 1))
      w = jnp.asarray(w_oihw.transpose(2, 3, 1, 0))
      dn = ("NHWC", "HWIO", "NHWC")
    else:
      x, w = jnp.asarray(x_nchw), jnp.asarray(w_oihw)
      dn = ("NCHW", "OIHW", "NCHW")

    def conv(x, w):
      if args.kernel_grad == "shifted_matmuls":
        return conv_shifted_matmul_kernel_grad(
            x, w, (stride, stride), ((1, 1), (1, 1))
        )
      return jax.lax.conv_general_dilated(
          x, w, (stride, stride), ((1, 1), (1, 1)), dimension_numbers=dn
      )

    fwd = jax.jit(conv)
    out = fwd(x, w)
    g = jnp.ones_like(out)
    bwd = jax.jit(lambda x, w, g: jax.vjp(conv, x, w)[1](g))
    jax.block_until_ready(bwd(x, w, g))
    out_size = out.shape[1] if args.layout == "NHWC" else out.shape[2]
    flops = 2.0 * args.batch * out_size**2 * cout * cin * 9
    jf = lambda: jax.block_until_ready(fwd(x, w))  # noqa: E731
    jb = lambda: jax.block_until_ready(bwd(x, w, g))  # noqa: E731
    tf_ms = tb_ms = None
    if torch is not None:
      tx = torch.from_numpy(x_nchw).requires_grad_(True)
      tw = torch.from_numpy(w_oihw).requires_grad_(True)
      conv_t = lambda: torch.nn.functional.conv2d(  # noqa: E731
          tx, tw, stride=stride, padding=1
      )
      tg = torch.ones_like(conv_t())

      def tfwd():
        with torch.no_grad():
          conv_t()

      def tbwd():
        torch.autograd.grad(conv_t(), (tx, tw), tg)

      tfwd(), tbwd()
    jf_t, jb_t, tf_t, tb_t = [], [], [], []
    for _ in range(args.repeats):  # Alternate JAX and torch call by call.
      jf_t.append(_median_time(jf, 1))
      if torch is not None:
        tf_t.append(_median_time(tfwd, 1))
      jb_t.append(_median_time(jb, 1))
      if torch is not None:
        tb_t.append(_median_time(tbwd, 1))
    jf_ms, jb_ms = 1e3 * statistics.median(jf_t), 1e3 * statistics.median(jb_t)
    if torch is not None:
      tf_ms, tb_ms = 1e3 * statistics.median(tf_t), 1e3 * statistics.median(
          tb_t
      )
    # Backward of the stem skips the input gradient in a real network, but
    # here both sides compute both gradients, so the ratio stays fair.
    jax_gflops = 3 * flops / ((jf_ms + jb_ms) / 1e3) / 1e9
    torch_gflops = (
        3 * flops / ((tf_ms + tb_ms) / 1e3) / 1e9 if torch is not None else None
    )
    ratio = (jf_ms + jb_ms) / (tf_ms + tb_ms) if torch is not None else None
    total["jax"] += count * (jf_ms + jb_ms)
    total["torch"] += count * ((tf_ms + tb_ms) if torch is not None else 0.0)
    row = dict(
        layer=name,
        size=size,
        cin=cin,
        cout=cout,
        stride=stride,
        count=count,
        jax_fwd_ms=jf_ms,
        jax_bwd_ms=jb_ms,
        torch_fwd_ms=tf_ms,
        torch_bwd_ms=tb_ms,
        jax_gflops=jax_gflops,
        torch_gflops=torch_gflops,
        ratio=ratio,
    )
    rows.append(row)
    print(
        table.row(
            name,
            size,
            cin,
            cout,
            stride,
            jf_ms,
            tf_ms,
            jb_ms,
            tb_ms,
            jax_gflops,
            torch_gflops,
            ratio,
        ),
        flush=True,
    )
  print(
      f"# 3x3 convs of one ResNet-18 forward+backward (x count): jax "
      f"{total['jax']:.0f} ms, torch {total['torch']:.0f} ms; load average "
      f"{common.load_average()}"
  )
  common.write_json(
      args.json,
      {
          "xla_flags": os.environ.get("XLA_FLAGS", ""),
          "layout": args.layout,
          "kernel_grad": args.kernel_grad,
          "rows": rows,
          "total_ms": total,
      },
  )
  return rows


if __name__ == "__main__":
  # The library's CPU convolution choice, as its command-line tools make it.
  import maskcon_jax  # pylint: disable=g-import-not-at-top

  maskcon_jax.prefer_eigen_cpu_convolutions()
  main()
