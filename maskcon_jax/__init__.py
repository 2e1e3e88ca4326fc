"""maskcon_jax: fine-grained image embeddings from coarse labels in JAX/Flax.

Importing the package changes no process state. The command-line tools call
`prefer_eigen_cpu_convolutions` before JAX starts; a notebook or script that
wants the same CPU speed-up calls it before its first JAX computation.
"""

import os as _os

__version__ = "0.1.0"

# XLA's CPU compiler in jaxlib 0.10 hands convolutions to YNNPACK by default;
# with its own Eigen convolutions a CIFAR ResNet-18 train step takes 10-30%
# less time on CPU, float32 and bfloat16 alike (BENCHMARKS.md, "CPU"). The
# option only concerns the CPU compiler, so GPU and TPU programs are
# unaffected. It is added only for the jaxlib series it was measured on,
# because XLA aborts the process on an option it does not know.
_CPU_CONV_FLAG = (
    "--xla_cpu_experimental_ynn_fusion_type="
    "-LIBRARY_FUSION_TYPE_INDIVIDUAL_CONVOLUTION"
)
_CPU_CONV_FLAG_JAXLIB = (0, 10)


def prefer_eigen_cpu_convolutions() -> bool:
  """Adds `_CPU_CONV_FLAG` to ``XLA_FLAGS`` where it applies; True if it did.

  Call it before JAX's first computation (XLA reads the flags when its CPU
  backend starts); the command-line tools do. It does nothing when
  ``XLA_FLAGS`` already sets the option, when
  ``MASKCON_JAX_KEEP_XLA_FLAGS=1``, or on another jaxlib series.
  """
  flags = _os.environ.get("XLA_FLAGS", "")
  if (
      _os.environ.get("MASKCON_JAX_KEEP_XLA_FLAGS", "") not in ("", "0")
      or "xla_cpu_experimental_ynn_fusion_type" in flags
  ):
    return False
  try:
    from jaxlib import version as _jaxlib_version  # pylint: disable=g-import-not-at-top

    release = tuple(int(p) for p in _jaxlib_version.__version__.split(".")[:2])
  except (ImportError, ValueError):
    return False
  if release != _CPU_CONV_FLAG_JAXLIB:
    return False
  _os.environ["XLA_FLAGS"] = f"{flags} {_CPU_CONV_FLAG}".strip()
  return True
