"""A command-line tool run without TensorFlow, for test launches.

  python -m tests.cli_without_tensorflow maskcon_jax.train --config ...
  python -c "from tests import cli_without_tensorflow as c; \
      c.run('maskcon_jax.train')" --config ...

clu's TensorBoard writer imports TensorFlow, about 5 s of every process's
start on a small CPU; with ``clu.metric_writers`` hidden, the tools log
their metrics only, as on an image without TensorFlow. For launches that
check no event files (`tests/test_multiprocess.py`,
`tests/test_reliability.py`).
"""

import runpy
import sys


def run(module: str) -> None:
  """Runs ``module`` as ``python -m`` would, with the arguments in argv."""
  sys.modules["clu.metric_writers"] = None  # Its import fails: log only.
  runpy.run_module(module, run_name="__main__", alter_sys=True)


if __name__ == "__main__":
  run(sys.argv.pop(1))
