"""A command-line tool run as test launches run it: without TensorFlow.

  python -m tests.cli_without_tensorflow maskcon_jax.train --config ...
  python -c "from tests import cli_without_tensorflow as c; \
      c.run('maskcon_jax.train')" --config ...

clu's TensorBoard writer imports TensorFlow, about 5 s of every process's
start on a small CPU; with ``clu.metric_writers`` hidden, the tools log
their metrics only, as on an image without TensorFlow. For launches that
check no event files (`tests/test_multiprocess.py`,
`tests/test_reliability.py`, the first run of `tests/test_train.py`'s
resume); ``--with-tensorflow`` (first argument) keeps the writer.

Every process of a multi-process launch also writes the persistent
compilation cache the suite shares (`cache_from_every_process`).
"""

import runpy
import sys


def cache_from_every_process() -> None:
  """Lets every JAX process write the persistent compilation cache.

  JAX writes cache entries from process 0 only (writers contend on shared
  filesystems), and a cache key holds its process's own devices, so process
  1 of every two-process test launch would compile each program anew (~20 s
  of a tiny run on 2 cores). The suite's cache is one local directory, where
  each process writes its own keys. Reaches into JAX's private compiler
  module; where that changed, it leaves JAX as it is.
  """
  try:
    from jax._src import compilation_cache  # pylint: disable=g-import-not-at-top
    from jax._src import compiler  # pylint: disable=g-import-not-at-top
    from jax._src import distributed  # pylint: disable=g-import-not-at-top
  except ImportError:
    return
  write = getattr(compiler, "_cache_write", None)
  put = getattr(compilation_cache, "put_executable_and_time", None)
  if write is None or put is None:
    return

  def write_from_any_process(*args):
    key, seconds, module_name, backend, executable, host_callbacks = args
    minimum = compiler.config.persistent_cache_min_compile_time_secs.value
    if distributed.global_state.process_id in (None, 0) or (
        host_callbacks or seconds < minimum
    ):
      write(*args)  # JAX's own rules.
    else:
      put(key, module_name, executable, backend, int(seconds))

  compiler._cache_write = write_from_any_process  # pylint: disable=protected-access


def run(module: str, tensorflow: bool = False) -> None:
  """Runs ``module`` as ``python -m`` would, with the arguments in argv."""
  if not tensorflow:
    sys.modules["clu.metric_writers"] = None  # Its import fails: log only.
  cache_from_every_process()
  runpy.run_module(module, run_name="__main__", alter_sys=True)


if __name__ == "__main__":
  _with_tensorflow = sys.argv[1] == "--with-tensorflow"
  if _with_tensorflow:
    sys.argv.pop(1)
  run(sys.argv.pop(1), tensorflow=_with_tensorflow)
