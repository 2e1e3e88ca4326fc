"""A command-line tool run without TensorFlow, for test launches.

  python -m tests.cli_without_tensorflow maskcon_jax.train --config ...

clu's TensorBoard writer imports TensorFlow, about 5 s of every process's
start on a small CPU; with ``clu.metric_writers`` hidden, the tools log
their metrics only, as on an image without TensorFlow. For launches that
check no event files (`tests/test_multiprocess.py`).
"""

import runpy
import sys

if __name__ == "__main__":
  sys.modules["clu.metric_writers"] = None  # Its import fails: log only.
  runpy.run_module(sys.argv.pop(1), run_name="__main__", alter_sys=True)
